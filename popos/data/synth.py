"""The embedded synthetic face dataset: procedurally drawn faces with the 68-point iBUG layout.

Each face is a small 3-D model in *face units* (outer eye corners 36 and 45 at ``x = -0.5`` and ``+0.5``,
eye line at ``y = 0``, ``y`` down, ``z`` towards the camera). Identity (proportions of jaw, eyes, brows,
nose, mouth) and expression (mouth open, smile, brows raised, eye openness) move the points; yaw and
pitch turn the model; an orthographic projection, roll, scale and position place it in a virtual photo
(image px). Every feature is drawn *through* its landmarks (lid corners are the corners of the eye
outline, lip corners those of the mouth outline, contours are splines through the points), so each
landmark sits on something visible. Background clutter, lighting, a simulated capture resolution, blur,
noise and occluders vary the pictures.

Only the face crop of the virtual photo is materialised, drawn directly in crop px, so ``crop_affine``
(image px -> crop px) is exact and the stored ``image`` field is a name (``"train/000012"``), not a file.
All 68 landmarks are annotated (``visible`` all true), also under occluders, as in COFW. Each face has
its own generator seeded with ``(seed, split, index)``: a face does not change when the split sizes do.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from popos import geometry
from popos.data.prepared import DEFAULT_CONTEXT, DEFAULT_PADDING, PreparedWriter
from popos.errors import UserError

DATASET = "synth"
NUM_LANDMARKS = 68
SPLITS = ("train", "test")
_SHIFT = 4  # cv2 drawing with 4 fractional bits: points are placed to 1/16 px
_NOISE_MARGIN = 64  # the noise bank is this much larger than a crop; each face takes a random window

# RGB palettes; a face blends two neighbouring entries.
_SKIN = np.array([[255, 224, 196], [241, 194, 150], [224, 172, 120], [198, 134, 86], [150, 96, 56], [96, 58, 34]],
                 np.float32)
_HAIR = np.array([[20, 16, 14], [60, 40, 25], [110, 75, 40], [190, 150, 90], [150, 150, 150], [120, 40, 20]],
                 np.float32)
_IRIS = np.array([[70, 40, 20], [40, 25, 15], [60, 100, 150], [70, 110, 80], [100, 100, 110]], np.float32)


@dataclass(frozen=True)
class SynthFace:
    """One rendered face.

    ``crop`` uint8 ``[S, S, 3]`` RGB; ``landmarks`` float32 ``[68, 2]`` (x, y) image px; ``box`` float32
    ``[4]`` tight landmark box ``(x, y, w, h)`` image px; ``norm`` inter-ocular distance (36-45) in image px;
    ``crop_affine`` float32 ``[2, 3]`` image px -> crop px.
    """

    crop: np.ndarray
    landmarks: np.ndarray
    box: np.ndarray
    norm: float
    crop_affine: np.ndarray


# ------------------------------------------------------------------------------------------- 3-D model
def _mirror(points: np.ndarray) -> np.ndarray:
    out = np.array(points, dtype=np.float64, copy=True)
    out[..., 0] = -out[..., 0]
    return out


def _column(x, y, z) -> np.ndarray:
    """``[N, 3]`` points from coordinates that are scalars or length-N sequences."""
    out = np.empty((max(np.size(x), np.size(y), np.size(z)), 3))
    out[:, 0], out[:, 1], out[:, 2] = x, y, z
    return out


def _model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random identity and expression, face units: ``landmarks [68, 3]`` (first) and helper outlines ``[N, 3]``."""
    pts = np.zeros((NUM_LANDMARKS, 3))
    mouth_open = rng.uniform(0.0, 0.3) if rng.random() < 0.45 else 0.0
    smile = rng.uniform(-0.03, 0.06)
    brow_raise = rng.uniform(-0.03, 0.09)
    openness = rng.uniform(0.1, 0.3) if rng.random() < 0.05 else rng.uniform(0.55, 1.25)

    # jaw 0-16: a superellipse from the right ear (image left) round the chin (8); it drops with the mouth
    half_width, centre_y = rng.uniform(0.68, 0.82), rng.uniform(0.15, 0.3)
    chin_y, power, start = rng.uniform(1.3, 1.55), rng.uniform(0.6, 1.0), rng.uniform(0.05, 0.2)
    theta = np.linspace(-start, np.pi + start, 17)
    c, s = np.cos(theta), np.sin(theta)
    jaw_y = centre_y + (chin_y - centre_y) * np.sign(s) * np.abs(s) ** power
    pts[0:17] = _column(-half_width * np.sign(c) * np.abs(c) ** power,
                        jaw_y + 0.8 * mouth_open * np.clip(s, 0, None) ** 2, 0.05 - 0.45 * np.abs(c))

    # brows 17-21 (image left, outer to inner) and 22-26 (mirrored, inner to outer)
    inner, outer = rng.uniform(0.08, 0.16), rng.uniform(0.58, 0.7)
    brow_y, arch = rng.uniform(-0.34, -0.24) - brow_raise, rng.uniform(0.02, 0.08)
    u = np.linspace(0, 1, 5)
    left_brow = _column(-outer + (outer - inner) * u, brow_y + 0.03 * u - arch * np.sin(np.pi * (0.35 + 0.65 * u)),
                        0.05)
    pts[17:22] = left_brow
    pts[22:27] = _mirror(left_brow)[::-1]

    # nose: bridge 27-30 (30 = tip), base 31-35 (33 = below the tip)
    tip_y, bridge_top = rng.uniform(0.4, 0.55), rng.uniform(-0.02, 0.06)
    pts[27:31] = _column(0.0, np.linspace(bridge_top, tip_y, 4), [0.12, 0.2, 0.28, 0.36])
    half_nose, base_y = rng.uniform(0.13, 0.2), tip_y + rng.uniform(0.04, 0.08)
    v = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    pts[31:36] = _column(half_nose * v, base_y - 0.05 * v**2, 0.2 + 0.05 * (1 - np.abs(v)))

    # eyes 36-41: outer corner, two upper-lid points, inner corner, two lower-lid points (clockwise)
    eye_w, tilt = rng.uniform(0.28, 0.36), rng.uniform(-0.04, 0.04)
    up, low = rng.uniform(0.05, 0.09) * openness, rng.uniform(0.035, 0.06) * openness
    along = np.array([0, 1 / 3, 2 / 3, 1, 2 / 3, 1 / 3])
    left_eye = _column(-0.5 + eye_w * along, -tilt * (1 - along) + np.array([0, -up, -up, 0, low, low]), 0.02)
    pts[36:42] = left_eye
    pts[42:48] = _mirror(left_eye)[[3, 2, 1, 0, 5, 4]]

    # mouth: outer 48-59 (48 / 54 corners, 51 top, 57 bottom), inner 60-67 (60 / 64 corners)
    mouth_y, half_mouth = rng.uniform(0.78, 0.95), rng.uniform(0.24, 0.34) + smile
    top_lip, low_lip, bow = rng.uniform(0.04, 0.08), rng.uniform(0.05, 0.1), rng.uniform(0.0, 0.025)
    corner_y, bottom = mouth_y - 1.2 * smile, mouth_y + mouth_open
    outer_x = half_mouth * np.array([-1, -0.62, -0.25, 0, 0.25, 0.62, 1, 0.62, 0.3, 0, -0.3, -0.62])
    outer_y = np.array([corner_y, mouth_y - 0.75 * top_lip, mouth_y - top_lip, mouth_y - top_lip + bow,
                        mouth_y - top_lip, mouth_y - 0.75 * top_lip, corner_y, bottom + 0.8 * low_lip,
                        bottom + low_lip, bottom + low_lip, bottom + low_lip, bottom + 0.8 * low_lip])
    inner_x = 0.82 * half_mouth * np.array([-1, -0.45, 0, 0.45, 1, 0.45, 0, -0.45])
    lip_line = mouth_y + 0.15 * top_lip
    inner_y = np.array([corner_y, lip_line - 0.05 * top_lip, lip_line, lip_line - 0.05 * top_lip, corner_y,
                        lip_line + mouth_open, lip_line + 1.05 * mouth_open, lip_line + mouth_open])
    pts[48:60] = _column(outer_x, outer_y, 0.25 - 0.1 * np.abs(outer_x))
    pts[60:68] = _column(inner_x, inner_y, 0.22 - 0.1 * np.abs(inner_x))
    pts[:, :2] += rng.normal(0, 0.006, size=(NUM_LANDMARKS, 2))  # no face is exactly symmetric

    # helper outlines (not landmarks)
    side_y = (pts[0, 1] + pts[16, 1]) / 2
    top = -rng.uniform(0.8, 1.05)
    t = np.linspace(0, np.pi, 15)[1:-1]
    head = _column(pts[16, 0] * np.cos(t), side_y + (top - side_y) * np.sin(t), -0.3)
    volume = rng.uniform(1.04, 1.2)
    hair_outer = np.concatenate([pts[16:17] + [0.06, -0.05, 0], _column(head[:, 0] * volume,
                                side_y + (head[:, 1] - side_y) * volume, -0.35), pts[0:1] + [-0.06, -0.05, 0]])
    hairline_y = rng.uniform(-0.92, -0.62)
    temple_y = brow_y - rng.uniform(0.15, 0.3)  # keeps the hair off the brows
    hairline = _column(np.array([-1.0, -0.5, 0.0, 0.5, 1.0]) * (half_width + 0.06),
                       [temple_y, hairline_y + 0.08, hairline_y, hairline_y + 0.08, temple_y], -0.1)
    wing = np.array([[0.0, 0.0, 0.0], [-0.03, -0.07, -0.02], [0.0, -0.13, -0.04]])
    ear_y = rng.uniform(0.0, 0.2)
    return {
        "landmarks": pts,
        "head": head,
        "hair": np.concatenate([hair_outer, hairline]),
        "hair_back": _column(1.02 * np.cos(np.linspace(0, 2 * np.pi, 24)),
                             0.35 + rng.uniform(1.0, 1.6) * np.sin(np.linspace(0, 2 * np.pi, 24)), -0.8),
        "ala_left": pts[31] + wing,
        "ala_right": pts[35] + _mirror(wing),
        "nostrils": _column((pts[[31, 35], 0] + pts[[32, 34], 0]) / 2, base_y - 0.035, 0.2),
        "ears": _column([pts[1, 0] - 0.04, pts[15, 0] + 0.04], ear_y, -0.55),
        "neck": _column([-0.42, 0.42, 0.5, -0.5], [1.0, 1.0, 3.5, 3.5], -0.5),
        "torso": _column(0.0, [3.2], -0.6),
    }


