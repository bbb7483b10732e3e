"""The state of one training run as one object, `Run`, and the few things the loop asks of it.

`lra.run.train` builds a `Run` (data, model, optimiser, scheduler, scaler, progress, tracker, checkpoint store,
distributed context, stop signals) and the loop reads top to bottom against it. Under several processes the
object hides who does what: every rank trains and evaluates its shares; rank 0 alone writes (MLflow through
`tracker`, checkpoints through `store`); what one rank reads (a checkpoint, a stop signal, the pruner's word)
reaches every rank, so all ranks take the same branch at the same step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

import torch
from omegaconf import DictConfig
from torch import nn

from lra.data import Split
from lra.parallel.distributed import Distributed
from lra.parallel.interrupt import StopSignals
from lra.run.batches import iterate_batches
from lra.run.checkpoint import CheckpointStore, rng_state
from lra.run.step import StepStats, evaluate_batches


@dataclass
class Progress:
    """Where the run stands; saved in every checkpoint so a killed run continues exactly. Every count is
    global (over all ranks), so a run continues with any number of processes."""

    epoch: int = 0  # the epoch in progress (0-based)
    batch_in_epoch: int = 0  # batches of that epoch already applied
    global_step: int = 0
    best_eval_accuracy: float = -1.0
    best_eval_loss: float = math.inf
    best_epoch: int = -1
    train_seconds: float = 0.0
    train_samples: int = 0
    epoch_loss_sum: float = 0.0
    epoch_correct: int = 0
    epoch_count: int = 0
    completed: bool = False
    # the per-step logging window in progress, so the first point logged after a resume covers log_every steps
    window_loss_sum: float = 0.0
    window_correct: int = 0
    window_count: int = 0
    window_seconds: float = 0.0

    def add_step(self, stats: StepStats, seconds: float) -> None:
        """Count one applied step (global sums) into the epoch, the run and the logging window."""
        self.global_step += 1
        self.batch_in_epoch += 1
        self.train_seconds += seconds
        self.train_samples += stats.count
        self.epoch_loss_sum += stats.loss_sum
        self.epoch_correct += stats.correct
        self.epoch_count += stats.count
        self.window_loss_sum += stats.loss_sum
        self.window_correct += stats.correct
        self.window_count += stats.count
        self.window_seconds += seconds

    @property
    def window(self) -> StepStats:
        return StepStats(self.window_loss_sum, self.window_correct, self.window_count)

    def reset_window(self) -> None:
        self.window_loss_sum, self.window_correct, self.window_count, self.window_seconds = 0.0, 0, 0, 0.0

    @property
    def epoch_train(self) -> StepStats:
        return StepStats(self.epoch_loss_sum, self.epoch_correct, self.epoch_count)

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_loss_sum, self.epoch_correct, self.epoch_count = 0.0, 0, 0


class PeakMemory:
    """This process's peak memory in MB. CUDA: the allocator's max allocated since the run began. CPU: the
    largest resident set size sampled at every step (the process-wide `ru_maxrss` would carry an earlier job's
    peak into the next one when a sweep runs its jobs in one process)."""

    def __init__(self, device: torch.device) -> None:
        import psutil

        self.device, self.process, self.peak_rss = device, psutil.Process(), 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def sample(self) -> None:
        if self.device.type != "cuda":
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)

    @property
    def mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        self.sample()
        return self.peak_rss / 2**20


class QuietTracker:
    """The tracker of a rank other than 0: the run's MLflow run is rank 0's alone, so every call does nothing."""

    uri = ""
    run_id: Optional[str] = None

    def why_not_resumable(self, run_id: str) -> Optional[str]:
        return None

    def start(self, resume_run_id: Optional[str] = None, tags: Optional[Mapping[str, str]] = None) -> Optional[str]:
        return resume_run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def end(self, status: str, tags: Optional[Mapping[str, Any]] = None) -> None:
        pass


@dataclass
class Run:
    """Everything one training run holds. `model` is the plain model (state dicts, evaluation, parameters);
    `trained` is what the step calls: `model` itself, or DistributedDataParallel around it."""

    cfg: DictConfig
    dist: Distributed
    splits: dict[str, Split]
    model: nn.Module
    trained: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    autocast: Any
    precision: str
    chunk_size: int
    limit: Optional[int]
    steps_per_epoch: int
    total_steps: int
    store: CheckpointStore
    tracker: Any  # lra.record.tracking.RunTracker on rank 0, QuietTracker elsewhere
    stop: StopSignals
    memory: PeakMemory
    progress: Progress = field(default_factory=Progress)
    trial: Any = None  # rank 0's Optuna trial in an Optuna sweep
    run_id: Optional[str] = None

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def log(self, metrics: Mapping[str, float]) -> None:
        """Metrics at the current step (rank 0 writes them)."""
        self.tracker.log_metrics(metrics, step=self.progress.global_step)

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state(),
                "progress": asdict(self.progress), "run_id": self.run_id}

    def save_last(self) -> None:
        if self.is_main:
            self.store.save_last(self.state())

    def save_best(self) -> None:
        if self.is_main:
            self.store.save_best(self.model.state_dict())

    def load_best(self) -> None:
        """Put the best-dev weights (rank 0's `best.pt`, sent to every rank) back in the model, if any."""
        best = self.dist.broadcast(self.store.load_best() if self.is_main else None)
        if best is not None:
            self.model.load_state_dict(best)

    def evaluate(self, split: str, max_batches: Optional[int] = None) -> StepStats:
        """Loss and accuracy over `split` (its first `max_batches` batches), every sample once over the ranks."""
        batches = iterate_batches(self.splits[split], self.cfg.training.batch_size, max_batches=max_batches,
                                  limit=self.limit, shard=self.dist.shard)
        return evaluate_batches(self.model, batches, chunk_size=self.chunk_size, autocast=self.autocast,
                                device=self.device, dist=self.dist)

    def stop_requested(self) -> bool:
        """Whether a stop signal reached any rank; if so every rank holds it (and stops at this step)."""
        signum = int(self.dist.all_reduce_max([self.stop.requested or 0])[0])
        if signum and self.stop.requested is None:
            self.stop.requested = signum
        return bool(signum)

    def peak_memory_mb(self) -> float:
        """The largest peak of any rank."""
        return self.dist.all_reduce_max([self.memory.mb])[0]
