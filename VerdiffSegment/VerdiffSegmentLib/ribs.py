"""The last rib-bearing vertebra names a CT's vertebrae (issue 15): which of the separated
vertebrae carry ribs, read from the CT's Hounsfield units beside each vertebra.

``ribs_per_vertebra(hounsfield, instances, values, spacing, lateral, superior)`` -> how many
ribs meet each vertebra; ``RibCounter(ct).ribs(instances, values)`` the same on a CT, for
``levels.vertebrae``, which names the vertebrae from the counts (``levels.levels_from_ribs``).

Why: the bundled CT model is binary and a CT's field of view holds any run of levels, so
the count that names MR and X-ray vertebrae (bottom-up from L5) has no anchor in CT. A
radiologist counting on a CT uses the last rib-bearing vertebra (T12) or the sacrum; the ribs
are bone in every CT, need no training data (the development set has two CTs), and the
thoracolumbar junction lies in most chest, abdominal and spine CTs.

Decisions:
- **Bone beside the spine.** Bone is above ``BONE_HU`` (cortical rib at 3 mm partial volume
  stays above it); the segmented vertebrae, grown by ``SPINE_MARGIN_MM`` (their surface and
  transverse processes the model draws thinly), are taken out, and what is left is split into
  connected pieces (26-connectivity) inside a box around the spine (``LATERAL_REACH_MM`` to
  each side, ``FRONT_BACK_REACH_MM`` in front and behind).
- **A rib** is such a piece that reaches at least ``RIB_REACH_MM`` to the side of the spine
  (a lumbar transverse process ends at about 50 mm) and holds at most ``RIB_MAX_CM3``
  (one rib is 3-16 cm3; the pelvis, the scapulae with the clavicles, or contrast-filled
  vessels joined into one piece are 100s): the iliac crest beside L5 and a contrast-filled
  aorta beside the thoracic spine are therefore not ribs.
- **Its vertebra** is the one most of the rib's voxels within ``CONTACT_MM`` of the spine lie
  nearest to (its head and tubercle meet the body and the transverse process of one level).
- **Names** (``levels.levels_from_ribs``): the lowest rib-bearing vertebra with two
  vertebrae below it that bear none is T12 (the junction is in view; two because the iliac
  wings beside S1 can pass for ribs); the others are counted from it, down (L1 ... L5, then
  S1) and up while the rib counts tell how many vertebrae each piece holds. Without such a
  junction nothing is named (``None``), as with the count. This assumes 12 rib-bearing thoracic vertebrae: with 11 or 13 pairs (a few
  percent of people) or a lumbar rib every name is one level off, the error a radiologist
  counting by the ribs makes too; the module's table shows the level's source ("ribs").

The sacrum (session 14), for CTs without the thoracolumbar junction (lumbar spine CTs):
- **An iliac wing** is a lateral piece as above of at least ``ILIUM_MIN_CM3`` (within the
  box; a rib is 3-16 cm3, the abdominal CT's wings 54 and 59) meeting its vertebra over at
  least ``ILIUM_CONTACT_CM3`` of bone within ``CONTACT_MM`` (the sacroiliac joint is a broad
  contact, 1.9 and 3.4 cm3 there; a transverse process near the iliac crest a few voxels).
- **Names** (``levels.levels_from_sacrum``): the lowest piece meeting both wings, below a
  piece without ribs and below lumbar-sized pieces, is S1 (the first rib beside T1 under C7
  is one small piece on each side, and C6-C7 are a third of a lumbar vertebra's volume); the
  pieces above it are counted up (L5 ... ) while none named lumbar bears a rib. Decided on
  the one abdominal CT here (its truth, and a crop of it without the ribs); a sacralised L5
  or a lumbarised S1 makes every name one level off, as for a radiologist counting up.

Measured (docs/levels.md, session 13): on the truth vertebrae of both development CTs the
counts are right at the junction (chest: T3-T12 bear ribs, T1-T2, C5-C7 and L1-L3 none;
abdomen: T12 bears ribs, L1-L5 none, S1 the iliac wing), and see there for the model's pieces.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import SimpleITK as sitk

from .levels import lateral_axis, superior_axis


BONE_HU = 200.0
SPINE_MARGIN_MM = 2.0
LATERAL_REACH_MM = 90.0
FRONT_BACK_REACH_MM = 40.0
RIB_REACH_MM = 60.0
RIB_MAX_CM3 = 100.0
CONTACT_MM = 7.0
ILIUM_MIN_CM3 = 30.0
ILIUM_CONTACT_CM3 = 1.0
GRID_MM = 1.2  # the grid the ribs are looked for on: axes finer than half of it strided (1.4 mm in-plane lost T8 of the chest CT)


def ribs_per_vertebra(hounsfield: np.ndarray, instances: np.ndarray, values: list[int], spacing: np.ndarray, lateral: np.ndarray, superior: np.ndarray) -> list[int]:
    """How many ribs meet each vertebra of ``values`` (module docstring).

    Args: ``hounsfield`` the CT in HU and ``instances`` the vertebrae (values > 0), both on
    one array grid; ``spacing`` that grid's mm per array axis; ``lateral`` and ``superior``
    the left and head components of each array axis' step, mm (``levels.superior_axis``
    and ``levels.lateral_axis``: from the image's direction matrix, never array order)."""
    return ribs_and_ilia_per_vertebra(hounsfield, instances, values, spacing, lateral, superior)[0]


