"""The ImageNet-pretrained backbone (paper 4.2: "a lightweight variant of HRNet, pre-trained on ImageNet").

``model.pretrained: imagenet`` names one published ImageNet-1k HRNet-W18, pinned by repository, revision
and checksum (:data:`IMAGENET`). It is fetched once (:func:`fetch`, ``popos model fetch-pretrained``, the
workflow's ``fetch_pretrained`` rule) into ``data.pretrained_dir``; training jobs only read it
(:func:`load_backbone`), never download. A load must fill every backbone tensor of the model (all but
the heatmap head and the extra stem convs of the 8 x 8 and 4 x 4 models, which ImageNet models lack);
anything less is an error, and the counts loaded are returned for the run's log and configuration.

Why timm's ``hrnet_w18.ms_aug_in1k``: the authors' ``hrnetv2_w18-00eb2006.pth`` (OpenMMLab) is a pickle
without a published checksum beyond its 8-digit prefix, while the Hugging Face Hub serves timm's
HRNet-W18-C (ImageNet-1k, trained by the HRNet authors, MIT licence) as safetensors (no code runs on load)
at an immutable commit. Its backbone has exactly our names and shapes at width 18 (``stages.*`` =
``stage2-4``, see :func:`pretrained_key`). A local file in mmpose, official or timm
naming (e.g. the authors' ``.pth``) can be given as a path instead.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from popos.errors import UserError
from popos.io import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainedSource:
    """A published weights file pinned by Hub repository, commit and sha256 (``None``: not yet pinned)."""

    repo: str
    revision: str
    filename: str
    sha256: str | None

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}/resolve/{self.revision}/{self.filename}"

    @property
    def local_name(self) -> str:
        """File name under ``data.pretrained_dir``: repository and short revision, so pins never collide."""
        return f"{self.repo.split('/')[-1]}-{self.revision[:7]}{Path(self.filename).suffix}"


#: The ImageNet-1k HRNet-W18 behind ``model.pretrained: imagenet``. Revision 7c3e065 is the Hub commit
#: "Add model" of timm/hrnet_w18.ms_aug_in1k (2023-04-24) that added model.safetensors (85.6 MB). Its
#: sha256 could not be read from a source available while this was written, so it is NOT pinned yet
#: (``None``): `popos model fetch-pretrained` then prints the checksum it computed, to be pasted here
#: after checking it against the file's Hub page ("Git LFS Details", SHA256). Never guess it.
IMAGENET = PretrainedSource(
    repo="timm/hrnet_w18.ms_aug_in1k",
    revision="7c3e065603bdb0ef05e7dacf4ad18833442a9962",
    filename="model.safetensors",
    sha256=None,
)
SOURCES = {"imagenet": IMAGENET}


_PREFIXES = ("module.", "backbone.", "model.")
_RENAMES = (
    (re.compile(r"^transition(\d+)\."), lambda m: f"transitions.{int(m.group(1)) - 1}."),
    (re.compile(r"^stage(\d+)\."), lambda m: f"stages.{int(m.group(1)) - 2}."),
)


def pretrained_key(key: str) -> str:
    """Map an mmpose (``backbone.`` prefix) / official / timm HRNet tensor name onto :mod:`popos.models.hrnet`'s.

    >>> pretrained_key("backbone.stage3.1.fuse_layers.2.0.1.0.weight")
    'stages.1.1.fuse_layers.2.0.1.0.weight'
    """
    for prefix in _PREFIXES:
        key = key.removeprefix(prefix)
    for pattern, repl in _RENAMES:
        key = pattern.sub(repl, key)
    return key


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_path(pretrained_dir: str | Path, source: PretrainedSource = IMAGENET) -> Path:
    return Path(pretrained_dir) / source.local_name


def fetch(
    pretrained_dir: str | Path, source: PretrainedSource = IMAGENET, *, url: str | None = None, timeout: float = 60
) -> Path:
    """Download ``source`` once into ``pretrained_dir`` (atomically) and verify its sha256; returns the path.

    An existing file with the pinned checksum is kept. ``url`` replaces the Hub address (a mirror, a test
    server). A checksum mismatch discards the download and raises :class:`UserError`; so does a failed
    download, naming the file and where to put it by hand. With no pinned checksum the computed one is
    logged for pinning.
    """
    path = local_path(pretrained_dir, source)
    if path.is_file() and source.sha256 is not None and sha256_of(path) == source.sha256:
        return path
    address = url or source.url
    try:
        with urllib.request.urlopen(address, timeout=timeout) as response, atomic_path(path) as tmp:
            digest = hashlib.sha256()
            with open(tmp, "wb") as out:
                for block in iter(lambda: response.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
            if source.sha256 is not None and digest.hexdigest() != source.sha256:
                raise UserError(f"{address}: sha256 {digest.hexdigest()} differs from the pinned {source.sha256} "
                                f"(popos.pretrained); the download was discarded")
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"cannot download the ImageNet HRNet-W18 weights ({exc}); on a machine with internet, "
                        f"download {source.url} and put it at {path}") from None
    if source.sha256 is None:
        log.warning("%s: sha256 %s (not pinned in popos.pretrained.IMAGENET; check it on the Hub page)", path,
                    sha256_of(path))
    return path


def resolve(pretrained: str, pretrained_dir: str | Path) -> tuple[Path, PretrainedSource | None]:
    """``model.pretrained`` -> (the local file, its pinned source or ``None`` for a user's path)."""
    source = SOURCES.get(pretrained)
    path = local_path(pretrained_dir, source) if source else Path(pretrained)
    if not path.is_file():
        if source:
            raise UserError(f"model.pretrained {pretrained!r}: {path} is missing; run `popos model fetch-pretrained` "
                            f"(the workflow does it first) or download {source.url} and put it there")
        raise UserError(f"model.pretrained: {path}: no such file (expected 'imagenet', null or a weights file)")
    return path, source


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or of a torch file holding a state dict (under ``state_dict`` /
    ``model`` or at the top); pickled objects other than tensors are refused."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"{path}: holds objects other than tensors (unsafe to unpickle); re-save its state dict") \
            from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state dict, got {type(state).__name__}")
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def backbone_names(model: nn.Module) -> list[str]:
    """The model's tensors an ImageNet HRNet provides: all but the head, the extra stem convs and BN counters."""
    return [k for k in model.state_dict() if not k.startswith(("head.", "stem_extra."))
            and not k.endswith("num_batches_tracked")]


