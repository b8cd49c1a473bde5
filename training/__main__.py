"""``python -m training train|export|defaults|evaluate ...`` (see ``docs/training.md``).

train    MODEL [--out DIR --train-steps N --batch-size B --crop C --threads T ...]  a bundled recipe
         ... --spatial-dims 3 --patch D,H,W [--spacing MM]                    its 3D variant, on volume patches
         ... --context-slices K [--init Resources/Models/MODEL.pt]             2.5D: K neighbouring slices each side
train    --config run.toml --out DIR ...                                      data sets from a TOML file
train    MODEL --images GLOB --labels GLOB --source S --name NAME --out DIR   the same, as arguments
train    ... --write-cache FILE.npz        the run's training cases in one file; then train ... --cache FILE.npz
export   MODEL --run DIR [--steps K --ensemble N --precision auto|fp32|fp16]
defaults MODEL --steps K --ensemble N [--start-timestep T]   new sampling defaults, re-validated
evaluate MODEL | --run DIR  [--split validation|test | --images GLOB --labels GLOB --source S]
level-map        --out DIR [--train-steps N --batch-size B --lr LR --init FILE.pt]   the X-ray level map (training/level_map.py)
export-level-map --checkpoint DIR/stepN.pt   its weights into Resources/Models, named by every X-ray card
endplate-tilt        --out DIR [...as level-map]   the X-ray endplate-tilt network (training/endplate_tilt.py)
export-endplate-tilt --checkpoint DIR/stepN.pt     the same for it (cards' cobb.tilt_network)
vertebra-level        --out DIR [...as level-map]  the X-ray vertebra-level network (training/vertebra_level.py)
export-vertebra-level --checkpoint DIR/stepN.pt    the same for it (cards' naming.level_network)
vertebra-outline     --out DIR [...as level-map]   the X-ray vertebra-outline network (training/vertebra_outline.py)
export-vertebra-outline --checkpoint DIR/stepN.pt  the same for it (cards' outline.network)
spine-strip          --out DIR [...as level-map]   the X-ray spine-strip level reader (training/spine_strip.py)
export-spine-strip   --checkpoint DIR/stepN.pt     the same for it (cards' naming.strip_network)

Under ``torchrun --nproc_per_node N [--nnodes M ...] -m training train ...`` the same train
command runs data-parallel; ``--batch-size`` is per process.

One name per meaning: ``--train-steps`` counts optimiser steps; ``--steps`` is the number of
sampling steps everywhere else (``export``, ``defaults``, ``evaluate``, ``verdiff segment``).
``train --steps N`` still works, as a deprecated alias of ``--train-steps`` with a warning,
so the commands recorded in the model cards run as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path

import torch

from VerdiffSegmentLib.errors import VerdiffError
from VerdiffSegmentLib.families import FAMILY_MODULES
from VerdiffSegmentLib.models import ModelCard, models_dir, read_card

from .augment import PRESETS
from .configs import DEFAULT_CHANNELS, DEFAULT_FAMILY, RECIPES, RunConfig, load_config, recipe_config
from .labels import SCHEMES, SOURCES
from .sampler import CROP_CENTRES
from .train import TrainOptions

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _channels(text: str) -> tuple[int, ...]:
    return tuple(int(c) for c in text.split(","))


class _DeprecatedTrainSteps(argparse.Action):
    """``train --steps N``: the old name of ``--train-steps``; works, and says so on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        if os.environ.get("RANK", "0") == "0":  # once, not per torchrun process
            print("warning: 'train --steps' is deprecated: it counts optimiser steps, while --steps means sampling steps "
                  "everywhere else; use --train-steps", file=sys.stderr, flush=True)
        setattr(namespace, self.dest, values)


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a bundled recipe, or data sets from a config or arguments")
    p.add_argument("model", nargs="?", choices=sorted(RECIPES), help="bundled recipe (with --images: the recipe whose geometry to use)")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, logs, weights")
    p.add_argument("--data", type=Path, default=DATA, help="data root; data set paths are relative to it")
    data = p.add_argument_group("data sets (instead of a recipe's own data)")
    data.add_argument("--config", type=Path, help="TOML run config: name, recipe, labels, split, [[datasets]]")
    data.add_argument("--images", help="image path pattern with one '*' (the case id), e.g. 'mr-lumbar-vb3/*_img.nii.gz'")
    data.add_argument("--labels", help="label path pattern with the same '*'")
    data.add_argument("--source", choices=sorted(SOURCES), help="label ids of the data set")
    data.add_argument("--kind", choices=["volume", "aasce"], default="volume", help="volume: labelled volumes (--images/--labels); aasce: AASCE X-ray landmarks")
    data.add_argument("--root", help="AASCE folder (--kind aasce)")
    data.add_argument("--subject", help="regex whose group 1 in the case id is the subject id")
    data.add_argument("--name", help="model name (default: the recipe's)")
    data.add_argument("--label-scheme", choices=SCHEMES, default="binary", help="binary, or one label per vertebral level")
    data.add_argument("--levels", help="comma-separated levels to label, e.g. T1,T2,...,L5 (default: those of the source)")
    data.add_argument("--validation-fraction", type=float, default=0.1, help="fraction of subjects held out for validation")
    data.add_argument("--test-fraction", type=float, default=0.0, help="fraction of subjects held out for testing")
    data.add_argument("--split-seed", type=int, default=35, help="seed of the subject split")
    data.add_argument("--family", choices=sorted(FAMILY_MODULES), default=None, help="model family to train (default verdiff-net)")
    data.add_argument("--channels", type=_channels, default=None, help=f"network channels per level (default {','.join(map(str, DEFAULT_CHANNELS))})")
    data.add_argument("--spatial-dims", type=int, choices=[2, 3], default=2, help="2: sagittal slices (default); 3: the family's 3D network on volume patches")
    data.add_argument("--patch", type=_channels, default=None, help="3D: patch size SLICES,ROWS,COLUMNS in voxels of the isotropic grid, e.g. 32,64,64")
    data.add_argument("--spacing", type=float, default=None, help="grid spacing in mm (default: the recipe's; isotropic in 3D)")
    data.add_argument("--context-slices", type=int, default=None, metavar="K",
                      help="2.5D: K neighbouring sagittal slices on each side as input channels, at multiples of the grid spacing in mm "
                           "(default 0, or the --init model's card's); with --init from a model of fewer, it starts as that model")
    data.add_argument("--context-distance", type=float, default=None, metavar="MM",
                      help="2.5D: mm between neighbouring input channels (default: the --init model's card's, else the grid spacing)")
    data.add_argument("--view", choices=["sagittal", "coronal"], default="sagittal",
                      help="2D volumes: the planes trained on (coronal: preparation.coronal_view; default sagittal)")
    loop = p.add_argument_group("the loop")
    defaults = TrainOptions()
    loop.add_argument("--train-steps", dest="steps", type=int, default=defaults.steps, metavar="N", help=f"optimiser steps (default {defaults.steps})")
    loop.add_argument("--steps", dest="steps", type=int, action=_DeprecatedTrainSteps, help=argparse.SUPPRESS)
    loop.add_argument("--batch-size", type=int, default=defaults.batch_size, help="per process; global batch = this x world size x --accumulate")
    loop.add_argument("--accumulate", type=int, default=defaults.accumulate, metavar="K",
                      help="add up the gradients of K micro-batches of --batch-size per optimiser step, "
                           "so a CPU or a small GPU trains with a large GPU's batch (default 1)")
    loop.add_argument("--crop", type=int, default=defaults.crop, help="training crop size in pixels (2D)")
    loop.add_argument("--crop-centre", choices=CROP_CENTRES, default=defaults.crop_centre,
                      help="what a spine-centred crop is centred on: a random spine pixel (default) or a row drawn along the spine with its ends extended by half a crop, so the end vertebrae are seen more often")
    loop.add_argument("--edge-pad", type=int, default=defaults.edge_pad, metavar="N",
                      help="2D: pad each side of a slice by a random 0..N border rows (the edge repeated, image and labels) before the crop, "
                           "so the model learns the image edge a padded inference shows it (default 0: none)")
    loop.add_argument("--coronal-bend", dest="coronal_bend_mm", type=float, default=defaults.coronal_bend_mm, metavar="MM",
                      help="2D: read half the slices along a random coronal bend of up to MM mm, as a sagittal plane cuts a scoliotic spine (default 0: none)")
    loop.add_argument("--axial-turn", dest="axial_turn_deg", type=float, default=defaults.axial_turn_deg, metavar="DEG",
                      help="2D: read half the slices on a plane turned about the head-feet axis by up to DEG degrees, "
                           "as a sagittal slice cuts vertebral bodies rotated in scoliosis (default 0: none)")
    loop.add_argument("--acquired-slices-only", action="store_true", default=defaults.acquired_slices_only,
                      help="2D: of a volume whose slices were interpolated between thicker acquired ones (the development MR), "
                           "draw only the acquired slices, whose labels are the outlines drawn on them (default: every slice)")
    loop.add_argument("--blend-interpolated-labels", action="store_true", default=defaults.blend_interpolated_labels,
                      help="2D: of a volume whose slices were interpolated between thicker acquired ones, give each interpolated slice "
                           "the label of one of its two acquired neighbours, drawn with the weight of the interpolation, "
                           "so its expected target is the blend its image is (default: the labels as given, the union)")
    loop.add_argument("--sacral-band-weight", type=float, default=defaults.sacral_band_weight, metavar="W",
                      help="binary-gaps, verdiff-net: weigh the BCE 1 + W in the band under the lowest vertebra, "
                           "the sacrum's top under an X-ray's L5 (default 0: none)")
    loop.add_argument("--sacral-band-offset", type=float, default=defaults.sacral_band_offset, metavar="F",
                      help="with --sacral-band-weight: start the band F of the lowest vertebra's height under it, "
                           "past the disc (0..1; default 0: right under it)")
    loop.add_argument("--max-timestep", type=int, default=defaults.max_timestep, metavar="N",
                      help="verdiff-net: draw the training timesteps from 0..N only, around the card's start timestep (default: all T)")
    loop.add_argument("--detach-prior-features", action="store_true",
                      help="verdiff-net: keep the diffusion loss out of the prior's encoder (its image features detached; default: joint, as the paper)")
    loop.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    loop.add_argument("--seed", type=int, default=defaults.seed, help="seed of initialisation, sampling of batches and noise")
    loop.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    loop.add_argument("--limit", type=int, default=None, help="train on the first N training subjects only (tests)")
    loop.add_argument("--optimizer", choices=["adamw", "adam"], default=defaults.optimizer, help="optimiser")
    loop.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="weight decay")
    loop.add_argument("--schedule", choices=["cosine", "constant", "cosine-time"], default=defaults.schedule, help="learning-rate schedule after the warm-up (cosine-time: over --time-limit)")
    loop.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help="optimiser steps of linear learning-rate warm-up")
    loop.add_argument("--clip-grad", type=float, default=defaults.clip_grad, help="max gradient norm (0: off)")
    loop.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=defaults.precision, help="auto: bf16 autocast on CUDA, fp32 on CPU")
    loop.add_argument("--augmentation", choices=sorted(PRESETS), default=defaults.augmentation)
    loop.add_argument("--log-every", type=int, default=defaults.log_every, help="write a log row and a progress line every N optimiser steps")
    loop.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every, help="save a resumable checkpoint every N optimiser steps")
    loop.add_argument("--val-every", type=int, default=defaults.val_every, help="validate every N steps (0: never)")
    loop.add_argument("--val-limit", type=int, default=None, help="validate on the first N held-out cases only")
    loop.add_argument("--val-steps", type=int, default=None, help=f"sampling steps of each validation pass (default: the bundled card's of the same name and family, else {defaults.val_steps})")
    loop.add_argument("--val-ensemble", type=int, default=None, help=f"ensemble size of each validation pass (default: the card's, else {defaults.val_ensemble})")
    loop.add_argument("--val-start-timestep", type=int, default=None, help="prior-shifted families: validate sampling from this timestep (default: the card's, e.g. 150, else T-1)")
    loop.add_argument("--patience", type=int, default=defaults.patience, help="stop after N validations without improvement (0: never)")
    loop.add_argument("--min-delta", type=float, default=defaults.min_delta, help="smallest Dice gain that counts as an improvement (--patience)")
    loop.add_argument("--init", default=None, help="start from these weights (continue an earlier stage)")
    loop.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    loop.add_argument("--stop-after", type=int, default=None, help="end this invocation after N steps, leaving a checkpoint")
    loop.add_argument("--device", choices=["auto", "cpu", "cuda"], default=defaults.device, help="auto: CUDA if present, else the CPU")
    loop.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", help="write the CSV logs only, no TensorBoard events")
    loop.add_argument("--cache", default=None, help="train from a case cache (--write-cache) instead of the images")
    loop.add_argument("--write-cache", type=Path, default=None, help="write this run's training cases to one compressed .npz (for a machine without the data) and stop")
    loop.add_argument("--time-limit", dest="time_limit_s", type=float, default=None, help="finish after this many seconds of training (final weights and summary, as an early stop)")
    loop.add_argument("--cache-slice-step", type=int, default=1, help="with --write-cache: keep every k-th sagittal slice (to fit a transfer)")
    loop.add_argument("--workers", type=int, default=0, help="processes building the augmented samples (0: in the loop; results are identical)")


