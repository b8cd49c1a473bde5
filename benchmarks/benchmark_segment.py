"""Time the main job per stage on real images and print JSON.

    .venv/bin/python benchmarks/benchmark_segment.py [--steps K] [--ensemble N] [--device cpu|cuda|auto]
        [--inputs PATH ...] [--model NAME] [--threads T] [--batch-size B]
        [--reference-steps 1000 --reference-ensemble 8 --reference-slices S]

Each input runs in a fresh process (so peak resident memory is that input's alone), end
to end as ``verdiff segment`` does: read, preprocess, inference, postprocess, write. The
default inputs are the dev chest CT, a held-out lumbar MR volume and a held-out AASCE
X-ray; Dice against their labels is reported too, so speed is never quoted without
accuracy. Per input it also reports:

- ``unet_forward_seconds``: one forward pass of a deterministic U-Net of the same width
  (the ``unet`` family's network, channels from the card) over the same padded sagittal
  slices, in the same process; ``inference_to_unet_ratio`` is the diffusion model's whole
  inference stage (prior, every sampling step, every ensemble member) divided by it.
  Both are timed warm, like with like: the diffusion inference as a second ``segment``
  call with the loaded network (``inference_warm_seconds``), the U-Net after one untimed
  call; a pass under a second is repeated and its median taken. The first call's one-off
  costs (oneDNN kernel set-up, allocations) are in the end-to-end ``timings_seconds`` and
  reported apart as ``first_call_overhead_seconds``;
  on one small X-ray they are most of the cold inference stage, which would otherwise
  put a fixed cost against a warm U-Net pass.
- with ``--reference-slices S > 0``: the default setting against ``--reference-steps`` /
  ``--reference-ensemble`` (1000 / 8) on the S sagittal slices with the most labelled
  spine, as 2D Dice on those slices. The reference samples the paper's full chain from
  T-1, whatever the card's start. Over a whole volume 1000 x 8 is hours on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
XRAY = DATA / "xray-aasce" / "data" / "training" / "sunhl-1th-06-Jan-2017-184 A AP.jpg"  # held out by the bundled X-ray model
DEFAULT_INPUTS = [DATA / "ct-chest" / "cxr_ct_int16.nii.gz", DATA / "mr-lumbar-vb3" / "VB3_17_img.nii.gz", XRAY]


def truth_of(path: Path):
    """The reference labels of a default input as a boolean array on the input's grid, or None."""
    import numpy as np
    import SimpleITK as sitk

    if path.name == "cxr_ct_int16.nii.gz":
        return np.isin(sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "ct-chest" / "mask.nii.gz"))), range(29, 47))
    if path.parent.name == "mr-lumbar-vb3":
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path).replace("_img", "_seg"))) > 0
    if path.suffix.lower() == ".jpg" and path.parent.parent.parent.name == "xray-aasce":
        sys.path.insert(0, str(REPO))
        from training.datasets import aasce_mask
        from VerdiffSegmentLib.io import read_image

        mat = path.parent.parent.parent / "labels" / "training" / f"{path.name}.mat"
        return sitk.GetArrayFromImage(aasce_mask(read_image(str(path)), mat)) > 0
    return None


def child(args: dict) -> dict:
    import SimpleITK as sitk
    import torch

    from VerdiffSegmentLib.cli import run_segment
    from VerdiffSegmentLib.families import get_family
    from VerdiffSegmentLib.io import read_image
    from VerdiffSegmentLib.metrics import dice
    from VerdiffSegmentLib.models import load_network
    from VerdiffSegmentLib.pipeline import choose_card, resolve_device, segment
    from VerdiffSegmentLib.preparation import prepare_for_card, slice_channels
    from VerdiffSegmentLib.settings import SegmentSettings
    from VerdiffSegmentLib.transforms import pad_to_multiple

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    path = Path(args["input"])
    truth = truth_of(path)
    with tempfile.TemporaryDirectory() as out:
        report = run_segment(str(path), out, SegmentSettings(args["model"], args["steps"], args["ensemble"], args["device"], 0, args["batch_size"]))
        result = {k: report[k] for k in ("model", "steps", "ensemble", "device", "slices", "diffused_slices", "timings_seconds")}
        if truth is not None:
            labels = sitk.GetArrayFromImage(sitk.ReadImage(report["outputs"]["labels"])) > 0
            result["dice"] = round(dice(labels.reshape(truth.shape), truth), 4)
    peak_segment = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # The same sagittal slices, as the pipeline builds them, through a plain U-Net of the same width.
    image = read_image(str(path))
    card = choose_card(image, args["model"])
    device = resolve_device(args["device"])
    prepared = prepare_for_card(image, card)
    planar, reference = prepared.planar, prepared.reference
    channels = card.channels
    unet_family = get_family("unet")
    stack, (rows, cols) = pad_to_multiple(prepared.stack, 2 ** (len(channels) - 1))
    offsets = prepared.input_offsets  # a 2.5D card's neighbour channels, built as ``segment`` builds them
    unet = unet_family.network(in_channels=len(offsets), num_classes=card.num_classes, channels=channels).to(device, memory_format=torch.channels_last).eval()
    batches = [torch.from_numpy(slice_channels(stack, range(start, min(start + args["batch_size"], len(stack))), offsets)).to(device) for start in range(0, len(stack), args["batch_size"])]
    unet_family.sample(unet, None, batches[0], 1, None)  # warm-up, untimed

    def unet_pass() -> float:
        timer = time.perf_counter()
        for batch in batches:
            unet_family.sample(unet, None, batch, 1, None)
        return time.perf_counter() - timer

    network = load_network(card, device)
    diffusion_pass = lambda: segment(image, card, args["steps"], args["ensemble"], args["device"], 0, args["batch_size"], network=network).timings["inference"]  # noqa: E731
    unet_seconds, warm_seconds = median_of_repeats(unet_pass), median_of_repeats(diffusion_pass)
    result["unet_forward_seconds"] = round(unet_seconds, 3)
    result["inference_warm_seconds"] = round(warm_seconds, 3)
    result["first_call_overhead_seconds"] = round(result["timings_seconds"]["inference"] - warm_seconds, 3)
    result["inference_to_unet_ratio"] = round(warm_seconds / unet_seconds, 2)

    if args["reference_slices"] and truth is not None:
        result["reference"] = reference_comparison(args, card, network, device, planar, reference, stack, rows, cols, truth, offsets)
    result["peak_rss_mb"] = round(max(peak_segment, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), 1)
    result["torch_threads"] = torch.get_num_threads()
    return result


