"""The four learning-rate schedules, built from torch.optim.lr_scheduler and stepped once per optimiser step."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    SequentialLR,
    StepLR,
)


def _with_warmup(optimizer: Optimizer, warmup_steps: int, decay: LRScheduler) -> LRScheduler:
    if warmup_steps <= 0:
        return decay
    warmup = LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])


def build_scheduler(
    optimizer: Optimizer,
    name: str,
    *,
    total_steps: int,
    steps_per_epoch: int,
    learning_rate_decay: float,
    warmup_steps: int,
    final_div_factor: float,
) -> LRScheduler:
    """exp_decay: x learning_rate_decay once per epoch (the Hrrformer's schedule); linear and cos: warm-up over
    warmup_steps, then down to learning_rate / final_div_factor at total_steps; fixed: constant."""
    if name == "exp_decay":
        return StepLR(optimizer, step_size=max(1, steps_per_epoch), gamma=learning_rate_decay)
    if name == "fixed":
        return ConstantLR(optimizer, factor=1.0, total_iters=0)
    decay_steps = max(1, total_steps - max(0, warmup_steps))
    if name == "linear":
        decay = LinearLR(optimizer, start_factor=1.0, end_factor=1.0 / final_div_factor, total_iters=decay_steps)
    elif name == "cos":
        base_lr = optimizer.param_groups[0]["lr"]
        decay = CosineAnnealingLR(optimizer, T_max=decay_steps, eta_min=base_lr / final_div_factor)
    else:
        raise ValueError(f"unknown scheduler {name!r}")  # config validation rejects it first
    return _with_warmup(optimizer, warmup_steps, decay)
