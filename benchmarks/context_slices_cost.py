"""Inference cost of a 2.5D model (``input.context_slices``) against its 1-channel original; prints JSON.

    .venv/bin/python benchmarks/context_slices_cost.py [--model verdiff-mr] [--context-slices 1] [--threads 1] [--repeats 5]

The bundled 2D model and the same model widened to 1 + 2K input channels as a 2.5D run's warm
start builds it (``training.checkpoint.widen_image_input``) sample the same central sagittal
slices of a held-out MR volume at the card's defaults (``family.sample``: the conditional
network once, the sampling steps, the ensemble), timed alternately after an untimed warm-up
call each; the median of ``--repeats`` runs is reported, with the time to build the input
channels (``preparation.slice_channels``) apart. Only the convolutions that read the image
grow, so the two should cost nearly the same; the probabilities are compared too (the
warm start computes what the original did).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "VerdiffSegment"), str(ROOT)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from VerdiffSegmentLib.io import read_image  # noqa: E402
from VerdiffSegmentLib.models import get_card, load_network, make_scheduler  # noqa: E402
from VerdiffSegmentLib.preparation import prepare_for_card  # noqa: E402
from VerdiffSegmentLib.transforms import pad_to_multiple  # noqa: E402
from training.checkpoint import load_weights, widen_image_input  # noqa: E402

MR = ROOT.parent / "shared" / "data" / "mr-lumbar-vb3" / "VB3_17_img.nii.gz"  # held out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="verdiff-mr")
    parser.add_argument("--context-slices", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slices", type=int, default=8, help="central sagittal slices, one batch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    card = get_card(args.model)
    k = args.context_slices
    wide_card = card.derived(network={**card.network_config, "in_channels": 1 + 2 * k}, input={**card.raw["input"], "context_slices": k})
    narrow = load_network(card)
    wide = wide_card.family.network(**wide_card.network_config)
    wide.load_state_dict(widen_image_input(load_weights(card.weights_path), wide.state_dict(), k))
    wide = wide.to(memory_format=torch.channels_last).eval()

    image = read_image(str(MR))
    timings, inputs, outputs = {"1-channel": [], f"{1 + 2 * k}-channel": []}, {}, {}
    for name, network, model_card in (("1-channel", narrow, card), (f"{1 + 2 * k}-channel", wide, wide_card)):
        prepared = prepare_for_card(image, model_card)
        middle = prepared.stack.shape[0] // 2
        indices = range(middle - args.slices // 2, middle - args.slices // 2 + args.slices)
        started = time.perf_counter()
        channels = prepared.network_input(indices)
        build = time.perf_counter() - started
        inputs[name] = (network, model_card, torch.from_numpy(pad_to_multiple(channels, network.input_multiple)[0]), build)

    def run(name):
        network, model_card, batch, _ = inputs[name]
        scheduler = make_scheduler(model_card)
        if scheduler is not None:
            scheduler.set_timesteps(model_card.default_steps)
        started = time.perf_counter()
        mean, _, _ = model_card.family.sample(network, scheduler, batch, model_card.default_ensemble, torch.Generator().manual_seed(0))
        return time.perf_counter() - started, mean

    for name in timings:
        outputs[name] = run(name)[1]  # warm-up, untimed
    for _ in range(args.repeats):
        for name in timings:
            timings[name].append(run(name)[0])
    names = list(timings)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    print(json.dumps({
        "model": card.name, "context_slices": k, "threads": torch.get_num_threads(), "slices": args.slices,
        "steps": card.default_steps, "ensemble": card.default_ensemble,
        "seconds_median": {name: round(value, 4) for name, value in medians.items()},
        "input_build_seconds": {name: round(inputs[name][3], 4) for name in names},
        "ratio": round(medians[names[1]] / medians[names[0]], 3),
        "max_probability_difference": float(np.abs(outputs[names[0]] - outputs[names[1]]).max()),
    }, indent=1))


if __name__ == "__main__":
    main()
