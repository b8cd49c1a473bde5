"""Validation Dice of one bundled model over a grid of sampling settings, each against the
1000-step, 8-member reference; print JSON.

    .venv/bin/python benchmarks/sampling_grid.py MODEL [--settings 5x3 1x2@150 ...]
        [--reference 1000x8] [--limit N] [--threads T]

A setting is ``STEPSxMEMBERS``, optionally ``@START``: sampling starts from the prior
noised to timestep START (``schedulers.prior_shifted``'s ``start_timestep``), or, without
it, from T-1 as in the paper. The reference is always sampled from T-1 (the paper's full
chain). Each setting runs the whole ``segment`` on the held-out split the model card
records (its first N cases with ``--limit``), exactly as the card's own validation does,
so its Dice is comparable with the card's figure; the weights are the bundled ones and
the seed is 0 throughout.

Reported per setting: Dice mean ± sd, the mean paired difference from the reference in
Dice points (``minus_reference_points``; the issue's bar is ≥ -0.5), the mean uncertainty
on right and on wrong voxels, and seconds per case (one process, so later settings run
warm). This is how the cards' default sampling settings were chosen (docs/benchmarks.md);
``python -m training defaults`` then writes a chosen setting into a card and re-validates it
on the whole split.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SETTING = re.compile(r"^(\d+)x(\d+)(?:@(\d+))?$")


def parse_setting(text: str) -> dict:
    """"5x3" -> 5 steps, 3 members from T-1; "1x2@150" -> 1 step, 2 members from t = 150."""
    match = SETTING.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"a setting is STEPSxMEMBERS[@START], e.g. 1x2@150; got {text!r}")
    steps, members, start = match.groups()
    return {"name": text, "steps": int(steps), "ensemble": int(members), "start_timestep": None if start is None else int(start)}


def card_with_start(card, start_timestep: int | None):
    """A copy of ``card`` whose sampling starts at ``start_timestep`` (None: from T-1)."""
    scheduler = {k: v for k, v in card.scheduler_config.items() if k != "start_timestep"}
    if start_timestep is not None:
        scheduler["start_timestep"] = start_timestep
    return card.derived(scheduler=scheduler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a bundled diffusion model, e.g. verdiff-xray")
    parser.add_argument("--settings", nargs="+", type=parse_setting, default=[parse_setting(s) for s in ("5x3", "1x2@150", "1x3@150")])
    parser.add_argument("--reference", type=parse_setting, default=parse_setting("1000x8"))
    parser.add_argument("--limit", type=int, default=None, help="the first N held-out cases only (1000 x 8 takes minutes per 2D image on a CPU)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(REPO))
    from training.evaluate import evaluate, run_config_of_card, split_cases, unseen_patient_figures
    from VerdiffSegmentLib.models import get_card, load_network, make_scheduler

    if args.threads:
        torch.set_num_threads(args.threads)
    card = get_card(args.model)
    if make_scheduler(card) is None:
        raise SystemExit(f"{card.name} is deterministic: it has no sampling settings")
    run = run_config_of_card(card)
    split = card.split
    cases = list(split_cases(run, DATA, split, "validation", args.limit))
    network = load_network(card, torch.device(args.device))

    results = {}
    reference = {**args.reference, "start_timestep": None}
    for setting in [reference, *args.settings]:
        variant = card_with_start(card, setting["start_timestep"])
        start = time.perf_counter()
        figures = evaluate(variant, cases, setting["steps"], setting["ensemble"], seed=0, network=network, device=args.device)
        figures.update(unseen_patient_figures(figures, run, split))
        row = {k: v for k, v in figures.items() if k not in ("cases", "labels")}
        row["dice_per_case"] = [r["dice"] for r in figures["cases"]]
        row["seconds"] = round(time.perf_counter() - start, 1)
        results[setting["name"]] = {**setting, **row}
        print(f"{setting['name']}: Dice {row['dice_mean']} ({row['seconds']} s)", file=sys.stderr, flush=True)

    reference_dice = results[reference["name"]]["dice_per_case"]
    for name, row in results.items():
        differences = [100 * (a - b) for a, b in zip(row["dice_per_case"], reference_dice)]
        row["minus_reference_points"] = round(statistics.mean(differences), 2)
        row["minus_reference_points_sd"] = round(statistics.pstdev(differences), 2)
    report = {
        "model": card.name,
        "cases": [c[0] for c in cases],
        "reference": reference["name"],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "command": " ".join(sys.argv),
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
