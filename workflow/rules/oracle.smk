# The decoding study without a model: each dataset's test landmarks encoded, perturbed and decoded.


rule oracle:
    input:
        unpack(lambda wc: split_inputs(wc.dataset, "test")),
        code=code("oracle"),
    output:
        R.oracle("{dataset}"),
    params:
        split=lambda wc, input: Path(input.meta).parent,
        knobs=knobs("oracle", "decode", "model.input_size", "train.sigma"),
    log:
        R.root / "logs" / "oracle" / "{dataset}.log",
    benchmark:
        R.root / "benchmarks" / "oracle" / "{dataset}.tsv"
    shell:
        "popos oracle {PARAMS_ARGS} --dataset-dir {params.split} --out {output} > {log} 2>&1"
