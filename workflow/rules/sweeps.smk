# Figure 5: POPoS's knobs re-decoded on one model's saved heatmaps (no model run); the MA-weight sweep is
# made of trained models (rule train) and read by the report.


rule sweep_decoders:
    input:
        heatmaps=R.eval_dir(SWEEP_RUN) / "heatmaps.npz",
        checkpoint=R.checkpoint(SWEEP_RUN),
        code=code("sweeps"),
    output:
        R.decoder_sweep,
    params:
        knobs=knobs("sweeps.region", "sweeps.samples_per_pixel", "sweeps.anchors", "decode", "evaluate"),
    log:
        R.root / "logs" / "sweeps" / "decoders.log",
    benchmark:
        R.root / "benchmarks" / "sweeps" / "decoders.tsv"
    shell:
        "popos sweep decoders {PARAMS_ARGS} --heatmaps {input.heatmaps} --checkpoint {input.checkpoint} "
        "--out {output} > {log} 2>&1"
