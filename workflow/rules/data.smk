# Data: the synthetic faces are rendered; the benchmarks are downloaded (or ingested) and prepared.
# One rule per dataset, because each names its own test split (300W: full, COCO-WholeBody: val).


for _name in DATASETS_USED:
    if DATASETS[_name].generated:  # the synthetic faces, the one generated dataset

        rule:
            name:
                "synth"
            input:
                code=code("data.synth"),
            output:
                data_outputs(_name),
            params:
                knobs=knobs("synth", "data.crop_size", "data.prepared_dir"),
            log:
                R.root / "logs" / "data" / f"{_name}.log",
            benchmark:
                R.root / "benchmarks" / "data" / f"{_name}.tsv"
            shell:
                "popos data synth {PARAMS_ARGS} > {log} 2>&1"

    else:

        rule:
            name:
                f"prepare_{_name}"
            input:
                raw=raw_input(_name),
                code=code("data.prepare"),
            output:
                data_outputs(_name),
            params:
                name=_name,
                knobs=knobs("data.crop_size", "data.padding", "data.prepared_dir"),
            log:
                R.root / "logs" / "data" / f"prepare_{_name}.log",
            benchmark:
                R.root / "benchmarks" / "data" / f"prepare_{_name}.tsv"
            shell:
                "popos data prepare {params.name} {PARAMS_ARGS} > {log} 2>&1"


rule download:
    """Fetch and verify a benchmark; where a host needs a registration the log says what to fetch by hand
    (then `popos data download NAME --from DIR`)."""
    output:
        directory(RAW / "{dataset}"),
    params:
        root=RAW,
    log:
        R.root / "logs" / "data" / "download_{dataset}.log",
    benchmark:
        R.root / "benchmarks" / "data" / "download_{dataset}.tsv"
    shell:
        "popos data download {wildcards.dataset} --root {params.root} > {log} 2>&1"