def keep_init_architecture(args) -> None:
    """``--init`` from a model's weights with its card beside them (``Resources/Models/NAME.pt``):
    the run continues that model, so its family and channels are the card's (given ones must
    match), and so are its context slices unless more are asked for (``--context-slices``:
    a 2.5D fine-tune of it, warm-started by ``checkpoint.fit_image_input``); 0 makes a planar
    model of a 2.5D one (its image kernels summed, the same function); other fewer cannot
    carry its weights over. Its grid spacing is the card's unless ``--spacing`` is given."""
    card_path = Path(args.init).with_suffix(".json") if args.init else None
    if card_path is None or not card_path.exists():
        return
    card = read_card(card_path)
    channels, family = card.channels, card.family_name
    if args.channels is not None and tuple(args.channels) != channels:
        raise ValueError(f"--init {args.init} has channels {','.join(map(str, channels))} (its card); --channels {','.join(map(str, args.channels))} would not fit")
    if args.family is not None and args.family != family:
        raise ValueError(f"--init {args.init} is a {family} model (its card), not {args.family}")
    if args.context_slices is not None and 0 < args.context_slices < card.context_slices:
        raise ValueError(f"--init {args.init} reads {card.context_slices} context slice(s) on each side (its card); --context-slices {args.context_slices} would drop its weights for them")
    args.channels, args.family = channels, family
    if args.context_slices is None:
        args.context_slices = card.context_slices
    if getattr(args, "context_distance", None) is None and args.context_slices:
        args.context_distance = card.context_distance_mm
    # A warm start continues the model on its own grid: a card trained with --spacing 4 is not
    # quietly fine-tuned on the recipe's 5 px grid (an explicit --spacing still wins).
    recipe = RECIPES.get(getattr(args, "model", None) or "")
    if getattr(args, "spacing", None) is None and not getattr(args, "config", None) and recipe and card.spacing_mm != recipe["spacing_mm"]:
        args.spacing = card.spacing_mm


