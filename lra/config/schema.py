"""The config schema and its validation: every user error is raised here, before any data is read.

`validate(cfg)` checks the composed Hydra config against the schema (misspelt keys, wrong types) and then the
values (unknown names, impossible sizes, a device that is not there), then the machine (`lra.config.preflight`: folders
writable, data within memory). `check_against_data(cfg, splits)` checks the model against the loaded data. Each
problem becomes one `ConfigError` line that names the key path, the value and the fix.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from lra.attention import attention_options, check_attention
from lra.config.preflight import check_machine
from lra.data import check_data_config, check_source_used, sequence_length
from lra.errors import ConfigError
from lra.model import HEAD_ACTIVATIONS, POOLING_MODES

SCHEDULERS = ("exp_decay", "linear", "cos", "fixed")
OPTIMIZERS = ("adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
# What train() returns, so what a sweep may optimise: eval_* are the values of the best-dev epoch.
OBJECTIVES = ("eval_accuracy", "eval_loss", "test_accuracy", "test_loss", "samples_per_second", "peak_memory_mb")


@dataclass
class DatasetSizes:
    train: int = 1
    dev: int = 1
    test: int = 1


@dataclass
class ModelSchema:
    learn_pos_emb: bool = True
    tied_weights: bool = False
    embedding_dim: int = 64
    transformer_hidden_dim: int = 128
    head_dim: int = 32
    num_head: int = 2
    num_layers: int = 2
    vocab_size: int = 32
    max_seq_len: int = 512
    dropout_prob: float = 0.1
    attention_dropout: float = 0.1
    pooling_mode: str = "MEAN"
    num_classes: int = 2
    dual_encoder: bool = False
    head_activation: str = "relu"  # lra.model.HEAD_ACTIVATIONS
    embedding_init_std: Optional[float] = 0.02


@dataclass
class TrainingSchema:
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    num_epochs: int = 1
    num_eval_steps: int = 1
    mixed_precision: Any = False
    lr_scheduler: str = "exp_decay"
    learning_rate_decay: float = 0.9
    warmup_steps: int = 0
    final_div_factor: float = 100.0
    seed: int = 0
    grad_clip: float = 0.0
    label_smoothing: float = 0.0
    max_steps: Optional[int] = None
    log_every: int = 10
    checkpoint_every: int = 100
    debug_nan_at_step: Optional[int] = None
    optimizer: str = "adamw"


@dataclass
class HardwareSchema:
    name: str = "cpu"
    device: str = "auto"
    num_threads: Optional[int] = None
    memory_budget_mb: Optional[float] = None  # for gpu_memory.<attention>=auto (null: free GPU / available RAM)
    budget_margin: float = 0.8  # auto chunks use at most this share of the budget


@dataclass
class TrackingSchema:
    uri: Optional[str] = None
    experiment: Optional[str] = None
    run_name: Optional[str] = None
    system_metrics: bool = True


@dataclass
class CheckpointSchema:
    dir: str = "checkpoints"
    resume: bool = True


@dataclass
class SweepSchema:
    id: Optional[str] = None
    parent_run_id: Optional[str] = None
    objective: Any = "eval_accuracy"  # a metric name, or a list of them (a multi-objective Optuna sweep)
    storage: Optional[str] = None
    study_name: Optional[str] = None
    trial_number: Optional[int] = None


@dataclass
class PublishedSchema:  # the experiment group's published figure (lra/compare/published.py)
    test_accuracy: Optional[float] = None
    source: Optional[str] = None
    verified: bool = False
    experiment: Optional[str] = None


@dataclass
class Schema:
    task: str = "listops-small"
    dataset: DatasetSizes = field(default_factory=DatasetSizes)
    model: ModelSchema = field(default_factory=ModelSchema)
    training: TrainingSchema = field(default_factory=TrainingSchema)
    hardware: HardwareSchema = field(default_factory=HardwareSchema)
    gpu_memory: dict[str, Any] = field(default_factory=dict)
    extra_attn_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    attention: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    tracking: TrackingSchema = field(default_factory=TrackingSchema)
    checkpoint: CheckpointSchema = field(default_factory=CheckpointSchema)
    sweep: SweepSchema = field(default_factory=SweepSchema)
    published: PublishedSchema = field(default_factory=PublishedSchema)
    sweeper_app: Optional[str] = None  # what lra adds to an Optuna sweep (hydra_plugins/lra_optuna_sweeper/app.py)


@functools.lru_cache(maxsize=1)
def _schema() -> DictConfig:
    """The schema as a config, built once (OmegaConf.structured costs as much as the rest of a validation);
    never modified: `OmegaConf.merge` copies it."""
    return OmegaConf.structured(Schema)


def _known_keys(node: Any, prefix: str) -> list[str]:
    if not OmegaConf.is_dict(node):
        return [prefix]
    keys = []
    for key in node.keys():
        keys.extend(_known_keys(node._get_node(key), f"{prefix}.{key}" if prefix else str(key)))
    return keys


def _check_groups(plain: Any, schema: Any, prefix: str = "") -> None:
    """A single value where the schema has a group of keys (`model=3`) is named here; OmegaConf's merge error
    would name neither the key nor the fix."""
    if not OmegaConf.is_dict(plain):
        return
    for key in plain.keys():
        if not OmegaConf.is_dict(schema) or key not in schema:
            continue
        path = f"{prefix}.{key}" if prefix else str(key)
        expected, given = schema._get_node(key), plain._get_node(key)
        if OmegaConf.is_dict(expected) and not OmegaConf.is_dict(given) and given._value() is not None:
            known = ", ".join(str(k) for k in list(expected.keys())[:6])
            raise ConfigError(path, given._value(), "is a group of keys, not a single value",
                              f"set one of its keys instead ({path}.<key>=VALUE; keys: {known or 'any'})")
        _check_groups(given, expected, path)


def _schema_error(cfg: DictConfig, error: OmegaConfBaseException) -> ConfigError:
    key = str(getattr(error, "full_key", "") or getattr(error, "key", "") or "?")
    value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    if isinstance(error, ConfigKeyError):
        known = _known_keys(_schema(), "")
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        fix = f"did you mean {close[0]}?" if close else "remove it; the keys are listed in docs/configuration.md"
        return ConfigError(key, value, "unknown config key", fix)
    expected = type(OmegaConf.select(_schema(), key, default=None)).__name__
    return ConfigError(key, value, f"wrong type ({error.msg.splitlines()[0]})", f"give a value of type {expected}")


def _choice(key: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise ConfigError(key, value, "unknown value", "use one of: " + ", ".join(allowed))


def _at_least(key: str, value: Any, low: float, fix: str = "") -> None:
    if value is None or value < low:
        raise ConfigError(key, value, f"must be at least {low}", fix or f"set {key} >= {low}")


def resolve_precision(mixed_precision: Any, device: torch.device) -> str:
    """`training.mixed_precision` -> 'fp32', 'bf16' or 'fp16' (True picks bf16 where the device has it)."""
    if mixed_precision in (False, None, "fp32", "false"):
        return "fp32"
    if mixed_precision in (True, "true"):
        if device.type == "cpu" or torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp16"
    if mixed_precision in ("bf16", "fp16"):
        return str(mixed_precision)
    raise ConfigError("training.mixed_precision", mixed_precision, "unknown precision",
                      "use false, true, or one of: " + ", ".join(PRECISIONS))


def resolve_device(device: str) -> torch.device:
    _choice("hardware.device", device, DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("hardware.device", device, "no CUDA GPU is visible to torch",
                          "use hardware.device=cpu (or auto), or install a CUDA build of torch")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def validate(cfg: DictConfig) -> DictConfig:
    """Check the composed config; return it merged into the schema (typed, read-only) or raise ConfigError."""

    try:
        plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    except OmegaConfBaseException as error:  # an interpolation that cannot be resolved (${oc.env:NOPE}, ${a.b})
        key = str(getattr(error, "full_key", "") or "?")
        raw: Any = OmegaConf.to_container(cfg, resolve=False)
        for part in key.split("."):
            raw = raw.get(part) if isinstance(raw, dict) else None
        raise ConfigError(key, raw, f"cannot be resolved ({str(error).splitlines()[0]})",
                          "give a plain value, or set what the interpolation reads (e.g. the environment "
                          "variable)") from None
    _check_groups(plain, _schema())
    try:
        typed = OmegaConf.merge(_schema(), plain)
    except OmegaConfBaseException as error:
        raise _schema_error(plain, error) from None

    model, training = typed.model, typed.training
    for split in ("train", "dev", "test"):
        _at_least(f"dataset.{split}", typed.dataset[split], 1)
    for key in ("embedding_dim", "transformer_hidden_dim", "head_dim", "num_head", "num_layers",
                "vocab_size", "max_seq_len"):
        _at_least(f"model.{key}", model[key], 1)
    _at_least("model.num_classes", model.num_classes, 2)
    for key in ("dropout_prob", "attention_dropout"):
        if not 0.0 <= model[key] < 1.0:
            raise ConfigError(f"model.{key}", model[key], "must lie in [0, 1)", f"set model.{key}=0.1")
    _choice("model.pooling_mode", model.pooling_mode, POOLING_MODES)
    _choice("model.head_activation", model.head_activation, tuple(HEAD_ACTIVATIONS))
    if model.embedding_init_std is not None and not model.embedding_init_std > 0:
        raise ConfigError("model.embedding_init_std", model.embedding_init_std, "must be positive or null",
                          "set model.embedding_init_std=0.02 (null: PyTorch's N(0, 1))")

    _at_least("training.batch_size", training.batch_size, 1)
    _at_least("training.num_epochs", training.num_epochs, 1)
    _at_least("training.num_eval_steps", training.num_eval_steps, 1)
    _at_least("training.warmup_steps", training.warmup_steps, 0)
    _at_least("training.log_every", training.log_every, 1)
    _at_least("training.checkpoint_every", training.checkpoint_every, 0)
    if training.max_steps is not None:
        _at_least("training.max_steps", training.max_steps, 1)
    if not training.learning_rate > 0:
        raise ConfigError("training.learning_rate", training.learning_rate, "must be positive",
                          "set training.learning_rate=1e-3")
    _at_least("training.weight_decay", training.weight_decay, 0.0)
    _at_least("training.grad_clip", training.grad_clip, 0.0, "use 0 to turn clipping off")
    if not 0.0 <= training.label_smoothing < 1.0:
        raise ConfigError("training.label_smoothing", training.label_smoothing, "must lie in [0, 1)",
                          "set training.label_smoothing=0.1")
    _choice("training.lr_scheduler", training.lr_scheduler, SCHEDULERS)
    _choice("training.optimizer", training.optimizer, OPTIMIZERS)
    if not 0.0 < training.learning_rate_decay <= 1.0:
        raise ConfigError("training.learning_rate_decay", training.learning_rate_decay, "must lie in (0, 1]",
                          "set training.learning_rate_decay=0.9")
    _at_least("training.final_div_factor", training.final_div_factor, 1.0)

    name = typed.attention.get("name")
    options = attention_options(name)  # raises ConfigError for an unknown attention.name
    for option in typed.attention:
        if option != "name" and option not in options:
            raise ConfigError(f"attention.{option}", typed.attention[option],
                              f"not an option of attention {name}",
                              "use one of: " + (", ".join(sorted(options)) or "(none)"))
    check_attention(name, model.num_head, model.head_dim,
                    **{key: value for key, value in typed.attention.items() if key != "name"})
    chunk = typed.gpu_memory.get(name)
    if chunk != "auto" and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ConfigError(f"gpu_memory.{name}", chunk, "the chunk size must be a positive integer or auto",
                          f"set gpu_memory.{name}={training.batch_size} (or smaller to save memory), or auto")
    budget = typed.hardware.memory_budget_mb
    if budget is not None and not budget > 0:
        raise ConfigError("hardware.memory_budget_mb", budget, "must be positive",
                          "give the megabytes a chunk may use, or null for the free memory")
    if not 0 < typed.hardware.budget_margin <= 1:
        raise ConfigError("hardware.budget_margin", typed.hardware.budget_margin, "must lie in (0, 1]",
                          "set hardware.budget_margin=0.8")
    checkpointing = typed.extra_attn_config.get(name, {}).get("attention_grad_checkpointing", False)
    if not isinstance(checkpointing, bool):
        raise ConfigError(f"extra_attn_config.{name}.attention_grad_checkpointing", checkpointing,
                          "must be a boolean", "use true or false")

    device = resolve_device(typed.hardware.device)
    if typed.hardware.num_threads is not None:
        _at_least("hardware.num_threads", typed.hardware.num_threads, 1, "use null for torch's default")
    precision = resolve_precision(training.mixed_precision, device)
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("training.mixed_precision", training.mixed_precision,
                          "fp16 autocast is not supported on the CPU",
                          "use training.mixed_precision=bf16 (or false) on a CPU")

    objectives = typed.sweep.objective
    for objective in (list(objectives) if OmegaConf.is_list(objectives) else [objectives]):
        _choice("sweep.objective", objective, OBJECTIVES)

    check_data_config(typed.data)
    check_source_used(typed.data)
    length = sequence_length(typed.data) + (1 if model.pooling_mode == "CLS" else 0)
    if length > model.max_seq_len and not typed.data.get("truncate", False):
        cls_note = " (one slot is the CLS token)" if model.pooling_mode == "CLS" else ""
        raise ConfigError("model.max_seq_len", model.max_seq_len,
                          f"the task's sequences need {length} positions{cls_note}",
                          f"set model.max_seq_len={length}, or data.truncate=true to cut them")
    check_machine(typed)  # folders writable, arrays within memory: the machine, not the config alone
    OmegaConf.set_readonly(typed, True)
    return typed


__all__ = ["Schema", "validate", "resolve_device", "resolve_precision", "OBJECTIVES",
           "SCHEDULERS", "DEVICES", "PRECISIONS"]
