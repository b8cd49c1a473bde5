"""Scoliosis Cobb angles of an AP spine X-ray from its per-vertebra segmentation.

The three angles and their order are those of the AASCE 2019 challenge (``angles.csv`` of
the development data), computed as the challenge's reference MATLAB code (``angleCal``,
distributed with the SpineWeb dataset 16 landmarks) does from the 68 landmarks; this is
an independent implementation of that procedure:

1. each vertebra's tilt is the vector from the middle of its left edge to the middle of
   its right edge; the centre line is the middles of the upper and lower endplates;
2. the first angle is the largest angle between any two vertebrae's tilts (the pair
   gives the end vertebrae A, the column of the maximum, and B, its partner);
3. if the centre line is not S-shaped (all its deviations from the chord between its ends
   have one sign), the second angle is between the top vertebra and A, the third between
   the bottom vertebra and B;
4. if it is S-shaped and the lower endplates of A and B lie on average in the upper half
   of the picture, the second angle is the largest between A and a vertebra above it and
   the third the largest between B and one below it; otherwise the second is the largest
   between A and one above it, A', and the third the largest between A' and one above A'.

The reference names them PT, MT and TL/L in that order; ``angles.csv`` follows it, and so
does ``cobb_angles_deg`` here: {"PT": first, "MT": second, "TL": third}.

From a segmentation (``vertebra_geometry``): each vertebra's tilt is the mean direction
of its upper and lower boundary, each a Theil-Sen line fitted in a frame turned with the
vertebra (``endplate_fit``), the segmentation's version of the reference's left-to-right
middle line; the endplate middles are its centroid moved to its outermost pixels across
that line. Angles between these tilts are taken between lines (0-90 degrees). Tilts over
``MAX_TILT_FROM_SPINE`` from the perpendicular to the local spine line are left out
(``plausible_tilts``: merged bodies fitted as one, fragments). Fewer than 3 vertebrae: no
angles. (Before: the middles between top and bottom pixel per column of the picture, and
the long principal axis, both gave 11 % SMAPE on the truth masks, since a tilted body's
side edges flatten them.)

Accuracy (docs/levels.md, ``benchmarks/levels_accuracy.py xray``): the procedure on the
truth landmarks against ``angles.csv``, and on the bundled model's held-out outputs.
"""

from __future__ import annotations

import numpy as np
import scipy.stats
import SimpleITK as sitk

NAMES = ("PT", "MT", "TL")


def _angle(a: np.ndarray, b: np.ndarray, lines: bool = False) -> np.ndarray:
    """Angles (radians) between the rows of ``a`` and ``b`` (broadcast), as the reference:
    the cosine rounded to 8 decimals before the arccos. ``lines``: between the lines along
    them (0..90 degrees), for a segmentation's axes, which have no sign."""
    cosine = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    if lines:
        cosine = np.abs(cosine)
    return np.arccos(np.clip(np.round(cosine, 8), -1.0, 1.0))


def is_s_shaped(centre: np.ndarray) -> bool:
    """Whether the centre line [n, (x, y)] crosses the chord between its ends."""
    last = centre[-1]
    with np.errstate(divide="ignore", invalid="ignore"):  # a vertical chord: NaN, "S" as in the reference
        deviation = (centre[:-2, 1] - last[1]) / (centre[0, 1] - last[1]) - (centre[:-2, 0] - last[0]) / (centre[0, 0] - last[0])
        products = np.outer(deviation, deviation)
        return not np.isclose(products.sum(), np.abs(products).sum(), rtol=1e-9, atol=1e-12)


def cobb_from_vertebrae(tilts: np.ndarray, centre: np.ndarray, image_height: float, lines: bool = False) -> dict:
    """The three angles (degrees) from the vertebrae's tilt vectors [n, 2] (top to bottom)
    and the centre line [2n, 2] (upper and lower endplate middle of each, (x, y) pixels).
    ``lines``: the tilts are axes without a sign (``_angle``)."""
    return cobb_with_end_vertebrae(tilts, centre, image_height, lines)[0]


def cobb_with_end_vertebrae(tilts: np.ndarray, centre: np.ndarray, image_height: float, lines: bool = False) -> tuple[dict, dict]:
    """``cobb_from_vertebrae``'s angles and, per angle, its end vertebrae: the pair of
    vertebrae (indices top to bottom, upper first) whose tilts make it."""
    tilts, centre = np.asarray(tilts, float), np.asarray(centre, float)
    count = len(tilts)
    angles = _angle(tilts[:, None], tilts[None], lines)
    partner = angles.argmax(axis=0)  # per column, the row of its largest angle
    end_a = int(angles.max(axis=0).argmax())
    end_b = int(partner[end_a])
    pairs = [(end_b, end_a)]
    if not is_s_shaped(centre):
        pairs += [(0, end_a), (count - 1, end_b)]
    elif centre[2 * end_a + 1, 1] + centre[2 * end_b + 1, 1] < image_height:
        pairs += [(int(angles[end_a, : end_a + 1].argmax()), end_a), (end_b, end_b + int(angles[end_b, end_b:].argmax()))]
    else:
        end = int(angles[end_a, : end_a + 1].argmax())
        pairs += [(end, end_a), (int(angles[end, : end + 1].argmax()), end)]
    degrees = {name: round(float(np.degrees(angles[i, j])), 2) for name, (i, j) in zip(NAMES, pairs)}
    return degrees, {name: (min(i, j), max(i, j)) for name, (i, j) in zip(NAMES, pairs)}


