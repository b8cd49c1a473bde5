"""Memory the machine can give, and the refusal when a job would need more.

Two guards use it: ``io.read_image`` refuses a header that claims more voxels than fit
(before anything is allocated: a hostile or damaged header cannot make the reader try to
allocate terabytes), and ``pipeline.segment`` refuses an image whose estimated peak
(``pipeline_peak_bytes``) is above what is available.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import VerdiffError


def available_memory_bytes() -> int:
    """RAM a new allocation can get: ``MemAvailable`` of /proc/meminfo, capped by the cgroup's
    limit (a container's ``memory.max`` minus ``memory.current``); elsewhere the physical
    pages free (``os.sysconf``)."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 1 << 62  # unknown: let the allocation itself fail
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, available)


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def refuse_above_available(needed: int, what: str, suggestion: str = "") -> None:
    """``VerdiffError`` naming ``what`` needs ``needed`` bytes when the machine has less available."""
    available = available_memory_bytes()
    if needed > available:
        hint = f"; {suggestion}" if suggestion else ""
        raise VerdiffError(f"{what} would need about {human_bytes(needed)} of memory, but only {human_bytes(available)} is available{hint}")


# Bytes per pixel per first-level channel a network's forward pass holds at its peak, per
# ensemble member (the U-Nets' encoder activations, skips and time embeddings); fitted so
# that ``pipeline_peak_bytes`` stays above the measured peaks (see its docstring).
ACTIVATION_BYTES_PER_CHANNEL = 16 * 4
# One-off allocations of the first call whatever the image (oneDNN kernels and workspaces,
# the allocator's pools): the measured peak of a one-slice batch on VB3_17 is 187 MiB.
FIRST_CALL_BYTES = 128 << 20


def pipeline_peak_bytes(image, card, ensemble: int, batch_size: int) -> int:
    """An upper estimate of the memory ``pipeline.segment`` allocates for ``image`` (on top of
    the process with its libraries and network loaded), computed from the header alone:

    - the network grid: the image's physical extent at the card's spacing (2D models keep
      the slice count; 3D models resample it too), i.e. what ``sagittal_reference`` builds;
    - on that grid, float32: the stack and its normalised copy, mean probability and spread
      (per class), the label and uncertainty stacks;
    - on the input grid: a float32 copy of the image (resampling, percentiles) and the
      label map and uncertainty coming back, as arrays and as images;
    - one batch of the network: ``batch_size`` slices (3D: windows of the card's patch) x
      ``ensemble`` x pixels x first-level channels x ``ACTIVATION_BYTES_PER_CHANNEL``.

    Checked against the peak resident memory measured around ``segment`` by
    ``benchmarks/memory_estimate.py`` (ru_maxrss after minus before, one process, CPU, one
    thread, card defaults), estimate / measured in MiB: VB3_17 (224x224x77 MR) with
    verdiff-mr, batch 1: 307 / 187, batch 8: 570 / 307; with ldseg3d-mr, batch 8:
    1735 / 527; the chest CT (512x512x133) with verdiff-ct, batch 8: 2022 / 1486. It errs
    high (up to ~3x for the 3D windows), never low on these.
    """
    from .inferers.sagittal import sagittal_axes

    size = [int(n) for n in image.GetSize()]
    spacing = [float(s) for s in image.GetSpacing()]
    step = card.spacing_mm
    extent = [n * s / step for n, s in zip(size, spacing)]
    if image.GetDimension() == 3 and 1 not in size:
        slice_axis, row_axis, col_axis, _ = sagittal_axes(image)
        rows, cols = extent[row_axis], extent[col_axis]
        slices = extent[slice_axis] if card.spatial_dims == 3 else size[slice_axis]
    else:  # 2D or a single slice
        rows, cols = sorted(e for e, n in zip(extent, size) if n != 1)[-2:] if len(size) == 3 else extent
        slices = 1
    border = 16 + 2 * card.edge_padding  # padding to the network's multiple, and a card's edge padding on both sides
    rows, cols, slices = math.ceil(rows) + border, math.ceil(cols) + border, math.ceil(slices)
    grid = float(rows) * cols * slices
    classes = card.num_classes + 1
    input_voxels = float(math.prod(size))
    on_grid = grid * 4 * (2 + 2 * classes + 2)
    on_input = input_voxels * (4 + 2 * (1 + 4))
    width = (card.channels or (64,))[0]  # 64: a card relying on a family default
    if card.spatial_dims == 3 and card.patch_size:
        batch_pixels = min(batch_size, 64) * math.prod(card.patch_size)
    else:
        batch_pixels = min(batch_size, slices) * rows * cols
    network = batch_pixels * ensemble * width * ACTIVATION_BYTES_PER_CHANNEL
    return int(on_grid + on_input + network + FIRST_CALL_BYTES)


def refuse_segmentation_above_available(image, card, ensemble: int, batch_size: int) -> None:
    """``VerdiffError`` with the estimate and what to change, when ``pipeline_peak_bytes`` is
    above the memory available."""
    needed = pipeline_peak_bytes(image, card, ensemble, batch_size)
    size = "x".join(map(str, image.GetSize()))
    hint = "a smaller --batch-size or --ensemble, or crop or downsample the image"
    if batch_size > 1:
        hint = f"try --batch-size {max(1, batch_size // 4)}, a smaller --ensemble, or crop or downsample the image"
    refuse_above_available(needed, f"segmenting {size} voxels (spacing {tuple(round(s, 3) for s in image.GetSpacing())} mm) with {card.name}", hint)
