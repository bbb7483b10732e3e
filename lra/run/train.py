"""`train(cfg) -> metrics`: one run, top to bottom. `launch.py` is only `@hydra.main` around it.

Order of work: validate the whole config (no data read yet), join the other processes if torchrun or srun
started several (`lra.parallel.distributed`), load data, build the model, resume from the last checkpoint if one exists,
train with the accumulation-chunked step, evaluate after each epoch, test the best-dev weights on the whole test
split, and end the MLflow run FINISHED (or FAILED on divergence or an exception). The run's state is one
`lra.run.run_state.Run`; `_fit` is the epoch loop, read top to bottom.

Several processes (`torchrun --standalone --nproc_per_node=N launch.py ...`): one model, DistributedDataParallel,
each rank its share of every global batch; rank 0 alone checks and writes the MLflow store, holds the
checkpoint folder's lock and writes its files; every rank resumes from rank 0's checkpoint, whatever the
number of processes that wrote it.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from lra.config import check_against_data, resolve_precision, validate
from lra.data import Split, load_splits, sequence_length
from lra.errors import ConfigError
from lra.model import LRAClassifier, count_parameters
from lra.parallel.devices import device_params
from lra.parallel.distributed import Distributed, rank_zero_first, setup, teardown, wrap
from lra.parallel.interrupt import Interrupted, StopSignals, interrupt_signal
from lra.record.artifacts import log_model_artifacts
from lra.record.stores import check_tracking_store
from lra.record.tracking import RunTracker, TrackingError, tracking_uri, ui_hint
from lra.run.batches import epoch_order, global_batch_size, iterate_batches, num_batches, to_device
from lra.run.checkpoint import CheckpointStore, RunLockedError, run_key, set_rng_state
from lra.run.chunking import full_length_batch, probe_chunk_size
from lra.run.memory import model_peak_memory_mb
from lra.run.progress import INTERVAL_S, EpochProgress
from lra.run.run_state import PeakMemory, Progress, QuietTracker, Run  # noqa: F401 (Progress, PeakMemory: API)
from lra.run.schedule import build_scheduler
from lra.run.step import StepStats, autocast_context, evaluate_batches, train_step
from lra.sweep.callback import completed_metrics, experiment_of, fail_orphan_runs
from lra.sweep.trial import open_trial

log = logging.getLogger(__name__)


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


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
        dual_encoder=m.dual_encoder, head_activation=m.head_activation, embedding_init_std=m.embedding_init_std,
    )


def build_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float,
                    name: str = "adamw") -> torch.optim.Optimizer:
    """`training.optimizer`: AdamW (default) or plain SGD (no momentum); weight decay on matrices only (not on
    biases, norms or scales)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=learning_rate)
    return torch.optim.AdamW(groups, lr=learning_rate)


def evaluate(model: torch.nn.Module, split: Split, *, batch_size: int, chunk_size: int, device: torch.device,
             autocast: Any, max_batches: Optional[int] = None, limit: Optional[int] = None,
             dist: Optional[Distributed] = None) -> StepStats:
    """Loss and accuracy over `split` (its first `max_batches` batches); with `dist`, this rank's shares,
    summed over the ranks."""
    shard = dist.shard if dist is not None else (0, 1)
    batches = iterate_batches(split, batch_size, max_batches=max_batches, limit=limit, shard=shard)
    return evaluate_batches(model, batches, chunk_size=chunk_size, autocast=autocast, device=device, dist=dist)


def resolve_chunk_size(cfg: DictConfig, model: torch.nn.Module, device: torch.device, autocast: Any,
                       limit: Optional[int], verbose: bool = True) -> int:
    """`gpu_memory.<attention>`, or for `auto` the largest chunk whose fwd+bwd at the task's full length fits
    `hardware.budget_margin` x the memory budget (probed now, before the run starts)."""
    configured = cfg.gpu_memory[cfg.attention.name]
    if configured != "auto":
        return int(configured)

    seq_len = sequence_length(cfg.data) if limit is None else min(limit, sequence_length(cfg.data))
    m = cfg.model
    example = full_length_batch(cfg.training.batch_size, seq_len, m.vocab_size, m.num_classes,
                                dual_encoder=m.dual_encoder, device=device)
    result = probe_chunk_size(model, example, device=device, autocast=autocast,
                              max_chunk=cfg.training.batch_size, memory_budget_mb=cfg.hardware.memory_budget_mb,
                              margin=cfg.hardware.budget_margin)
    if verbose:
        print(f"gpu_memory.{cfg.attention.name}=auto: {result.describe()}")
    return result.chunk


