"""The training loop of every model family on 2D sagittal slices, or (a 3D run: ``RunConfig``
``spatial_dims`` 3) on 3D patches of isotropic volumes: one process or many (DDP), CPU or CUDA.

One step: draw a global batch of augmented crops or patches (``sampler``) and the family objective's
random inputs (timesteps, noise; ``objectives``), and minimise the objective's loss on the
core's own network (``VerdiffSegmentLib.families``). Verdiff-Net's objective noises each
mask around the conditional U-Net's prior (eq. 5) and minimises L_simple + BCE.

Defaults are the bundled recipes' (so their recorded commands still mean what they did;
the random stream is new, per-sample seeds for sharding, so a rerun does not reproduce the
weights of a run made before it bit for bit):
AdamW with weight decay 1e-4 and a learning rate of 1e-3 decayed by a cosine to 0 over
the run (the paper's Adam at 1e-4 is for 9000 steps at batch 1 on a GPU; a few thousand
CPU steps need a larger rate: ``--optimizer adam --lr 1e-4 --weight-decay 0`` is the paper's), no
warm-up, gradient norm clipped to 1, the ``light`` augmentation, no validation, random
initial weights (``--init`` starts from a run's weights instead: a second stage; from a model
of fewer input channels, a 2.5D run starts as that model: ``checkpoint.fit_image_input``).
Options add: linear warm-up before the cosine, bf16 autocast on CUDA (the default there:
``--precision auto``), validation Dice/IoU every N steps through ``pipeline.segment`` on
held-out subjects, the best weights by validation Dice (``best.pt``), early stopping after
``--patience`` validations without improvement, and resuming (``--resume``) from
``checkpoint.pt`` bit-exactly.

The loop is a ``Trainer`` (built in a fixed order, so the seeded RNGs give each piece the same
draws in every run) over a ``TrainingState``: network, optimiser, schedule, sampler, noise
generator and progress, which is what ``checkpoint.pt`` holds (with the global RNG states)
and what a resume restores, in one place.

Outputs in the run folder: ``model.pt`` (final weights, a plain state dict), ``best.pt`` and
``best.json``, ``checkpoint.pt``, ``split.json``, ``run.json`` (config and settings),
``command.txt``, ``log.csv``, ``validation.csv``, ``tensorboard/`` and ``summary.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from VerdiffSegmentLib.families import get_family
from VerdiffSegmentLib.models import parse_card

from .augment import PRESETS
from .checkpoint import add_gap_channel, atomic_save, fit_image_input, load_checkpoint, load_weights, restore_rng_states, rng_states, spread_to_levels
from .configs import RunConfig
from .distributed import World, all_mean, broadcast, close_world, gather, init_world, use_global_batch_norm, weights_digest
from .logs import RunLog
from .objectives import objective_for
from .sampler import PatchSampler, SliceSampler
from .splits import write_split

@dataclass
class TrainOptions:
    """Loop settings; each default is the bundled recipes' (module docstring)."""

    steps: int = 1500
    batch_size: int = 8  # per process; the global batch is batch_size x world size x accumulate
    accumulate: int = 1  # micro-batches whose gradients add up to one optimiser step (a GPU's batch on a CPU)
    crop: int = 160
    crop_centre: str = "pixel"  # spine-centred crops on a random spine pixel, or along the spine (``sampler.spine_centre``)
    edge_pad: int = 0  # pad each side of a 2D slice by a random 0..N border rows before the crop (``sampler``, edge padding)
    coronal_bend_mm: float = 0.0  # 2D: read half the slices along a random coronal bend of up to this many mm (``sampler``, coronal bend)
    axial_turn_deg: float = 0.0  # 2D: read half the slices on a plane turned about the head-feet axis by up to this many degrees (``sampler``, axial turn)
    acquired_slices_only: bool = False  # 2D: draw only the acquired slices of a volume interpolated between them (``sampler``, acquired slices only)
    blend_interpolated_labels: bool = False  # 2D: an interpolated slice's label drawn from its acquired neighbours' (``sampler``, blended interpolated labels)
    sacral_band_weight: float = 0.0  # verdiff-net, binary-gaps: BCE weight 1 + W under the lowest vertebra (``sampler``, band); 0: none
    sacral_band_offset: float = 0.0  # with sacral_band_weight: the band starts this many of the vertebra's heights under it (0..1)
    max_timestep: int | None = None  # verdiff-net: draw training timesteps from 0..N only (``objectives.verdiff_net``); None: all
    detach_prior_features: bool = False  # verdiff-net: the diffusion loss stops at the prior's image features (``objectives.verdiff_net``)
    lr: float = 1e-3
    seed: int = 35
    optimizer: str = "adamw"  # or "adam"
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # or "constant", or "cosine-time" (over --time-limit: learning_rate_factor)
    warmup_steps: int = 0
    clip_grad: float = 1.0  # max gradient norm; 0 turns clipping off
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; or fp32 / bf16
    augmentation: str = "light"  # see augment.PRESETS
    limit: int | None = None  # first N training subjects only
    log_every: int = 25
    checkpoint_every: int = 100
    val_every: int = 0  # 0: no validation during training
    val_limit: int | None = None  # first N validation cases only
    val_steps: int = 5
    val_ensemble: int = 3
    val_start_timestep: int | None = None  # prior-shifted families: validate sampling from this timestep, as a card's defaults do
    val_tiles: str | None = None  # validate sampling 2D slices in tiles of ``crop`` with this ``input.tile_padding`` ("none", "zeros"), as the card does; None: whole slices
    patience: int = 0  # stop after this many validations without improvement; 0: never
    min_delta: float = 0.0
    init: str | None = None  # start from these weights (a second stage continuing an earlier run)
    resume: bool = False
    stop_after: int | None = None  # end this invocation after N steps, as a kill would (tests, time-sliced jobs)
    device: str = "auto"
    tensorboard: bool = True
    time_limit_s: float | None = None  # finish (final weights, summary) once this much training time has passed
    cache: str | None = None  # train from this case cache (``cache``) instead of the images
    workers: int = 0  # processes building samples beside the loop (0: in the loop); results are identical


