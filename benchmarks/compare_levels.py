"""Is a candidate's change on the held-out cases more than luck? Paired bootstrap of two
``levels_accuracy.py`` runs, printed as JSON.

Each side is one or more ``levels_accuracy.py`` JSON files of the same modality and cases
(several seeds of the model's sampling, session 35: the X-ray names move with the draw); a
case's figures are averaged over a side's files first. For every metric the difference
candidate - base is resampled over the cases, paired (``scipy.stats.bootstrap``, percentile
interval, 10 000 resamples, seed 0):

- ``level_dice_mean``, ``binary_dice``, ``level_dice_names_aside``: means over the cases;
- ``correctly_named_share``, ``wrongly_named_share``: vertebrae named right (wrong) over all
  truth vertebrae, the ratio of the sums as ``levels_accuracy.py`` reports it.

Why: sessions 29-35 kept or dropped candidates by rules such as "level Dice up by 0.005" on 8
MR subjects or 47 radiographs, where one case's swing is of that size; the interval says which
changes the held-out set can tell apart at all (``share_of_resamples_above_zero`` near 0.5:
it cannot).

Usage: python benchmarks/compare_levels.py --base A.json [A2.json ...] --candidate B.json [B2.json ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats

MEANS = ("level_dice_mean", "binary_dice", "level_dice_names_aside")
SHARES = {"correctly_named_share": "correctly_named", "wrongly_named_share": "wrongly_named"}
COUNTS = ("vertebrae", *SHARES.values())


def per_case(paths: list[Path]) -> tuple[str, dict[str, dict[str, float]]]:
    """(modality, {case: {metric: mean over the files}}) of the model's rows; every file must
    hold the same modality and cases."""
    runs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    modalities = {run["modality"] for run in runs}
    if len(modalities) != 1:
        raise SystemExit(f"the files mix modalities: {sorted(modalities)}")
    by_case = [{row["case"]: row["model"] for row in run["rows"]} for run in runs]
    if any(sorted(scores) != sorted(by_case[0]) for scores in by_case):
        raise SystemExit("the files do not hold the same cases")
    table = {case: {key: float(np.mean([scores[case][key] for scores in by_case])) for key in (*MEANS, *COUNTS)} for case in by_case[0]}
    return modalities.pop(), table


def compare(base: dict, candidate: dict, resamples: int = 10_000, seed: int = 0) -> dict:
    if sorted(base) != sorted(candidate):
        raise SystemExit("base and candidate do not hold the same cases")
    cases = sorted(base)
    column = lambda side, key: np.array([side[c][key] for c in cases])  # noqa: E731
    vertebrae = column(base, "vertebrae")
    figures = {}
    for key in (*MEANS, *SHARES):
        if key in MEANS:
            data = (column(base, key), column(candidate, key))
            statistic = lambda b, c, axis=-1: np.mean(c - b, axis=axis)  # noqa: E731
            base_value, candidate_value = data[0].mean(), data[1].mean()
        else:
            count = SHARES[key]
            data = (column(base, count), column(candidate, count), vertebrae)
            statistic = lambda b, c, v, axis=-1: (np.sum(c, axis=axis) - np.sum(b, axis=axis)) / np.sum(v, axis=axis)  # noqa: E731
            base_value, candidate_value = data[0].sum() / vertebrae.sum(), data[1].sum() / vertebrae.sum()
        result = stats.bootstrap(data, statistic, paired=True, vectorized=True, n_resamples=resamples, method="percentile",
                                 rng=np.random.default_rng(seed))
        distribution = result.bootstrap_distribution
        figures[key] = {
            "base": round(float(base_value), 4),
            "candidate": round(float(candidate_value), 4),
            "difference": round(float(candidate_value - base_value), 4),
            "interval_95": [round(float(result.confidence_interval.low), 4), round(float(result.confidence_interval.high), 4)],
            "share_of_resamples_above_zero": round(float(np.mean(distribution > 0)), 3),
        }
    return {"cases": len(cases), "resamples": resamples, "seed": seed, "figures": figures}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", nargs="+", type=Path, required=True, help="levels_accuracy.py JSON of the reference (one per seed)")
    parser.add_argument("--candidate", nargs="+", type=Path, required=True, help="levels_accuracy.py JSON of the candidate (one per seed)")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    args = parser.parse_args(argv)
    base_modality, base = per_case(args.base)
    candidate_modality, candidate = per_case(args.candidate)
    if base_modality != candidate_modality:
        raise SystemExit(f"base is {base_modality}, candidate {candidate_modality}")
    summary = compare(base, candidate, args.resamples, args.seed)
    print(json.dumps({"modality": base_modality, "base": [str(p) for p in args.base], "candidate": [str(p) for p in args.candidate], **summary}, indent=1))


if __name__ == "__main__":
    main()