def _check_data(cfg: DictConfig, splits: dict[str, Split]) -> None:
    dual = splits["train"].tokens2 is not None
    if dual != cfg.model.dual_encoder:
        raise ConfigError("model.dual_encoder", cfg.model.dual_encoder,
                          f"task {cfg.task} has {'two documents' if dual else 'one document'} per sample",
                          f"set model.dual_encoder={str(dual).lower()}")


def _resumable_state(store: CheckpointStore, cfg: DictConfig) -> Optional[dict[str, Any]]:
    """The checkpoint to continue from: None for a fresh start (resume off, nothing saved, or a completed run,
    whose files stay until the new run has started)."""
    if not cfg.checkpoint.resume:
        return None
    saved = store.load_last()
    if saved is not None and saved["progress"]["completed"]:
        log.info("the last run of this config completed; starting a new run")
        return None
    return saved


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test one model as `cfg` describes; return its final metrics."""
    cfg = validate(cfg)
    ctx = setup(cfg.hardware.device)  # one process, or this rank of torchrun's / srun's
    try:
        metrics = _train_on(cfg, ctx)
    except BaseException:
        teardown(ctx)
        raise
    teardown(ctx, clean=True)
    return metrics


def _train_on(cfg: DictConfig, ctx: Distributed) -> dict[str, float]:
    """train() as this process's part: a finished config's metrics, or own its checkpoint folder and train."""
    store = CheckpointStore(cfg.checkpoint.dir, run_key(cfg))
    done = None
    if ctx.is_main:
        check_tracking_store(tracking_uri(cfg.tracking.uri))  # an unreachable store fails now, not later
        done = completed_metrics(cfg, store)  # a grid sweep run again: this config already completed in it
    done = ctx.broadcast(done)
    if done is not None:
        return done
    if ctx.is_main:
        try:
            store.acquire()
        except RunLockedError as error:
            raise ConfigError("checkpoint.dir", cfg.checkpoint.dir,
                              f"this config is being trained by {error.owner} (its folder {error.folder} is "
                              "locked)", "wait for it to end, or run a second copy with another "
                              "training.seed or checkpoint.dir") from None
    refused = False
    try:
        with StopSignals() as stop:
            return _train_owned(cfg, store, stop, ctx)
    except ConfigError:  # found against the data, before any run: leave no folder behind
        refused = True
        raise
    finally:
        if ctx.is_main:
            store.release(discard_unused=refused)


def _train_owned(cfg: DictConfig, store: CheckpointStore, stop: StopSignals, ctx: Distributed) -> dict[str, float]:
    """train() once rank 0 owns the config's checkpoint folder: start (or resume) the run, fit, test, end it."""
    run = _start(cfg, store, stop, ctx)
    if run is None:  # the checkpoint was of another model: set aside, so start again from the one before
        return _train_owned(cfg, store, stop, ctx)
    pruned: tuple[type[BaseException], ...] = ()
    if cfg.sweep.storage is not None:
        import optuna

        pruned = (optuna.TrialPruned,)
    try:
        _fit(run)
        metrics = _test(run)
    except TrackingError as error:  # the store went away mid-run: keep the training, say how to continue
        run.save_last()
        run.tracker.end("FAILED")
        print(f"error: {error} at step {run.progress.global_step}; the checkpoint is saved: run the same command "
              f"to resume when the store is back", file=sys.stderr)
        raise SystemExit(1) from None
    except (Interrupted, KeyboardInterrupt) as error:
        signum = error.signum if isinstance(error, Interrupted) else interrupt_signal(error)
        run.tracker.end("KILLED", tags={"interrupted": "true", "interrupt_signal": signal.Signals(signum).name})
        if run.is_main:
            print(f"interrupted at step {run.progress.global_step} ({signal.Signals(signum).name}); run the same "
                  f"command to resume", file=sys.stderr)
        raise Interrupted(signum, run.progress.global_step) from None
    except SystemExit:  # a launcher's handler requeues the job (submitit): the checkpoint is saved
        run.tracker.end("KILLED", tags={"interrupted": "true", "requeued": "true"})
        raise
    except BaseException as error:
        if isinstance(error, pruned):
            run.tracker.end("KILLED", tags={"pruned": "true"})
        else:
            run.tracker.end("FAILED")
        raise
    run.tracker.end("FINISHED")
    if run.is_main:
        print(f"MLflow run {run.run_id} FINISHED: test_accuracy={metrics['test_accuracy']:.4f}")
        hint = ui_hint(cfg, run.tracker.uri)  # None inside a multirun: the sweep prints it once
        if hint:
            print(hint)
    return metrics


