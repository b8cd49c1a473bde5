"""Train the spine-strip level reader (``VerdiffSegmentLib.spine_strip``) on the AASCE landmarks.

Samples (each draw, ``draw``): a training radiograph at the reader's scale, its 17 landmark
centres jittered by ``CENTRE_JITTER`` widths (a segmentation's pieces are placed that roughly),
T1 dropped (``MISS_END``) or a C7 piece added (``EXTRA_TOP``), L5 dropped or an S1 piece added
(``EXTRA_BOTTOM``; C7 and S1 one landmark step past the ends, ``vertebra_level.extended_vertebrae``),
the strip along their centre line extended 1-4 widths past each end at random, so that where
the strip starts and ends says nothing about the levels. The strip is then zoomed by 0.85-1.2,
mirrored, and given a gamma; strips longer than ``MAX_ROWS`` are cropped at random.
Target: each strip row's level, the one whose centre lies nearest on the true centre line
(``row_levels``), read at the feature rows' places; rows beyond C7 - 0.5 or S1 + 0.5 are not
scored. Loss: cross-entropy with label smoothing ``LABEL_SMOOTHING``.

``python -m training spine-strip --out runs/spine-strip`` trains; ``export-spine-strip
--checkpoint runs/spine-strip/stepN.pt`` writes ``Resources/Models/spine-strip-xray.pt`` and
names it in every X-ray card (``naming.strip_network``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from VerdiffSegmentLib.spine_strip import COLUMNS, ROWS_PER_FEATURE, SpineStripNetwork, centre_line, sample_strip, strip_log_probabilities
from VerdiffSegmentLib.vertebra_level import LEVEL_PATCH
from VerdiffSegmentLib.vertebra_patches import at_scale

from .vertebra_level import extended_vertebrae, reader_figures
from .xray_helpers import export_into_xray_cards, named_radiographs, random_gamma, train_on_split

CENTRE_JITTER = 0.08  # widths, standard deviation
MISS_END, EXTRA_TOP, EXTRA_BOTTOM = 0.2, 0.15, 0.25
ZOOM = (0.85, 1.2)
MAX_ROWS = 640
LABEL_SMOOTHING = 0.05
WEIGHTS = "spine-strip-xray.pt"


def load_samples(root: Path, names: set[str]):
    """[(picture at the reader's scale, centres [19] of C7..S1, widths [19])] per named radiograph."""
    return [at_scale(picture, *extended_vertebrae(mat), LEVEL_PATCH) for picture, mat in named_radiographs(root, names)]


def row_levels(line: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each point of ``line``'s level index (0..18: C7..S1), the nearest level on the polyline through
    the 19 ``centres`` (beyond its ends along the end steps); -100 beyond C7 - 0.5 or S1 + 0.5."""
    nearest, coordinate = np.full(len(line), np.inf), np.zeros(len(line))
    last = len(centres) - 2
    for k in range(len(centres) - 1):
        start, step = centres[k], centres[k + 1] - centres[k]
        t = np.clip(((line - start) @ step) / max(float(step @ step), 1e-6), -np.inf if k == 0 else 0.0, np.inf if k == last else 1.0)
        distance = np.linalg.norm(line - (start + t[:, None] * step), axis=1)
        closer = distance < nearest
        nearest[closer], coordinate[closer] = distance[closer], k + t[closer]
    levels = np.rint(coordinate).astype(np.int64)
    levels[(coordinate < -0.5) | (coordinate > len(centres) - 0.5)] = -100
    return levels


def draw(samples, rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented batch: (strips [B, 1, L, COLUMNS] zero-padded to a common length, level
    indices [B, L / ROWS_PER_FEATURE], -100 where not scored)."""
    strips, targets = [], []
    for index in rng.integers(0, len(samples), batch_size):
        picture, centres, widths = samples[index]
        zoom = rng.uniform(*ZOOM)
        width = float(np.median(widths[1:-1]))
        points = centres[1:-1] + rng.normal(0, CENTRE_JITTER, (17, 2)) * width
        if rng.random() < MISS_END:
            points = points[1:]
        elif rng.random() < EXTRA_TOP:
            points = np.concatenate([centres[:1] + rng.normal(0, 0.1, 2) * width, points])
        if rng.random() < MISS_END:
            points = points[:-1]
        elif rng.random() < EXTRA_BOTTOM:
            points = np.concatenate([points, centres[-1:] + rng.normal(0, 0.15, 2) * width])
        line, _ = centre_line(points, width, rng.uniform(1, 4), rng.uniform(1, 4))
        strip, target = sample_strip(picture, line), row_levels(line, centres)
        rows = strip.shape[1]
        zoomed = max(ROWS_PER_FEATURE, int(round(rows * zoom)))
        strip = F.interpolate(strip[None], size=(zoomed, int(round(COLUMNS * zoom))), mode="bilinear", align_corners=False)[0]
        excess = strip.shape[2] - COLUMNS
        strip = strip[:, :, excess // 2 : excess // 2 + COLUMNS] if excess >= 0 else F.pad(strip, (-excess // 2, -excess - (-excess // 2)))
        target = target[np.clip(np.floor((np.arange(zoomed) + 0.5) / zoom).astype(int), 0, rows - 1)]
        if rng.random() < 0.5:
            strip = strip.flip(-1)
        strip = random_gamma(strip, rng)
        if strip.shape[1] > MAX_ROWS:
            start = int(rng.integers(0, strip.shape[1] - MAX_ROWS + 1))
            strip, target = strip[:, start : start + MAX_ROWS], target[start : start + MAX_ROWS]
        strips.append(strip)
        targets.append(target)
    length = int(math.ceil(max(s.shape[1] for s in strips) / ROWS_PER_FEATURE) * ROWS_PER_FEATURE)
    batch = torch.zeros(len(strips), 1, length, COLUMNS)
    levels = torch.full((len(strips), length // ROWS_PER_FEATURE), -100, dtype=torch.long)
    for j, (strip, target) in enumerate(zip(strips, targets)):
        batch[j, :, : strip.shape[1]] = strip
        padded = np.full(length, -100)
        padded[: len(target)] = target
        levels[j] = torch.from_numpy(padded[ROWS_PER_FEATURE // 2 :: ROWS_PER_FEATURE][: length // ROWS_PER_FEATURE])
    return batch, levels


def evaluate(network, items) -> dict:
    """``vertebra_level.reader_figures`` of the strip reader (one strip through the truth centres)."""
    return reader_figures(network, items, strip_log_probabilities)


def train(data_root: Path, out: Path, steps: int, batch_size: int = 16, lr: float = 2e-3, seed: int = 0, val_every: int = 1000,
          init: Path | None = None, limit: int | None = None, command: str | None = None) -> dict:
    """Train on the ``verdiff-xray`` card split's training images (``limit``: the first N),
    validate on its validation images every ``val_every`` steps; writes ``out/stepN.pt``,
    ``out/log.json`` and returns the last validation (``xray_helpers.train_on_split``)."""
    network = SpineStripNetwork()

    def batch_loss(samples, rng) -> torch.Tensor:
        strips, levels = draw(samples, rng, batch_size)
        logits = network(strips)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), levels.reshape(-1), ignore_index=-100, label_smoothing=LABEL_SMOOTHING)

    return train_on_split(network, load_samples, batch_loss, evaluate, data_root, out, steps, batch_size, lr, seed, val_every, init, limit, command)


def export(checkpoint: Path, models_dir: Path, data_root: Path, run_log: Path | None = None) -> dict:
    """Write ``checkpoint``'s weights (fp16) as ``models_dir/spine-strip-xray.pt``, validate them on
    the card split's validation images, and set ``naming.strip_network`` in every X-ray card there
    (``xray_helpers.export_into_xray_cards``)."""
    network = SpineStripNetwork()
    return export_into_xray_cards(
        checkpoint, models_dir, data_root, run_log, WEIGHTS, network, evaluate, ("naming", "strip_network"),
        {"network": {"channels": list(network.channels), "hidden": network.hidden, "levels": list(network.levels)},
         "what": "each vertebra's level (C7, T1..L5, S1) from a strip of the radiograph along the whole spine (VerdiffSegment/VerdiffSegmentLib/spine_strip.py); its names are united with the level network's where the two agree"},
        "the card's validation images (truth landmark centres and widths)",
    )
