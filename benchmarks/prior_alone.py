"""Verdiff-Net without its diffusion: the conditional U-Net's prior alone, scored per vertebra as
``benchmarks/levels_accuracy.py`` scores the bundled pipeline (same arguments, same JSON).

Why (issue 15, session 22): the bundled cards sample once from t = 150 with 2 members, and
the label map is the members' mean. This run keeps everything else (preparation, padding,
post-processing, naming, Cobb angles) and lets no slice be diffused, the path the sampler
already takes on slices where the prior finds no spine (``inferers.ensemble.sample_ensemble``,
``min_pixels``): the probability is the prior's and the spread 0, so the uncertainty figures of
this run mean nothing. Compare its JSON with ``levels_accuracy.py`` on the same modality.

Usage: python benchmarks/prior_alone.py {mr,xray,ct} [--model NAME] [--limit N]
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "VerdiffSegment"), str(REPO), str(REPO / "benchmarks")]

from VerdiffSegmentLib.families import verdiff_net  # noqa: E402
from VerdiffSegmentLib.inferers.ensemble import sample_ensemble  # noqa: E402
import levels_accuracy  # noqa: E402


def main(argv=None) -> None:
    # get_family reads the module's FAMILY on every call, so every card of the family gets it.
    verdiff_net.FAMILY = dataclasses.replace(verdiff_net.FAMILY, sample=functools.partial(sample_ensemble, min_pixels=sys.maxsize))
    levels_accuracy.main(argv)


if __name__ == "__main__":
    main()