def _rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """``[3, 3]`` turn of the head: yaw about the vertical axis, then pitch about the horizontal one."""
    a, b = np.deg2rad(yaw_deg), np.deg2rad(pitch_deg)
    yaw = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    pitch = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return pitch @ yaw


# -------------------------------------------------------------------------------------------- drawing
def _fixed(points: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(points)[..., :2] * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def _color(rgb) -> tuple[float, float, float]:
    r, g, b = np.asarray(rgb, dtype=np.float64).tolist()
    return min(255.0, max(0.0, r)), min(255.0, max(0.0, g)), min(255.0, max(0.0, b))


def _fill(img: np.ndarray, points: np.ndarray, rgb) -> None:
    cv2.fillPoly(img, [_fixed(points)], _color(rgb), cv2.LINE_AA, _SHIFT)


def _line(img: np.ndarray, points: np.ndarray, rgb, thickness: float, closed: bool = False) -> None:
    cv2.polylines(img, [_fixed(points)], closed, _color(rgb), max(1, round(thickness)), cv2.LINE_AA, _SHIFT)


def _ellipse(img: np.ndarray, centre: np.ndarray, axes: tuple[float, float], angle: float, rgb) -> None:
    axes_fixed = (max(1, round(axes[0] * (1 << _SHIFT))), max(1, round(axes[1] * (1 << _SHIFT))))
    x, y = np.rint(np.asarray(centre, dtype=np.float64) * (1 << _SHIFT)).astype(int).tolist()
    cv2.ellipse(img, (x, y), axes_fixed, angle, 0, 360, _color(rgb), -1, cv2.LINE_AA, _SHIFT)


@lru_cache(maxsize=None)
def _spline_basis(m: int, n: int, closed: bool) -> np.ndarray:
    """Weights ``[samples, m]`` of a uniform Catmull-Rom curve through ``m`` points, ``n`` samples per segment."""
    p = np.eye(m)  # the curve is linear in its points: run it on the unit vectors
    if closed:
        ext = np.concatenate([p[-1:], p, p[:2]])
    else:
        ext = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
    p0, p1, p2, p3 = (ext[i : len(ext) - 3 + i, None] for i in range(4))
    t = (np.arange(n) / n)[None, :, None]
    curve = 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3)
    curve = curve.reshape(-1, m)
    return curve if closed else np.concatenate([curve, p[-1:]])