def ribs_and_ilia_per_vertebra(hounsfield: np.ndarray, instances: np.ndarray, values: list[int], spacing: np.ndarray, lateral: np.ndarray,
                               superior: np.ndarray) -> tuple[list[int], list[int]]:
    """(ribs, iliac wings) meeting each vertebra of ``values``, from one search (arguments as
    ``ribs_per_vertebra``). An iliac wing (module docstring, "The sacrum") is a lateral piece
    of at least ``ILIUM_MIN_CM3`` that meets its vertebra over at least ``ILIUM_CONTACT_CM3``;
    a piece may count as both (at 3 mm the abdominal CT's wings stay under ``RIB_MAX_CM3``),
    so the rib counts are what they were without this second count."""
    # sub-millimetre CTs on a coarser grid: 0.5 mm voxels cost 8 times the memory and time a
    # rib needs (the chest CT's 0.7 x 0.7 x 2.5 mm stays on its own grid: 1.4 s, 0.25 GB)
    stride = tuple(max(1, int(GRID_MM // step)) for step in spacing)
    spacing = np.asarray(spacing, float) * stride
    lateral, superior = np.asarray(lateral, float) * stride, np.asarray(superior, float) * stride
    coarse = tuple(slice(None, None, k) for k in stride)
    instances, hounsfield = instances[coarse], hounsfield[coarse]
    spine = instances > 0
    if not spine.any():
        return [0] * len(values), [0] * len(values)
    along = int(np.argmax(np.abs(superior)))  # the array axis nearest the spine's
    box = _box_around(spine, spacing, lateral, along)
    spine, instances, hounsfield = spine[box], instances[box], hounsfield[box]
    # distances only where they are read (within CONTACT_MM of the spine): the spine's own box
    # grown by that much, a quarter of the side box on the chest CT
    near = tuple(slice(max(int(w.min()) - grow, 0), int(w.max()) + grow + 1)
                 for w, grow in zip(np.nonzero(spine), np.ceil(CONTACT_MM / spacing).astype(int) + 1))
    nearest = np.zeros((spine.ndim, *spine[near].shape), np.int32)  # int32: half the memory of the default
    distance = ndi.distance_transform_edt(~spine[near], sampling=spacing, return_indices=True, indices=nearest)
    bone = hounsfield > BONE_HU
    bone[near] &= distance > SPINE_MARGIN_MM
    pieces, count = ndi.label(bone, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return [0] * len(values), [0] * len(values)
    voxel_cm3 = float(np.prod(spacing)) / 1000.0
    volumes = np.bincount(pieces.ravel(), minlength=count + 1) * voxel_cm3
    # each piece's reach to the side: the largest left-right distance from the spine's middle
    # at the piece's own height (the spine's centre line, slice by slice along z)
    centre = _lateral_centre_by_slice(spine, spacing, lateral, along)
    index = np.nonzero(pieces)
    side = np.stack(index, axis=1) @ lateral - centre[index[along]]
    reach = np.zeros(count + 1)
    np.maximum.at(reach, pieces[index], np.abs(side))
    touching = pieces[near]
    at = np.nonzero((touching > 0) & (distance <= CONTACT_MM))  # in the near box's indices
    owners = instances[near][tuple(n[at] for n in nearest)]
    ribs, ilia = {value: 0 for value in values}, {value: 0 for value in values}
    for piece in np.unique(touching[at]):
        if reach[piece] < RIB_REACH_MM:
            continue
        votes = np.bincount(owners[touching[at] == piece])
        votes[0] = 0
        owner = int(votes.argmax())
        if not votes.any() or owner not in ribs:
            continue
        if volumes[piece] <= RIB_MAX_CM3:
            ribs[owner] += 1
        if volumes[piece] >= ILIUM_MIN_CM3 and votes[owner] * voxel_cm3 >= ILIUM_CONTACT_CM3:
            ilia[owner] += 1
    return [ribs[value] for value in values], [ilia[value] for value in values]


class RibCounter:
    """``ribs_per_vertebra`` on one CT (``sitk.Image`` in HU), for vertebrae on that image's
    grid: ``counter.ribs(instances, values)`` (``levels.vertebrae`` names from the counts)."""

    def __init__(self, ct: sitk.Image):
        self.ct = ct  # the array view below reads its memory: a counter on a temporary image (``ct[:, :, a:b]``) would read freed memory
        self.hounsfield = sitk.GetArrayViewFromImage(ct)
        self.spacing = np.asarray(ct.GetSpacing(), float)[::-1]
        self.lateral, self.superior = lateral_axis(ct), superior_axis(ct)

    def ribs(self, instances: np.ndarray, values: list[int]) -> list[int]:
        return self.ribs_and_ilia(instances, values)[0]

    def ribs_and_ilia(self, instances: np.ndarray, values: list[int]) -> tuple[list[int], list[int]]:
        return ribs_and_ilia_per_vertebra(self.hounsfield, instances, values, self.spacing, self.lateral, self.superior)


def _box_around(spine: np.ndarray, spacing: np.ndarray, lateral: np.ndarray, along: int) -> tuple[slice, ...]:
    """The spine's bounding box grown by the reach to each side and front and back (not along
    the spine, array axis ``along``: ribs start at the vertebrae's own heights)."""
    where = np.nonzero(spine)
    side_axis = int(np.argmax(np.abs(lateral)))
    box = []
    for axis, positions in enumerate(where):
        if axis == along:
            margin = 0.0
        else:
            margin = LATERAL_REACH_MM if axis == side_axis else FRONT_BACK_REACH_MM
        grow = int(np.ceil(margin / spacing[axis]))
        box.append(slice(max(int(positions.min()) - grow, 0), int(positions.max()) + grow + 1))
    return tuple(box)


def _lateral_centre_by_slice(spine: np.ndarray, spacing: np.ndarray, lateral: np.ndarray, along: int) -> np.ndarray:
    """The spine's mean left-right position (mm along ``lateral``) in each slice across array
    axis ``along``, slices without spine given their neighbours' (interpolated)."""
    index = np.nonzero(spine)
    position = np.stack(index, axis=1) @ lateral
    sums = np.bincount(index[along], weights=position, minlength=spine.shape[along])
    counts = np.bincount(index[along], minlength=spine.shape[along])
    have = np.flatnonzero(counts)
    return np.interp(np.arange(spine.shape[along]), have, sums[have] / counts[have])
