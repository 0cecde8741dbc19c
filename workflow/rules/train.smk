# Training: one model per dataset x heatmap size x loss, plus the MA-weight sweep's extra models.
# Their params trigger carries only the knobs the weights depend on (common.smk, train_knobs), and their
# code inputs only the code the weights depend on: the decoders (and evaluate, which runs them) serve the
# per-epoch test NME of the training log, so a decoder change re-runs evaluations, not training.

TRAIN_CODE = code("train", skip=("decoders", "evaluate"))
PRETRAINED = []


def best_output(folder):
    """best.pt, the epoch train.save_best selects, as an output where it is written."""
    return {"best": folder / "best.pt"} if P.train.save_best != "none" else {}


if P.model.pretrained is not None:
    from popos.pretrained import SOURCES, local_path

    if P.model.pretrained in SOURCES:
        PRETRAINED = [str(local_path(P.data.pretrained_dir, SOURCES[P.model.pretrained]))]

        rule fetch_pretrained:
            """The pinned ImageNet backbone, downloaded once for every training job."""
            output:
                PRETRAINED[0],
            log:
                R.root / "logs" / "fetch_pretrained.log",
            shell:
                "popos model fetch-pretrained {PARAMS_ARGS} > {log} 2>&1"

    else:
        PRETRAINED = [P.model.pretrained]


rule train:
    input:
        unpack(lambda wc: split_inputs(wc.dataset, "train")),
        code=TRAIN_CODE,
        pretrained=PRETRAINED,
    output:
        checkpoint=R.checkpoint("{dataset}_{size}_{loss}"),
        log=R.model_dir("{dataset}_{size}_{loss}") / "train_log.csv",
        **best_output(R.model_dir("{dataset}_{size}_{loss}")),
    params:
        out=lambda wc, output: Path(output.checkpoint).parent,
        knobs=train_knobs,
    threads: 1
    resources:
        gpu=1,
    log:
        R.root / "logs" / "train" / "{dataset}_{size}_{loss}.log",
    benchmark:
        R.root / "benchmarks" / "train" / "{dataset}_{size}_{loss}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} popos train {PARAMS_ARGS} --dataset {wildcards.dataset} --heatmap-size {wildcards.size} "
        "--loss {wildcards.loss} --out {params.out} > {log} 2>&1"


rule train_ma_weight:
    """A model of Figure 5d: MSE + w * MA with a weight w other than train.ma_weight (and other than 0)."""
    input:
        unpack(lambda wc: split_inputs(wc.dataset, "train")),
        code=TRAIN_CODE,
        pretrained=PRETRAINED,
    output:
        checkpoint=R.checkpoint("{dataset}_{size}_mse_ma_w{weight}"),
        log=R.model_dir("{dataset}_{size}_mse_ma_w{weight}") / "train_log.csv",
        **best_output(R.model_dir("{dataset}_{size}_mse_ma_w{weight}")),
    params:
        out=lambda wc, output: Path(output.checkpoint).parent,
        knobs=lambda wc: train_knobs(wc, ma_weight_in_name=True),
    threads: 1
    resources:
        gpu=1,
    log:
        R.root / "logs" / "train" / "{dataset}_{size}_mse_ma_w{weight}.log",
    benchmark:
        R.root / "benchmarks" / "train" / "{dataset}_{size}_mse_ma_w{weight}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} popos train {PARAMS_ARGS} --set train.ma_weight={wildcards.weight} --dataset {wildcards.dataset} "
        "--heatmap-size {wildcards.size} --loss mse_ma --out {params.out} > {log} 2>&1"
