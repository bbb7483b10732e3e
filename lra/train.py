"""`train(cfg) -> metrics`: one run, top to bottom. `launch.py` is only `@hydra.main` around it.

Order of work: validate the whole config (no data read yet), load data, build the model, resume from the last
checkpoint if one exists, train with the accumulation-chunked step, evaluate after each epoch, test the best-dev
weights on the whole test split, and end the MLflow run FINISHED (or FAILED on divergence or an exception).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from lra.batches import epoch_order, iterate_batches, num_batches, to_device
from lra.checkpoint import CheckpointStore, rng_state, run_key, set_rng_state
from lra.config import resolve_device, resolve_precision, validate
from lra.data import Split, load_splits, sequence_length
from lra.errors import ConfigError
from lra.memory import model_peak_memory_mb
from lra.model import LRAClassifier, count_parameters
from lra.progress import EpochProgress
from lra.schedule import build_scheduler
from lra.step import StepStats, autocast_context, eval_step, train_step
from lra.tracking import RunTracker
from lra.ui import ui_hint

log = logging.getLogger(__name__)


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class Progress:
    """Where the run stands; saved in every checkpoint so a killed run continues exactly."""

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


def build_model(cfg: DictConfig) -> LRAClassifier:
    """The composition root's map from config to the model's explicit arguments."""
    m, name = cfg.model, cfg.attention.name
    options = {key: value for key, value in cfg.attention.items() if key != "name"}
    return LRAClassifier(
        vocab_size=m.vocab_size, max_seq_len=m.max_seq_len, embedding_dim=m.embedding_dim,
        transformer_hidden_dim=m.transformer_hidden_dim, head_dim=m.head_dim, num_head=m.num_head,
        num_layers=m.num_layers, dropout_prob=m.dropout_prob, attention_dropout=m.attention_dropout,
        pooling_mode=m.pooling_mode, num_classes=m.num_classes, learn_pos_emb=m.learn_pos_emb,
        tied_weights=m.tied_weights, attention=name, attention_options=options,
        attention_grad_checkpointing=bool(
            cfg.extra_attn_config.get(name, {}).get("attention_grad_checkpointing", False)),
        dual_encoder=m.dual_encoder,
    )


def build_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on biases, norms or scales)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate)


class PeakMemory:
    """This run's peak memory in MB. CUDA: the allocator's max allocated since the run began. CPU: the largest
    resident set size sampled at every step (the process-wide `ru_maxrss` would carry an earlier job's peak
    into the next one when a sweep runs its jobs in one process)."""

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


def evaluate(model: torch.nn.Module, split: Split, *, batch_size: int, chunk_size: int, device: torch.device,
             autocast: Any, max_batches: Optional[int] = None, limit: Optional[int] = None) -> StepStats:
    stats = StepStats()
    for batch in iterate_batches(split, batch_size, max_batches=max_batches, limit=limit):
        stats.add(eval_step(model, to_device(batch, device), chunk_size=chunk_size, autocast=autocast))
    return stats


def resolve_chunk_size(cfg: DictConfig, model: torch.nn.Module, device: torch.device, autocast: Any,
                       limit: Optional[int]) -> int:
    """`gpu_memory.<attention>`, or for `auto` the largest chunk whose fwd+bwd at the task's full length fits
    `hardware.budget_margin` x the memory budget (probed now, before the run starts)."""
    configured = cfg.gpu_memory[cfg.attention.name]
    if configured != "auto":
        return int(configured)
    from lra.bench.budget import full_length_batch, probe_chunk_size

    seq_len = sequence_length(cfg.data) if limit is None else min(limit, sequence_length(cfg.data))
    m = cfg.model
    example = full_length_batch(cfg.training.batch_size, seq_len, m.vocab_size, m.num_classes,
                                dual_encoder=m.dual_encoder, device=device)
    result = probe_chunk_size(model, example, device=device, autocast=autocast,
                              max_chunk=cfg.training.batch_size, memory_budget_mb=cfg.hardware.memory_budget_mb,
                              margin=cfg.hardware.budget_margin)
    print(f"gpu_memory.{cfg.attention.name}=auto: {result.describe()}")
    return result.chunk


def _check_data(cfg: DictConfig, splits: dict[str, Split]) -> None:
    dual = splits["train"].tokens2 is not None
    if dual != cfg.model.dual_encoder:
        raise ConfigError("model.dual_encoder", cfg.model.dual_encoder,
                          f"task {cfg.task} has {'two documents' if dual else 'one document'} per sample",
                          f"set model.dual_encoder={str(dual).lower()}")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test one model as `cfg` describes; return its final metrics."""
    cfg = validate(cfg)
    t, hw = cfg.training, cfg.hardware
    device = resolve_device(hw.device)
    precision = resolve_precision(t.mixed_precision, device)
    if hw.num_threads is not None:
        torch.set_num_threads(hw.num_threads)
    limit = cfg.model.max_seq_len - (1 if cfg.model.pooling_mode == "CLS" else 0) if cfg.data.truncate else None

    splits = load_splits(cfg.data, cfg.dataset)
    _check_data(cfg, splits)
    torch.manual_seed(t.seed)
    model = build_model(cfg).to(device)
    autocast = autocast_context(device, precision)
    chunk_size = resolve_chunk_size(cfg, model, device, autocast, limit)
    optimizer = build_optimizer(model, t.learning_rate, t.weight_decay)
    steps_per_epoch = num_batches(len(splits["train"]), t.batch_size)
    total_steps = t.num_epochs * steps_per_epoch
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps)
    scheduler = build_scheduler(optimizer, t.lr_scheduler, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                                learning_rate_decay=t.learning_rate_decay, warmup_steps=t.warmup_steps,
                                final_div_factor=t.final_div_factor)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    store = CheckpointStore(cfg.checkpoint.dir, run_key(cfg))
    saved = store.load_last() if cfg.checkpoint.resume else None
    if saved is not None and saved["progress"]["completed"]:
        log.info("the last run of this config completed; starting a new run")
        store.clear()
        saved = None
    progress = Progress()
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        progress = Progress(**saved["progress"])
        log.info("resuming from %s at epoch %d, batch %d", store.folder, progress.epoch, progress.batch_in_epoch)

    trial, pruned = None, ()
    if cfg.sweep.storage is not None:  # a job of an Optuna sweep: report to its trial, stop when pruned
        import optuna

        from lra.trial import open_trial

        trial, pruned = open_trial(cfg.sweep), (optuna.TrialPruned,)
    memory = PeakMemory(device)
    tracker = RunTracker(cfg)
    run_id = tracker.start(resume_run_id=saved["run_id"] if saved is not None else None)
    if saved is None:
        tracker.log_params({"run_key": store.folder.name, "resolved.device": str(device),
                            "resolved.precision": precision, "resolved.torch_threads": torch.get_num_threads(),
                            "resolved.steps_per_epoch": steps_per_epoch, "resolved.total_steps": total_steps,
                            "resolved.num_parameters": count_parameters(model),
                            "resolved.chunk_size": chunk_size})
        tracker.log_metrics({"model_peak_memory_mb": model_peak_memory_mb(
            model, optimizer, splits["train"], chunk_size=chunk_size, device=device, autocast=autocast,
            limit=limit)}, step=0)

    def save_last() -> None:
        store.save_last({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                         "progress": asdict(progress), "run_id": run_id})

    try:
        _fit(cfg, model, optimizer, scheduler, scaler, splits, progress, tracker, store, save_last, trial, memory,
             device=device, autocast=autocast, chunk_size=chunk_size, total_steps=total_steps,
             steps_per_epoch=steps_per_epoch, limit=limit)
        best = store.load_best()
        if best is not None:
            model.load_state_dict(best)
        test = evaluate(model, splits["test"], batch_size=t.batch_size, chunk_size=chunk_size, device=device,
                        autocast=autocast, limit=limit)
        metrics = {
            "test_accuracy": test.accuracy, "test_loss": test.loss,
            "best_eval_accuracy": progress.best_eval_accuracy,
            "samples_per_second": progress.train_samples / max(progress.train_seconds, 1e-9),
            "peak_memory_mb": memory.mb,
        }
        tracker.log_metrics(metrics, step=progress.global_step)
        # a sweep's objective: eval_* are the best-dev epoch's values (the weights that were tested)
        metrics.update(eval_accuracy=progress.best_eval_accuracy, eval_loss=progress.best_eval_loss)
        progress.completed = True
        save_last()
    except BaseException as error:
        if isinstance(error, pruned):
            tracker.set_tags({"pruned": "true"})
            tracker.end("KILLED")
        else:
            tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    print(f"MLflow run {run_id} FINISHED: test_accuracy={metrics['test_accuracy']:.4f}")
    hint = ui_hint(cfg, tracker.uri)  # None inside a multirun: the sweep prints it once
    if hint:
        print(hint)
    return metrics


