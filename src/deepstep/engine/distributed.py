"""Several processes, one run: PyTorch's DistributedDataParallel under `torchrun`.

    torchrun --nproc-per-node 2 -m deepstep train ...                  # one machine
    torchrun --nnodes 2 --node-rank R --master-addr HOST --nproc-per-node 2 -m deepstep train ...

`--batch-size` is per process, so N processes train on a global batch of N x batch-size. Every
rank draws the same global batch a single process would draw (same seeded order and
augmentation) and keeps its slice of it: the ranks together see exactly the data of one process
with the global batch, and gradients are averaged by DDP. Loss and accuracy sums are added up
across ranks; only rank 0 logs and writes the run folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from deepstep.data.batches import BatchesWrapper
from deepstep.errors import DeepstepError, PeerStopped, reason_of


@dataclass(frozen=True)
class Ranks:
    """This process's place: rank among `world` processes; `local` is its index on this machine."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Ranks()


def from_environment() -> Ranks:
    """The ranks torchrun put in the environment (RANK, WORLD_SIZE, LOCAL_RANK); one process without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on the CPU); returns this rank's device."""
    if not ranks.active:
        return device
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if ranks.local >= gpus:  # NCCL takes one GPU a process; set_device would fail with a CUDA traceback
            started = os.environ.get("LOCAL_WORLD_SIZE", str(ranks.local + 1))
            raise DeepstepError(
                f"torchrun started {started} processes on this machine, which has {gpus} GPU"
                f"{'' if gpus == 1 else 's'}: one process a GPU, so use --nproc-per-node {gpus} "
                "(or train with --device cpu)"
            )
        device = torch.device("cuda", ranks.local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown(ranks: Ranks) -> None:
    """Leave the process group at the end of a run: every rank waits for the others, then all
    destroy it. Gloo's worker threads that are still alive when Python exits abort the process
    (SIGABRT, 'terminate called without an active exception')."""
    if ranks.active and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def abandon() -> None:
    """Destroy the process group without waiting for the other ranks: after an error, whose
    rank may be the only one to have stopped. A no-op when there is none."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def _with_peers(ranks: Ranks) -> Iterator[None]:
    """A collective that fails because another rank left (its error, a wrong --data say, stopped
    it while this one waited) ends this rank with one line instead of gloo's or NCCL's traceback."""
    try:
        yield
    except RuntimeError:  # gloo's "Connection closed by peer", torch's DistBackendError
        raise PeerStopped(
            f"process {ranks.rank} of {ranks.world} stops too: another process of this run stopped first "
            "(its own error says why)"
        ) from None


def barrier(ranks: Ranks) -> None:
    if ranks.active:
        with _with_peers(ranks):
            dist.barrier()


def check_compiler(device: torch.device) -> None:
    """For --compile on a CPU: torch.compile builds its kernels with a C++ compiler, and without
    one fails at the first step with a long traceback; say so before the run starts instead."""
    if device.type != "cpu":
        return
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # a torch without this helper: torch.compile reports it itself
        return
    try:
        get_cpp_compiler()
    except RuntimeError as err:  # inductor's InvalidCxxCompiler
        reason = reason_of(err)
        raise DeepstepError(
            f"--compile needs a C++ compiler on a CPU ({reason}); install g++ or clang (or set CXX to one), "
            "or train without --compile"
        ) from None


def _not_the_missing_cuda_runtime(record: logging.LogRecord) -> bool:
    """False for the line torch logs when torch.compile's C++ build finds a CUDA toolkit on a
    machine without a GPU ("No CUDA runtime is found"): true, and nothing to a run on the CPU."""
    return not record.getMessage().startswith("No CUDA runtime is found")


def wrap(
    model: torch.nn.Module, ranks: Ranks, device: torch.device, compile: bool = False, freezes: bool = False
) -> torch.nn.Module:
    """The model compiled (`compile`) and under DDP when there are several ranks; checkpoints unwrap it again.

    `freezes`: some parameters will stop (or start) needing gradients during the run (a frozen
    backbone). DDP expects a gradient for every parameter that needed one when it wrapped the
    model and fails at the next step without it, unless it looks for the unused ones each step.
    """
    if compile:
        if device.type == "cpu":
            logging.getLogger("torch.utils.cpp_extension").addFilter(_not_the_missing_cuda_runtime)
        # Static shapes: the few batch sizes a run sees (full, last, evaluation) each get their own
        # graph. The default recompiles for dynamic shapes at the second size, which doubled the
        # compile time (resnet-cifar on a 2-core CPU: first epoch 68 s against 31 s).
        model = torch.compile(model, dynamic=False)
    if not ranks.active:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=freezes
    )


def reduce_sums(sums: dict[str, torch.Tensor], count: int, ranks: Ranks) -> tuple[dict[str, torch.Tensor], int]:
    """Per-rank metric sums and example counts -> the totals over all ranks."""
    if not ranks.active:
        return sums, count
    keys = sorted(sums)
    packed = torch.stack(
        [sums[k].detach().double().cpu() for k in keys] + [torch.tensor(float(count), dtype=torch.float64)]
    )
    with _with_peers(ranks):
        dist.all_reduce(packed)
    return {k: packed[i] for i, k in enumerate(keys)}, int(packed[-1].item())


class RankSlices(BatchesWrapper):
    """Each global batch of `batches` cut into `world` slices; this rank iterates its own slice.

    Built on batches of the global size, so every rank draws the same order (and augmentation)
    as one process would. Slices are as equal as the batch allows; a rank whose slice of the
    last batch would be empty gets one example of it, so that every rank takes every step.
    """

    OWN = ("ranks",)

    def __init__(self, batches: Any, ranks: Ranks):
        super().__init__(batches)
        self.ranks = ranks

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        r, w = self.ranks.rank, self.ranks.world
        for batch in self.batches:
            n = len(batch[0])
            start, stop = n * r // w, n * (r + 1) // w
            if stop == start:
                start, stop = min(start, n - 1), min(start, n - 1) + 1
            yield tuple(t[start:stop] for t in batch)


def share(value: Any, ranks: Ranks) -> Any:
    """Rank 0's `value` on every rank (e.g. the run folder it created)."""
    if not ranks.active:
        return value
    box = [value if ranks.main else None]
    with _with_peers(ranks):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def global_batch(batch_size: int) -> int:
    """The batch every rank draws before taking its slice: --batch-size on each of the processes."""
    return batch_size * from_environment().world


def quiet_unless_main(log: Any) -> Any:
    """`log` on rank 0; a no-op on the others, so that a run prints each line once."""
    return log if from_environment().main else (lambda message: None)
