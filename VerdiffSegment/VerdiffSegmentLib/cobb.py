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

Where the model also draws the gaps between neighbouring vertebrae (a card's gap channel),
a vertebra's tilt is instead the mean long axis of the gaps it borders (``gap_axes``): the
disc space above it runs along its upper endplate, the one below along its lower one, and a
thin lens between two bodies fixes that direction better than the rounded outline of a body
on the 5 px grid. A gap piece whose axis lies over ``MAX_TILT_FROM_SPINE`` from the
perpendicular to the line between its two vertebrae is left out: where a wedged disc
narrows, the gap the training labels draw (``training.labels.neighbour_gaps``) is a sliver
along the spine. Measured on the 48 held-out AASCE images (session 6, the bundled gap
model): Cobb SMAPE 20.65 % with the outline fits, 17.8 % with every gap's axis, **17.55 %**
without the slivers (18.5 % for the mean of outline and gaps; a 3 pixel border instead of 1:
18.4 %). A vertebra without a gap beside it keeps its outline's tilt. On perfect outlines
(the landmark quadrilaterals) the outline fits are better (under 2 % SMAPE against about
5 % from their gaps): the gaps win on the model's rounded outlines, not in principle.

Where the card names an endplate-tilt network (``cobb.tilt_network``, session 8), a
vertebra's tilt is instead what that network reads from a patch of the radiograph around
the piece (``endplate_tilt``: centred on the piece, as wide as it), and the outline gives
only the endplate middles: on the 48 held-out images Cobb SMAPE fell from 17.98 % (gaps)
to 10.70 % on the same model outputs (docs/levels.md). The gaps and outlines remain the
tilts of cards without one.

Where the segmentation stops short of the spine's ends (its top piece is named T3, its bottom
one L4) and the card says so (``cobb.estimate_missing_ends``), the missing end vertebrae are
placed by the spine's proportions (``estimate_missing_ends``) and the tilt network reads their
tilts there, so the angles that need them are measured instead of undetermined. The summary
lists them (``cobb_estimated_vertebrae``); they are not segmented. Session 17: on the 48
held-out images docs/levels.md gives the figures.

Accuracy (docs/levels.md, ``benchmarks/levels_accuracy.py xray``): the procedure on the
truth landmarks against ``angles.csv``, and on the bundled model's held-out outputs.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
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