def load_backbone(model: nn.Module, pretrained: str, pretrained_dir: str | Path = "data/pretrained") -> dict:
    """Initialise ``model``'s backbone from ``model.pretrained`` (``"imagenet"`` or a path); every backbone
    tensor must be found by name and shape, or :class:`UserError` names the first missing ones.

    Returns ``{"source", "sha256", "tensors", "parameters", "of_backbone"}`` (tensors and parameters loaded,
    and the backbone's tensor count) for the run's log and saved configuration.
    """
    path, source = resolve(pretrained, pretrained_dir)
    digest = sha256_of(path)
    if source is not None and source.sha256 is not None and digest != source.sha256:
        raise UserError(f"{path}: sha256 {digest} differs from the pinned {source.sha256}; delete it and run "
                        "`popos model fetch-pretrained`")
    own = model.state_dict()
    matched = {}
    for key, value in read_state_dict(path).items():
        name = pretrained_key(key)
        if name in own and value.shape == own[name].shape:
            matched[name] = value
    wanted = backbone_names(model)
    missing = [k for k in wanted if k not in matched]
    if missing:
        raise UserError(f"{path}: fills {len(wanted) - len(missing)} of the {len(wanted)} backbone tensors (missing "
                        f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); ImageNet HRNet-W18 weights "
                        "need model.width 18 and the HRNetV2-W18 blocks (set model.pretrained: null for slim models)")
    model.load_state_dict(matched, strict=False)
    report = {"source": pretrained if source else str(path), "sha256": digest, "tensors": len(wanted),
              "parameters": int(sum(own[k].numel() for k in wanted)), "of_backbone": len(wanted)}
    log.info("pretrained backbone: %d tensors, %d parameters from %s", report["tensors"], report["parameters"], path)
    return report


def summary(report: dict) -> str:
    """One log line of :func:`load_backbone`'s report."""
    return (f"pretrained backbone {report['source']}: {report['tensors']} of {report['of_backbone']} backbone tensors "
            f"({report['parameters']:,} parameters) loaded, sha256 {report['sha256'][:12]}")
