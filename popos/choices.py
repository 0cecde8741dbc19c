"""The allowed values of the experiment grid's axes, defined once.

The params schema (:mod:`popos.config`) types its fields with these ``Literal`` types, and everything
else reads them from here (``typing.get_args``): the CLI's choices, the Snakefile's wildcards,
:mod:`popos.models.stats`. This module imports nothing heavy, so ``popos --help`` stays instant.
"""

from __future__ import annotations

from typing import Literal, get_args

HeatmapSize = Literal[64, 32, 16, 8, 4]
HEATMAP_SIZES: tuple[int, ...] = get_args(HeatmapSize)
# Keep in step with popos.data.registry (tests/test_pipeline.py checks it).
DatasetName = Literal["wflw", "300w", "cofw", "aflw", "cocowb_face", "synth"]
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)
Loss = Literal["mse", "mse_ma", "mse_biased"]  # mse_biased: the authors' one-/two-hot baselines
LOSSES: tuple[str, ...] = get_args(Loss)
#: the POPoS options the decoder sweeps vary (Figure 5a-c), each a list of values in params ``sweeps``
DecoderKnob = Literal["region", "samples_per_pixel", "anchors"]
DECODER_KNOBS: tuple[str, ...] = get_args(DecoderKnob)
