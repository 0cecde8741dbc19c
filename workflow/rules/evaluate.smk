# Evaluation: each trained model's test heatmaps decoded by every decoder of decode.methods.
# The model whose heatmaps the decoder sweeps re-decode also keeps them (heatmaps.npz); the others keep
# them only with evaluate.save_heatmaps, as they are large (WFLW at 64 x 64: about 4 GB with flip test).

EVAL_CODE = code("evaluate")
SWEEP_RUN = decoder_sweep_run(P).name


ruleorder: evaluate_keep_heatmaps > evaluate


rule evaluate:
    input:
        unpack(eval_inputs),
        code=EVAL_CODE,
    output:
        **eval_outputs("{dataset}_{size}_{run}"),
    params:
        out=lambda wc, output: Path(output.summary).parent,
        knobs=knobs("decode", "evaluate", drop=["evaluate.save_heatmaps"]),
        keep_heatmaps="",
    resources:
        gpu=1,
    log:
        R.root / "logs" / "evaluate" / "{dataset}_{size}_{run}.log",
    benchmark:
        R.root / "benchmarks" / "evaluate" / "{dataset}_{size}_{run}.tsv"
    shell:
        "popos evaluate {PARAMS_ARGS} {params.keep_heatmaps} --checkpoint {input.checkpoint} --out {params.out} "
        "> {log} 2>&1"


# The same job for the sweep's model, with one more output (a rule's outputs cannot depend on its wildcards).
use rule evaluate as evaluate_keep_heatmaps with:
    output:
        **eval_outputs("{dataset}_{size}_{run}", ["heatmaps.npz"]),
    wildcard_constraints:
        dataset=P.sweeps.dataset,
        size=str(P.sweeps.heatmap_size),
        run=P.sweeps.loss,
    params:
        keep_heatmaps="--set evaluate.save_heatmaps=true",
