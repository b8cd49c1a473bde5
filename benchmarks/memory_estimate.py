"""Measured peak memory of ``pipeline.segment`` against ``memory.pipeline_peak_bytes``; JSON lines.

    .venv/bin/python benchmarks/memory_estimate.py [INPUT MODEL BATCH ...]

Each triple runs in a fresh process (one thread, CPU, the card's defaults): the network is
loaded first, then the peak resident memory (ru_maxrss) is read before and after
``segment``; the difference is what the segmentation itself allocated, the quantity the
guard estimates. Defaults: VB3_17 with verdiff-mr at batch 1 and 8, with ldseg3d-mr at
batch 8, and the chest CT with verdiff-ct at batch 8 (about 2.5 minutes in all).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
MR = DATA / "mr-lumbar-vb3" / "VB3_17_img.nii.gz"
CT = DATA / "ct-chest" / "cxr_ct_int16.nii.gz"
DEFAULT_RUNS = [(MR, "verdiff-mr", 1), (MR, "verdiff-mr", 8), (MR, "ldseg3d-mr", 8), (CT, "verdiff-ct", 8)]


def measure(path: str, model: str, batch: int) -> dict:
    import resource
    import time

    import torch

    torch.set_num_threads(1)
    from VerdiffSegmentLib.io import read_image
    from VerdiffSegmentLib.memory import pipeline_peak_bytes
    from VerdiffSegmentLib.models import load_network
    from VerdiffSegmentLib.pipeline import choose_card, segment

    image = read_image(path)
    card = choose_card(image, model)
    network = load_network(card)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    clock = time.perf_counter()
    segment(image, card, device="cpu", batch_size=batch, network=network)
    seconds = time.perf_counter() - clock
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    estimate = pipeline_peak_bytes(image, card, card.default_ensemble, batch)
    return {
        "input": Path(path).name,
        "model": card.name,
        "batch_size": batch,
        "measured_mib": round((after - before) / 2**20, 1),
        "estimate_mib": round(estimate / 2**20, 1),
        "seconds": round(seconds, 1),
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["--one"]:
        print(json.dumps(measure(argv[1], argv[2], int(argv[3]))))
        return 0
    runs = [(argv[i], argv[i + 1], int(argv[i + 2])) for i in range(0, len(argv), 3)] if argv else DEFAULT_RUNS
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'VerdiffSegment'}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}
    for path, model, batch in runs:
        result = subprocess.run([sys.executable, __file__, "--one", str(path), model, str(batch)], capture_output=True, text=True, env=env)
        print(result.stdout.strip().splitlines()[-1] if result.returncode == 0 else json.dumps({"input": str(path), "error": result.stderr.strip()[-300:]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