def _start(cfg: DictConfig, store: CheckpointStore, stop: StopSignals, ctx: Distributed) -> Optional[Run]:
    """Build the run: data, model, optimiser, schedule; resume from rank 0's checkpoint (sent to every rank);
    start or reopen the MLflow run (rank 0). None when the checkpoint did not fit and was set aside."""
    t, hw = cfg.training, cfg.hardware
    device = ctx.device
    precision = resolve_precision(t.mixed_precision, device)
    if hw.num_threads is not None:
        torch.set_num_threads(hw.num_threads)
    limit = cfg.model.max_seq_len - (1 if cfg.model.pooling_mode == "CLS" else 0) if cfg.data.truncate else None

    with rank_zero_first(ctx):  # rank 0 prepares a missing data cache; the others then read it
        splits = load_splits(cfg.data, cfg.dataset)
    _check_data(cfg, splits)
    check_against_data(cfg, splits)  # vocab_size and num_classes cover the data, before any run exists
    torch.manual_seed(t.seed)
    model = build_model(cfg).to(device)
    autocast = autocast_context(device, precision)
    chunk_size = resolve_chunk_size(cfg, model, device, autocast, limit, verbose=ctx.is_main)
    optimizer = build_optimizer(model, t.learning_rate, t.weight_decay, t.optimizer)
    steps_per_epoch = num_batches(len(splits["train"]), t.batch_size)
    total_steps = t.num_epochs * steps_per_epoch
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps)
    scheduler = build_scheduler(optimizer, t.lr_scheduler, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                                learning_rate_decay=t.learning_rate_decay, warmup_steps=t.warmup_steps,
                                final_div_factor=t.final_div_factor)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    saved = ctx.broadcast(_resumable_state(store, cfg) if ctx.is_main else None)
    progress = Progress()
    if saved is not None:
        try:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            scaler.load_state_dict(saved["scaler"])
            set_rng_state(saved["rng"])
            progress = Progress(**saved["progress"])
        except (RuntimeError, ValueError, KeyError, TypeError) as error:  # a checkpoint of another model
            if ctx.is_main:
                store.set_aside(store.loaded_from, error)
            return None  # every rank fails alike (one checkpoint): all start again from the previous one
        if ctx.is_main:
            log.info("resuming from %s at epoch %d, batch %d", store.folder, progress.epoch,
                     progress.batch_in_epoch)
    tracker = RunTracker(cfg) if ctx.is_main else QuietTracker()
    run = Run(cfg=cfg, dist=ctx, splits=splits, model=model, trained=wrap(model, ctx), optimizer=optimizer,
              scheduler=scheduler, scaler=scaler, autocast=autocast, precision=precision, chunk_size=chunk_size,
              limit=limit, steps_per_epoch=steps_per_epoch, total_steps=total_steps, store=store, tracker=tracker,
              stop=stop, memory=PeakMemory(device), progress=progress)
    if run.stop_requested():  # a signal during start-up: nothing trained, nothing to save
        if ctx.is_main and not stop.launcher_handles(stop.requested):
            print(f"interrupted before training started ({signal.Signals(stop.requested).name})", file=sys.stderr)
        stop.finish(progress.global_step)  # raises, or hands the signal to the launcher (submitit requeues)

    if cfg.sweep.storage is not None and ctx.is_main:  # a job of an Optuna sweep: report to its trial

        run.trial = open_trial(cfg.sweep)
    resume_run_id, tags = (saved["run_id"] if saved is not None else None), {}
    if resume_run_id is not None:
        why_not = tracker.why_not_resumable(resume_run_id)
        if why_not is not None:
            print(f"warning: {why_not}; continuing from the checkpoint at step {progress.global_step} in a new "
                  f"run tagged resumed_from_run_id={resume_run_id}", file=sys.stderr)
            tags, resume_run_id = {"resumed_from_run_id": resume_run_id}, None
    if resume_run_id is None and ctx.is_main:
        _end_dead_runs_of_trial(cfg, tracker.uri)
    run.run_id = tracker.start(resume_run_id=resume_run_id, tags=tags)
    if resume_run_id is None and ctx.is_main:
        if saved is None:
            store.clear()  # a completed run's files go only now that its successor has started
        tracker.log_params({"run_key": store.folder.name, "resolved.device": str(device),
                            "resolved.precision": precision, "resolved.torch_threads": torch.get_num_threads(),
                            "resolved.steps_per_epoch": steps_per_epoch, "resolved.total_steps": total_steps,
                            "resolved.num_parameters": count_parameters(model),
                            "resolved.chunk_size": chunk_size, "resolved.world_size": ctx.world_size,
                            **device_params()})
        tracker.log_metrics({"model_peak_memory_mb": model_peak_memory_mb(  # the report's memory on a CPU
            model, optimizer, splits["train"], chunk_size=chunk_size, device=device, autocast=autocast,
            limit=limit)}, step=0)
    return run


