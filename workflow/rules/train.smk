# Training: one model per dataset x heatmap size x loss, plus the MA-weight sweep's extra models (runs named
# <loss>_w<weight>, trained with that train.ma_weight). Their params trigger carries only the knobs the
# weights depend on (common.smk, train_knobs).

TRAIN_CODE = code("train")


def train_args(wildcards):
    """The run's loss, and for a run of the MA-weight sweep (``mse_ma_w2``) the weight its name carries."""
    loss, _, weight = wildcards.run.partition("_w")
    return f"--loss {loss}" + (f" --set train.ma_weight={weight}" if weight else "")


rule train:
    input:
        unpack(lambda wc: split_inputs(wc.dataset, "train")),
        code=TRAIN_CODE,
    output:
        checkpoint=R.checkpoint("{dataset}_{size}_{run}"),
        log=R.model_dir("{dataset}_{size}_{run}") / "train_log.csv",
    params:
        out=lambda wc, output: Path(output.checkpoint).parent,
        args=train_args,
        knobs=train_knobs,
    threads: 1
    resources:
        gpu=1,
    log:
        R.root / "logs" / "train" / "{dataset}_{size}_{run}.log",
    benchmark:
        R.root / "benchmarks" / "train" / "{dataset}_{size}_{run}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} popos train {PARAMS_ARGS} --dataset {wildcards.dataset} --heatmap-size {wildcards.size} "
        "{params.args} --out {params.out} > {log} 2>&1"
