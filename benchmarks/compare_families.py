"""Compare the bundled model families on the same held-out subjects; print JSON and a table.

    .venv/bin/python benchmarks/compare_families.py [--models NAME ...] [--modality MR [XR CT]]
        [--threads T] [--markdown docs/families.md]

For each model (default: every bundled card of ``--modality``), in a fresh process so that
peak memory is that model's alone, at the card's default steps and ensemble, on the
recipe's held-out subjects (MR: VB3_17, VB3_18, VB3_20; X-ray: the 48 held-out AASCE
images; CT: the abdominal CT; none was trained on by any family): Dice, IoU, HD95 and NSD (mean ± sd), the mean uncertainty on voxels the label
map gets right and on those it gets wrong (within prediction ∪ truth), seconds per
volume (whole ``segment``: preprocessing, inference, mapping back) and peak resident
memory. ``--markdown`` also writes the table, the command and the JSON to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RECIPE_OF_MODALITY = {"MR": "verdiff-mr", "CT": "verdiff-ct", "XR": "verdiff-xray"}


def child(args: dict) -> dict:
    import torch

    sys.path.insert(0, str(REPO))
    from training.configs import recipe_config
    from training.evaluate import evaluate, split_cases
    from VerdiffSegmentLib.models import get_card

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    card = get_card(args["model"])
    recipe = RECIPE_OF_MODALITY[card.modality]
    held_out = get_card(recipe).split  # the Verdiff-Net recipe's split: the same subjects for every family
    result = evaluate(card, split_cases(recipe_config(recipe), DATA, held_out, "validation"), device=args["device"])
    summary = {k: v for k, v in result.items() if k != "cases"}
    summary["cases"] = [{k: row[k] for k in ("case", "dice", "uncertainty_correct", "uncertainty_wrong")} for row in result["cases"]]
    return {
        "model": card.name,
        "family": card.family_name,
        "modality": card.modality,
        "steps": card.default_steps,
        "ensemble": card.default_ensemble,
        "training_steps": card.training.get("steps"),
        **summary,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def fmt(value, digits=3):
    return "–" if value is None else f"{value:.{digits}f}"


def modality_of(result: dict) -> str:
    if "modality" in result:
        return result["modality"]
    from VerdiffSegmentLib.models import get_card

    return get_card(result["model"]).modality


def markdown(report: dict) -> str:
    lines = []
    for modality in sorted({modality_of(r) for r in report["results"]}):
        lines += ["", f"### {modality}", ""] if lines or len({modality_of(r) for r in report["results"]}) > 1 else []
        lines += table([r for r in report["results"] if modality_of(r) == modality])
    return "\n".join(lines).strip("\n")


def table(results: list[dict]) -> list[str]:
    lines = [
        "| model | family | steps × ensemble | Dice | IoU | HD95 | NSD | uncertainty right / wrong | s per volume | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | error: {r['error']} |||||||||")
            continue
        deterministic = r["family"] == "unet"
        sampling = "deterministic" if deterministic else f"{r['steps']} × {r['ensemble']}"
        uncertainty = "none" if deterministic else f"{fmt(r['uncertainty_correct_mean'], 4)} / {fmt(r['uncertainty_wrong_mean'], 4)}"
        lines.append(
            f"| {r['model']} | {r['family']} | {sampling} | {fmt(r['dice_mean'])} ± {fmt(r['dice_sd'])} | "
            f"{fmt(r['iou_mean'])} | {fmt(r['hd95_mean'], 1)} {r['units']} | {fmt(r['nsd_mean'])} | {uncertainty} | {fmt(r['seconds_per_case'], 1)} | {r['peak_rss_mb']:.0f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="default: every bundled model of --modality")
    parser.add_argument("--modality", nargs="+", default=["MR"], choices=sorted(RECIPE_OF_MODALITY), help="compare the bundled models of these modalities")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--markdown", type=Path, help="also write the table and the JSON here")
    parser.add_argument("--render", type=Path, nargs="+", help="only write --markdown from JSON reports this script printed (merged)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.render:
        reports = [json.loads(path.read_text()) for path in args.render]
        merged = {**reports[0], "commands": [r["command"] for r in reports], "results": [r for report in reports for r in report["results"]]}
        write_markdown(merged, args.markdown)
        return
    from VerdiffSegmentLib.models import list_cards

    models = args.models or [card.name for card in list_cards() if card.modality in args.modality]
    results = []
    for model in models:
        child_args = {"model": model, "device": args.device, "threads": args.threads}
        run = subprocess.run([sys.executable, __file__, "--child", json.dumps(child_args)], capture_output=True, text=True)
        if run.returncode != 0:
            results.append({"model": model, "error": run.stderr.strip().splitlines()[-1] if run.stderr else "failed"})
        else:
            results.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(f"{model}: done", file=sys.stderr, flush=True)
    report = {"cpu_count": os.cpu_count(), "torch_threads": args.threads or "default", "command": " ".join(["benchmarks/compare_families.py", *sys.argv[1:]]), "results": results}
    print(json.dumps(report, indent=1))
    if args.markdown:
        write_markdown(report, args.markdown)


def write_markdown(report: dict, path: Path) -> None:
    commands = ", ".join(f"`.venv/bin/python {c}`" for c in report.get("commands", [report.get("command")]))
    path.write_text(
        f"Generated by `benchmarks/compare_families.py`. Commands: {commands} "
        f"({report['cpu_count']} CPU cores; torch threads as each command sets, else 2).\n\n{markdown(report)}\n\n```json\n{json.dumps(report, indent=1)}\n```\n"
    )


if __name__ == "__main__":
    main()
