"""The paper's published numbers, as data: what the report prints beside ours.

Sources: the AAAI 2025 paper (Tables 1 and 2, section 4.4) and the authors' project page (the
per-resolution NME table). NME is in percent of the dataset's normaliser. Method keys are
:data:`popos.decoders.VARIANTS` names; dataset keys are :mod:`popos.config` dataset names.

The paper's POPoS numbers were produced by the authors' decoder, so they are filed under
``popos_authors`` (our reproduction of it), not under ``popos`` (our own decoder), and its models were
trained with the MA loss (:data:`LOSS`): the report shows them beside our models trained that way only.
"""

from __future__ import annotations

DATASET_LABELS = {
    "wflw": "WFLW",
    "300w": "300W",
    "cofw": "COFW",
    "aflw": "AFLW",
    "cocowb_face": "COCO-WB face",
    "synth": "synthetic",
}

METHOD_LABELS = {
    "one_hot": "one-hot",
    "two_hot": "two-hot",
    "dark": "DarkPose",
    "keyposs": "KeyPosS",
    "keyposs_peak": "KeyPosS, our block",
    "igno": "IGNO",
    "igno_damped": "IGNO, damped Newton",
    "popos_authors": "POPoS (authors' decoder)",
    "popos": "POPoS, ours",
}

# Table 1's dataset order; the report lists the paper's datasets in it, then any other in grid order.
DATASET_ORDER = ("wflw", "300w", "aflw", "cofw")

# The loss of the paper's models (section 4.2: MSE + w x MA loss).
LOSS = "mse_ma"

# Figure 6 compares these decoders (the paper's POPoS is the authors' decoder).
FIGURE6_METHODS = ("one_hot", "two_hot", "dark", "keyposs", "popos_authors")

PER_RESOLUTION_SIZES = (64, 32, 16, 8, 4)

# Project page, NME (%) at heatmaps 64 / 32 / 16 / 8 / 4. The rows come from different checkpoints
# (one-hot and two-hot from models with biased targets, DarkPose and POPoS from unbiased ones).
PER_RESOLUTION_NME = {
    "wflw": {
        "one_hot": (4.29, 5.24, 7.59, 14.74, 28.8),
        "two_hot": (4.07, 4.55, 5.83, 12.3, 27.5),
        "dark": (3.96, 4.25, 5.38, 11.83, 26.05),
        "popos_authors": (3.98, 4.28, 4.92, 7.56, 11.14),
    },
    "300w": {
        "one_hot": (3.63, 4.75, 9.89, 26.11, 53.9),
        "two_hot": (3.40, 4.09, 8.56, 24.47, 51.9),
        "dark": (3.31, 3.58, 4.69, 11.87, 37.9),
        "popos_authors": (3.30, 3.38, 3.85, 5.69, 9.96),
    },
    "aflw": {
        "one_hot": (1.57, 2.11, 3.57, 6.52, 13.06),
        "two_hot": (1.41, 1.66, 2.54, 5.08, 12.77),
        "dark": (1.35, 1.43, 1.77, 4.83, 13.28),
        "popos_authors": (1.34, 1.41, 1.70, 2.84, 4.10),
    },
    "cofw": {
        "one_hot": (3.74, 4.60, 10.65, 27.73, 57.84),
        "two_hot": (3.53, 4.00, 9.42, 26.53, 57.04),
        "dark": (3.42, 3.80, 4.92, 12.75, 37.5),
        "popos_authors": (3.44, 3.69, 4.43, 7.36, 12.25),
    },
    "cocowb_face": {
        "one_hot": (5.96, 7.15, 10.51, 17.98, 37.72),
        "two_hot": (5.59, 6.08, 8.11, 14.28, 34.54),
        "dark": (5.10, 5.71, 6.58, 15.71, 40.12),
        "popos_authors": (5.11, 5.42, 6.33, 9.26, 16.02),
    },
}

# Table 1, rows "POPos (ours, 32^2)" and "(ours, 64^2)": NME (%) per dataset, parameters (M), GFLOPs.
# The paper marks WFLW and 300W at 64 with * ("the result of IGNO solution").
TABLE1_NME = {
    64: {"wflw": 3.95, "300w": 3.28, "aflw": 1.34, "cofw": 3.44},
    32: {"wflw": 4.28, "300w": 3.38, "aflw": 1.43, "cofw": 3.8},
}
TABLE1_IGNO = {(64, "wflw"), (64, "300w")}
TABLE1_PARAMS_M = {64: 9.7, 32: 9.7}
TABLE1_GFLOPS = {64: 4.7, 32: 1.2}

# Table 2: decoding speed at 64 x 64 heatmaps (256 x 256 input), frames per second and ms per frame.
# The paper does not name the device (its training server has 4 x RTX 3090).
TABLE2_FPS = {"one_hot": 2819, "two_hot": 1394, "dark": 186.2, "keyposs": 96.5, "igno": 2.5, "popos_authors": 1301}
TABLE2_MS = {"one_hot": 0.36, "two_hot": 0.72, "dark": 5.3, "keyposs": 10.34, "igno": 405.06, "popos_authors": 0.76}
TABLE2_HEATMAP_SIZE = 64

# Figure 5 (300W, 32 x 32) has curves without numbers; these are the optima its text states, as
# (low, high, wording). Section 4.2 contradicts two of them (it uses w = 1 and K = 10).
FIGURE5_OPTIMA = {
    "region": (1.0, 2.0, "1-2 px around the maximum"),
    "samples_per_pixel": (10.0, 10.0, "about 10 samples per heatmap px"),
    "anchors": (25.0, 25.0, "25 anchors at 32 x 32"),
    "ma_weight": (6.0, 6.0, "weight 6"),
}

# Figure 4 / section 4.4: MA loss at 4 x 4 lowers POPoS's error by 47 % on 300W and 58 % on COFW.
MA_LOSS_GAIN_4X4 = {"300w": 0.47, "cofw": 0.58}


def per_resolution_nme(dataset: str, method: str, heatmap_size: int) -> float | None:
    """The project page's NME (%) for one cell, or ``None`` where the paper has none.

    >>> per_resolution_nme("300w", "popos_authors", 4)
    9.96
    >>> per_resolution_nme("300w", "popos", 4) is None  # our decoder: the paper has no number for it
    True
    """
    row = PER_RESOLUTION_NME.get(dataset, {}).get(method)
    if row is None or heatmap_size not in PER_RESOLUTION_SIZES:
        return None
    return row[PER_RESOLUTION_SIZES.index(heatmap_size)]
