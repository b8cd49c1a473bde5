"""Random augmented crops from the training cases' sagittal slices (2D), or random augmented
patches from their isotropic volumes (3D, ``PatchSampler``).

Decisions (the bundled recipes' sampling, kept): 80 % of samples come from slices that
show spine and 20 % from any slice, so the prior also learns to say "no spine" on lateral
slices (ribs, organs) while slices without spine are sampled at a lower rate; 70 % of
crops are centred on a random spine pixel so small batches see vertebrae; slices
smaller than the crop are padded with 0 (background).

Reproducibility and sharding: the sampler's one generator draws a seed per sample of the
*global* batch; each sample is then built from its own generator. Every rank draws the
same seeds and builds only its shard, so ranks see different samples, the union of the
shards is exactly the batch one process would draw, and the sampler's whole state is its
generator's (saved in checkpoints). Both samplers share this (``SeededSampler``).

Workers (``start_workers(n)``, a GPU's loop would otherwise wait for the CPU): the samples
of a batch are built by ``n`` forked processes, each from its own seed as above, so a
batch is the same with or without workers; the cases are shared with the workers by the
fork, not copied through pipes.

3D patches (``PatchSampler``), decisions: every training volume shows spine, so the case is
drawn uniformly; 70 % of patches are centred on a random spine voxel (as the 2D crops) and
the rest lie anywhere in the volume; the geometric augmentation is the 2D one drawn once
per patch and applied to every sagittal slice alike (a rotation about the left-right axis,
the in-plane pose change the 2D models learn), before cropping, so patch edges are real
anatomy; the intensity augmentation is the 2D one on the whole patch; volumes smaller than
the patch on an axis are padded with 0 (background).

2.5D crops (``SliceSampler`` with ``context_slices`` k > 0): the image of a sample is the
drawn slice and its neighbours at j x ``context_distance_mm`` (j = -k..k), built from the
case's stack by the core's ``preparation.slice_channels`` (the function inference uses, at
the case's own slice spacing: the same anatomy in each channel as at inference); the label
map is the centre slice's; the warp and the intensity transform are drawn once and applied
to all channels (``augment``). A thick-slice draw (``slab_p``) averages the slab around each
channel's own position (``thick_slice``): the volume blurred across the slices, then
sampled as above.

Edge padding (``SliceSampler`` with ``edge_pad`` n > 0; issue 15, session 19): before the crop,
each side of the augmented slice is padded by its own random 0..n rows (columns), the border
row repeated (``numpy.pad`` mode ``edge``) in the image channels and in the label map alike, so
the label still says what the padded image shows. Why: at inference a vertebra the field of
view cuts (held-out VB3_51's L1 at the top edge) is not drawn by a model that only ever saw
crops inside the image; padding the slices at inference drew it (session 18), but the model had
never seen a padded border and drew the sacrum's top, padded below L5, at larger margins. Trained
on padded borders, the padded region is known ground: what it repeats is labelled as it is.

Coronal bend (``SliceSampler`` with ``coronal_bend_mm`` a > 0; issue 15, session 32): in
``CORONAL_BEND_FRACTION`` of the samples that are not thick slabs, row r of the drawn slice s is
read from the fractional slice s + A sin(pi (r - r0) / L) (each 2.5D channel at its offset from
there, linear between slices; the label map from the nearest slice), A uniform in -a..a mm, the
half-wave L uniform in ``CORONAL_BEND_HALF_WAVE_MM`` and r0 anywhere: the slice a sagittal plane
cuts through a spine curved in the coronal plane (scoliosis), each row real anatomy at its own
lateral position. Why: the held-out VB3_49's lumbar curve takes its L4 and L5 out of the
midsagittal slices and the model misses a third of both on nearly every slice (session 31), while
the training subjects' spines are nearly straight (measured after the range was chosen: L1..L5's
centres lie within 9 mm of each other across the slices in every training subject, 37 mm in
VB3_49, up to 14 mm off the line from L1 to L5); in-plane warps cannot show a body leaving the
slice sideways. Decisions: a sine (one smooth curve over the crop, as a lumbar or thoracolumbar
curve spans 4-6 vertebrae, about 120-300 mm) and no axial rotation of the vertebrae (not
modelled); drawn from a generator of its own (the sample's seed and 1), so the other draws are
the plain sampler's: a sample not bent is the plain one bit for bit, and the bundled recipes'
streams are unchanged.

Axial turn (``SliceSampler`` with ``axial_turn_deg`` b > 0; issue 15, session 42): in
``AXIAL_TURN_FRACTION`` of the samples that are not thick slabs, the drawn plane is turned about
the head-feet (row) axis by an angle uniform in -b..b degrees: column k of slice s is read from the
fractional slice s + tan(angle) (k - k0) p / d (p the in-plane pixel size, d the slice spacing, k0
the slice's labelled column centroid, so the plane still passes through the vertebral bodies; the
image's middle column where the slice has no label); combined with a coronal bend, the two shifts
add. Why: the held-out VB3_49's lower lumbar bodies are turned 16-25 degrees about the head-feet
axis (session 40; 1-8 in the subjects measured besides), so its sagittal slices cut them
obliquely, and session 33's straightening oracle showed the coronal curve alone is not what the
model misses there. Turning the whole volume at inference read worse (session 40), but that shows
the model resampled thick slices it never saw, not that it cannot learn oblique cuts. Decisions:
one rigid turn per sample (the rotation of the bodies varies along a real spine; a crop holds 4-5
of them); the 2.5D neighbour channels stay offset along the slice axis, not the turned plane's
normal (cos 25 degrees = 0.91 of their distance); drawn from a generator of its own (the sample's
seed and 2), so the plain sampler's and the bend's streams are unchanged.

Band under the lowest vertebra (``SliceSampler`` with ``band_under_lowest``, ``binary-gaps`` labels
only; issue 15, session 34): each sample's masks get one more channel, the band under the slice's
lowest vertebra (``band_under_lowest_vertebra``), which the loop turns into a per-pixel weight on the
BCE terms (``train --sacral-band-weight``) and no network output. Why: on an AP X-ray the lowest
labelled vertebra is L5 and the sacrum under it is unlabelled background, yet the bundled X-ray model
draws the sacrum's top as a vertebra on 11 of 47 held-out and 28 of 107 training radiographs, and
that piece then shifts every name by one level (session 33: 42 of the 56 wrong names). The band is
carried as bit 2 of the label map from before the spatial augmentation to after the crop, so it
moves with the image; centring a crop ignores it, so a run without it draws the same samples.

Acquired slices only (``SliceSampler`` with ``acquired_only``; issue 15, session 43): of a case whose
slices were interpolated linearly between thicker acquired ones (``postprocess.acquired_slices``:
the development MR's 1 mm slices, acquired 4 mm apart), only the acquired slices are drawn. Why:
their labels are the outlines drawn on what was acquired, while every interpolated slice's label is
the union of its two acquired neighbours' (``postprocess``, ``acquired_slice_threshold``); a model
taught both at once cannot tell them apart and draws neither. Taught the outlines alone, it draws
the acquired slices' bodies, and inference unites the interpolated slices' labels as the reference
does. A case acquired on its own slices keeps all of them.

Blended interpolated labels (``SliceSampler`` with ``blend_interpolated``; issue 15, session 44): of
a case whose slices were interpolated, every slice is drawn, but an interpolated slice's label is
one of its two acquired neighbours' labels, the farther one drawn with the weight linear
interpolation gives it (a slice 1 mm past an acquired slice of a 4 mm spacing takes that slice's
label 3 times in 4). Why: its image is the linear blend of the two acquired slices, so the target
whose expectation is the same blend of their labels is the one its image shows; the given label,
the union, is larger than the image's body. The model then reads each slice's body as its image
shows it, and inference unites the interpolated slices' labels as the reference does (the same
``acquired_slice_threshold``). Unlike the acquired slices alone it keeps all the slices' images. The
draw has its own random stream, so the plain sampler's samples are unchanged; the coronal bend and
the axial turn read their labels as given.
"""