def cobb_from_landmarks(points: np.ndarray, image_height: float) -> dict:
    """The angles from AASCE landmarks [4n, (x, y)]: per vertebra top-left, top-right,
    bottom-left, bottom-right."""
    corners = np.asarray(points, float).reshape(-1, 4, 2)
    left = (corners[:, 0] + corners[:, 2]) / 2
    right = (corners[:, 1] + corners[:, 3]) / 2
    centre = np.stack([(corners[:, 0] + corners[:, 1]) / 2, (corners[:, 2] + corners[:, 3]) / 2], axis=1).reshape(-1, 2)
    return cobb_from_vertebrae(right - left, centre, image_height)


def vertebra_geometry(labels: np.ndarray, values: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Tilt vectors [n, 2] (unit, towards the picture's right) and endplate middles [2n, 2]
    ((x, y) pixels, upper then lower of each) of the vertebrae ``values`` (top to bottom)
    of a 2D label map (``endplate_fit``; the module docstring)."""
    tilts, centre = [], []
    for value in values:
        tilt, upper, lower = endplate_fit(np.argwhere(labels == value).astype(float))
        tilts.append(tilt)
        centre += [upper, lower]
    return np.array(tilts), np.array(centre)


def endplate_fit(yx: np.ndarray, iterations: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tilt (unit (x, y), towards the right) and upper and lower endplate middles ((x, y))
    of one vertebra's pixels [n, (row, column)] (NaN middles for no pixels).

    The upper and lower boundary are fitted in a frame turned by the current tilt estimate:
    per column of that frame (one pixel wide) the outermost pixel above and below, over the
    central ``CENTRAL_COLUMNS`` of the columns (the ends are the rounded corners and the side
    edges), each by a Theil-Sen line (robust to the notches of a cut or a fragment); the new
    tilt turns by the mean of the two slopes, until it stops turning. The tilt is then the
    mean direction of the two endplates, as the reference's left-edge-middle to
    right-edge-middle line is. Why turned: in the picture's own columns a tilted body's
    side edges take up a large share of the columns and their middles flatten the slope
    (a 35 degree tilt read as about 25, SMAPE 11 % on the truth quadrilaterals)."""
    xy = yx[:, ::-1]
    tilt = np.array([1.0, 0.0])
    if len(xy) == 0:
        return tilt, np.full(2, np.nan), np.full(2, np.nan)
    middle = xy.mean(axis=0)
    for _ in range(iterations):
        across = np.array([tilt[1], -tilt[0]])  # up the picture when the tilt points right
        lines = _boundary_lines((xy - middle) @ tilt, (xy - middle) @ across)
        if lines is None:
            break
        turn = np.arctan((lines[0] + lines[1]) / 2)
        tilt = np.cos(turn) * tilt + np.sin(turn) * across
        if abs(turn) < 1e-4:
            break
    # The endplate middles: the centroid moved to the outermost pixel edge across the tilt
    # (the centre line only decides the S shape and the picture half, as the reference's).
    across = np.array([tilt[1], -tilt[0]])
    v = (xy - middle) @ across
    return tilt, middle + (v.max() + 0.5) * across, middle + (v.min() - 0.5) * across


CENTRAL_COLUMNS = 0.6  # share of a vertebra's columns (across its tilt) whose boundary pixels fit its endplates


def _boundary_lines(u: np.ndarray, v: np.ndarray) -> tuple[float, float] | None:
    """Slopes of the Theil-Sen lines v = slope * u + offset through the highest and the
    lowest ``v`` per one-pixel column of ``u``, over the central ``CENTRAL_COLUMNS`` of the
    columns; None with fewer than 3 columns."""
    columns = np.floor(u - u.min()).astype(int)
    count = columns.max() + 1
    top = np.full(count, -np.inf)
    bottom = np.full(count, np.inf)
    np.maximum.at(top, columns, v)
    np.minimum.at(bottom, columns, v)
    centres = u.min() + np.arange(count) + 0.5
    margin = np.floor((1 - CENTRAL_COLUMNS) / 2 * count)
    keep = np.isfinite(top) & (np.arange(count) >= margin) & (np.arange(count) <= count - 1 - margin)
    if keep.sum() < 3:
        return None
    return float(scipy.stats.theilslopes(top[keep], centres[keep])[0]), float(scipy.stats.theilslopes(bottom[keep], centres[keep])[0])


def cobb_angles(labels: sitk.Image, segments: list[dict]) -> dict | None:
    """``{"PT", "MT", "TL"}`` in degrees for a 2D per-vertebra label map (``levels.vertebrae``:
    values 1..n top to bottom), or None for volumes and for fewer than 3 vertebrae."""
    return cobb_measurements(labels, segments)["cobb_angles_deg"]


def cobb_measurements(labels: sitk.Image, segments: list[dict]) -> dict:
    """What the JSON summary carries of an AP X-ray: ``cobb_angles_deg`` (``cobb_angles``)
    and ``cobb_end_vertebrae``: per angle its upper and lower end vertebra, each by its
    level, or by its segment's name where the level is not decided (``"vertebra 3"``);
    both None for volumes and for fewer than 3 vertebrae."""
    array = label_plane(labels)
    none = {"cobb_angles_deg": None, "cobb_end_vertebrae": None}
    if array is None:
        return none
    counts = np.bincount(np.asarray(array, np.int64).ravel())
    measured = [s for s in segments if int(s["value"]) < len(counts) and counts[int(s["value"])] >= 3]
    if len(measured) < 3:
        return none
    tilts, centre = vertebra_geometry(array, [int(s["value"]) for s in measured])
    keep = plausible_tilts(tilts, centre)
    if keep.sum() < 3:
        return none
    measured = [s for s, kept in zip(measured, keep) if kept]
    tilts, centre = tilts[keep], centre[np.repeat(keep, 2)]
    angles, ends = cobb_with_end_vertebrae(tilts, centre, array.shape[0], lines=True)
    name = lambda s: s.get("level") or s["name"]  # noqa: E731
    return {"cobb_angles_deg": angles, "cobb_end_vertebrae": {key: [name(measured[i]) for i in pair] for key, pair in ends.items()}}


MAX_TILT_FROM_SPINE = 30.0  # degrees between a tilt and the perpendicular to the local spine line


def plausible_tilts(tilts: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Which vertebrae's tilts [n, 2] are measured (a boolean per vertebra): those within
    ``MAX_TILT_FROM_SPINE`` of the perpendicular to the local spine line (from the vertebra
    above's to the one below's middle, ``centre`` [2n, 2] as ``vertebra_geometry``).

    Why: the first angle is the largest between any two tilts, so one absurd tilt (two or
    more merged bodies fitted as one, a fragment off the spine) sets it (an 89 degree PT
    on a straight spine). On the 481 AASCE landmark sets the reference tilts lie within
    11.7 degrees of that perpendicular for 99 % of the vertebrae and 23.7 for 99.9 %. The
    worst one is dropped and the rest looked at again, since a bad vertebra also skews its
    neighbours' spine line."""
    middles = (centre[0::2] + centre[1::2]) / 2
    keep = np.ones(len(tilts), bool)
    while keep.sum() >= 3:
        index = np.flatnonzero(keep)
        points = middles[index]
        spine = points[np.minimum(np.arange(len(index)) + 1, len(index) - 1)] - points[np.maximum(np.arange(len(index)) - 1, 0)]
        across = np.stack([-spine[:, 1], spine[:, 0]], axis=1)
        deviation = np.degrees(_angle(tilts[index], across, lines=True))
        worst = int(deviation.argmax())
        if deviation[worst] <= MAX_TILT_FROM_SPINE:
            break
        keep[index[worst]] = False
    return keep


def label_plane(labels: sitk.Image) -> np.ndarray | None:
    """The [rows, columns] array of a 2D or single-slice label map; None for a volume."""
    array = sitk.GetArrayViewFromImage(labels)
    if array.ndim == 3 and 1 in array.shape:
        array = array.reshape([n for n in array.shape if n != 1])
    return np.asarray(array) if array.ndim == 2 else None


def endplate_lines(labels: np.ndarray, upper: int, lower: int, reach: float = 1.6) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two lines of one Cobb angle as drawn on a picture of the label map [rows,
    columns]: along the tilt of the vertebra ``upper`` (a label value) through the middle of
    its upper endplate, and along that of ``lower`` through the middle of its lower
    endplate (the tilts the angle is measured between, ``vertebra_geometry``); each
    ``reach`` times the vertebra's half width to either side. Returns (start, end) (x, y)
    pixel pairs, upper first."""
    tilts, centre = vertebra_geometry(labels, [upper, lower])
    out = []
    for index, (value, middle) in enumerate(((upper, centre[0]), (lower, centre[3]))):
        xy = np.argwhere(labels == value)[:, ::-1].astype(float)
        half_width = np.abs((xy - xy.mean(axis=0)) @ tilts[index]).max() + 0.5
        out.append((middle - reach * half_width * tilts[index], middle + reach * half_width * tilts[index]))
    return out


def smape(predicted: list, truth: list) -> float | None:
    """AASCE's symmetric mean absolute percentage error (%): the mean over images of
    sum |prediction - truth| / sum (prediction + truth) over the image's three angles.
    An image without predicted angles counts as all zeros (100 %, unless the truth is 0)."""
    terms = []
    for measured, reference in zip(predicted, truth):
        reference = np.asarray(reference, float)
        measured = np.zeros(3) if measured is None else np.asarray([measured[n] for n in NAMES] if isinstance(measured, dict) else measured, float)
        total = (measured + reference).sum()
        terms.append(np.abs(measured - reference).sum() / total if total > 0 else 0.0)
    return round(float(np.mean(terms)) * 100, 2) if terms else None