def _fit(cfg, model, optimizer, scheduler, scaler, splits, progress: Progress, tracker: RunTracker,
         store: CheckpointStore, save_last, trial, memory: PeakMemory, *, device, autocast, chunk_size, total_steps,
         steps_per_epoch, limit) -> None:
    """The epochs: chunked steps with per-step logging and checkpoints, then evaluation after each epoch."""
    t = cfg.training
    window, window_seconds = StepStats(), 0.0
    while progress.epoch < t.num_epochs and progress.global_step < total_steps:
        order = epoch_order(len(splits["train"]), t.seed, progress.epoch)
        bar = EpochProgress(epoch=progress.epoch + 1, total=steps_per_epoch, initial=progress.batch_in_epoch)
        tic = time.perf_counter()
        try:
            for batch in iterate_batches(splits["train"], t.batch_size, order=order, start=progress.batch_in_epoch,
                                         limit=limit):
                poison = t.debug_nan_at_step is not None and progress.global_step + 1 == t.debug_nan_at_step
                stats = train_step(model, to_device(batch, device), optimizer, chunk_size=chunk_size,
                                   autocast=autocast, scaler=scaler, grad_clip=t.grad_clip,
                                   label_smoothing=t.label_smoothing, poison_loss=poison)
                progress.global_step += 1
                progress.batch_in_epoch += 1
                memory.sample()
                if not math.isfinite(stats.loss):
                    tracker.log_metrics({"train_loss": stats.loss}, step=progress.global_step)
                    raise DivergedError(
                        f"training diverged: non-finite loss {stats.loss} at step {progress.global_step}")
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                seconds = time.perf_counter() - tic
                tic = time.perf_counter()
                progress.train_seconds += seconds
                progress.train_samples += stats.count
                progress.epoch_loss_sum += stats.loss_sum
                progress.epoch_correct += stats.correct
                progress.epoch_count += stats.count
                window.add(stats)
                window_seconds += seconds
                bar.update(loss=stats.loss, samples=stats.count)
                if progress.global_step % t.log_every == 0:
                    speed = window.count / max(window_seconds, 1e-9)
                    tracker.log_metrics({"train_loss": window.loss, "train_accuracy": window.accuracy, "lr": lr,
                                         "samples_per_second": speed, "peak_memory_mb": memory.mb},
                                        step=progress.global_step)
                    window, window_seconds = StepStats(), 0.0
                at_epoch_end = progress.batch_in_epoch == steps_per_epoch
                if (t.checkpoint_every and progress.global_step % t.checkpoint_every == 0 and not at_epoch_end
                        and progress.global_step < total_steps):
                    save_last()
                if progress.global_step >= total_steps:
                    break
                tic = time.perf_counter()
        finally:
            bar.close()
        _end_epoch(cfg, model, splits, progress, tracker, store, trial, device=device, autocast=autocast,
                   chunk_size=chunk_size, limit=limit)
        save_last()


