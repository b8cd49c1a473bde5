"""Replay the X-ray naming offline: capture what the naming step receives while ``segment`` runs on
the card's held-out radiographs (one sampling seed), then name the same pieces again with other
level-network weights or chain settings, complete them with the card's outline step as the
pipeline does, and print ``levels_accuracy.py``-format JSON (``compare_levels.py`` reads it).

Why: the naming is most of the X-ray level-Dice gap (docs/levels.md, sessions 33-38), and every
naming experiment needs the same pieces named twice. Sampling the model is most of the time of a
``levels_accuracy.py`` run (about 2 s a radiograph); a replay takes a fraction of it, and the
pieces are the same for every variant, so a difference is the naming's alone.

How: ``capture`` wraps ``pipeline.name_vertebrae`` and keeps each call's inputs (the label map and
its geometry, the gaps, the level map, the picture the level network reads) with the run's final
labels; a radiograph whose picture is read twice (``radiograph.segment_radiograph``: polarity or
pixel size in doubt) keeps both calls. ``replay`` first names each call with the bundled card and
keeps the call whose naming and outline reproduce the captured final labels exactly (a radiograph
no call reproduces is reported on stderr and scored as captured), then names that call with the
variant. The captures hold the pictures (about 20 MB a radiograph): write them outside the checkout.

Usage:
    python benchmarks/naming_replay.py capture --seed 0 --out /tmp/names0.pkl [--limit N]
    python benchmarks/naming_replay.py replay /tmp/names0.pkl [--level-network W.pt] [--strip-network S.pt |
        --without-strip] [--temperature T] [--min-confidence P] > variant0.json
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import levels_accuracy as la  # noqa: E402  (puts the module and the repository on the path)

from VerdiffSegmentLib import levels, pipeline  # noqa: E402
from VerdiffSegmentLib.io import read_image  # noqa: E402
from VerdiffSegmentLib.models import get_card, load_level_network, load_outline_network, load_strip_network  # noqa: E402
from VerdiffSegmentLib.spine_strip import SpineStripNetwork  # noqa: E402
from VerdiffSegmentLib.vertebra_level import PieceLevelReader, VertebraLevelNetwork  # noqa: E402
from VerdiffSegmentLib.vertebra_outline import outline_vertebrae  # noqa: E402


def capture(seed: int, out: Path, limit: int | None) -> None:
    card = get_card("verdiff-xray")
    calls, rows = [], []
    original = pipeline.name_vertebrae

    def kept(labels, card_, gaps=None, coordinates=None, level_reader=None, rib_counter=None):
        calls.append({"labels": sitk.GetArrayFromImage(labels), "spacing": labels.GetSpacing(), "origin": labels.GetOrigin(),
                      "direction": labels.GetDirection(), "gaps": gaps, "coordinates": coordinates,
                      "picture": None if level_reader is None else level_reader.picture})
        return original(labels, card_, gaps=gaps, coordinates=coordinates, level_reader=level_reader, rib_counter=rib_counter)

    pipeline.name_vertebrae = kept
    try:
        for index, (name, image_path, truth, names, _) in enumerate(la.xray_cases(card, la.xray_left_out(card))):
            if limit is not None and index >= limit:
                break
            calls.clear()
            result = pipeline.segment(read_image(image_path), card, device="cpu", seed=seed)
            rows.append({"case": name, "calls": list(calls), "final_labels": sitk.GetArrayFromImage(result.labels),
                         "final_segments": result.segments, "truth": sitk.GetArrayFromImage(truth), "names": names})
            print(name, len(calls), file=sys.stderr, flush=True)
    finally:
        pipeline.name_vertebrae = original
    with open(out, "wb") as f:
        pickle.dump({"seed": seed, "rows": rows}, f)


def _name(call: dict, card, network, strip, outline) -> tuple[np.ndarray, list[dict]]:
    """The call's pieces named by ``card``'s naming with ``network`` as the level network and
    ``strip`` as the spine-strip reader (or None), then completed by ``outline`` (the card's
    outline network, or None), as ``pipeline`` does after naming."""
    labels = sitk.GetImageFromArray(call["labels"])
    labels.SetSpacing(call["spacing"]), labels.SetOrigin(call["origin"]), labels.SetDirection(call["direction"])
    with torch.no_grad():
        named, segments, _ = levels.name_vertebrae(labels, card, gaps=call["gaps"], coordinates=call["coordinates"],
                                                   level_reader=PieceLevelReader(network, call["picture"], strip))
        array = sitk.GetArrayFromImage(named)
        if outline is not None and segments:
            picture = call["picture"]
            array = outline_vertebrae(outline, picture, array.reshape(picture.shape), [int(s["value"]) for s in segments])[0]
    return array, segments


def _weights(network: torch.nn.Module, path: Path) -> torch.nn.Module:
    network.load_state_dict({k: v.float() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()})
    return network.eval()


def replay(path: Path, level_network: Path | None, strip_network: Path | None, without_strip: bool, temperature: float | None,
           min_confidence: float | None) -> dict:
    card = get_card("verdiff-xray")
    bundled, bundled_strip, outline = load_level_network(card), load_strip_network(card), load_outline_network(card)
    variant = bundled if level_network is None else _weights(VertebraLevelNetwork(**card.level_network["network"]), level_network)
    strip = None if without_strip else bundled_strip if strip_network is None else _weights(SpineStripNetwork(), strip_network)
    with open(path, "rb") as f:
        captured = pickle.load(f)
    rows, unmatched = [], []
    for row in captured["rows"]:
        truth, final = row["truth"], row["final_labels"]
        call = next((c for c in row["calls"] if c["picture"] is not None
                     and np.array_equal(_name(c, card, bundled, bundled_strip, outline)[0].reshape(final.shape), final)), None)
        if call is None:
            unmatched.append(row["case"])
            array, segments = final, row["final_segments"]
        else:
            chain = (levels.LEVEL_TEMPERATURE, levels.MIN_LEVEL_CONFIDENCE)
            levels.LEVEL_TEMPERATURE = chain[0] if temperature is None else temperature
            levels.MIN_LEVEL_CONFIDENCE = chain[1] if min_confidence is None else min_confidence
            try:
                array, segments = _name(call, card, variant, strip, outline)
            finally:
                levels.LEVEL_TEMPERATURE, levels.MIN_LEVEL_CONFIDENCE = chain
        scores = la.case_scores(array.reshape(truth.shape), segments, truth, row["names"])
        rows.append({"case": row["case"], "model": scores})
    if unmatched:
        print(f"no captured call reproduces the final labels of: {', '.join(unmatched)}", file=sys.stderr)
    return {"modality": "xray", "seed": captured["seed"], "cases": len(rows), "replay_of": str(path),
            "level_network": str(level_network) if level_network else "bundled",
            "strip_network": None if without_strip else str(strip_network) if strip_network else "bundled" if bundled_strip is not None else None, "temperature": temperature, "min_confidence": min_confidence,
            "unmatched": unmatched, "model": la.shares([r["model"] for r in rows]), "rows": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    take = commands.add_parser("capture", help="run segment on the held-out radiographs and keep the naming step's inputs")
    take.add_argument("--seed", type=int, default=0)
    take.add_argument("--out", type=Path, required=True)
    take.add_argument("--limit", type=int, default=None)
    again = commands.add_parser("replay", help="name the captured pieces again, complete them, score")
    again.add_argument("capture", type=Path)
    again.add_argument("--level-network", type=Path, default=None, help="other weights for the card's level network")
    again.add_argument("--strip-network", type=Path, default=None, help="weights for the spine-strip reader (the card's, or one added)")
    again.add_argument("--without-strip", action="store_true", help="name with the level network alone")
    again.add_argument("--temperature", type=float, default=None, help=f"the chain's temperature (default levels.LEVEL_TEMPERATURE, {levels.LEVEL_TEMPERATURE})")
    again.add_argument("--min-confidence", type=float, default=None, help=f"the posterior a name needs (default levels.MIN_LEVEL_CONFIDENCE, {levels.MIN_LEVEL_CONFIDENCE})")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.command == "capture":
        capture(args.seed, args.out, args.limit)
    else:
        print(json.dumps(replay(args.capture, args.level_network, args.strip_network, args.without_strip, args.temperature, args.min_confidence), indent=1))


if __name__ == "__main__":
    main()