# Settings a resumed run must share with its checkpoint, or it would not continue the same run.
RESUME_KEYS = ("steps", "batch_size", "accumulate", "crop", "crop_centre", "edge_pad", "coronal_bend_mm", "axial_turn_deg", "acquired_slices_only", "blend_interpolated_labels", "sacral_band_weight", "sacral_band_offset", "max_timestep", "detach_prior_features", "lr", "seed", "optimizer", "weight_decay", "schedule", "warmup_steps", "clip_grad", "precision", "augmentation", "limit", "init")


def learning_rate_factor(options: TrainOptions, seconds=lambda: 0.0):
    """Multiplier of the base rate at a step: linear warm-up, then cosine to 0 (or constant).

    ``cosine-time`` decays over the run's ``time_limit_s`` of training time (``seconds()``, the
    time trained so far) instead of its steps, whichever ends first: a time-boxed run (a lent
    GPU's minutes, unknown steps per second until it runs) still ends at a rate near 0 rather
    than cut off mid-schedule at a high one. Its rates depend on the clock, so such a run is
    not reproduced bit for bit."""
    warmup, steps = options.warmup_steps, options.steps
    if options.schedule == "cosine-time" and not options.time_limit_s:
        raise ValueError("--schedule cosine-time needs --time-limit")

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if options.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(steps - warmup, 1)
        if options.schedule == "cosine-time":
            progress = max(progress, seconds() / options.time_limit_s)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def autocast_dtype(options: TrainOptions, device: torch.device) -> torch.dtype | None:
    if options.precision == "fp32" or (options.precision == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise ValueError("--precision bf16 is for CUDA; on CPU training runs in fp32")
    return torch.bfloat16


def make_optimiser(options: TrainOptions, parameters) -> torch.optim.Optimizer:
    if options.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=options.lr, weight_decay=options.weight_decay)
    if options.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=options.lr, weight_decay=options.weight_decay)
    raise ValueError(f"unknown optimizer {options.optimizer!r}; use adamw or adam")


def train(run: RunConfig, data_root: Path, out_dir: Path, options: TrainOptions | None = None, command: str | None = None) -> Path:
    """Train ``run``; returns the path of ``model.pt`` (of ``checkpoint.pt`` after ``stop_after``).

    Under ``torchrun`` every process calls this; rank 0 writes the files."""
    options = options or TrainOptions()
    world = init_world(options.device)
    finished = False
    try:
        path = Trainer(run, Path(data_root), Path(out_dir), options, world, command).fit()
        finished = True
        return path
    finally:
        close_world(world, finished)