def run_config_from_args(args) -> RunConfig:
    """The run's config from --config, from data set arguments, or from the recipe."""
    given_context, given_family = args.context_slices, args.family  # before the --init card fills them in
    given_distance = args.context_distance
    keep_init_architecture(args)
    levels = args.levels.split(",") if args.levels else None
    if args.config:
        if args.model or args.images or args.kind == "aasce" or given_family or args.spatial_dims != 2 or args.patch or args.spacing or args.view != "sagittal":
            raise ValueError("--config describes the whole run; do not also name a recipe, a family or data sets")
        run = load_config(args.config)
        if given_context not in (None, run.context_slices):
            raise ValueError(f"--config {args.config} has context_slices {run.context_slices}; set it there, not with --context-slices")
        if given_distance not in (None, run.context_distance_mm):
            raise ValueError(f"--config {args.config} has context_distance_mm {run.context_distance_mm}; set it there, not with --context-distance")
        if args.init and args.family and (args.family, tuple(args.channels)) != (run.family, tuple(run.channels)):  # the --init card's
            raise ValueError(f"--init {args.init} is a {args.family} model with channels {','.join(map(str, args.channels))} (its card); "
                             f"--config {args.config} describes {run.family} with {','.join(map(str, run.channels))}")
        return run
    channels = args.channels or DEFAULT_CHANNELS
    family = args.family or DEFAULT_FAMILY
    geometry = {"spatial_dims": args.spatial_dims, **({"context_slices": args.context_slices} if args.context_slices else {}), **({"view": args.view} if args.view != "sagittal" else {})}
    if args.context_distance is not None:
        geometry["context_distance_mm"] = args.context_distance
    if args.patch:
        geometry["patch_size"] = list(args.patch)
    if args.spacing:
        geometry["spacing_mm"] = args.spacing
    if args.images or args.kind == "aasce":
        if not args.model:
            raise ValueError("name the recipe whose geometry and normalisation to use, e.g. 'train verdiff-mr --images ...'")
        if args.kind == "aasce":
            dataset = {"kind": "aasce", "root": args.root or "xray-aasce"}
        else:
            dataset = {"kind": "volume", "images": args.images, "labels": args.labels, "source": args.source}
            if args.subject:
                dataset["subject"] = args.subject
        return RunConfig.from_dict(
            {
                "name": args.name or args.model,
                "recipe": args.model,
                "family": family,
                "labels": {"scheme": args.label_scheme, **({"levels": levels} if levels else {})},
                "datasets": [dataset],
                "split": {"seed": args.split_seed, "validation": args.validation_fraction, "test": args.test_fraction},
                "channels": list(channels),
                **geometry,
            },
            "arguments",
        )
    if not args.model:
        raise ValueError("name a bundled recipe (verdiff-mr, verdiff-ct, verdiff-xray) or give --config")
    return recipe_config(args.model, args.label_scheme, levels, channels, args.name, family, args.spatial_dims, args.patch, args.spacing, args.context_slices or 0,
                         args.context_distance, args.view)


