# Speed and size: decoder throughput per device (Table 2) and the model's parameters and GFLOPs (Table 1).


rule bench_decoders:
    input:
        code=code("bench"),
    output:
        R.bench("{device}"),
    params:
        knobs=knobs("bench", "decode.sigma", "decode.popos", "model.input_size"),
    resources:
        gpu=lambda wc: int(wc.device == "cuda"),
    log:
        R.root / "logs" / "bench" / "decoders_{device}.log",
    benchmark:
        R.root / "benchmarks" / "bench" / "decoders_{device}.tsv"
    shell:
        "popos bench decoders {PARAMS_ARGS} --device {wildcards.device} --out {output} > {log} 2>&1"


rule model_info:
    """Parameters and GFLOPs of the model for the first dataset's landmarks, at every heatmap size."""
    input:
        code=code("models.stats"),
    output:
        R.model_info,
    params:
        landmarks=DATASETS[P.grid.datasets[0]].num_landmarks,
        knobs=knobs("model"),
    log:
        R.root / "logs" / "model_info.log",
    benchmark:
        R.root / "benchmarks" / "model_info.tsv"
    shell:
        "popos model info {PARAMS_ARGS} --num-landmarks {params.landmarks} --out {output} > {log} 2>&1"
