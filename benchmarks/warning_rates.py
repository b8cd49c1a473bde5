"""How well the reliability warning separates bad results from good ones (issue 16, item 9).

Reads evaluation JSON files (``python -m training evaluate ... --out F``, with or without
``--suite``, or an export's ``suites.json``), takes every case row with its Dice and its
run's reliability estimate, and prints JSON: for the warning as shipped
(the card's threshold, else ``reliability.SELF_DICE_WARNING``) and for other thresholds, the share of cases with
Dice < 0.7 that it fires on (goal >= 0.9) and of cases with Dice >= 0.85 (goal <= 0.1).

    .venv/bin/python benchmarks/warning_rates.py runs/verdiff-mr-s1c/suites.json /tmp/validation.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from VerdiffSegmentLib.reliability import SELF_DICE_WARNING


def rows_of(data: dict) -> list[dict]:
    if isinstance(data.get("cases"), list):
        return [r for r in data["cases"] if "reliability" in r]
    rows = []
    for value in data.get("suites", data).values():
        if isinstance(value, dict):
            rows += rows_of(value)
    return rows


def rates(rows: list[dict], threshold: float) -> dict:
    fires = lambda r: r["reliability"]["likely_wrong"] if threshold is None else (r["reliability"]["self_dice"] < threshold)  # noqa: E731
    bad = [r for r in rows if r["dice"] < 0.7]
    good = [r for r in rows if r["dice"] >= 0.85]
    return {
        "threshold": threshold,
        "bad_cases": len(bad),
        "fires_on_bad": round(sum(map(fires, bad)) / len(bad), 3) if bad else None,
        "good_cases": len(good),
        "fires_on_good": round(sum(map(fires, good)) / len(good), 3) if good else None,
    }


def main(paths) -> dict:
    rows = [row for path in paths for row in rows_of(json.loads(Path(path).read_text()))]
    return {
        "cases": len(rows),
        "shipped": {**rates(rows, None), "self_dice_warning": SELF_DICE_WARNING},
        "sweep": [rates(rows, t) for t in (0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96)],
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