def median_of_repeats(run, budget_seconds: float = 2.0, most: int = 9) -> float:
    """Median duration of ``run()`` (which returns its own duration): once for runs of a
    second or more, else repeated within ``budget_seconds`` (at most ``most`` times), since a
    single 0.05 s timing of one X-ray is mostly scheduler noise."""
    durations = [run()]
    while durations[0] < 1.0 and len(durations) < most and sum(durations) < budget_seconds:
        durations.append(run())
    return sorted(durations)[len(durations) // 2]


def reference_comparison(args, card, network, device, planar, reference, stack, rows, cols, truth, offsets) -> dict:
    """2D Dice of the default setting and of the reference setting on the sagittal slices with
    the most labelled spine (labels resampled onto the sagittal grid by nearest neighbour)."""
    import numpy as np
    import SimpleITK as sitk
    import torch

    from VerdiffSegmentLib.inferers.ensemble import labels_from_probability
    from VerdiffSegmentLib.inferers.sagittal import to_sagittal_stack
    from VerdiffSegmentLib.metrics import dice
    from VerdiffSegmentLib.models import make_scheduler
    from VerdiffSegmentLib.preparation import slice_channels

    from sampling_grid import card_with_start  # this folder: the scripts run as files

    truth_image = sitk.GetImageFromArray(truth.reshape(sitk.GetArrayViewFromImage(planar).shape).astype(np.uint8))
    truth_image.CopyInformation(planar)
    truth_stack = to_sagittal_stack(truth_image, reference, card.spacing_mm, is_label=True) > 0
    chosen = np.sort(np.argsort(truth_stack.sum(axis=(1, 2)))[::-1][: args["reference_slices"]])
    images = torch.from_numpy(slice_channels(stack, chosen, offsets)).to(device)
    out = {"slices": chosen.tolist()}
    settings = {"default": (card.default_steps, card.default_ensemble), "reference": (args["reference_steps"], args["reference_ensemble"])}
    for name, (steps, ensemble) in settings.items():
        # the reference is the paper's chain: from T-1, whatever the card's start
        scheduler = make_scheduler(card_with_start(card, None) if name == "reference" else card)
        timer = time.perf_counter()
        if scheduler is not None:
            scheduler.set_timesteps(steps)
        mean, _, _ = card.family.sample(network, scheduler, images, ensemble, torch.Generator().manual_seed(0))
        predicted = labels_from_probability(mean[..., :rows, :cols]) > 0
        out[name] = {"steps": steps, "ensemble": ensemble, "dice": round(dice(predicted, truth_stack[chosen]), 4), "seconds": round(time.perf_counter() - timer, 1)}
    out["default_minus_reference_points"] = round(100 * (out["default"]["dice"] - out["reference"]["dice"]), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="*", type=Path, default=DEFAULT_INPUTS)
    parser.add_argument("--model", default="auto")
    parser.add_argument("--steps", type=int, default=None, help="default: each model card's")
    parser.add_argument("--ensemble", type=int, default=None, help="default: each model card's")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--reference-steps", type=int, default=1000)
    parser.add_argument("--reference-ensemble", type=int, default=8)
    parser.add_argument("--reference-slices", type=int, default=0, help="0: no reference comparison")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    results = []
    for path in args.inputs:
        child_args = {
            "input": str(path), "model": args.model, "steps": args.steps, "ensemble": args.ensemble, "device": args.device,
            "batch_size": args.batch_size, "threads": args.threads, "reference_steps": args.reference_steps,
            "reference_ensemble": args.reference_ensemble, "reference_slices": args.reference_slices,
        }
        run = subprocess.run([sys.executable, __file__, "--child", json.dumps(child_args)], capture_output=True, text=True)
        if run.returncode != 0:
            results.append({"input": path.name, "error": run.stderr.strip().splitlines()[-1] if run.stderr else "failed"})
            continue
        results.append({"input": path.name, **json.loads(run.stdout.strip().splitlines()[-1])})
    print(json.dumps({"cpu_count": os.cpu_count(), "command": " ".join(sys.argv), "results": results}, indent=2))


if __name__ == "__main__":
    main()