def _end_epoch(cfg, model, splits, progress: Progress, tracker: RunTracker, store: CheckpointStore, trial, *,
               device, autocast, chunk_size, limit) -> None:
    """Evaluate on num_eval_steps dev batches, keep the best-dev weights, report to the trial, move on."""
    t = cfg.training
    dev = evaluate(model, splits["dev"], batch_size=t.batch_size, chunk_size=chunk_size, device=device,
                   autocast=autocast, max_batches=t.num_eval_steps, limit=limit)
    epoch_train = StepStats(progress.epoch_loss_sum, progress.epoch_correct, progress.epoch_count)
    tracker.log_metrics({"eval_loss": dev.loss, "eval_accuracy": dev.accuracy, "epoch": progress.epoch + 1,
                         "epoch_train_loss": epoch_train.loss, "epoch_train_accuracy": epoch_train.accuracy},
                        step=progress.global_step)
    log.info("epoch %d: train loss %.4f acc %.4f | dev loss %.4f acc %.4f", progress.epoch + 1, epoch_train.loss,
             epoch_train.accuracy, dev.loss, dev.accuracy)
    if dev.accuracy > progress.best_eval_accuracy:
        progress.best_eval_accuracy, progress.best_eval_loss = dev.accuracy, dev.loss
        progress.best_epoch = progress.epoch
        store.save_best(model.state_dict())
    progress.epoch += 1
    progress.batch_in_epoch = 0
    progress.epoch_loss_sum, progress.epoch_correct, progress.epoch_count = 0.0, 0, 0
    objective = {"eval_accuracy": dev.accuracy, "eval_loss": dev.loss}.get(cfg.sweep.objective, dev.accuracy)
    if trial is not None and trial.report(progress.epoch, objective):
        import optuna

        raise optuna.TrialPruned(f"pruned after epoch {progress.epoch}")
