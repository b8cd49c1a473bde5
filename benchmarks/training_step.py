"""Seconds per training step of a bundled model's network in fp32 and bf16 autocast, with and
without channels_last; prints JSON.

    .venv/bin/python benchmarks/training_step.py [--model verdiff-mr] [--batch-size 6] [--crop 192] [--threads 2] [--repeats 4]

One step is what ``training.train.Trainer.step`` does after the sampler: the family
objective's draws, its forward and loss, backward and an AdamW step, on a random batch of
the card's input channels (the network's cost does not depend on the pixels). The sampler's
augmentation is left out: it is the same in every variant. Each variant starts from the
card's weights; the fastest of ``--repeats`` steps after the first (warm-up) is reported,
with the first step's loss, so a variant that computes something else shows.

Why it exists: this machine's CPU has AMX (bf16 matrix units), and bf16 autocast is allowed
in training on CUDA only; this is the measurement behind keeping CPU training in fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "VerdiffSegment"), str(ROOT)]

import torch  # noqa: E402

from VerdiffSegmentLib.models import get_card, load_network  # noqa: E402
from training.objectives import objective_for  # noqa: E402


def time_steps(card, batch_size: int, crop: int, repeats: int, dtype: torch.dtype | None, channels_last: bool) -> dict:
    torch.manual_seed(0)
    network = load_network(card).train()
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    objective = objective_for(card.family_name, network, dtype)
    optimiser = torch.optim.AdamW(network.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(batch_size, card.network_config.get("in_channels", 1), crop, crop)
    mask = (torch.rand(batch_size, card.network_config.get("num_classes", 1), crop, crop) > 0.7).float()
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    seconds, first_loss = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        losses = objective(image, mask, **objective.draw(batch_size, mask.shape[1:], generator))
        optimiser.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimiser.step()
        seconds.append(time.perf_counter() - start)
        first_loss = float(losses["total"].detach()) if first_loss is None else first_loss
    return {"s_per_step": round(min(seconds[1:]), 3), "all_s": [round(s, 3) for s in seconds], "first_loss": round(first_loss, 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="verdiff-mr")
    parser.add_argument("--batch-size", type=int, default=6)
    parser.add_argument("--crop", type=int, default=192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    card = get_card(args.model)
    results = {}
    for dtype, name in ((None, "fp32"), (torch.bfloat16, "bf16")):
        for channels_last in (False, True):
            results[name + ("-channels-last" if channels_last else "")] = time_steps(card, args.batch_size, args.crop, max(args.repeats, 2), dtype, channels_last)
    print(json.dumps({"command": "benchmarks/training_step.py " + " ".join(sys.argv[1:]), "model": args.model, "batch_size": args.batch_size,
                      "crop": args.crop, "threads": args.threads, "cpu_count": os.cpu_count(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
