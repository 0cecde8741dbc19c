"""The anchor table: how many top-K heatmap pixels the decoders use and the MA loss trains, per heatmap size.

Training reads it (the MA loss's mask, paper Eq. 1: "the top K points correspond to the K station anchors
at the decoding step") and so do the decoders. It lives in its own module so that a decoder change does
not make every trained model out of date: the workflow's training jobs depend on this file, not on
:mod:`popos.decoders`.
"""

from __future__ import annotations

from typing import Literal

#: the authors' anchors K and search region S (heatmap px) per heatmap side (their POPoS decoder,
#: ``keypoints_from_heatmaps_randomsample_lls`` in teslatasy/POPoS); other sides get :data:`AUTHORS_OTHER`
AUTHORS_SIZES = {64: (30, 8.0), 32: (10, 8.0), 16: (20, 4.0), 8: (15, 3.0), 4: (10, 2.0)}
AUTHORS_OTHER = (30, 8.0)
#: side of our decoder's window around the argmax; every pixel of it is an anchor
OUR_WINDOW = 9

AnchorTable = Literal["authors", "ours"]
ANCHOR_TABLES: tuple[str, ...] = ("authors", "ours")


def authors_anchors(heatmap_size: int) -> int:
    """The authors' anchors K at a square ``heatmap_size``: 30 / 10 / 20 / 15 / 10 at 64 / 32 / 16 / 8 / 4.

    >>> authors_anchors(64), authors_anchors(4)
    (30, 10)
    """
    return AUTHORS_SIZES.get(_size(heatmap_size), AUTHORS_OTHER)[0]


def our_anchors(heatmap_size: int) -> int:
    """Anchors of our decoder at a square ``heatmap_size``: every pixel of its window, ``min(9, size)^2``.

    >>> our_anchors(64), our_anchors(4)
    (81, 16)
    """
    side = min(OUR_WINDOW, _size(heatmap_size))
    return side * side


def anchors(heatmap_size: int, table: AnchorTable = "authors") -> int:
    """K at ``heatmap_size`` from the ``"authors"`` (:func:`authors_anchors`) or ``"ours"`` table."""
    if table not in ANCHOR_TABLES:
        raise ValueError(f"anchor table must be one of {ANCHOR_TABLES}, got {table!r}")
    return authors_anchors(heatmap_size) if table == "authors" else our_anchors(heatmap_size)


def _size(heatmap_size: int) -> int:
    if isinstance(heatmap_size, bool) or not isinstance(heatmap_size, int) or heatmap_size < 1:
        raise ValueError(f"heatmap_size must be a positive integer, got {heatmap_size!r}")
    return heatmap_size
