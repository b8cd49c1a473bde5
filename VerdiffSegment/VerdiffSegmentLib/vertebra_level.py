"""The level of each vertebra on an AP radiograph, read from a tall patch of the picture around
it: to name the X-ray model's pieces where their count names nothing (``levels.vertebrae``;
the X-ray cards' ``naming.level_network``; measured in docs/levels.md, sessions 9 and 10).

Why (issue 15): a binary model's only anchor is the count of its pieces, and one merged or
one extra piece (the top of S1) leaves the whole spine unnamed; the level map
(``level_map``, the whole radiograph on a 256 x 96 grid) named 72 % of the truth vertebrae
right, its errors whole spines one level off (docs/levels.md, session 7). Which vertebra is
which shows locally: the sacrum and the iliac crests beside L5 and L4, the last ribs at T12,
the first ribs and the clavicles at T1, the shape and size of each body. This network sees
each vertebra with about three neighbours above and below at a resolution fixed by its
size, as the endplate-tilt network does (``endplate_tilt``), and gives a probability for
each of ``LEVELS``; ``levels.levels_from_log_probabilities`` then names the pieces top-down
as the likeliest strictly increasing sequence, so that the evidence of every piece (an L5
above the sacrum, a T12 with its ribs) places the others.

Decisions:
1. The patch (``LEVEL_PATCH``) is 96 x 64 pixels spanning 6 x 4 vertebra widths, at 16
   pixels a width: about seven bodies tall and the ribs' or the pelvis's width; sampling and
   the network are ``vertebra_patches``'s.
2. The classes are C7, T1..L5 and S1: a piece of the segmentation can be the C7 above T1 or the
   top of S1 under L5 (the AASCE landmarks mark T1..L5; training places C7 and S1 one
   landmark step past each end).
3. The logits of the patch and its mirror image are averaged (a level does not change with
   the side).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .levels import EXTENDED_LEVELS, chain_levels, united_names
from .vertebra_patches import PatchNetwork, PatchShape, at_scale, large_pieces, patches, piece_geometry

LEVEL_PATCH = PatchShape(96, 64, 6.0, 4.0)
LEVELS = tuple(EXTENDED_LEVELS[EXTENDED_LEVELS.index("C7") :])  # C7, T1..L5, S1 (decision 2)


class VertebraLevelNetwork(PatchNetwork):
    """``PatchNetwork`` with one logit per level: [B, 1, 96, 64] -> [B, len(levels)].

    Args:
        channels: channels of the five stages (default (16, 32, 64, 96, 128)).
        levels: the level names of the outputs, head to feet (default ``LEVELS``: C7, T1..L5, S1).
    """

    def __init__(self, channels=(16, 32, 64, 96, 128), levels=LEVELS):
        levels = tuple(str(level) for level in levels)
        super().__init__(channels, outputs=len(levels))
        self.levels = levels


@torch.no_grad()
def level_log_probabilities(network: VertebraLevelNetwork, picture: np.ndarray, centres: np.ndarray, widths: np.ndarray, mirror: bool = True) -> np.ndarray:
    """[n, len(network.levels)] log-probabilities of the vertebrae at ``centres`` [n, (row, col)]
    with ``widths`` [n] (pixels) of a 2D picture; on the network's device. ``mirror`` (default
    True): the logits of the patch and of its mirror image averaged (decision 3)."""
    if len(centres) == 0:
        return np.zeros((0, len(network.levels)))
    parameter = next(network.parameters())
    batch = patches(*at_scale(picture, centres, widths, LEVEL_PATCH), LEVEL_PATCH).to(device=parameter.device, dtype=parameter.dtype)
    logits = network(batch).float()
    if mirror:
        logits = (logits + network(batch.flip(-1)).float()) / 2
    return F.log_softmax(logits, dim=-1).cpu().numpy()


class PieceLevelReader:
    """Reads each piece of a label map's level log-probabilities from the picture under it
    (``reader(labels, values)``), and names the pieces with each name's posterior
    (``reader.read_levels(labels, values)``): what ``levels.vertebrae`` calls with its separated
    pieces. Pieces under 3 pixels (no width) get equal probabilities: only their neighbours place
    them. ``strip_network`` (``spine_strip.SpineStripNetwork``, optional): a second reader along
    the whole spine, whose chain's names are united with this network's (``levels.united_names``)."""

    def __init__(self, network: VertebraLevelNetwork, picture: np.ndarray, strip_network=None):
        self.network, self.picture, self.strip_network = network, np.asarray(picture, np.float32), strip_network
        self.levels = network.levels

    def __call__(self, labels: np.ndarray, values: list[int]) -> np.ndarray:
        return self._read(level_log_probabilities, self.network, labels, values)

    def read_levels(self, labels: np.ndarray, values: list[int]) -> tuple[list[str | None], list[float | None]]:
        """(each piece's level head to feet or None, its posterior on the chain that named it or
        None): the chain over this network's reading (``levels.chain_levels``), united with the
        strip's chain where there is a strip network; a name the union takes from the strip
        carries the strip chain's posterior."""
        names, posteriors = chain_levels(self(labels, values), self.levels)
        if self.strip_network is None:
            return names, posteriors
        from .spine_strip import strip_log_probabilities  # spine_strip imports this module

        strip = self._read(strip_log_probabilities, self.strip_network, labels, values)
        strip_names, strip_posteriors = chain_levels(strip, self.strip_network.levels)
        united = united_names(names, strip_names)
        return united, [None if name is None else own if name == mine else other
                        for name, mine, own, other in zip(united, names, posteriors, strip_posteriors)]

    def _read(self, read, network, labels: np.ndarray, values: list[int]) -> np.ndarray:
        """[len(values), len(network.levels)]: ``read(network, picture, centres, widths)`` of the
        pieces with 3 pixels or more, equal probabilities for the others."""
        labels = np.asarray(labels).reshape(self.picture.shape)
        out = np.full((len(values), len(network.levels)), -np.log(len(network.levels)))
        measurable = large_pieces(labels, values)
        if measurable:
            out[[values.index(v) for v in measurable]] = read(network, self.picture, *piece_geometry(labels, measurable))
        return out