def _spline(points: np.ndarray, *, closed: bool = False, n: int = 6) -> np.ndarray:
    """Catmull-Rom curve through ``[M, 2]`` points, ``n`` samples per segment; it passes through every point."""
    return _spline_basis(len(points), n, closed) @ points


def _clipped(img: np.ndarray, clip: np.ndarray, draw) -> None:
    """Run ``draw(patch, offset)`` on a copy of the box around polygon ``clip`` and keep it inside ``clip``."""
    h, w = img.shape[:2]
    x0, y0 = np.maximum(np.floor(clip.min(axis=0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(clip.max(axis=0)).astype(int) + 2, [w, h])
    if x1 <= x0 or y1 <= y0:
        return
    patch = img[y0:y1, x0:x1].copy()
    draw(patch, np.array([x0, y0], dtype=np.float64))
    mask = np.zeros(patch.shape[:2], np.uint8)
    cv2.fillPoly(mask, [_fixed(clip - [x0, y0])], 255, cv2.LINE_8, _SHIFT)
    region = img[y0:y1, x0:x1]
    np.copyto(region, patch, where=mask[..., None] > 0)


def _background(img: np.ndarray, rng: np.random.Generator) -> None:
    s = img.shape[0]
    coarse = rng.integers(0, 256, size=(3, 3, 3), dtype=np.uint8)
    cv2.resize(coarse, (s, s), dst=img, interpolation=cv2.INTER_LINEAR)
    for _ in range(rng.integers(3, 12)):
        kind = rng.integers(4)
        rgb, (x, y), size = rng.uniform(0, 255, 3), rng.uniform(0, s, 2), rng.uniform(0.05, 0.4) * s
        thick = -1 if rng.random() < 0.6 else int(rng.integers(1, 5))
        if kind == 0:
            cv2.rectangle(img, (int(x), int(y)), (int(x + size), int(y + size * rng.uniform(0.3, 2))), _color(rgb),
                          thick)
        elif kind == 1:
            cv2.circle(img, (int(x), int(y)), int(size / 2), _color(rgb), thick, cv2.LINE_AA)
        elif kind == 2:
            x2, y2 = rng.uniform(0, s, 2)
            cv2.line(img, (int(x), int(y)), (int(x2), int(y2)), _color(rgb), max(thick, 1), cv2.LINE_AA)
        else:
            cv2.ellipse(img, (int(x), int(y)), (int(size / 2), int(size / 5)), float(rng.uniform(0, 180)), 0, 360,
                        _color(rgb), thick, cv2.LINE_AA)


def _palette(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """RGB colours of one face."""
    i = rng.uniform(0, len(_SKIN) - 1)
    lo = int(i)
    skin = (_SKIN[lo] * (lo + 1 - i) + _SKIN[lo + 1] * (i - lo)) * rng.uniform(0.92, 1.05, 3)
    hair = _HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.8, 1.2)
    return {
        "skin": skin,
        "hair": hair,
        "brow": np.minimum(hair * 0.8, skin * 0.55),  # darker than the skin even for blond or grey hair
        "lips": skin * np.array([0.85, 0.62, 0.62]) * rng.uniform(0.85, 1.05),
        "jaw": skin * rng.uniform(0.5, 0.7),
        "clothes": rng.uniform(0, 255, 3),
        "sclera": np.array([236.0, 232.0, 226.0]) * rng.uniform(0.8, 1.0),
        "iris": _IRIS[rng.integers(len(_IRIS))],
    }


def _draw_head(img, f, unit, roll, c, rng) -> None:
    """Torso, hair behind the head, neck, ears, the skin outline (jaw 0-16 + forehead), hair, jaw line."""
    cv2.ellipse(img, tuple(int(v) for v in f["torso"][0]), (int(1.4 * unit), int(unit)), -roll, 0, 360,
                _color(c["clothes"]), -1, cv2.LINE_AA)
    if rng.random() < 0.4:
        _fill(img, f["hair_back"], c["hair"])
    _fill(img, f["neck"], c["skin"] * 0.85)
    for ear in f["ears"]:
        _ellipse(img, ear, (0.11 * unit, 0.2 * unit), -roll, c["skin"] * 0.92)
    jaw = _spline(f["landmarks"][0:17], n=4)
    _fill(img, np.concatenate([jaw, f["head"]]), c["skin"])
    if rng.random() < 0.75:
        _fill(img, np.concatenate([f["hair"][:-5], _spline(f["hair"][-5:], n=4)]), c["hair"])
    _line(img, jaw, c["jaw"], 0.015 * unit)


def _brow(img: np.ndarray, outer_to_inner: np.ndarray, thickness: float, rgb) -> None:
    """A tapered stroke along the brow points: a thin tip at the outer end, blunt at the inner end."""
    centre = _spline(outer_to_inner, n=4)
    tangent = np.gradient(centre, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1) / np.linalg.norm(tangent, axis=1, keepdims=True)
    u = np.linspace(0, 1, len(centre))
    half = 0.5 * thickness * (0.2 + 0.8 * np.sin(0.5 * np.pi * np.clip(u / 0.5, 0, 1))) * (1 - 0.25 * u)
    _fill(img, np.concatenate([centre + normal * half[:, None], (centre - normal * half[:, None])[::-1]]), rgb)


def _eyeball(patch: np.ndarray, offset: np.ndarray, outline, centre, width: float, c) -> None:
    _fill(patch, outline - offset, c["sclera"])
    _ellipse(patch, centre - offset, (0.22 * width, 0.22 * width), 0, c["iris"])
    _ellipse(patch, centre - offset, (0.09 * width, 0.09 * width), 0, c["iris"] * 0.25)
    _ellipse(patch, centre - offset + 0.06 * width, (0.03 * width, 0.03 * width), 0, (250, 250, 250))


def _draw_eyes(img, lm, unit, c, rng) -> None:
    """Eyeballs clipped to the lid outline through 36-41 / 42-47; dark upper lids, lighter lower lids."""
    gaze = rng.uniform(-0.25, 0.25, 2) * [1.0, 0.3]
    for eye in (lm[36:42], lm[42:48]):
        outline = _spline(eye, closed=True, n=6)
        width = float(np.linalg.norm(eye[3] - eye[0]))
        _clipped(img, outline, partial(_eyeball, outline=outline, centre=eye.mean(axis=0) + gaze * width,
                                       width=width, c=c))
        _line(img, _spline(eye[[0, 1, 2, 3]], n=6), c["hair"] * 0.4, 0.03 * unit)
        _line(img, _spline(eye[[3, 4, 5, 0]], n=6), c["skin"] * 0.55, 0.012 * unit)


def _draw_nose(img, f, unit, roll, c) -> None:
    """Bridge 27-30 with a highlight on the tip (30), the wings, the nostrils and the base 31-35."""
    lm, skin = f["landmarks"], c["skin"]
    _line(img, _spline(lm[27:31], n=4), skin * 0.72, 0.035 * unit)
    _ellipse(img, lm[30], (0.04 * unit, 0.04 * unit), 0, skin * 1.1)
    for ala in (f["ala_left"], f["ala_right"]):
        _line(img, _spline(ala, n=4), skin * 0.7, 0.02 * unit)
    for nostril in f["nostrils"]:
        _ellipse(img, nostril, (0.035 * unit, 0.016 * unit), -roll, skin * 0.35)
    _line(img, _spline(lm[31:36], n=4), skin * 0.55, 0.02 * unit)


def _mouth_inside(patch: np.ndarray, offset: np.ndarray, inner, upper, teeth: float) -> None:
    _fill(patch, inner - offset, (60, 20, 25))
    if teeth > 0:
        _fill(patch, np.concatenate([upper, (upper + [0.0, teeth])[::-1]]) - offset, (235, 232, 220))


def _draw_mouth(img, lm, unit, c, rng) -> None:
    """Lips through 48-59; when open, the dark inside (and maybe teeth) through 60-67; the lip line."""
    outer, inner = _spline(lm[48:60], closed=True, n=5), _spline(lm[60:68], closed=True, n=5)
    _fill(img, outer, c["lips"])
    gap = float(np.linalg.norm(lm[66] - lm[62]))
    if gap > 0.02 * unit:
        teeth = min(gap * 0.5, 0.06 * unit) if rng.random() < 0.6 else 0.0
        _clipped(img, inner, partial(_mouth_inside, inner=inner, upper=_spline(lm[60:65], n=5), teeth=teeth))
    _line(img, inner, c["lips"] * 0.45, 0.012 * unit, closed=True)


def _draw_occluder(img, lm, unit, c, rng) -> None:
    """A blob or a bar (skin-coloured, like a hand, or any colour) over a random landmark."""
    at = lm[rng.integers(NUM_LANDMARKS)] + rng.normal(0, 0.1 * unit, 2)
    size = rng.uniform(0.25, 0.6) * unit
    if rng.random() < 0.6:
        angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(5, 9)))
        shape = np.stack([np.cos(angles), np.sin(angles)], axis=1) * rng.uniform(0.6, 1.0, (len(angles), 1))
    else:
        a = rng.uniform(0, np.pi)
        bar = np.array([[-2, -0.3], [2, -0.3], [2, 0.3], [-2, 0.3]])
        shape = bar @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    rgb = c["skin"] * rng.uniform(0.8, 1.1) if rng.random() < 0.4 else rng.uniform(0, 255, 3)
    _fill(img, at + size * shape, rgb)


