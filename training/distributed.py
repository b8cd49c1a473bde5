"""Many processes, GPUs and nodes with DistributedDataParallel, launched by ``torchrun``.

``torchrun --nproc_per_node N [--nnodes M ...] -m training train ...`` runs the same
command in N x M processes; ``torchrun`` sets RANK, LOCAL_RANK and WORLD_SIZE, which is
how a process knows it is one of many. Backend: NCCL on CUDA (one GPU per local rank),
gloo on CPU. ``--batch-size`` is per process: the global batch is batch x world size,
drawn once with the run's seed and split into one shard per rank (``sampler``).

BatchNorm: the MSFM's one ``BatchNorm1d`` normalises over the batch. Under DDP each rank
would see only its shard, and ``torch.nn.SyncBatchNorm`` runs on GPUs only, so
``GlobalBatchNorm1d`` gathers the inputs of all ranks (autograd-aware, on its own process
group so it never interleaves with DDP's gradient all-reduce) and normalises over the
global batch, on CPU and GPU alike. With it, N processes compute what one process does
with the same global batch, up to float summation order.
"""

from __future__ import annotations

import gc
import hashlib
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    local_size: int = 1
    device: torch.device = torch.device("cpu")
    batch_norm_group: object = None  # process group of GlobalBatchNorm1d

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, batch_per_rank: int) -> slice:
        """This rank's samples of a global batch."""
        return slice(self.rank * batch_per_rank, (self.rank + 1) * batch_per_rank)


def init_world(device: str = "auto") -> World:
    """One process, or one of torchrun's (WORLD_SIZE > 1): join the process group."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(device=torch.device("cuda" if use_cuda else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # Other ranks wait while rank 0 validates; a long timeout keeps them from giving up.
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    group = dist.new_group(backend="nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return World(rank, local_rank, size, local_size, torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"), group)


def close_world(world: World, finished: bool = False) -> None:
    """Leave the process group. After a run that ``finished`` on every rank, the ranks first
    meet at a barrier: a rank that tore gloo down while rank 0 still wrote the final weights
    once aborted ("terminate called without an active exception", a fresh-clone CI run of the
    two-process test). After an error there is no barrier: the other ranks may never come."""
    if world.distributed and dist.is_initialized():
        if finished:
            dist.barrier()
        gc.collect()  # the trainer's DDP reducer holds the process group: freed before the group goes
        dist.destroy_process_group()


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch across ranks.
    Same parameters and buffers as ``nn.BatchNorm1d``, so state dicts are interchangeable."""

    group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size(self.group) > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_gather

        with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd gather
            warnings.simplefilter("ignore", FutureWarning)
            parts = all_gather(x, group=self.group)  # gradients flow back to each rank's own part
        rank = dist.get_rank(self.group)
        everything = torch.cat(parts, dim=0)
        self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        out = F.batch_norm(everything, self.running_mean, self.running_var, self.weight, self.bias, True, momentum, self.eps)
        start = sum(p.shape[0] for p in parts[:rank])
        return out[start : start + x.shape[0]]


def use_global_batch_norm(module: nn.Module, group) -> nn.Module:
    """Swap every BatchNorm1d of ``module`` for a GlobalBatchNorm1d with the same state."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            replacement = GlobalBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            replacement.load_state_dict(child.state_dict())
            replacement.group = group
            setattr(module, name, replacement.to(next(child.buffers()).device))
        else:
            use_global_batch_norm(child, group)
    return module


def weights_digest(module: nn.Module) -> str:
    """sha256 of the state dict's bytes: equal on every rank when they hold the same weights."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def all_mean(world: World, values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a small tensor (each rank's loss terms): the global batch's loss."""
    if not world.distributed:
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values / world.size


def broadcast(world: World, value):
    """Rank 0's Python object on every rank (validation results, the stop decision)."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(world: World, value) -> list:
    if not world.distributed:
        return [value]
    out = [None] * world.size
    dist.all_gather_object(out, value)
    return out