CHECKPOINT_FORMAT = 1


@dataclass
class TrainingState:
    """Everything the next optimiser step depends on besides the global RNGs (which the
    checkpoint adds): what ``checkpoint.pt`` holds and a resume restores, in one place.

    ``progress``: step, training seconds so far, best validation Dice and its step, validations
    without improvement, whether the run stopped early (and, once out of time,
    ``stopped_at_time_limit``); it is also the run's ``summary.json``."""

    network: nn.Module
    optimiser: torch.optim.Optimizer
    lr_schedule: torch.optim.lr_scheduler.LambdaLR
    sampler: SliceSampler | PatchSampler
    noise_generator: torch.Generator
    progress: dict

    def checkpoint(self, settings: dict, config: dict) -> dict:
        """The checkpoint: this state, the global RNG states, and the run it belongs to."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.network.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "sampler": self.sampler.state_dict(),
            "noise_generator": self.noise_generator.get_state(),
            "rng": rng_states(),
            "progress": dict(self.progress),
            "settings": settings,
            "config": config,
        }

    def restore(self, checkpoint: dict, settings: dict, config: dict) -> None:
        """Continue from ``checkpoint``, which must belong to the same run (``config``) with the
        same ``RESUME_KEYS`` settings and world size; else a ValueError naming what differs."""
        # a setting added after the checkpoint was written counts as its default there
        defaults = asdict(TrainOptions())
        mismatched = {k: (checkpoint["settings"].get(k, defaults.get(k)), settings[k]) for k in (*RESUME_KEYS, "world_size")
                      if checkpoint["settings"].get(k, defaults.get(k)) != settings[k]}
        if checkpoint["config"] != config:
            mismatched["config"] = "differs"
        if mismatched:
            raise ValueError(f"settings differ from the checkpoint's (checkpoint, now): {mismatched}")
        self.network.load_state_dict(checkpoint["model"])
        self.optimiser.load_state_dict(checkpoint["optimiser"])
        self.lr_schedule.load_state_dict(checkpoint["lr_schedule"])
        self.sampler.load_state_dict(checkpoint["sampler"])
        self.noise_generator.set_state(checkpoint["noise_generator"])
        restore_rng_states(checkpoint["rng"])
        self.progress = dict(checkpoint["progress"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def held_out_of(init: str | None) -> set[str]:
    """The cases the weights at ``init`` were validated on: the ``training.split.validation`` of
    the card beside them (bundled weights) or the ``split.json`` of their run (a run's
    ``best.pt``); empty when neither is there."""
    if not init:
        return set()
    card, split = Path(init).with_suffix(".json"), Path(init).parent / "split.json"
    try:
        if card.exists():
            return set(((json.loads(card.read_text(encoding="utf-8")).get("training") or {}).get("split") or {}).get("validation") or [])
        if split.exists():
            return set(json.loads(split.read_text(encoding="utf-8")).get("validation") or [])
    except (OSError, ValueError, AttributeError):
        return set()
    return set()


class Trainer:
    """One training run: built from its config and options (data, sampler, network, objective,
    optimiser, schedule: in this order, which fixes what the seeded RNGs give each), resumed
    from its checkpoint if asked, then ``fit``. The pieces: ``step`` (one optimiser step),
    ``validate``, ``save_checkpoint`` / ``resume`` (``TrainingState``) and ``finish``."""

    def __init__(self, run: RunConfig, data_root: Path, out_dir: Path, options: TrainOptions, world: World, command: str | None = None):
        if options.augmentation not in PRESETS:
            raise ValueError(f"unknown augmentation {options.augmentation!r}; use {', '.join(PRESETS)}")
        if options.accumulate < 1:
            raise ValueError(f"--accumulate must be 1 or more micro-batches per step, not {options.accumulate}")
        self.run, self.data_root, self.out_dir, self.options, self.world = run, data_root, out_dir, options, world
        out_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(options.seed)
        self.device = world.device
        amp_dtype = autocast_dtype(options, self.device)
        if options.sacral_band_weight and (options.sacral_band_weight < 0 or run.family != "verdiff-net" or not run.labels.gaps or run.spatial_dims != 2):
            raise ValueError(f"--sacral-band-weight must be 0 or more, on a 2D verdiff-net run with --label-scheme binary-gaps (got {options.sacral_band_weight}, "
                             f"{run.family}, {run.labels.scheme}, {run.spatial_dims}D)")
        if options.sacral_band_offset and not (options.sacral_band_weight and 0 <= options.sacral_band_offset <= 1):
            raise ValueError(f"--sacral-band-offset must be 0..1 (of the lowest vertebra's height) and comes with --sacral-band-weight (got {options.sacral_band_offset})")
        cases, self.split = self._cases()
        leaked = sorted(held_out_of(options.init) & set(self.split.get("train", [])))
        if leaked and world.is_main:  # a deliberate final stage may train on all; say so, loudly
            print(f"warning: --init {options.init} was validated on {len(leaked)} case(s) this run trains on ({', '.join(leaked[:3])}"
                  f"{', ...' if len(leaked) > 3 else ''}): its held-out figures would no longer be held out", flush=True)
        if options.val_every and not self.split.get("validation"):
            raise ValueError("--val-every needs validation subjects, and this run's split has none")
        self.settings = {**asdict(options), "world_size": world.size, "global_batch": options.batch_size * world.size * options.accumulate, "threads": torch.get_num_threads()}
        self._write_run_files(command)
        sampler = self._sampler(cases)
        network = self._network()
        self.objective = objective_for(run.family, network, amp_dtype, options.max_timestep, options.detach_prior_features)
        self.loss_terms = self.objective.terms
        # The module a step calls: the objective, wrapped for DDP in a distributed run.
        self.step_module = DistributedDataParallel(self.objective, device_ids=[world.local_rank] if self.device.type == "cuda" else None) if world.distributed else self.objective
        optimiser = make_optimiser(options, network.parameters())
        self.state = TrainingState(
            network=network,
            optimiser=optimiser,
            lr_schedule=torch.optim.lr_scheduler.LambdaLR(optimiser, learning_rate_factor(options, self._seconds_trained)),
            sampler=sampler,
            noise_generator=torch.Generator().manual_seed(options.seed),
            progress={"step": 0, "seconds": 0.0, "best_dice": -1.0, "best_step": 0, "bad_validations": 0, "stopped_early": False},
        )
        self.checkpoint_path = out_dir / "checkpoint.pt"
        self.log: RunLog | None = None
        if options.resume and self.checkpoint_path.exists():
            self.resume()

    # -- building ------------------------------------------------------------------------
    def _seconds_trained(self) -> float:
        """Training seconds so far (0 while the state is built: the schedule's first call)."""
        return self.state.progress["seconds"] if hasattr(self, "state") else 0.0

    def _cases(self):
        if self.options.cache:
            from .cache import read_cache

            return read_cache(Path(self.options.cache), self.run)
        from .datasets import training_cases  # imported here: a run from a cache needs no image readers (SimpleITK)

        return training_cases(self.run, self.data_root, self.options.limit)

    def _write_run_files(self, command: str | None) -> None:
        if not self.world.is_main:
            return
        write_split(self.split, self.out_dir)
        (self.out_dir / "run.json").write_text(json.dumps({"config": self.run.to_dict(), "settings": self.settings}, indent=1))
        if command:
            (self.out_dir / "command.txt").write_text(command + "\n")

    def _sampler(self, cases) -> SliceSampler | PatchSampler:
        run, options = self.run, self.options
        augmentation, channels, bits = PRESETS[options.augmentation], run.labels.network_channels, run.labels.gaps
        if run.spatial_dims == 3:
            sampler = PatchSampler(cases, run.patch_size, options.seed, augmentation, channels, bits)
        else:
            sampler = SliceSampler(cases, options.crop, options.seed, augmentation, channels, run.context_slices, run.context_mm, bits,
                                   options.crop_centre, options.edge_pad, options.coronal_bend_mm, run.input_spacing_mm, options.sacral_band_weight > 0,
                                   options.sacral_band_offset, options.axial_turn_deg, options.acquired_slices_only,
                                   options.blend_interpolated_labels)
        if options.workers:
            sampler.start_workers(options.workers)
        return sampler

    def _network(self) -> nn.Module:
        """The family's network with fresh (seeded) or ``--init`` weights, on the device; weights
        of fewer input channels (a 1-channel model warm-starting a 2.5D run) are widened so the
        network computes what they computed, a 2.5D model's summed into a planar run's one
        channel (``fit_image_input``); a binary model warm-starts a
        ``binary-gaps`` run with the gap channel added (``add_gap_channel``), a ``levels`` run with
        one channel per level (``spread_to_levels``)."""
        network = get_family(self.run.family).network(**self.run.network_arguments)
        if self.options.init:
            state = load_weights(self.options.init)
            if self.run.labels.gaps:
                state = add_gap_channel(state, network.state_dict())
            elif self.run.labels.scheme == "levels":
                state = spread_to_levels(state, network.state_dict())
            network.load_state_dict(fit_image_input(state, network.state_dict(), self.run.context_slices))
        network = network.to(self.device)
        if self.world.distributed:
            use_global_batch_norm(network, self.world.batch_norm_group)
        return network

    # -- checkpoints -----------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from ``checkpoint.pt``, which must belong to the same run and settings."""
        try:
            self.state.restore(load_checkpoint(self.checkpoint_path), self.settings, self.run.to_dict())
        except ValueError as error:
            raise ValueError(f"cannot resume {self.checkpoint_path}: {error}") from None
        if self.world.is_main:
            print(f"resumed from {self.checkpoint_path} at step {self.state.progress['step']}", flush=True)

    def save_checkpoint(self) -> None:
        if self.world.is_main:
            atomic_save(self.state.checkpoint(self.settings, self.run.to_dict()), self.checkpoint_path)

    # -- the loop --------------------------------------------------------------------------
    def fit(self) -> Path:
        """Run the steps left; returns ``model.pt``, or ``checkpoint.pt`` when ``stop_after``
        ended this invocation before the run's end."""
        options, state = self.options, self.state
        progress = state.progress
        self.log = RunLog(self.out_dir, options.steps, progress["step"], enabled=self.world.is_main, tensorboard=options.tensorboard, terms=self.loss_terms)
        start_step, started = progress["step"], time.time() - progress["seconds"]
        state.network.train()
        for step in range(start_step + 1, options.steps + 1):
            terms, grad_norm = self.step(step)
            progress.update(step=step, seconds=round(time.time() - started, 3))
            if step % options.log_every == 0 or step == options.steps:
                self.log.train_row(step, dict(zip(self.loss_terms, terms)), state.optimiser.param_groups[0]["lr"], grad_norm, time.time() - started)
            if options.val_every and (step % options.val_every == 0 or step == options.steps):
                self.validate(step)
            if options.time_limit_s is not None and progress["seconds"] >= options.time_limit_s:
                progress["stopped_early"] = True  # out of time: finish here as an early stop does
                progress["stopped_at_time_limit"] = True
            stopping = progress["stopped_early"] or (options.stop_after is not None and step - start_step >= options.stop_after)
            if (options.checkpoint_every and step % options.checkpoint_every == 0) or step == options.steps or stopping:
                self.save_checkpoint()
            if stopping:
                break
        self.log.close()
        state.sampler.stop_workers()
        if options.stop_after is not None and not progress["stopped_early"] and progress["step"] < options.steps:
            return self.checkpoint_path
        return self.finish()

    def step(self, step: int) -> tuple[list[float], float]:
        """One optimiser step on a fresh global batch; returns the loss terms (mean over the
        ranks and micro-batches) and the gradient norm before clipping.

        With ``accumulate`` K > 1 the step's gradient is the mean of K micro-batches', each
        drawn as a whole step's batch is (K = 1 is the plain step, the same draws bit for bit):
        a CPU or a small GPU trains with the batch a large GPU's recipe had. Not identical to
        one large batch: the MSFM's BatchNorm sees one micro-batch's statistics at a time. DDP
        synchronises the gradients once, on the last micro-batch."""
        state, world, options = self.state, self.world, self.options
        micro_batch, shard = options.batch_size * world.size, world.shard(options.batch_size)
        state.optimiser.zero_grad(set_to_none=True)
        summed = None
        for micro in range(options.accumulate):
            image, mask = state.sampler.batch(micro_batch, shard)
            weighted = {}
            if options.sacral_band_weight:  # the masks' last channel is the band (``sampler``): a loss weight, no target
                mask, band = mask[:, :-1], mask[:, -1:]
                weighted["pixel_weight"] = (1.0 + options.sacral_band_weight * band).to(self.device)
            draws = {k: v[shard].to(self.device) for k, v in self.objective.draw(micro_batch, mask.shape[1:], state.noise_generator).items()}
            last = micro == options.accumulate - 1
            with self.step_module.no_sync() if world.distributed and not last else contextlib.nullcontext():
                losses = self.step_module(image.to(self.device), mask.to(self.device), **draws, **weighted)
                # Checked per micro-batch, before its backward, and reduced over the ranks so all of them stop:
                # a diverged network's NaN terms carry no graph (``objectives.non_finite``).
                terms = all_mean(world, torch.stack([losses[k].detach().float() for k in self.loss_terms]))
                if not torch.isfinite(terms).all():
                    bad = ", ".join(f"{k}={v:.4g}" for k, v in zip(self.loss_terms, terms.tolist()))
                    raise FloatingPointError(f"loss is not finite at step {step} ({bad}); lower --lr, or check the data of this run")
                (losses["total"] / options.accumulate).backward()
            summed = terms if summed is None else summed + terms
        max_norm = options.clip_grad if options.clip_grad > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(state.network.parameters(), max_norm))
        state.optimiser.step()
        state.lr_schedule.step()
        return (summed / options.accumulate).tolist(), grad_norm

    def validate(self, step: int) -> None:
        """Validation Dice/IoU through ``segment`` on rank 0 (``best.pt`` when it improves);
        every rank learns the outcome and counts towards ``patience`` alike."""
        from .evaluate import card_data, evaluate, inference_edge_padding, split_cases  # here: a run without validation needs no segmentation pipeline

        run, options, network, progress = self.run, self.options, self.state.network, self.state.progress
        outcome, result, started_at = None, None, time.time()
        if self.world.is_main:
            tiles = (options.crop, options.val_tiles) if options.val_tiles else None  # sampled as the card the run replaces samples
            data = card_data(run, "checkpoint.pt", "", options.val_steps, options.val_ensemble, edge_padding_px=inference_edge_padding(options.edge_pad), tiles=tiles)
            if options.val_start_timestep is not None and "scheduler" in data:
                data["scheduler"]["start_timestep"] = options.val_start_timestep
            card = parse_card(data, self.out_dir / f"{run.name}.json")
            network.eval()
            result = evaluate(card, split_cases(run, self.data_root, self.split, "validation", options.val_limit), network=network, device=self.device.type)
            network.train()
            outcome = {"dice": result["dice_mean"], "improved": result["dice_mean"] > progress["best_dice"] + options.min_delta}
            if outcome["improved"]:
                atomic_save({k: v.detach().cpu() for k, v in network.state_dict().items()}, self.out_dir / "best.pt")
                (self.out_dir / "best.json").write_text(json.dumps({"step": step, "dice": result["dice_mean"], "iou": result["iou_mean"], "validation": result}, indent=1))
        outcome = broadcast(self.world, outcome)
        if outcome["improved"]:
            progress.update(best_dice=outcome["dice"], best_step=step, bad_validations=0)
        else:
            progress["bad_validations"] += 1
        if options.patience and progress["bad_validations"] >= options.patience:
            progress["stopped_early"] = True
        if self.world.is_main:
            self.log.validation_row(step, result, progress["best_dice"], progress["best_step"], time.time() - started_at)

    def finish(self) -> Path:
        """Write the final weights and the summary; check that every rank holds the same weights."""
        network, world, progress = self.state.network, self.world, self.state.progress
        digests = gather(world, weights_digest(network))
        path = self.out_dir / "model.pt"
        if world.is_main:
            atomic_save({k: v.detach().cpu() for k, v in network.state_dict().items()}, path)
            summary = {**progress, "world_size": world.size, "rank_weight_sha256": digests}
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
            print(f"done at step {progress['step']}" + (f"; stopped early, best validation Dice {progress['best_dice']:.4f} at step {progress['best_step']}" if progress["stopped_early"] else ""), flush=True)
        if len(set(digests)) != 1:
            raise RuntimeError(f"ranks hold different weights at the end of training: {digests}")
        return path
