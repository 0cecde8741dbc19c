"""The ``popos`` command: one subcommand per pipeline step.

Each subcommand parses its arguments and calls one documented library function; imports are lazy so
that ``popos --help`` is instant. Run ``popos <step> --help`` for the options of a step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from popos.choices import DATASET_NAMES, HEATMAP_SIZES, LOSSES
from popos.errors import UserError

PARAMS_HELP = "params file(s); later files override earlier ones (default: params.yaml if present)"


def _add_params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", action="append", default=None, metavar="YAML", help=PARAMS_HELP)
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override one knob, e.g. train.lr=1e-3"
    )


def _params(args: argparse.Namespace):
    from popos.config import load_params

    paths = args.params if args.params else [p for p in ["params.yaml"] if Path(p).is_file()]
    return load_params(*paths, overrides=args.set)


# ---------------------------------------------------------------- data
def _data_synth(args):
    from popos.data.synth import write_synth_dataset

    p = _params(args)
    write_synth_dataset(
        Path(args.out or p.data.prepared_dir) / "synth",
        n_train=p.synth.n_train if args.n is None else args.n,
        n_test=p.synth.n_test if args.n_test is None else args.n_test,
        seed=p.synth.seed if args.seed is None else args.seed,
        crop_size=p.data.crop_size,
        padding=p.data.padding,
    )


def _data_download(args):
    from popos.data.download import download

    p = _params(args)  # checked before anything is downloaded
    download(args.name, root=Path(args.root or p.data.raw_dir), from_dir=Path(args.from_dir) if args.from_dir else None)


def _data_prepare(args):
    from popos.data.prepare import prepare

    p = _params(args)
    prepare(args.name, raw_root=Path(args.raw or p.data.raw_dir), out_root=Path(args.out or p.data.prepared_dir),
            crop_size=p.data.crop_size, padding=p.data.padding, strict=args.strict, force=args.force,
            workers=args.workers)


def _data_show(args):
    from popos.draw import show_dataset

    p = _params(args)
    show_dataset(Path(args.prepared or p.data.prepared_dir) / args.name / args.split, n=args.n, out=Path(args.out))


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="download, verify and prepare datasets; make the synthetic faces")
    dsub = data.add_subparsers(dest="data_cmd", required=True, metavar="{synth,download,prepare,show}")

    p = dsub.add_parser("synth", help="render the embedded synthetic face dataset (68 points, iBUG layout)")
    _add_params(p)
    p.add_argument("--out", help="prepared root (default: data.prepared_dir); writes <out>/synth/{train,test}")
    p.add_argument("--n", type=int, help="training faces (default: synth.n_train)")
    p.add_argument("--n-test", type=int, help="test faces (default: synth.n_test)")
    p.add_argument("--seed", type=int, help="random seed (default: synth.seed)")
    p.set_defaults(func=_data_synth)

    p = dsub.add_parser("download", help="download and verify a dataset, or ingest files you already have")
    _add_params(p)
    p.add_argument("name", help="dataset name (wflw, 300w, cofw, aflw, cocowb_face)")
    p.add_argument("--root", help="raw data root (default: data.raw_dir)")
    p.add_argument("--from", dest="from_dir",
                   help="ingest archives/unpacked folders found in this directory (the rest is downloaded)")
    p.set_defaults(func=_data_download)

    p = dsub.add_parser("prepare", help="raw dataset -> annotation tables + face-crop cache per split")
    _add_params(p)
    p.add_argument("name", help="dataset name")
    p.add_argument("--raw", help="raw data root (default: data.raw_dir)")
    p.add_argument("--out", help="prepared root (default: data.prepared_dir)")
    p.add_argument("--strict", action="store_true",
                   help="fail when a split's size differs from the published one or a split's files are missing "
                   "(default: warn and skip)")
    p.add_argument("--force", action="store_true",
                   help="write a split even if it has no face (it then replaces a non-empty prepared split)")
    p.add_argument("--workers", type=int, default=4, help="image-decoding threads (default: 4)")
    p.set_defaults(func=_data_prepare)

    p = dsub.add_parser("show", help="draw a grid of face crops with numbered landmarks")
    _add_params(p)
    p.add_argument("name", help="dataset name")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=16, help="number of faces")
    p.add_argument("--prepared", help="prepared root (default: data.prepared_dir)")
    p.add_argument("--out", required=True, help="output PNG")
    p.set_defaults(func=_data_show)


# ---------------------------------------------------------------- model
def _model_info(args):
    from popos.models import print_model_table

    knobs = _params(args).model.model_dump(exclude={"pretrained"})
    knobs.update({k: v for k, v in (("width", args.width), ("input_size", args.input_size)) if v is not None})
    print_model_table(num_landmarks=args.num_landmarks, out=Path(args.out) if args.out else None, **knobs)


def _fetch_pretrained(args):
    from popos.pretrained import fetch

    print(fetch(args.dir or _params(args).data.pretrained_dir, url=args.url))


def _add_model(sub) -> None:
    model = sub.add_parser("model", help="inspect the lightweight HRNet; fetch its ImageNet weights")
    msub = model.add_subparsers(dest="model_cmd", required=True, metavar="{info,fetch-pretrained}")
    p = msub.add_parser("fetch-pretrained", help="download the pinned ImageNet HRNet-W18 (model.pretrained: imagenet) "
                        "once into data.pretrained_dir and verify its checksum; prints its path")
    _add_params(p)
    p.add_argument("--dir", help="target folder (default: data.pretrained_dir)")
    p.add_argument("--url", help="download from this address instead of the Hugging Face Hub (a mirror)")
    p.set_defaults(func=_fetch_pretrained)
    p = msub.add_parser(
        "info", help="parameters and GFLOPs (measured) for each heatmap size, of the model in params (model:)"
    )
    _add_params(p)
    p.add_argument("--num-landmarks", type=int, default=98)
    p.add_argument("--width", type=int, help="overrides model.width")
    p.add_argument("--input-size", type=int, help="overrides model.input_size")
    p.add_argument("--out", metavar="CSV", help="also write the table (heatmap_size, params_m, gflops) as CSV")
    p.set_defaults(func=_model_info)


# ---------------------------------------------------------------- train / evaluate / predict
def _train(args):
    from popos.train import train

    train(_params(args), dataset=args.dataset, heatmap_size=args.heatmap_size, loss=args.loss,
          out_dir=Path(args.out), resume=args.resume, device=args.device)


def _evaluate(args):
    from popos.evaluate import evaluate

    evaluate(_params(args), checkpoint=Path(args.checkpoint), split=args.split, out_dir=Path(args.out),
             device=args.device)


def _predict(args):
    from popos.evaluate import predict

    try:
        box = tuple(float(v) for v in args.box.split(",")) if args.box else None
    except ValueError:
        raise UserError(f"--box: expected four numbers x,y,w,h (image px), got {args.box!r}") from None
    points = predict(Path(args.image), checkpoint=Path(args.checkpoint), box=box, out=Path(args.out),
                     method=args.method, device=args.device, compile=args.compile)
    print("landmark,x,y")
    for k, (x, y) in enumerate(points):
        print(f"{k},{x:.2f},{y:.2f}")


def _export(args):
    from popos.export import export_onnx

    print(export_onnx(Path(args.checkpoint), args.method, Path(args.out)))


def _add_train_eval(sub) -> None:
    p = sub.add_parser("train", help="train a model for one dataset x heatmap size x loss")
    _add_params(p)
    p.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    p.add_argument("--heatmap-size", type=int, required=True, choices=HEATMAP_SIZES)
    p.add_argument("--loss", required=True, choices=LOSSES)
    p.add_argument("--out", required=True, help="run folder: checkpoint, dvclive logs")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides train.device")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="decode a model's test heatmaps with every decoder; NME/FR/AUC tables")
    _add_params(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True, help="output folder (per-image table, summary, heatmaps)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="landmarks for one image, drawn over it")
    p.add_argument("image")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--box", help="face box x,y,w,h in image px (default: the whole image)")
    p.add_argument("--method", default="popos", help="decoder variant (default: popos)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decoder (pays off for many images)")
    p.add_argument("--out", required=True, help="output PNG with the landmarks drawn")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", help="write a model and its decoder as one ONNX graph: images -> landmarks (input px)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--method", default="one_hot",
                   help="decoder variant (default: one_hot; those of popos.export.EXPORTABLE export)")
    p.add_argument("--out", required=True, help="output .onnx file (input `images` [B, 3, S, S], output `landmarks`)")
    p.set_defaults(func=_export)


# ---------------------------------------------------------------- oracle / bench / report
def _oracle(args):
    from popos.oracle import run_oracle

    run_oracle(_params(args), out=Path(args.out) if args.out else None,
               dataset_dir=Path(args.dataset_dir) if args.dataset_dir else None)


def _bench_decoders(args):
    from popos.bench import bench_decoders

    p = _params(args)
    batch = p.bench.batch if args.batch is None else args.batch
    options = p.decode.popos.model_dump()
    bench_decoders(device=args.device, batch=batch, num_landmarks=p.bench.num_landmarks,
                   heatmap_sizes=p.bench.heatmap_sizes, warmup=p.bench.warmup, repeats=p.bench.repeats,
                   out=Path(args.out) if args.out else None, sigma=p.decode.sigma, popos_options=options,
                   seed=p.bench.seed, input_size=p.model.input_size, compile=args.compile or p.decode.compile)


def _report(args):
    from popos.report import build_report

    path = build_report(_params(args), results=Path(args.results), out_dir=Path(args.out))
    print(f"report: {path}")


def _sweep_decoders(args):
    from popos.sweeps import run_decoder_sweep

    run_decoder_sweep(_params(args), heatmaps=Path(args.heatmaps), checkpoint=Path(args.checkpoint),
                      out=Path(args.out))


def _add_study(sub) -> None:
    p = sub.add_parser("oracle", help="decoding study without a model: encode, perturb, decode, measure")
    _add_params(p)
    p.add_argument("--out", help="CSV of mean/median error per condition x size x method")
    p.add_argument("--dataset-dir", help="take ground-truth points from this prepared split instead of random ones")
    p.set_defaults(func=_oracle)

    bench = sub.add_parser("bench", help="speed benchmarks")
    bsub = bench.add_subparsers(dest="bench_cmd", required=True, metavar="{decoders}")
    p = bsub.add_parser("decoders", help="time every decoder at every heatmap size; prints a table")
    _add_params(p)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, help="faces per batch (default: bench.batch)")
    p.add_argument("--compile", action="store_true",
                   help="also time the decoders compiled (torch.compile) beside eager ones (default: decode.compile)")
    p.add_argument("--out", help="CSV output")
    p.set_defaults(func=_bench_decoders)

    p = sub.add_parser("report", help="tables (markdown + CSV) and figures from the evaluation results")
    _add_params(p)
    p.add_argument("--results", default="results", help="results root")
    p.add_argument("--out", default="results/report", help="report folder")
    p.set_defaults(func=_report)


def _add_sweep(sub) -> None:
    sweep = sub.add_parser("sweep", help="ablations of Figure 5 without the model")
    ssub = sweep.add_subparsers(dest="sweep_cmd", required=True, metavar="{decoders}")
    p = ssub.add_parser("decoders", help="re-decode saved test heatmaps with each value of sweeps.region, "
                        "sweeps.samples_per_pixel and sweeps.anchors")
    _add_params(p)
    p.add_argument("--heatmaps", required=True, help="heatmaps.npz saved by `popos evaluate`")
    p.add_argument("--checkpoint", required=True, help="the checkpoint those heatmaps came from (its config)")
    p.add_argument("--out", required=True, help="CSV: knob, value, nme, fr, auc, threshold, n_images")
    p.set_defaults(func=_sweep_decoders)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="popos",
        description="Heatmap-based facial landmark detection: data, training, decoding, benchmarks, report.",
        epilog="Typical flow: popos data synth -> popos train -> popos evaluate -> popos report. "
        "`make demo` runs all of it on the embedded synthetic faces.",
    )
    from popos import __version__

    parser.add_argument("--version", action="version", version=f"popos {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<step>")
    _add_data(sub)
    _add_model(sub)
    _add_train_eval(sub)
    _add_study(sub)
    _add_sweep(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one step; a user's mistake (:class:`popos.errors.UserError`) is one line on stderr and status 2,
    anything else is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"popos {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
