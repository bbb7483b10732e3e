"""One run on many processes: who this process is, its device, and the few collectives training needs.

A process learns its place from torchrun's or srun's environment (`lra.parallel.place`); a process started alone is
one process with no process group (`Distributed()`), and every helper here is then a no-op.

`hardware.device=auto` (or `cuda`) gives each rank its local GPU, `cuda:<LOCAL_RANK>` (modulo the visible
devices: with one visible device per task, as `srun --gpus-per-task=1` arranges, that is `cuda:0`). The process
group uses NCCL on CUDA and gloo on the CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist

from lra.config import resolve_device
from lra.errors import ConfigError
from lra.parallel.place import Place, place_from_env  # noqa: F401 (Place re-exported)


def rank_device(setting: str, local_rank: int) -> torch.device:
    """`hardware.device` for one rank: auto and cuda pick the local GPU, cpu the CPU."""
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("hardware.device", setting, "no CUDA GPU is visible to torch",
                          "use hardware.device=cpu (or auto), or install a CUDA build of torch")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


@dataclass(frozen=True)
class Distributed:
    """This process in the run: its place, its device, and whether a process group is up (`active`).
    The default is one process on the CPU without a process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    active: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes (MLflow, checkpoints, the Hydra output folder)."""
        return self.rank == 0

    @property
    def backend(self) -> Optional[str]:
        return dist.get_backend() if self.active else None

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world_size): what `lra.run.batches.iterate_batches(..., shard=)` takes."""
        return self.rank, self.world_size

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """The element-wise sum over ranks (float64; counts up to 2^53 stay exact). One process: `values`."""
        return self._all_reduce(values, "SUM")

    def all_reduce_max(self, values: Sequence[float]) -> list[float]:
        """The element-wise maximum over ranks (e.g. a stop signal that reached one process; peak memory)."""
        return self._all_reduce(values, "MAX")

    def _all_reduce(self, values: Sequence[float], op: str) -> list[float]:
        """`op` names a `dist.ReduceOp`, looked up only with a process group (one process needs no
        torch.distributed)."""
        if not self.active:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
        return tensor.tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (pickled; tensors come back on the CPU). One process: `obj`."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._comm_device)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    @property
    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of n samples: the first n % world_size ranks take one more
    (10 on 3 ranks: 4, 3, 3), so every sample is taken once and a rank may take none (1 on 2 ranks: 1, 0)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def setup(device_setting: str, env: Mapping[str, str] = os.environ,
          timeout: datetime.timedelta = datetime.timedelta(minutes=30)) -> Distributed:
    """This process's context: under torchrun or srun, join the process group (NCCL on CUDA, gloo on the CPU)
    on the rank's own device; started alone, one process on `hardware.device`. Call `teardown` at the end."""
    place = place_from_env(env)
    if place is None:

        return Distributed(device=resolve_device(device_setting))
    device = rank_device(device_setting, place.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if place.launcher == "submitit":  # the first host of the job, a port drawn from the job id
            from submitit.helpers import TorchDistributedEnvironment

            rendezvous = TorchDistributedEnvironment()
            os.environ.setdefault("MASTER_ADDR", rendezvous.master_addr)
            os.environ.setdefault("MASTER_PORT", str(rendezvous.master_port))
        if place.launcher in ("slurm", "submitit"):
            os.environ.setdefault("RANK", str(place.rank))
            os.environ.setdefault("WORLD_SIZE", str(place.world_size))
            os.environ.setdefault("LOCAL_RANK", str(place.local_rank))
        dist.init_process_group(backend, init_method="env://", rank=place.rank, world_size=place.world_size,
                                timeout=timeout, device_id=device if device.type == "cuda" else None)
    return Distributed(place.rank, place.world_size, place.local_rank, device, active=True)


def teardown(ctx: Distributed, clean: bool = False) -> None:
    """Destroy the process group. After a `clean` end (every rank returned) the ranks first meet at a barrier,
    so no rank tears its connections down while another still uses them (gloo can abort a rank whose peer is
    gone). Not after an error: the other ranks may never come, and torchrun ends them anyway."""
    if not (ctx.active and dist.is_initialized()):
        return
    if clean:
        dist.barrier()
    dist.destroy_process_group()


@contextlib.contextmanager
def rank_zero_first(ctx: Distributed) -> Iterator[None]:
    """Rank 0 runs the body first (e.g. preparing a data cache); the others wait, then run it."""
    if not ctx.is_main:
        ctx.barrier()
    yield
    if ctx.is_main:
        ctx.barrier()


def wrap(model: torch.nn.Module, ctx: Distributed) -> torch.nn.Module:
    """The module training calls: `model` itself in one process, else `DistributedDataParallel(model)`
    whose gradient all-reduce SUMS over ranks (`lra.run.step` weights each chunk by its share of the global
    batch, so the sum is the global-batch gradient). Buffers are constants here (no batch norm): they are
    not synchronised at each forward."""
    if not ctx.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                                  forward_sync_buffers=False)
    ddp.register_comm_hook(None, _sum_hook)
    return ddp


def _sum_hook(state, bucket):  # no annotations: DDP compares them with the real types, not strings
    """All-reduce a gradient bucket as a sum (DDP's default hook divides by the world size)."""
    work = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model (for state dicts, evaluation and parameters) behind a DistributedDataParallel."""
    return getattr(model, "module", model)