from __future__ import annotations

import multiprocessing

import numpy as np
import scipy.ndimage as ndi
import torch

from VerdiffSegmentLib.postprocess import acquired_slices
from VerdiffSegmentLib.transforms import context_offsets, slice_at, slice_channels

from .augment import Augmentation, warp
from .labels import bit_masks

SPINE_SLICE_FRACTION = 0.8
SPINE_CENTRED_CROP_FRACTION = 0.7
CORONAL_BEND_FRACTION = 0.5  # of the samples that are not thick slabs (module docstring, coronal bend)
CORONAL_BEND_HALF_WAVE_MM = (120.0, 300.0)
AXIAL_TURN_FRACTION = 0.5  # of the samples that are not thick slabs (module docstring, axial turn)
BAND_BIT = 2  # ``band_under_lowest``: the bit of a ``binary-gaps`` label map that carries the band


class SeededSampler:
    """The reproducible, shardable batches of both samplers: a subclass's ``sample(seed)``
    builds one (image, masks) pair from its own seed."""

    band_under_lowest = False  # ``SliceSampler``: the masks' last channel is the band under the lowest vertebra

    def __init__(self, cases, seed: int, augmentation: Augmentation, num_classes: int, bits: bool = False):
        if not cases:
            raise ValueError("no training cases")
        self.cases, self.augmentation, self.num_classes, self.bits = cases, augmentation, num_classes, bits
        self.rng = np.random.default_rng(seed)
        self.pool = None

    def start_workers(self, count: int) -> None:
        """Build samples in ``count`` forked processes (module docstring)."""
        global _FORKED_SAMPLER
        _FORKED_SAMPLER = self
        self.pool = multiprocessing.get_context("fork").Pool(count)

    def stop_workers(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool = None

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]

    def masks(self, labels: np.ndarray) -> np.ndarray:
        """Label map [*spatial] -> one-hot float32 masks [classes, *spatial] (label k is channel k-1);
        with ``bits`` (``binary-gaps``) channel k is bit k (``labels.bit_masks``), and with
        ``band_under_lowest`` one channel more, bit ``BAND_BIT`` (module docstring)."""
        if self.bits:
            if self.band_under_lowest:
                return bit_masks(labels, BAND_BIT + 1)[[*range(self.num_classes), BAND_BIT]]
            return bit_masks(labels, self.num_classes)
        values = np.arange(1, self.num_classes + 1, dtype=labels.dtype).reshape(-1, *[1] * labels.ndim)
        return (labels[None] == values).astype(np.float32)

    def sample(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def batch(self, global_size: int, shard: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw the seeds of a global batch (advancing the state identically on every rank)
        and build the samples of ``shard``: (images [B, 1, *size], masks [B, classes, *size])."""
        seeds = [int(seed) for seed in self.rng.integers(0, 2**63, size=global_size)[shard]]
        samples = self.pool.map(_sample_in_worker, seeds) if self.pool is not None else [self.sample(seed) for seed in seeds]
        images, masks = zip(*samples)
        return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks))


_FORKED_SAMPLER = None  # the sampler the worker processes inherit through the fork


def _sample_in_worker(seed: int):
    return _FORKED_SAMPLER.sample(seed)


CROP_CENTRES = ("pixel", "along-spine")


def spine_centre(labels: np.ndarray, rng: np.random.Generator, centre: str = "pixel", bits: bool = False, half_extent: int = 0) -> list[int]:
    """The point a spine-centred crop is centred on: a random spine voxel (``pixel``, the
    bundled recipes': each voxel equally likely), or (``along-spine``, 2D slices, axis 0 head
    to feet as ``preparation`` lays them) a row drawn uniformly over the vertebrae's rows
    extended by ``half_extent`` rows (half a crop) beyond each end, at the column of a vertebra
    pixel in the nearest vertebra row.

    Why ``along-spine`` (issue 15): through ``centred_window`` with pixel centres, a crop of
    224 rows on the 4 px grid of an AP X-ray contains T1 in 18 % of draws and T10 in 69 %
    (20 training radiographs); the missed and unnamed vertebrae of the held-out radiographs
    are mostly upper thoracic runs. Drawn along the spine with the ends extended, T1 is in
    26 % and L5 in 32 % (31 % before). (A vertebra drawn first and centred on was measured on
    the spine-centred draws alone: T1 up from 24 to 36 %, but L5 down from 38 to 22 %, and L5
    anchors the names.) The vertebrae are bit 0 of a ``bits`` label (without the gaps' bit),
    else every nonzero label."""
    if centre == "along-spine" and labels.ndim == 2:
        vertebra = np.nonzero((labels & 1) > 0 if bits else labels > 0)
        if len(vertebra[0]):
            first, last = int(vertebra[0].min()), int(vertebra[0].max())
            row = int(rng.integers(first - half_extent, last + half_extent + 1))
            distance = np.abs(vertebra[0] - min(max(row, first), last))
            nearest = np.flatnonzero(distance == distance.min())
            return [row, int(vertebra[1][nearest[rng.integers(len(nearest))]])]
    spine = np.nonzero(labels & ~np.uint8(1 << BAND_BIT) if bits else labels)  # the band is no spine (module docstring)
    k = rng.integers(len(spine[0]))
    return [int(axis[k]) for axis in spine]


def band_under_lowest_vertebra(labels: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """Boolean map [rows, cols] of the band under the lowest vertebra of one ``binary-gaps``
    label map (bit 0 vertebra, bit 1 gap; axis 0 head to feet, as ``preparation`` lays slices),
    starting ``offset`` times that vertebra's height further down (default 0: right under it).

    Decisions: the vertebrae are told apart by taking the gaps out of bit 0 (``labels.neighbour_gaps``
    cuts every neighbouring pair); pieces under a quarter of the median piece's size are slivers
    and ignored; the lowest piece is the one whose centre lies lowest. The band is that piece
    moved down by 1 to its own height in rows (the disc under it and the top of the next body,
    for an AASCE L5 the top of S1), outside every vertebra. Empty without vertebrae. An offset of
    about 0.3 (an L5-S1 disc on an AP radiograph is a quarter to a third of L5's height; session 35)
    leaves the disc unweighted, so the weight does not push L5's lower edge up (session 34 lost L5
    on 4 of 47 held-out radiographs with the band right under it)."""
    vertebrae = ((labels & 1) > 0) & ((labels & 2) == 0)
    pieces, count = ndi.label(vertebrae)
    band = np.zeros(labels.shape, bool)
    if not count:
        return band
    index = np.arange(1, count + 1)
    sizes = ndi.sum_labels(vertebrae, pieces, index)
    rows = np.array([centre[0] for centre in ndi.center_of_mass(vertebrae, pieces, index)])
    rows[sizes < 0.25 * np.median(sizes)] = -np.inf
    lowest = pieces == index[int(np.argmax(rows))]
    occupied = np.flatnonzero(lowest.any(axis=1))
    height = int(occupied[-1] - occupied[0]) + 1
    skip = int(round(offset * height))
    near = lowest.copy()  # the vertebra and the ``skip`` rows under it in each column
    for shift in range(1, height + 1 + skip):
        band[shift:] |= lowest[:-shift]
        if shift <= skip:
            near[shift:] |= lowest[:-shift]
    return band & ~near & ((labels & 1) == 0)


def centred_window(labels: np.ndarray, size, rng: np.random.Generator, centre: str = "pixel", bits: bool = False) -> tuple[slice, ...]:
    """A window of ``size`` inside ``labels`` (at least as large on every axis): centred on
    ``spine_centre`` with probability ``SPINE_CENTRED_CROP_FRACTION`` (when there is spine),
    else anywhere; moved inside where it would reach out."""
    if labels.any() and rng.random() < SPINE_CENTRED_CROP_FRACTION:
        point = spine_centre(labels, rng, centre, bits, half_extent=size[0] // 2)
        corner = [c - n // 2 for c, n in zip(point, size)]
    else:
        corner = [int(rng.integers(0, extent - n + 1)) for extent, n in zip(labels.shape, size)]
    corner = [int(np.clip(c, 0, extent - n)) for c, extent, n in zip(corner, labels.shape, size)]
    return tuple(slice(c, c + n) for c, n in zip(corner, size))


def pad_up_to(array: np.ndarray, size) -> np.ndarray:
    """Pad each axis at its end with 0 up to ``size`` (axes already as large are kept)."""
    return np.pad(array, [(0, max(n - extent, 0)) for extent, n in zip(array.shape, size)])


def edge_padded(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, most: int):
    """Image [C, rows, cols] and label map [rows, cols] each padded on every side by its own random
    0..``most`` rows (columns), the border repeated in both alike (module docstring, edge
    padding); returns them and the margins (top, bottom, left, right)."""
    top, bottom, left, right = (int(n) for n in rng.integers(0, most + 1, size=4))
    image = np.pad(image, ((0, 0), (top, bottom), (left, right)), mode="edge")
    labels = np.pad(labels, ((top, bottom), (left, right)), mode="edge")
    return (image, labels), (top, bottom, left, right)


def thick_slice(images: np.ndarray, index: int, half_width: int, offsets=None) -> np.ndarray:
    """The mean of slices ``index - half_width .. index + half_width`` (cut at the stack's
    ends): what a slice 2 * half_width + 1 times as thick records (its label stays the
    centre slice's, as a thick slice's reader would draw it). ``offsets`` (2.5D): one such
    mean per channel [C, rows, cols], around the channel's position ``index + offset``
    (``preparation.slice_at``, the edge replicated), cut at the ends alike."""
    if offsets is None:
        return images[max(index - half_width, 0) : index + half_width + 1].mean(axis=0)
    last = images.shape[0] - 1
    channels = []
    for offset in offsets:
        centre = min(max(index + float(offset), 0.0), float(last))
        positions = [centre + shift for shift in range(-half_width, half_width + 1) if 0.0 <= centre + shift <= last]
        channels.append(np.stack([slice_at(images, position) for position in positions]).mean(axis=0))
    return np.stack(channels)


def bent_slice(stack: np.ndarray, labels: np.ndarray, index: int, shifts: np.ndarray, offsets) -> tuple[np.ndarray, np.ndarray]:
    """Slice ``index`` of ``stack`` [S, rows, cols] read along a coronal bend or an axial turn
    (module docstring): pixel (r, k) of channel c from the fractional slice ``index + shifts[r, k]
    + offsets[c]`` (``shifts`` [rows, cols], or [rows] for one shift per row; linear between slices,
    the edge slice beyond the ends, as ``slice_at``), and of the label map from the slice nearest
    ``index + shifts[r, k]``. Returns (image [C, rows, cols], labels [rows, cols])."""
    shifts = np.asarray(shifts, dtype=float)
    shifts = np.broadcast_to(shifts[:, None] if shifts.ndim == 1 else shifts, stack.shape[1:])
    rows, cols = np.indices(stack.shape[1:])
    last = stack.shape[0] - 1.0
    channels = []
    for offset in offsets:
        position = np.clip(index + shifts + float(offset), 0.0, last)
        low = np.minimum(np.floor(position), max(last - 1.0, 0.0)).astype(np.intp)
        high = np.minimum(low + 1, stack.shape[0] - 1)
        weight = (position - low).astype(stack.dtype)  # 0 on a whole slice, 1 on the last: that slice bit for bit
        channels.append(stack[low, rows, cols] * (1 - weight) + stack[high, rows, cols] * weight)
    nearest = np.rint(np.clip(index + shifts, 0.0, last)).astype(np.intp)
    return np.stack(channels).astype(stack.dtype, copy=False), labels[nearest, rows, cols]


def coronal_bend(rows: int, most_slices: float, pixel_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Each row's slice shift of one drawn coronal bend (module docstring): A sin(pi (r - r0) / L),
    A uniform in +-``most_slices``, L uniform in ``CORONAL_BEND_HALF_WAVE_MM`` (rows of ``pixel_mm``)."""
    amplitude = rng.uniform(-most_slices, most_slices)
    half_wave = rng.uniform(*CORONAL_BEND_HALF_WAVE_MM) / pixel_mm
    start = rng.uniform(0.0, 2.0 * half_wave)
    return amplitude * np.sin(np.pi * (np.arange(rows) - start) / half_wave)


def axial_turn(labels: np.ndarray, most_degrees: float, pixel_mm: float, slice_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Each column's slice shift of one drawn axial turn of a slice whose label map is ``labels``
    [rows, cols] (module docstring): tan(angle) (k - k0) ``pixel_mm`` / ``slice_mm``, the angle
    uniform in +-``most_degrees``, k0 the labelled columns' centroid (the middle column if none)."""
    angle = np.deg2rad(rng.uniform(-most_degrees, most_degrees))
    columns = np.nonzero(labels)[1]
    pivot = columns.mean() if columns.size else (labels.shape[1] - 1) / 2.0
    return np.tan(angle) * (np.arange(labels.shape[1]) - pivot) * pixel_mm / slice_mm


class SliceSampler(SeededSampler):
    """Args: cases (``datasets.Case``), crop size in pixels, seed, augmentation, number of
    product labels (mask channels: label k is channel k-1; ``bits``: channel k is bit k, the
    ``binary-gaps`` scheme's vertebrae and gaps), and for 2.5D crops (module
    docstring) the neighbours on each side and their distance in mm (the run's in-plane
    spacing, as ``preparation`` takes the card's), and what a spine-centred crop is centred on
    (``spine_centre``: "pixel", the bundled recipes', or "along-spine"), and the most rows
    (columns) each side of a slice is padded by before the crop (``edge_pad``, module docstring;
    0, the default, pads none), and the largest coronal bend in mm (``coronal_bend_mm``, module
    docstring; 0, the default, bends none) with the slices' in-plane pixel size (``pixel_mm``), the
    largest axial turn in degrees (``axial_turn_deg``, module docstring; 0, the default, turns none), and
    whether the masks carry the band under the lowest vertebra as a last channel
    (``band_under_lowest``, ``bits`` only, module docstring; default False), starting
    ``band_offset`` times the vertebra's height under it (``band_under_lowest_vertebra``; default 0),
    and whether only a case's acquired slices are drawn where its other slices were interpolated
    (``acquired_only``, module docstring; default False: every slice), and whether those other
    slices' labels are drawn from their acquired neighbours' (``blend_interpolated``, module
    docstring, blended interpolated labels; default False: the labels as given)."""

    def __init__(self, cases, crop: int, seed: int, augmentation: Augmentation, num_classes: int = 1, context_slices: int = 0, context_distance_mm: float = 1.0,
                 bits: bool = False, crop_centre: str = "pixel", edge_pad: int = 0, coronal_bend_mm: float = 0.0, pixel_mm: float = 1.0,
                 band_under_lowest: bool = False, band_offset: float = 0.0, axial_turn_deg: float = 0.0, acquired_only: bool = False,
                 blend_interpolated: bool = False):
        super().__init__(cases, seed, augmentation, num_classes, bits)
        if band_under_lowest and (not bits or coronal_bend_mm or axial_turn_deg):
            raise ValueError("the band under the lowest vertebra needs binary-gaps labels (--label-scheme binary-gaps) and no coronal bend or axial turn")
        if not 0 <= band_offset <= 1:
            raise ValueError(f"the band's offset under the lowest vertebra must be 0..1 of its height, got {band_offset}")
        self.band_under_lowest, self.band_offset = bool(band_under_lowest), float(band_offset)
        if edge_pad < 0:
            raise ValueError(f"edge padding must be 0 or more pixels, got {edge_pad}")
        if not coronal_bend_mm >= 0 or not pixel_mm > 0:
            raise ValueError(f"a coronal bend must be 0 or more mm on pixels of a positive size, got {coronal_bend_mm} mm, {pixel_mm} mm pixels")
        self.edge_pad, self.coronal_bend_mm, self.pixel_mm = int(edge_pad), float(coronal_bend_mm), float(pixel_mm)
        if not 0 <= axial_turn_deg < 90:
            raise ValueError(f"an axial turn must be 0 or more degrees and under 90, got {axial_turn_deg}")
        self.axial_turn_deg = float(axial_turn_deg)
        if crop_centre not in CROP_CENTRES:
            raise ValueError(f"crop centre {crop_centre!r}: choose one of {', '.join(CROP_CENTRES)}")
        self.crop, self.crop_centre = crop, crop_centre
        self.acquired_only, self.blend_interpolated = bool(acquired_only), bool(blend_interpolated)
        # per case: the slices it was acquired on where the others were interpolated (None: acquired on its own)
        self.acquired = [acquired_slices(case.images) if acquired_only or blend_interpolated else None for case in cases]
        self.index = [(c, s) for c in range(len(cases)) for s in self.drawn_slices(c)]
        self.spine_index = [(c, s) for c, s in self.index if cases[c].labels[s].any()] or self.index
        if (context_slices or coronal_bend_mm or axial_turn_deg) and any(case.slice_spacing_mm is None for case in cases):
            raise ValueError("2.5D sampling, a coronal bend and an axial turn need each case's slice spacing (Case.slice_spacing_mm); prepare the cases again")
        # per case: the channels' offsets in its own slices
        self.offsets = [context_offsets(context_slices, case.slice_spacing_mm or 1.0, context_distance_mm) for case in cases]

    def drawn_slices(self, c: int) -> list[int]:
        """The slices of case ``c`` samples are drawn from: all, or with ``acquired_only`` its
        acquired slices where ``postprocess.acquired_slices`` finds its others interpolated."""
        acquired = self.acquired[c] if self.acquired_only else None
        return [int(s) for s in (range(self.cases[c].images.shape[0]) if acquired is None else acquired)]

    def blended_label(self, c: int, s: int, rng: np.random.Generator) -> np.ndarray:
        """Slice ``s``'s label of case ``c`` with ``blend_interpolated`` (module docstring): an
        interpolated slice between two acquired ones takes the upper one's label with probability
        its distance from the lower one over theirs, else the lower one's; any other slice its own."""
        labels, acquired = self.cases[c].labels, self.acquired[c]
        if acquired is None or s in acquired or not acquired[0] < s < acquired[-1]:
            return labels[s]
        upper = int(np.searchsorted(acquired, s))
        below, above = int(acquired[upper - 1]), int(acquired[upper])
        return labels[above] if rng.random() < (s - below) / (above - below) else labels[below]

    def _crop(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
        size = (self.crop, self.crop)
        if self.edge_pad:  # drawn only when asked for: the bundled recipes' sample streams are unchanged
            (image, labels), _ = edge_padded(image, labels, rng, self.edge_pad)
        image, labels = pad_up_to(image, (image.shape[0], *size)), pad_up_to(labels, size)
        window = centred_window(labels, size, rng, self.crop_centre, self.bits)
        return image[(slice(None), *window)], labels[window]

    def sample_image(self, s: int, c: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Slice ``s`` of case ``c`` as a sample starts from, before augmentation: its channels [C, rows, cols] and label map."""
        return slice_channels(self.cases[c].images, [s], self.offsets[c])[0], self.cases[c].labels[s]

    def sample(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """One augmented crop: image [channels, crop, crop] and one-hot masks [classes, crop, crop]."""
        rng = np.random.default_rng(seed)
        pool = self.spine_index if rng.random() < SPINE_SLICE_FRACTION else self.index
        c, s = pool[rng.integers(len(pool))]
        case, offsets = self.cases[c], self.offsets[c]
        image, labels = self.sample_image(s, c)
        if self.blend_interpolated:
            labels = self.blended_label(c, s, np.random.default_rng((seed, 3)))  # its own draws (module docstring)
        if self.band_under_lowest:
            labels = labels | (band_under_lowest_vertebra(labels, self.band_offset).astype(labels.dtype) << BAND_BIT)
        if self.augmentation.slab_p and rng.random() < self.augmentation.slab_p:
            image = thick_slice(case.images, s, int(rng.integers(1, 3)), offsets)
        elif self.coronal_bend_mm or self.axial_turn_deg:
            shifts = np.zeros(case.images.shape[1:])
            bend_rng = np.random.default_rng((seed, 1))  # its own draws: an unbent sample is the plain sampler's, bit for bit
            if self.coronal_bend_mm and bend_rng.random() < CORONAL_BEND_FRACTION:
                shifts = shifts + coronal_bend(case.images.shape[1], self.coronal_bend_mm / case.slice_spacing_mm, self.pixel_mm, bend_rng)[:, None]
            turn_rng = np.random.default_rng((seed, 2))  # and the turn its own
            if self.axial_turn_deg and turn_rng.random() < AXIAL_TURN_FRACTION:
                shifts = shifts + axial_turn(case.labels[s], self.axial_turn_deg, self.pixel_mm, case.slice_spacing_mm, turn_rng)[None, :]
            if shifts.any():
                image, labels = bent_slice(case.images, case.labels, s, shifts, offsets)
        image, labels = self.augmentation.spatial(image, labels, rng)
        image, labels = self._crop(image, labels, rng)
        image = self.augmentation.intensity(image, rng, channels=True)
        return image.astype(np.float32), self.masks(labels)


class PatchSampler(SeededSampler):
    """Random 3D patches of the cases' isotropic volumes (module docstring).

    Args: cases (``datasets.Case`` on the isotropic grid), patch size (slices, rows,
    columns) in voxels, seed, augmentation, number of product labels."""

    def __init__(self, cases, patch_size, seed: int, augmentation: Augmentation, num_classes: int = 1, bits: bool = False):
        super().__init__(cases, seed, augmentation, num_classes, bits)
        self.patch_size = tuple(int(n) for n in patch_size)
        if len(self.patch_size) != 3:
            raise ValueError(f"a patch has 3 sizes (slices, rows, columns), got {patch_size!r}")

    def sample(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """One augmented patch: image [1, *patch_size] and one-hot masks [classes, *patch_size]."""
        rng = np.random.default_rng(seed)
        case = self.cases[rng.integers(len(self.cases))]
        images, labels = case.images, case.labels
        transform = self.augmentation.draw_warp(images.shape[1:], rng)
        if not transform.is_identity:
            warped = [warp(image, label, transform) for image, label in zip(images, labels)]
            images, labels = np.stack([w[0] for w in warped]), np.stack([w[1] for w in warped])
        images, labels = pad_up_to(images, self.patch_size), pad_up_to(labels, self.patch_size)
        window = centred_window(labels, self.patch_size, rng)
        image = self.augmentation.intensity(images[window], rng)
        return image[None].astype(np.float32), self.masks(labels[window])
