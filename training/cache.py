"""A compact, portable copy of a run's training cases: ``python -m training train ... --write-cache F``.

A lent GPU machine sees only what travels with the repository (64 MiB in all), not
``../shared/data``. ``write_cache`` stores a run's training cases exactly as the sampler
draws from them (normalised sagittal stacks on the run's grid, product labels) in one
compressed ``.npz``, and ``--cache FILE`` trains from it instead of reading the images.

Decisions, to fit the budget: intensities are stored as uint8 (the normalised [0, 1] range
in 256 steps: the MR and X-ray sources are 8-bit already; CT loses a little below the
window's 10 HU step); each case is cut to the slices within ``MARGIN_SLICES`` of its
spine and to the rows and columns within ``MARGIN_PIXELS`` of it (the sampler's crops
centre on spine 70 % of the time; far lateral slices, 20 % "any slice" draws, are fewer);
``slice_step`` k keeps every k-th sagittal slice (the lumbar MR's 1 mm slices are so alike
that every second one still shows each body some 20 times; the MR cache needs it to fit);
the archive's members are LZMA-compressed (``np.load`` reads them as any .npz; a fifth
smaller than ``np.savez_compressed``'s deflate, which let the MR and X-ray caches travel in
one call); the split and the run's config are stored beside the arrays, so a run from the cache
records the same split and config as a run from the images. A cache holds training
cases only: validation needs the original images and runs where the data are.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from .case import Case
from .configs import RunConfig

MARGIN_SLICES = 4
MARGIN_PIXELS = 48
# Run-config keys that shape the network or how samples are drawn from the cases, not the
# cases: one cache serves every width of its run, 2D or 2.5D.
SAMPLING_ONLY_KEYS = ("channels", "context_slices", "context_distance_mm")


def cropped(case: Case) -> Case:
    """``case`` cut to its spine's neighbourhood (module docstring); a case without spine is kept whole."""
    if not case.labels.any():
        return case
    indices = np.nonzero(case.labels)
    margins = (MARGIN_SLICES, MARGIN_PIXELS, MARGIN_PIXELS)
    box = tuple(slice(max(int(i.min()) - m, 0), int(i.max()) + m + 1) for i, m in zip(indices, margins))
    return Case(case.name, case.images[box], case.labels[box], case.slice_spacing_mm)


def write_cache(run: RunConfig, data_root: Path, path: Path, limit: int | None = None, slice_step: int = 1) -> dict:
    """Write the run's training cases to ``path`` (.npz); returns a small summary."""
    from .datasets import training_cases  # the image readers: not needed to read a cache back

    cases, split = training_cases(run, data_root, limit)
    arrays = {}
    for k, case in enumerate(cropped(c) for c in cases):
        arrays[f"images_{k}"] = np.round(np.clip(case.images[::slice_step], 0, 1) * 255).astype(np.uint8)
        arrays[f"labels_{k}"] = case.labels[::slice_step]
    # every k-th slice: k times the spacing (2.5D sampling places neighbours in mm by it)
    spacings = [None if c.slice_spacing_mm is None else c.slice_spacing_mm * slice_step for c in cases]
    meta = {"names": [c.name for c in cases], "split": split, "config": run.to_dict(), "slice_step": slice_step, "slice_spacings_mm": spacings}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_npz_lzma(path, {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays})
    return {"cases": len(cases), "bytes": path.stat().st_size, "path": str(path)}


def save_npz_lzma(path: Path, arrays: dict) -> None:
    """``arrays`` as an .npz whose members are LZMA-compressed (module docstring)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_LZMA) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


def _cases_config(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in SAMPLING_ONLY_KEYS}


def read_cache(path: Path, run: RunConfig) -> tuple[list[Case], dict]:
    """(training cases, split) from a cache written for the same config."""
    with np.load(path) as data:
        meta = json.loads(data["meta"].tobytes().decode())
        if _cases_config(meta["config"]) != _cases_config(run.to_dict()):
            raise ValueError(f"{path} was written for another run config ({meta['config']['name']}); write it again for this one")
        spacings = meta.get("slice_spacings_mm") or [None] * len(meta["names"])  # caches written before 2.5D runs: unknown
        cases = [Case(name, data[f"images_{k}"].astype(np.float32) / 255, data[f"labels_{k}"], spacings[k]) for k, name in enumerate(meta["names"])]
    return cases, meta["split"]
