# Helpers of the rules: the knobs and source files each step reads, and the prepared-data files.

import ast
import json

from popos.layout import split_dir

EVAL_OUTPUTS = ["summary.csv", "per_image.csv", "predictions.npz", "metrics.json"]


def knobs(*keys, drop=()):
    """JSON of the params sections / keys a step reads (``"train"``, ``"model.input_size"``), for the
    params rerun trigger; ``drop`` removes keys (``"train.workers"``) that do not change the results."""
    out = {}
    for key in keys:
        section, _, field = key.partition(".")
        value = getattr(P, section).model_dump(mode="json")
        out[key] = value[field] if field else value
    for key in drop:
        section, _, field = key.partition(".")
        out.get(section, {}).pop(field, None)
    return json.dumps(out, sort_keys=True)


def code(*modules, skip=()):
    """The popos source files a step runs, as rule inputs (Snakemake hashes only a shell rule's command
    text): ``popos/cli.py``, the given modules (``"train"``, ``"data.synth"``) and every popos module they
    import, transitively, lazy imports and parent packages included; modules under ``skip`` (``"decoders"``)
    are left out with everything only they import: code the step runs but its outputs do not depend on."""
    seen = {Path("popos/cli.py")}
    todo = [f"popos.{m}" for m in modules]
    skipped = tuple(f"popos.{m}" for m in skip)
    while todo:
        name = todo.pop()
        if any(name == s or name.startswith(f"{s}.") for s in skipped):
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__, a/b/c
            package = Path(*parts[:i])
            path = package / "__init__.py" if package.is_dir() else package.with_suffix(".py")
            if path.is_file() and path not in seen:
                seen.add(path)
                package_name = ".".join(parts[:i] if path.name == "__init__.py" else parts[: i - 1])
                todo += _popos_imports(path, package_name)
    return sorted(str(p) for p in seen)


def _popos_imports(path, package):
    """Names of the popos modules ``path`` (in ``package``) may import, at any depth of its code."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from .m import x
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return [n for n in names if n == "popos" or n.startswith("popos.")]


def split_files(dataset, which):
    """The files of the prepared ``which`` ('train' / 'test') split of ``dataset``."""
    folder = split_dir(P, dataset, which)
    return {"meta": str(folder / "meta.json"), "annotations": str(folder / "annotations.npz"),
            "crops": str(folder / "crops.u8")}


def split_inputs(dataset, which):
    """``split_files`` as rule inputs: crops by existence only (they may exceed the checksum limit, and DVC
    checkouts reset mtimes); a new preparation also rewrites the checksummed annotations."""
    files = split_files(dataset, which)
    return {**files, "crops": ancient(files["crops"])}


def data_outputs(dataset):
    """Every prepared file of ``dataset`` the workflow reads (its train and test splits)."""
    return [*split_files(dataset, "train").values(), *split_files(dataset, "test").values()]


def raw_input(dataset):
    """The raw folder, except when the prepared splits exist without it (pulled from a DVC remote): then
    they are the source, and a fresh clone does not re-download and re-prepare."""
    raw = RAW / dataset
    if not raw.exists() and all(Path(f).is_file() for f in data_outputs(dataset)):
        return []
    return [ancient(str(raw))]


def eval_outputs(run, extra=()):
    """``{summary: <eval dir>/summary.csv, ...}`` of ``run`` (a name or pattern), plus ``extra`` files."""
    return {name.split(".")[0]: R.eval_dir(run) / name for name in [*EVAL_OUTPUTS, *extra]}


def eval_inputs(wildcards):
    """The test split of the run's dataset and its checkpoint."""
    run = f"{wildcards.dataset}_{wildcards.size}_{wildcards.run}"
    weights = R.checkpoint(run) if P.evaluate.checkpoint == "last" else R.model_dir(run) / "best.pt"
    return {**split_inputs(wildcards.dataset, "test"), "checkpoint": weights}


def train_knobs(wildcards):
    """The knobs a model depends on: not where it runs, not the MA settings of an MSE-only model, not
    the MA weight that a sweep run's name (``mse_ma_w2``) carries."""
    loss, _, weight_in_name = wildcards.run.partition("_w")
    drop = ["train.workers", "train.device", "train.per_dataset", "augment.per_dataset"]  # applied below
    if loss in ("mse", "mse_biased"):
        drop += ["train.ma_weight", "train.ma_k", "train.ma_mask", "train.ma_anchors"]
    if weight_in_name:
        drop.append("train.ma_weight")
    out = json.loads(knobs("model", "data.crop_size", "data.padding"))
    for name in ("train", "augment"):  # as this dataset's model sees them
        out[name] = getattr(P, name).for_dataset(wildcards.dataset).model_dump(mode="json")
    for key in drop:
        section, _, field = key.partition(".")
        out[section].pop(field, None)
    return json.dumps(out, sort_keys=True)