def _end_dead_runs_of_trial(cfg: DictConfig, uri: str) -> None:
    """An Optuna trial run again (its sweeper was killed before the job's first checkpoint) starts a new MLflow
    run: the earlier one, still RUNNING, is dead (this process holds the config's folder lock), so it ends
    FAILED (tagged interrupted) instead of staying RUNNING for ever."""
    if cfg.sweep.trial_number is None or cfg.sweep.study_name is None:
        return
    ended = fail_orphan_runs(uri, experiment_of(cfg), str(cfg.sweep.study_name), int(cfg.sweep.trial_number))
    if ended:
        log.info("trial %s: %d earlier RUNNING run(s) of its killed job ended FAILED", cfg.sweep.trial_number, ended)


def _fit(run: Run) -> None:
    """The epochs: chunked steps with per-step logging and checkpoints, then evaluation after each epoch. A stop
    signal is honoured after the step (or the evaluation) in progress: checkpoint first, then `stop.finish`."""
    t, progress = run.cfg.training, run.progress
    train_split = run.splits["train"]
    # an epoch whose steps are done but whose evaluation is not (a stop during it) is evaluated on resume
    while progress.epoch < t.num_epochs and (progress.global_step < run.total_steps or progress.batch_in_epoch > 0):
        order = epoch_order(len(train_split), t.seed, progress.epoch)
        bar = EpochProgress(epoch=progress.epoch + 1, total=run.steps_per_epoch, initial=progress.batch_in_epoch,
                            interval=INTERVAL_S if run.is_main else 0, tty=None if run.is_main else False)
        tic = time.perf_counter()
        batches = iterate_batches(train_split, t.batch_size, order=order, start=progress.batch_in_epoch,
                                  limit=run.limit, shard=run.dist.shard)
        try:
            for b, batch in enumerate(batches, start=progress.batch_in_epoch):
                if progress.global_step >= run.total_steps:
                    break
                poison = t.debug_nan_at_step is not None and progress.global_step + 1 == t.debug_nan_at_step
                stats = train_step(run.trained, to_device(batch, run.device), run.optimizer, chunk_size=run.chunk_size,
                                   autocast=run.autocast, scaler=run.scaler, grad_clip=t.grad_clip,
                                   label_smoothing=t.label_smoothing, poison_loss=poison, dist=run.dist,
                                   global_size=global_batch_size(len(train_split), t.batch_size, b))
                run.memory.sample()
                if not math.isfinite(stats.loss):  # the same on every rank: the sums were all-reduced
                    run.tracker.log_metrics({"train_loss": stats.loss}, step=progress.global_step + 1)
                    raise DivergedError(f"training diverged: non-finite loss {stats.loss} at step "
                                        f"{progress.global_step + 1}")
                lr = run.optimizer.param_groups[0]["lr"]
                run.scheduler.step()
                progress.add_step(stats, seconds=time.perf_counter() - tic)
                bar.update(loss=stats.loss, samples=stats.count)
                if progress.global_step % t.log_every == 0:
                    window = progress.window
                    speed = window.count / max(progress.window_seconds, 1e-9)
                    run.log({"train_loss": window.loss, "train_accuracy": window.accuracy, "lr": lr,
                             "samples_per_second": speed, "peak_memory_mb": run.peak_memory_mb()})
                    progress.reset_window()
                at_epoch_end = progress.batch_in_epoch == run.steps_per_epoch
                if run.stop_requested():
                    run.save_last()
                    run.stop.finish(progress.global_step)  # raises, or a launcher's handler took the signal
                elif (t.checkpoint_every and progress.global_step % t.checkpoint_every == 0 and not at_epoch_end
                        and progress.global_step < run.total_steps):
                    run.save_last()
                tic = time.perf_counter()
        finally:
            bar.close()
        _end_epoch(run)
        run.save_last()
        if run.stop_requested():
            run.stop.finish(progress.global_step)