def _draw_face(img: np.ndarray, f: dict[str, np.ndarray], unit: float, roll: float, rng: np.random.Generator):
    """Draw the projected model ``f`` (crop px) onto ``img``; ``unit`` = crop px per face unit."""
    c, lm = _palette(rng), f["landmarks"]
    _draw_head(img, f, unit, roll, c, rng)
    thickness = rng.uniform(0.035, 0.075) * unit
    _brow(img, lm[17:22], thickness, c["brow"])
    _brow(img, lm[26:21:-1], thickness, c["brow"])
    _draw_eyes(img, lm, unit, c, rng)
    _draw_nose(img, f, unit, roll, c)
    _draw_mouth(img, lm, unit, c, rng)
    if rng.random() < 0.2:
        _draw_occluder(img, lm, unit, c, rng)


def _degrade(img: np.ndarray, native: float, rng: np.random.Generator, noise: np.ndarray) -> np.ndarray:
    """Capture resolution (``native`` image px per crop px), blur, lighting and noise: uint8 -> uint8."""
    s = img.shape[0]
    if native < 0.95:  # the face was smaller in the photo than in the crop: upsampled from fewer pixels
        low = max(16, round(s * native))
        img = cv2.resize(cv2.resize(img, (low, low), interpolation=cv2.INTER_LINEAR), (s, s),
                         interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.25:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5) * s / 256)
    # a tinted linear light ramp across the crop: bilinear upsampling of its 2 x 2 corner gains (x 128)
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.5)
    corners = 1 + strength * (np.array([[-1, 1]]) * np.cos(angle) + np.array([[-1], [1]]) * np.sin(angle))
    tint = rng.uniform(0.7, 1.2) * rng.uniform(0.9, 1.1, 3)
    gain = np.clip(np.round(128 * corners[..., None] * tint), 0, 255).astype(np.uint8)
    out = cv2.multiply(img, cv2.resize(gain, (s, s), interpolation=cv2.INTER_LINEAR), scale=1 / 128,
                       dtype=cv2.CV_32F)
    if rng.random() < 0.6:
        ox, oy = rng.integers(0, _NOISE_MARGIN, 2)
        cv2.scaleAdd(noise[oy : oy + s, ox : ox + s], float(rng.uniform(2, 10)), out, out)
    return cv2.add(out, 0.0, dtype=cv2.CV_8U)  # rounds and saturates to 0..255