def bundled_card(run: RunConfig) -> ModelCard | None:
    """The bundled card this run would replace (same name and family), if any."""
    path = models_dir() / f"{run.name}.json"
    if not path.is_file():
        return None
    card = read_card(path)
    return card if card.family_name == run.family else None


def validation_sampling(args, run: RunConfig) -> dict:
    """The validation's sampling settings: those given, else the bundled card's of the same
    name and family (so the validation Dice is that of the settings users get), else the
    loop's defaults (``TrainOptions``). Tiles (``val_tiles``) are the bundled card's alone:
    a card that samples in tiles of its crop (``input.tile_px``, session 27) has its run
    validated in tiles of the run's crop, with the card's ``tile_padding``."""
    card, defaults = bundled_card(run), TrainOptions()
    settings = {
        "val_steps": card.default_steps if card else defaults.val_steps,
        "val_ensemble": card.default_ensemble if card else defaults.val_ensemble,
        "val_start_timestep": card.scheduler_config.get("start_timestep") if card else defaults.val_start_timestep,
        "val_tiles": card.tile_padding if card and card.tile else defaults.val_tiles,
    }
    return {key: value if getattr(args, key, None) is None else getattr(args, key) for key, value in settings.items()}


def validation_settings_text(run: RunConfig, options: TrainOptions) -> str:
    """What the validation passes sample with, beside the bundled card of the same name (the
    settings a user of the model gets), so a validation Dice is read against the right ones."""
    from VerdiffSegmentLib.families import get_family

    family = get_family(run.family)
    cases = f"the first {options.val_limit}" if options.val_limit else "all"
    if family.scheduler is None:
        return f"validation every {options.val_every} steps on {cases} held-out cases: one deterministic pass"
    config = dict(family.scheduler_config)
    start = options.val_start_timestep if options.val_start_timestep is not None else config.get("num_train_timesteps", 1000) - 1
    text = f"validation every {options.val_every} steps on {cases} held-out cases: {options.val_steps} sampling steps x {options.val_ensemble} samples from t={start}"
    if options.val_tiles and run.spatial_dims == 2:
        text += f" in {options.crop} px tiles"
    card = bundled_card(run)
    if card is not None:
        card_start = card.scheduler_config.get("start_timestep", config.get("num_train_timesteps", 1000) - 1)
        text += f" (the bundled card {run.name}: {card.default_steps} x {card.default_ensemble} from t={card_start})"
    return text