def vertebra_geometry(labels: np.ndarray, values: list[int], gaps: np.ndarray | None = None, tilts_deg: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tilt vectors [n, 2] (unit, towards the picture's right) and endplate middles [2n, 2]
    ((x, y) pixels, upper then lower of each) of the vertebrae ``values`` (top to bottom)
    of a 2D label map (``endplate_fit``; the module docstring). ``tilts_deg`` (degrees by
    label value, + where the right side is higher: the endplate-tilt network's,
    ``endplate_tilt.vertebra_tilts``): the tilts. Else ``gaps`` (bool, the label map's
    shape): the tilt of a vertebra that borders a gap is its gaps' mean axis (``gap_axes``).
    The endplate middles are the outline's either way."""
    along_gaps = gap_axes(labels, gaps) if gaps is not None and tilts_deg is None else {}
    tilts, centre = [], []
    for value in values:
        tilt, upper, lower = endplate_fit(np.argwhere(labels == value).astype(float))
        if tilts_deg is not None:
            radians = np.radians(float(tilts_deg[value]))
            tilt = np.array([np.cos(radians), -np.sin(radians)])
        elif along_gaps.get(value):
            mean = np.mean(along_gaps[value], axis=0)
            tilt = mean / np.linalg.norm(mean)
        tilts.append(tilt)
        centre += [upper, lower]
    return np.array(tilts), np.array(centre)


MIN_GAP_PIXELS = 4  # a gap piece smaller than this has no direction worth measuring


def gap_axes(labels: np.ndarray, gaps: np.ndarray) -> dict[int, list[np.ndarray]]:
    """Per vertebra (label value), the long axes (unit (x, y), towards the right) of the
    gaps it borders: each connected piece of ``gaps`` belongs to the two vertebrae its
    one-pixel border touches most (both must touch it), and its long axis is the first
    principal axis of its pixels."""
    gaps = np.asarray(gaps, bool).reshape(labels.shape)
    pieces, count = ndi.label(gaps)
    values = np.arange(int(labels.max()) + 1)
    centroids = np.array(ndi.center_of_mass(np.ones(labels.shape), labels, values))[:, ::-1]  # (x, y) per value
    axes: dict[int, list[np.ndarray]] = {}
    for index, where in enumerate(ndi.find_objects(pieces), start=1):
        if where is None:
            continue
        window = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in where)
        piece = pieces[window] == index
        if piece.sum() < MIN_GAP_PIXELS:
            continue
        border = ndi.binary_dilation(piece) & ~piece
        touched = np.bincount(np.asarray(labels[window][border], np.int64), minlength=2)
        touched[0] = 0
        pair = np.argsort(touched)[::-1][:2]
        if touched[pair[1]] == 0:  # a piece touching one vertebra only (``touched`` has at least 2 entries)
            continue
        xy = np.argwhere(piece)[:, ::-1].astype(float)
        xy -= xy.mean(axis=0)
        axis = np.linalg.eigh(xy.T @ xy)[1][:, -1]
        axis = axis if axis[0] >= 0 else -axis
        spine = centroids[pair[1]] - centroids[pair[0]]
        across = np.array([-spine[1], spine[0]])
        if np.degrees(_angle(axis, across, lines=True)) > MAX_TILT_FROM_SPINE:
            continue  # a sliver along the spine (where a wedged disc narrows), not a disc's direction
        for value in pair:
            axes.setdefault(int(value), []).append(axis)
    return axes


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


def cobb_angles(labels: sitk.Image, segments: list[dict], gaps: np.ndarray | None = None) -> dict | None:
    """``{"PT", "MT", "TL"}`` in degrees for a 2D per-vertebra label map (``levels.vertebrae``:
    values 1..n top to bottom), or None for volumes and for fewer than 3 vertebrae.
    ``gaps``: the model's gaps between vertebrae on the label map's grid (``vertebra_geometry``)."""
    return cobb_measurements(labels, segments, gaps)["cobb_angles_deg"]


def cobb_measurements(labels: sitk.Image, segments: list[dict], gaps: np.ndarray | None = None, tilts_deg: dict | None = None,
                      spine_ends: tuple[str, str] | None = None, estimated: list[dict] | None = None) -> dict:
    """What the JSON summary carries of an AP X-ray: ``cobb_angles_deg`` (``cobb_angles``),
    ``cobb_end_vertebrae``: per angle its upper and lower end vertebra, each by its level,
    or by its segment's name where the level is not decided (``"vertebra 3"``), and
    ``cobb_end_tilts_deg``: per angle the tilts of those two vertebrae (degrees from the
    picture's horizontal, positive where the right side is higher), the directions the
    preview draws its lines along; all None for volumes and for fewer than 3 vertebrae.

    ``spine_ends``: the first and last level the angles are defined over (the card's, T1 and
    L5 for AASCE). The reference pairs the end vertebra of a curve with the top (or bottom)
    vertebra of the spine; where that is the curve's own end vertebra the angle is 0 by
    construction, which is the answer only when that vertebra *is* the spine's end. Where the
    segmentation stops short (its top piece is T8, or is unnamed), the vertebrae that would
    make the angle were not found, so the angle is not determined: ``None``, its end vertebrae
    and tilts ``None`` too, and ``cobb_undetermined`` names it (the pipeline warns). Measured
    on the 48 held-out radiographs (session 12): 8 of the 144 angles were such zeros (their
    truth: 0 to 43, mean 21 degrees), 4 more were zeros at a named T1 or L5 and stay. SMAPE
    counts an undetermined angle as 0, so its figure is unchanged. Without ``spine_ends``
    every angle is reported as computed.

    ``estimated``: vertebrae beyond the chain's ends, not segmented (``estimate_missing_ends``,
    each with its ``tilt_deg``): they join the chain above or below it, may be end vertebrae,
    and are listed in ``cobb_estimated_vertebrae`` (level: centre and width, for the preview)."""
    array = label_plane(labels)
    none = {"cobb_angles_deg": None, "cobb_end_vertebrae": None, "cobb_end_tilts_deg": None}
    if array is None:
        return none
    counts = np.bincount(np.asarray(array, np.int64).ravel())
    measured = [s for s in segments if int(s["value"]) < len(counts) and counts[int(s["value"])] >= 3]
    if len(measured) < 3:
        return none
    tilts, centre = vertebra_geometry(array, [int(s["value"]) for s in measured], gaps, tilts_deg)
    above = [e for e in estimated or () if e["above"]]
    below = [e for e in estimated or () if not e["above"]]
    if above or below:  # the placed vertebrae join the chain at its ends
        (tilts_above, centre_above), (tilts_below, centre_below) = estimated_geometry(above), estimated_geometry(below)
        tilts, centre = np.concatenate([tilts_above, tilts, tilts_below]), np.concatenate([centre_above, centre, centre_below])
        placed = lambda vertebrae: [{"level": e["level"], "name": e["level"], "estimated": True} for e in vertebrae]  # noqa: E731
        measured = placed(above) + measured + placed(below)
    keep = plausible_tilts(tilts, centre)
    if keep.sum() < 3:
        return none
    measured = [s for s, kept in zip(measured, keep) if kept]
    tilts, centre = tilts[keep], centre[np.repeat(keep, 2)]
    angles, ends = cobb_with_end_vertebrae(tilts, centre, array.shape[0], lines=True)
    name = lambda s: s.get("level") or s["name"]  # noqa: E731
    placed_kept = {s["level"] for s in measured if s.get("estimated")}  # plausible_tilts may drop a placed one too
    undetermined = [key for key, (i, j) in ends.items() if spine_ends is not None and i == j and not _at_spine_end(measured, i, spine_ends)]
    return {
        "cobb_angles_deg": {key: None if key in undetermined else value for key, value in angles.items()},
        "cobb_end_vertebrae": {key: None if key in undetermined else [name(measured[i]) for i in pair] for key, pair in ends.items()},
        "cobb_end_tilts_deg": {key: None if key in undetermined else [tilt_degrees(tilts[i]) for i in pair] for key, pair in ends.items()},
        **({"cobb_undetermined": undetermined} if undetermined else {}),
        **({"cobb_estimated_vertebrae": {e["level"]: {"centre_xy": [round(float(e["centre"][1]), 1), round(float(e["centre"][0]), 1)],
                                                       "width": round(float(e["width"]), 1), "height": round(float(e["height"]), 1)}
                                         for e in above + below if e["level"] in placed_kept}} if above or below else {}),
    }


# The AASCE spine's proportions, from the landmarks of the 427 usable training radiographs of the
# X-ray cards' split (``benchmarks/spine_profile.py``; the landmarks in T1..L5 order, files with a
# vertebra annotated twice left out: ``training.datasets.read_landmarks``, session 28, which moved
# no value by more than 0.008): per radiograph each quantity over its mean along the spine, then
# the median. Interquartile ranges of the steps: 0.07-0.18 of the mean.
LEVEL_STEPS = (0.693, 0.763, 0.807, 0.85, 0.878, 0.884, 0.902, 0.926, 0.97, 1.04, 1.107, 1.165, 1.214, 1.263, 1.307, 1.269)  # T1-T2 .. L4-L5 centres
LEVEL_WIDTHS = (0.915, 0.848, 0.807, 0.794, 0.811, 0.829, 0.861, 0.903, 0.932, 0.975, 1.032, 1.084, 1.13, 1.165, 1.215, 1.282, 1.378)  # T1 .. L5
ESTIMATED_HEIGHT = 0.8  # an estimated vertebra's height over its step to its neighbour (the disc takes the rest)


def estimate_missing_ends(labels: np.ndarray, segments: list[dict], levels: list[str]) -> list[dict]:
    """The vertebrae the segmentation is missing between its ends and the spine's (``levels``:
    the card's, T1 .. L5 for AASCE, whose proportions ``LEVEL_STEPS`` and ``LEVEL_WIDTHS`` are):
    per missing level ``{"level", "above", "centre": (row, col), "width", "height", "axis"}``
    (``axis``: unit (x, y) down the spine), top to bottom.

    Why (issue 15): the model does not draw faint upper thoracic vertebrae (foreground
    probability 0.1-0.15 where T1-T2 lie, session 16), so the chain often starts at T2 or T3 and
    the angles that pair a curve with the spine's end are undetermined or measured to the wrong
    vertebra; on the 48 held-out images the undetermined ones alone cost 1.8 SMAPE points. The
    tilt network reads a tilt from the radiograph, not from a piece, so it can read one where no
    piece was drawn, given a centre and a width.

    Decisions: an end is extended only when its piece and the next one are named (their levels
    give how many are missing and the scale: their distance over the proportions' steps between
    them); the missing ones continue in the straight line through those two centres (a curve's
    bend is left out), each step and width scaled by the proportions from the end piece's. An end
    is extended only when all its missing vertebrae fall inside the picture; else none is placed
    and the angles that need them stay undetermined (a placed chain that still stops short would
    give a small angle measured between two guesses).

    How many to place, measured on training radiographs (``benchmarks/cobb_placed_ends.py``: the
    landmark vertebrae cut to start at T2 .. T8, the tilt network reading every tilt): the placed
    centres drift off the curved spine (within half a step of the truth for 99 % of the first
    vertebra out, 78 % of the second, 49 % of the third, 12 % of the seventh:
    ``benchmarks/spine_profile.py``), yet the angles improve at every depth, since the upper
    thoracic tilts change slowly and a patch half a vertebra off reads nearly the same tilt:
    Cobb SMAPE with the chain starting at T2 / T3 / T4 / T6 / T8, 8.7 / 12.6 / 16.5 / 20.1 / 28.1 %
    without placing, 7.9 / 9.2 / 9.8 / 11.7 / 13.0 % with every missing vertebra placed (placing at
    most two: 7.9 / 9.2 / 16.5 / 20.1 / 28.1 %). So all are placed; the warning says which ends
    were placed, not seen."""
    from .vertebra_patches import large_pieces, piece_geometry

    levels = list(levels or ())
    if levels[:1] + levels[-1:] != ["T1", "L5"] or len(levels) != len(LEVEL_WIDTHS):  # the proportions are T1 .. L5's
        return []
    labels = np.asarray(labels)
    large = set(large_pieces(labels, [int(s["value"]) for s in segments]))
    pieces = [s for s in segments if int(s["value"]) in large]
    if len(pieces) < 2:
        return []
    centres, widths = piece_geometry(labels, [int(s["value"]) for s in pieces])
    out = []
    for above, end, inner in ((True, 0, 1), (False, len(pieces) - 1, len(pieces) - 2)):
        end_level, inner_level = pieces[end].get("level"), pieces[inner].get("level")
        if end_level not in levels or inner_level not in levels:
            continue
        first, second = levels.index(end_level), levels.index(inner_level)
        if first == second or (first < second) != above:  # one level twice, or names against the pieces' order
            continue
        down = (centres[inner] - centres[end]) if above else (centres[end] - centres[inner])
        down = down / np.linalg.norm(down)
        extension = [{"level": levels[index], "above": above, "centre": centre, "width": float(widths[end] * LEVEL_WIDTHS[index] / LEVEL_WIDTHS[first]),
                      "height": float(step * ESTIMATED_HEIGHT), "axis": down[::-1].copy()}
                     for index, centre, step in placed_centres(centres[end], centres[inner], first, second)]
        if all(0 <= e["centre"][0] < labels.shape[0] and 0 <= e["centre"][1] < labels.shape[1] for e in extension):
            out += extension[::-1] if above else extension
    return out


def placed_centres(end_centre: np.ndarray, inner_centre: np.ndarray, first: int, second: int, steps=LEVEL_STEPS) -> list[tuple[int, np.ndarray, float]]:
    """The levels beyond a chain's end piece (level index ``first``, centre ``end_centre``), away
    from the piece next to it (``second``, ``inner_centre``), out to the spine's end: per level
    ``(index, centre, step)``, outwards. They continue the straight line through the two centres,
    each step (``steps``: centre to centre, by level, in the spine's mean step; ``LEVEL_STEPS``)
    scaled by the two pieces' distance over the steps between their levels.
    ``estimate_missing_ends`` places the vertebrae so, ``benchmarks/spine_profile.py`` measures how
    far that lands from the landmarks."""
    above = first < second
    outward = np.asarray(end_centre, float) - np.asarray(inner_centre, float)
    scale = np.linalg.norm(outward) / sum(steps[min(first, second):max(first, second)])
    outward = outward / np.linalg.norm(outward)
    centre, out = np.asarray(end_centre, float).copy(), []
    for index in (range(first - 1, -1, -1) if above else range(first + 1, len(steps) + 1)):
        step = steps[min(index, index + (1 if above else -1))] * scale
        centre = centre + outward * step
        out.append((index, centre.copy(), float(step)))
    return out


def estimated_geometry(estimated: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """``vertebra_geometry``'s tilts [n, 2] and endplate middles [2n, 2] of estimated vertebrae
    (``estimate_missing_ends``, each with its ``tilt_deg``)."""
    if not estimated:
        return np.zeros((0, 2)), np.zeros((0, 2))
    radians = np.radians([float(e["tilt_deg"]) for e in estimated])
    tilts = np.stack([np.cos(radians), -np.sin(radians)], axis=1)
    centre = []
    for e in estimated:
        middle, half = np.asarray(e["centre"], float)[::-1], np.asarray(e["axis"], float) * e["height"] / 2
        centre += [middle - half, middle + half]
    return tilts, np.array(centre)


def undetermined_angles_warning(names: list[str]) -> str:
    """The run's warning for angles ``cobb_measurements`` could not determine."""
    return (f"Cobb angle(s) {', '.join(names)} not determined: the segmented spine ends at their end vertebra, "
            "and the vertebrae beyond it that would give the angle were not found")


def estimated_ends_warning(measurements: dict) -> str | None:
    """The run's note on angles measured to an end vertebra that was not segmented but placed
    (``estimate_missing_ends``); None where no angle's end is such a vertebra."""
    estimated = measurements.get("cobb_estimated_vertebrae") or {}
    ends = measurements.get("cobb_end_vertebrae") or {}
    placed = {name: [end for end in pair if end in estimated] for name, pair in ends.items() if pair}
    placed = {name: found for name, found in placed.items() if found}
    if not placed:
        return None
    vertebrae = sorted({end for found in placed.values() for end in found}, key=list(estimated).index)
    return (f"Cobb angle(s) {', '.join(placed)} end at {', '.join(vertebrae)}, which the segmentation did not find: "
            "placed by the spine's proportions below or above the vertebrae it found, their tilts read from the image there")


def angle_text(value: float | None) -> str:
    """An angle as the status line and the preview show it: degrees, or "n/d" (not determined)."""
    return "n/d" if value is None else f"{value:.1f}\u00b0"


def _at_spine_end(measured: list[dict], index: int, spine_ends: tuple[str, str]) -> bool:
    """Whether vertebra ``index`` of the measured chain is the spine's first (top of the chain,
    named ``spine_ends[0]``) or last (bottom, named ``spine_ends[1]``) level."""
    level = measured[index].get("level")
    return (index == 0 and level == spine_ends[0]) or (index == len(measured) - 1 and level == spine_ends[1])


def tilt_degrees(tilt: np.ndarray) -> float:
    """A tilt vector ((x, y) picture pixels, y down) as degrees from the horizontal, positive
    where its right end is higher."""
    return round(float(np.degrees(np.arctan2(-tilt[1], tilt[0]))), 2)


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


def endplate_lines(labels: np.ndarray, upper: int | dict, lower: int | dict, reach: float = 1.6, tilts_deg: list[float] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two lines of one Cobb angle as drawn on a picture of the label map [rows,
    columns]: along the tilt of the vertebra ``upper`` (a label value) through the middle of
    its upper endplate, and along that of ``lower`` through the middle of its lower
    endplate; each ``reach`` times the vertebra's half width to either side. The tilts are
    ``tilts_deg`` (the angle's ``cobb_end_tilts_deg``, the ones it was measured between)
    or else the outlines' (``vertebra_geometry``). An end vertebra that was not segmented
    is given as its ``cobb_estimated_vertebrae`` entry (``centre_xy``, ``width``, ``height``;
    ``tilts_deg`` then required) and drawn where it was placed. Returns (start, end) (x, y)
    pixel pairs, upper first."""
    out = []
    for index, vertebra in enumerate((upper, lower)):
        if isinstance(vertebra, dict):
            tilts, middles = estimated_geometry([{"tilt_deg": tilts_deg[index], "centre": vertebra["centre_xy"][::-1], "height": vertebra["height"],
                                                  "axis": _down_across(float(tilts_deg[index]))}])
            tilt, middle, half_width = tilts[0], middles[index], vertebra["width"] / 2  # its upper endplate for the upper end, lower for the lower
        else:
            yx = np.argwhere(labels == vertebra).astype(float)
            tilt, top, bottom = endplate_fit(yx)
            if tilts_deg is not None:
                radians = np.radians(float(tilts_deg[index]))
                tilt = np.array([np.cos(radians), -np.sin(radians)])
            middle = (top, bottom)[index]
            xy = yx[:, ::-1]
            half_width = np.abs((xy - xy.mean(axis=0)) @ tilt).max() + 0.5
        out.append((middle - reach * half_width * tilt, middle + reach * half_width * tilt))
    return out


def _down_across(tilt_deg: float) -> np.ndarray:
    """The unit (x, y) across a tilt (degrees, ``tilt_degrees``), pointing down the picture."""
    radians = np.radians(tilt_deg)
    return np.array([np.sin(radians), np.cos(radians)])


def smape(predicted: list, truth: list) -> float | None:
    """AASCE's symmetric mean absolute percentage error (%): the mean over images of
    sum |prediction - truth| / sum (prediction + truth) over the image's three angles.
    An image without predicted angles counts as all zeros (100 %, unless the truth is 0), an
    undetermined angle (None) as 0."""
    terms = []
    for measured, reference in zip(predicted, truth):
        reference = np.asarray(reference, float)
        measured = np.zeros(3) if measured is None else np.asarray([measured[n] or 0.0 for n in NAMES] if isinstance(measured, dict) else measured, float)
        total = (measured + reference).sum()
        terms.append(np.abs(measured - reference).sum() / total if total > 0 else 0.0)
    return round(float(np.mean(terms)) * 100, 2) if terms else None