# ------------------------------------------------------------------------------------------- renderer
class SynthSettingsError(UserError, ValueError):
    """A setting the synthetic faces cannot be rendered with."""


class SynthRenderer:
    """Renders face ``(split, index)`` of the synthetic dataset for one ``seed`` and crop geometry.

    Crops are ``crop_size`` px squares covering ``context * padding * max(w, h)`` image px around the
    landmark box (the prepared-split convention of :mod:`popos.data.prepared`).
    """

    def __init__(self, crop_size: int, *, seed: int = 0, padding: float = DEFAULT_PADDING,
                 context: float = DEFAULT_CONTEXT) -> None:
        if crop_size < 32:
            raise SynthSettingsError(f"crop_size must be at least 32 px, got {crop_size}")
        if padding <= 0 or context < 1:
            raise ValueError(f"need padding > 0 and context >= 1, got padding={padding}, context={context}")
        self.crop_size, self.seed, self.padding, self.context = int(crop_size), int(seed), padding, context
        bank = crop_size + _NOISE_MARGIN
        self._noise = np.random.default_rng([self.seed, len(SPLITS)]).standard_normal((bank, bank, 3), np.float32)

    def render(self, split: str, index: int) -> SynthFace:
        """Face ``index`` of ``split`` (``"train"`` or ``"test"``); the same arguments give the same face."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        rng = np.random.default_rng([self.seed, SPLITS.index(split), int(index)])
        model = _model(rng)

        yaw, pitch = np.clip(rng.normal(0, 15), -40, 40), np.clip(rng.normal(0, 8), -20, 20)
        pivot = np.array([0.0, 0.4, -0.8])
        rot = _rotation(yaw, pitch)
        # every outline goes through the same projection and affines: transform them as one array
        names, sizes = list(model), [len(v) for v in model.values()]
        flat = ((np.concatenate(list(model.values())) - pivot) @ rot.T + pivot)[:, :2]

        # face units -> image px: roll, scale (inter-ocular px before the turn) and position in the photo
        roll = float(np.clip(rng.normal(0, 10), -30, 30))
        scale, a = np.exp(rng.uniform(np.log(45), np.log(150))), np.deg2rad(roll)
        # counter-clockwise on screen (y points down), as geometry.crop_affine turns
        to_image = np.concatenate([scale * np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]),
                                   rng.uniform(150, 450, (2, 1))], axis=1)
        landmarks = geometry.apply_affine(flat[:NUM_LANDMARKS], to_image)  # the model lists them first

        lo, hi = landmarks.min(axis=0), landmarks.max(axis=0)
        box = np.concatenate([lo, hi - lo])
        centre, side = geometry.square_box(box, self.padding)
        crop_side = self.context * float(side)
        crop_affine = geometry.crop_affine(centre, crop_side, self.crop_size)
        to_crop = geometry.compose_affine(crop_affine, to_image)
        unit = float(np.sqrt(abs(np.linalg.det(to_crop[:, :2]))))

        crop = np.empty((self.crop_size, self.crop_size, 3), np.uint8)
        _background(crop, rng)
        in_crop = np.split(geometry.apply_affine(flat, to_crop), np.cumsum(sizes)[:-1])
        _draw_face(crop, dict(zip(names, in_crop, strict=True)), unit, roll, rng)
        crop = _degrade(crop, crop_side / self.crop_size, rng, self._noise)
        norm = float(np.linalg.norm(landmarks[45] - landmarks[36]))
        return SynthFace(crop=crop, landmarks=landmarks.astype(np.float32), box=box.astype(np.float32), norm=norm,
                         crop_affine=crop_affine.astype(np.float32))


def write_synth_dataset(
    out_dir: str | Path,
    n_train: int,
    n_test: int,
    seed: int,
    crop_size: int,
    *,
    padding: float = DEFAULT_PADDING,
    context: float = DEFAULT_CONTEXT,
    progress: bool = True,
) -> None:
    """Render the synthetic dataset into prepared splits ``out_dir/train`` and ``out_dir/test``.

    ``n_train`` / ``n_test`` faces, ``crop_size`` px crops (see :class:`SynthRenderer`). Each split is
    written atomically by :class:`popos.data.prepared.PreparedWriter`.
    """
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{name} must be a positive integer, got {n!r}")
    renderer = SynthRenderer(crop_size, seed=seed, padding=padding, context=context)
    for split, n in (("train", n_train), ("test", n_test)):
        with PreparedWriter(Path(out_dir) / split, DATASET, split, num_landmarks=NUM_LANDMARKS, crop_size=crop_size,
                            padding=padding, context=context) as writer:
            for i in tqdm(range(n), desc=f"synth {split}", disable=not progress, unit="face"):
                face = renderer.render(split, i)
                writer.add(image=f"{split}/{i:06d}", crop=face.crop, landmarks=face.landmarks,
                           visible=np.ones(NUM_LANDMARKS, bool), box=face.box, norm=face.norm,
                           crop_affine=face.crop_affine)
