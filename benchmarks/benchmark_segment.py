"""Time the main job per stage on real images and print JSON.

    .venv/bin/python benchmarks/benchmark_segment.py [--steps K] [--ensemble N] [--device cpu|cuda|auto]
        [--inputs PATH ...] [--threads T]

Each input runs in a fresh process (so peak resident memory is that input's alone), end
to end as ``verdiff segment`` does: read, preprocess, inference, postprocess, write. The
default inputs are the dev chest CT and a held-out lumbar MR volume; Dice against their
labels is reported too, so speed is never quoted without accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DEFAULT_INPUTS = [DATA / "ct-chest" / "cxr_ct_int16.nii.gz", DATA / "mr-lumbar-vb3" / "VB3_17_img.nii.gz"]
TRUTH = {
    "cxr_ct_int16.nii.gz": (DATA / "ct-chest" / "mask.nii.gz", list(range(29, 47))),
    "VB3_17_img.nii.gz": (DATA / "mr-lumbar-vb3" / "VB3_17_seg.nii.gz", [1, 2, 3, 4, 5]),
}

CHILD = r"""
import json, resource, sys, tempfile
import numpy as np, SimpleITK as sitk, torch
from VerdiffSegmentLib.cli import run_segment
from VerdiffSegmentLib.metrics import dice
args = json.loads(sys.argv[1])
if args["threads"]:
    torch.set_num_threads(args["threads"])
with tempfile.TemporaryDirectory() as out:
    report = run_segment(args["input"], out, args["model"], args["steps"], args["ensemble"], args["device"], 0, args["batch_size"])
    result = {k: report[k] for k in ("model", "steps", "ensemble", "device", "slices", "diffused_slices", "timings_seconds")}
    if args.get("truth"):
        labels = sitk.GetArrayFromImage(sitk.ReadImage(report["outputs"]["labels"])) > 0
        truth = np.isin(sitk.GetArrayFromImage(sitk.ReadImage(args["truth"])), args["truth_ids"])
        result["dice"] = round(dice(labels, truth), 4)
result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
result["torch_threads"] = torch.get_num_threads()
print(json.dumps(result))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="*", type=Path, default=DEFAULT_INPUTS)
    parser.add_argument("--model", default="auto")
    parser.add_argument("--steps", type=int, default=None, help="default: each model card's")
    parser.add_argument("--ensemble", type=int, default=None, help="default: each model card's")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    results = []
    for path in args.inputs:
        truth = TRUTH.get(path.name)
        child_args = {
            "input": str(path), "model": args.model, "steps": args.steps, "ensemble": args.ensemble, "device": args.device,
            "batch_size": args.batch_size, "threads": args.threads,
            "truth": str(truth[0]) if truth else None, "truth_ids": truth[1] if truth else None,
        }
        run = subprocess.run([sys.executable, "-c", CHILD, json.dumps(child_args)], capture_output=True, text=True)
        if run.returncode != 0:
            results.append({"input": str(path), "error": run.stderr.strip().splitlines()[-1] if run.stderr else "failed"})
            continue
        results.append({"input": path.name, **json.loads(run.stdout.strip().splitlines()[-1])})
    print(json.dumps({"cpu_count": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