def _command_line(argv) -> str:
    arguments = " ".join(argv if argv is not None else sys.argv[1:])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        return f"torchrun --nnodes {world // local} --nproc_per_node {local} -m training {arguments}"
    return f"python -m training {arguments}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    e = sub.add_parser("export", help="write a run's weights and model card into Resources/Models, with validation figures")
    e.add_argument("model", help="model name (a bundled recipe, or the name in the run's config)")
    e.add_argument("--run", type=Path, required=True)
    e.add_argument("--data", type=Path, default=DATA)
    e.add_argument("--models-dir", type=Path, default=None, help="where to write the card and weights (default: the bundled models' folder, models_dir())")
    e.add_argument("--steps", type=int, default=None, help="default sampling steps for the card (default: the family's)")
    e.add_argument("--ensemble", type=int, default=None, help="default ensemble size for the card (default: the family's)")
    e.add_argument("--precision", choices=["auto", "fp32", "fp16"], default="auto", help="auto: fp16 where validation Dice does not drop")
    e.add_argument("--fp16-tolerance", type=float, default=0.001)
    e.add_argument("--start-timestep", type=int, default=None, help="prior-shifted families: the card samples from this timestep (the bundled cards' 150)")
    e.add_argument("--suites", default=None, help="also record figures on these cross-source suites: 'all' or a comma list (training/cross_source.py)")
    e.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    d = sub.add_parser("defaults", help="change a bundled model's default sampling settings and re-validate its card")
    d.add_argument("model")
    d.add_argument("--steps", type=int, required=True)
    d.add_argument("--ensemble", type=int, required=True)
    d.add_argument("--start-timestep", type=int, default=None, help="prior-shifted families: sample from this timestep (default: keep the card's)")
    d.add_argument("--models-dir", type=Path, default=None, help="the card's folder (default: the bundled models' folder, models_dir())")
    d.add_argument("--data", type=Path, default=DATA)
    d.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    s = sub.add_parser("soup", help="replace a bundled model's weights by the average of weights fine-tuned from them, and re-validate its card")
    s.add_argument("model")
    s.add_argument("ingredients", type=Path, nargs="+", help="weights or run checkpoints of the card's network (the card's own .pt among them, if it is one)")
    s.add_argument("--models-dir", type=Path, default=None, help="the card's folder (default: the bundled models' folder, models_dir())")
    s.add_argument("--data", type=Path, default=DATA)
    s.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    helper_networks = {  # small X-ray networks beside the diffusion models: command -> (module, help, default steps, batch)
        "level-map": ("level_map", "train the X-ray level map that names the vertebrae (training/level_map.py)", 2500, 16),
        "endplate-tilt": ("endplate_tilt", "train the X-ray endplate-tilt network the Cobb angles use (training/endplate_tilt.py)", 3000, 64),
        "vertebra-level": ("vertebra_level", "train the X-ray vertebra-level network that names the pieces (training/vertebra_level.py)", 8000, 64),
        "vertebra-outline": ("vertebra_outline", "train the X-ray vertebra-outline network that draws each piece's corners (training/vertebra_outline.py)", 6000, 64),
        "spine-strip": ("spine_strip", "train the X-ray spine-strip level reader whose names join the level network's (training/spine_strip.py)", 6000, 16),
    }
    for command, (module, help_text, default_steps, default_batch) in helper_networks.items():
        m = sub.add_parser(command, help=help_text)
        m.add_argument("--out", type=Path, required=True)
        m.add_argument("--data", type=Path, default=DATA)
        m.add_argument("--train-steps", type=int, default=default_steps)
        m.add_argument("--batch-size", type=int, default=default_batch)
        m.add_argument("--lr", type=float, default=2e-3)
        m.add_argument("--seed", type=int, default=0)
        m.add_argument("--val-every", type=int, default=500)
        m.add_argument("--init", type=Path, default=None, help=f"warm start from these weights (e.g. Resources/Models/{module.replace('_', '-')}-xray.pt)")
        m.add_argument("--limit", type=int, default=None, help="first N training and validation images only")
        m.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
        x = sub.add_parser(f"export-{command}", help=f"write a {command} checkpoint into Resources/Models and name it in the X-ray cards")
        x.add_argument("--checkpoint", type=Path, required=True)
        x.add_argument("--data", type=Path, default=DATA)
        x.add_argument("--models-dir", type=Path, default=None)
        x.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    v = sub.add_parser("evaluate", help="Dice, IoU, HD95 and NSD per case and mean +- sd")
    v.add_argument("model", nargs="?", help="a model card's name (Resources/Models); with --run, the run's model name")
    v.add_argument("--run", type=Path, help="evaluate a run's weights (best.pt, else model.pt)")
    v.add_argument("--models-dir", type=Path, default=None)
    v.add_argument("--data", type=Path, default=DATA)
    v.add_argument("--split", choices=["validation", "test", "train"], default="validation")
    v.add_argument("--images", help="evaluate on a folder instead: image pattern with one '*'")
    v.add_argument("--labels", help="label pattern with the same '*'")
    v.add_argument("--source", choices=sorted(SOURCES), help="label ids of the folder's label maps")
    v.add_argument("--suite", help="MR models: other sources and simulated contrasts instead of the split: 'all' or a comma list of clinical-sagittal, inverted, v-curve, gamma-0.5, gamma-2, noise-0.1, thick-4mm, bias (training/cross_source.py)")
    v.add_argument("--steps", type=int, default=None)
    v.add_argument("--ensemble", type=int, default=None)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--limit", type=int, default=None, help="first N cases only")
    v.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm (px where spacing is unknown)")
    v.add_argument("--out", type=Path, help="write the JSON here too")
    v.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        helper = args.command.removeprefix("export-")
        if helper in helper_networks:
            import importlib

            trainer = importlib.import_module(f".{helper_networks[helper][0]}", __package__)
            if args.command == helper:
                result = trainer.train(args.data, args.out, args.train_steps, args.batch_size, args.lr, args.seed, args.val_every, args.init, args.limit,
                                       command=_command_line(argv))
            else:
                log = args.checkpoint.parent / "log.json"
                result = trainer.export(args.checkpoint, args.models_dir or models_dir(), args.data, log if log.exists() else None)
            print(json.dumps(result, indent=1))
            return
        if args.command == "export":
            from .export import export

            from .cross_source import SUITES

            suites = list(SUITES) if args.suites == "all" else (args.suites.split(",") if args.suites else None)
            card = export(args.model, args.run, args.models_dir or models_dir(), args.data, args.steps, args.ensemble, args.precision, args.fp16_tolerance,
                          start_timestep=args.start_timestep, suites=suites)
            print(json.dumps({**card["validation"], "export": card["export"]}, indent=1))
            return
        if args.command == "defaults":
            from .export import set_defaults

            card = set_defaults(args.model, args.models_dir or models_dir(), args.data, args.steps, args.ensemble, args.start_timestep)
            print(json.dumps({k: v for k, v in card["validation"].items() if k != "cases"}, indent=1))
            return
        if args.command == "soup":
            from .soup import soup_into_card

            card = soup_into_card(args.model, args.ingredients, args.models_dir or models_dir(), args.data, _command_line(argv))
            print(json.dumps({k: v for k, v in card["validation"].items() if k != "cases"}, indent=1))
            return
        if args.command == "evaluate":
            from .evaluate import run_evaluate

            if not args.model and not args.run:
                parser.error("evaluate needs a model name or --run")
            if args.images and not (args.labels and args.source):
                parser.error("--images needs --labels and --source")
            result = run_evaluate(args)
            text = json.dumps(result, indent=1)
            if args.out:
                args.out.write_text(text)
            print(text)
            return
        run = run_config_from_args(args)
    except (ValueError, VerdiffError) as error:
        parser.exit(2, f"error: {error}\n")

    if args.write_cache:
        from .cache import write_cache

        print(json.dumps(write_cache(run, args.data, args.write_cache, args.limit, args.cache_slice_step)))
        return

    from .train import train

    for key, value in validation_sampling(args, run).items():
        setattr(args, key, value)
    options = TrainOptions(**{f.name: getattr(args, f.name) for f in fields(TrainOptions)})
    if int(os.environ.get("RANK", "0")) == 0 and options.val_every:
        print(validation_settings_text(run, options), flush=True)
    path = train(run, args.data, args.out, options, command=_command_line(argv))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