def _end_epoch(run: Run) -> None:
    """Evaluate on num_eval_steps dev batches, keep the best-dev weights, report to the trial, move on."""
    progress = run.progress
    dev = run.evaluate("dev", max_batches=run.cfg.training.num_eval_steps)
    epoch_train = progress.epoch_train
    run.log({"eval_loss": dev.loss, "eval_accuracy": dev.accuracy, "epoch": progress.epoch + 1,
             "epoch_train_loss": epoch_train.loss, "epoch_train_accuracy": epoch_train.accuracy})
    if run.is_main:
        log.info("epoch %d: train loss %.4f acc %.4f | dev loss %.4f acc %.4f", progress.epoch + 1,
                 epoch_train.loss, epoch_train.accuracy, dev.loss, dev.accuracy)
    if dev.accuracy > progress.best_eval_accuracy:
        progress.best_eval_accuracy, progress.best_eval_loss = dev.accuracy, dev.loss
        progress.best_epoch = progress.epoch
        run.save_best()
    progress.next_epoch()
    objective = dev.loss if run.cfg.sweep.objective == "eval_loss" else dev.accuracy  # (a list: never reported)
    final = progress.epoch >= run.cfg.training.num_epochs or progress.global_step >= run.total_steps
    prune = run.dist.broadcast(run.trial is not None and run.trial.report(progress.epoch, objective, final=final))
    if prune:
        import optuna

        raise optuna.TrialPruned(f"pruned after epoch {progress.epoch}")


def _test(run: Run) -> dict[str, float]:
    """The best-dev weights on the whole test split; the final metrics, logged; the run marked completed."""
    progress = run.progress
    run.load_best()
    test = run.evaluate("test")
    metrics = {
        "test_accuracy": test.accuracy, "test_loss": test.loss,
        "best_eval_accuracy": progress.best_eval_accuracy,
        "samples_per_second": progress.train_samples / max(progress.train_seconds, 1e-9),
        "peak_memory_mb": run.peak_memory_mb(),
    }
    run.log(metrics)
    if run.is_main:
        log_model_artifacts(run.tracker, run.model, run.cfg, run.store.folder, chunk_size=run.chunk_size,
                            test_accuracy=test.accuracy)
    # a sweep's objective: eval_* are the best-dev epoch's values (the weights that were tested)
    metrics.update(eval_accuracy=progress.best_eval_accuracy, eval_loss=progress.best_eval_loss)
    progress.completed = True
    run.save_last()
    return metrics
