# Training: one model per dataset x heatmap size x loss, plus the MA-weight sweep's extra models (runs named
# <loss>_w<weight>, trained with that train.ma_weight). Their params trigger carries only the knobs the
# weights depend on (common.smk, train_knobs), and their code inputs only the code the weights depend on:
# the decoders (and evaluate, which runs them) serve the per-epoch test NME of the training log, so a
# decoder change re-runs evaluations, not training.

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


def train_args(wildcards):
    """The run's loss, and for a run of the MA-weight sweep (``mse_ma_w2``) the weight its name carries."""
    loss, _, weight = wildcards.run.partition("_w")
    return f"--loss {loss}" + (f" --set train.ma_weight={weight}" if weight else "")


rule train:
    input:
        unpack(lambda wc: split_inputs(wc.dataset, "train")),
        code=TRAIN_CODE,
        pretrained=PRETRAINED,
    output:
        checkpoint=R.checkpoint("{dataset}_{size}_{run}"),
        log=R.model_dir("{dataset}_{size}_{run}") / "train_log.csv",
        **best_output(R.model_dir("{dataset}_{size}_{run}")),
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
