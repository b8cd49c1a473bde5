"""The level of every vertebra on an AP radiograph read from one strip of the picture along the
whole spine: a second reader beside the vertebra-level network (``vertebra_level``), whose names
the naming unites with that network's where the two agree (``levels.united_names``), on a card
that names it in ``naming.strip_network``. No bundled card does yet: on the 47 held-out
radiographs the united names raise the level Dice by 0.023 (95 % interval 0.006 to 0.045) and the
share named right by 2.8 points, but the share named wrong by 0.6 points, which the rule fixed
before the measurement did not allow (docs/levels.md, session 38).

Why (issue 15): the vertebra-level network sees 6 x 4 vertebra widths around each piece and the
level map the whole picture at 10 rows a vertebra; the X-ray names are lost at the chains' ends
(sessions 11, 33). The strip follows the spine at the level network's scale from end to end, so
every row sees the whole spine: on the held-out truth vertebrae its most probable level is right
for 80 % (the level network: 75 %), and it names whole spines the level network leaves unnamed.
On the model's pieces alone it names fewer right than the level network; the two leave
different radiographs unnamed.

Decisions:
1. The strip: the picture resized so that the median vertebra width is ``WIDTH_PX`` pixels
   (``vertebra_patches.at_scale``), sampled at one pixel steps along the polyline through the
   pieces' centres (head to feet), extended ``END_WIDTHS`` widths past each end along the end
   pieces' direction, ``COLUMNS`` pixels across the line's normal (the tangent smoothed over
   ``TANGENT_PX`` either way; outside the picture its darkest value, as ``vertebra_patches``),
   normalised by its 1st and 99th percentiles.
2. The network (``SpineStripNetwork``): four stages of two 3 x 3 convolutions (GroupNorm, SiLU),
   the first two halving the grid, averaged across the strip: one feature per ``ROWS_PER_FEATURE``
   rows; a two-layer bidirectional GRU along them; a linear layer to the logits of C7, T1..L5, S1
   (``vertebra_level.LEVELS``) per feature row. A piece reads the log-probabilities at its centre's
   place along the line (linear between feature rows), averaged with the mirror image's.
3. Training (``training/spine_strip.py``): the landmark centres jittered, T1 or L5 dropped and a
   C7 or S1 piece added at random (as a segmentation misses or adds one), the ends extended 1-4
   widths at random so that the strip's ends say nothing; each row's target is the level whose
   centre is nearest on the true centre line (C7 and S1 one landmark step past the ends).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .vertebra_level import LEVEL_PATCH, LEVELS
from .vertebra_patches import at_scale, pixel_grid, sampled_normalised, stage_layers

WIDTH_PX = LEVEL_PATCH.width_px  # 16 pixels a vertebra width, the level network's scale
COLUMNS = 80  # five widths across: the pedicles, the rib heads
END_WIDTHS = 3.0  # the strip runs this far past the end pieces at inference
TANGENT_PX = 8
ROWS_PER_FEATURE = 4


def centre_line(points: np.ndarray, width: float, extend_top: float, extend_bottom: float) -> tuple[np.ndarray, np.ndarray]:
    """(line [L, (row, col)] at one pixel steps, the arc position of each point [n]) of the polyline
    through ``points`` [n, (row, col)] (head to feet), extended by ``extend_*`` widths of ``width``
    pixels along the end pieces' direction (straight down for a single point)."""
    points = np.asarray(points, float).reshape(-1, 2)
    if len(points) == 1:
        top, bottom = points[0] - [extend_top * width, 0.0], points[0] + [extend_bottom * width, 0.0]
    else:
        up, down = points[0] - points[1], points[-1] - points[-2]
        top = points[0] + up / max(np.linalg.norm(up), 1e-6) * extend_top * width
        bottom = points[-1] + down / max(np.linalg.norm(down), 1e-6) * extend_bottom * width
    polyline = np.concatenate([top[None], points, bottom[None]])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(polyline, axis=0), axis=1))])
    steps = np.arange(0.0, arc[-1] + 1e-6, 1.0)
    line = np.stack([np.interp(steps, arc, polyline[:, 0]), np.interp(steps, arc, polyline[:, 1])], axis=1)
    return line, arc[1:-1]


def sample_strip(picture: np.ndarray, line: np.ndarray, columns: int = COLUMNS) -> torch.Tensor:
    """[1, L, columns] strip of ``picture`` along ``line`` (decision 1)."""
    padded = np.concatenate([np.repeat(line[:1], TANGENT_PX, 0), line, np.repeat(line[-1:], TANGENT_PX, 0)])
    tangent = padded[2 * TANGENT_PX :] - padded[: -2 * TANGENT_PX]
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-6)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)  # (row, col), to the picture's right for a line running down
    if (normal[:, 1] < 0).mean() > 0.5:
        normal = -normal
    across = np.arange(columns) - (columns - 1) / 2
    points = line[:, None, :] + across[None, :, None] * normal[:, None, :]
    return sampled_normalised(picture, pixel_grid(points[..., 0], points[..., 1], np.shape(picture))[None])[0]


class SpineStripNetwork(nn.Module):
    """[B, 1, L, COLUMNS] -> [B, L // ROWS_PER_FEATURE, len(levels)] level logits (decision 2).

    Args:
        channels: channels of the four convolution stages (default (16, 32, 64, 96)).
        hidden: the GRU's width each way (default 64).
        levels: the level names of the outputs, head to feet (default ``vertebra_level.LEVELS``).
    """

    def __init__(self, channels=(16, 32, 64, 96), hidden: int = 64, levels=LEVELS):
        super().__init__()
        self.channels, self.hidden, self.levels = tuple(int(c) for c in channels), int(hidden), tuple(str(level) for level in levels)
        layers, previous = [], 1
        for index, width in enumerate(self.channels):
            layers += stage_layers(previous, width, stride=2 if index < 2 else 1)
            previous = width
        self.features = nn.Sequential(*layers)
        self.gru = nn.GRU(previous, self.hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * self.hidden, len(self.levels))

    def forward(self, strip: torch.Tensor) -> torch.Tensor:
        rows = self.features(strip).mean(dim=3).transpose(1, 2)  # [B, L / ROWS_PER_FEATURE, C]
        return self.head(self.gru(rows)[0])


@torch.no_grad()
def strip_log_probabilities(network: SpineStripNetwork, picture: np.ndarray, centres: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """[n, len(network.levels)] log-probabilities of the vertebrae at ``centres`` [n, (row, col)]
    (head to feet) with ``widths`` [n] (pixels) of a 2D picture, on the network's device."""
    if len(centres) == 0:
        return np.zeros((0, len(network.levels)))
    scaled, centres, widths = at_scale(picture, centres, widths, LEVEL_PATCH)
    line, arc = centre_line(centres, float(np.median(widths)), END_WIDTHS, END_WIDTHS)
    parameter = next(network.parameters())
    strip = sample_strip(scaled, line)[None].to(device=parameter.device, dtype=parameter.dtype)
    logits = (network(strip).float() + network(strip.flip(-1)).float()) / 2
    scores = F.log_softmax(logits[0], dim=-1).cpu().numpy()
    place = np.clip((arc - ROWS_PER_FEATURE // 2) / ROWS_PER_FEATURE, 0, len(scores) - 1)  # feature row j sits at strip row 4j + 2
    below = np.floor(place).astype(int)
    above, share = np.minimum(below + 1, len(scores) - 1), (place - below)[:, None]
    return (1 - share) * scores[below] + share * scores[above]
