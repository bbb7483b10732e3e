"""The four schedules have the documented shapes."""

import pytest
import torch

from lra.run.schedule import build_scheduler


def _lrs(name: str, steps: int = 40, **kw) -> list[float]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    args = dict(total_steps=steps, steps_per_epoch=10, learning_rate_decay=0.5, warmup_steps=8,
                final_div_factor=100.0)
    args.update(kw)
    scheduler = build_scheduler(optimizer, name, **args)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_exp_decay_multiplies_once_per_epoch() -> None:
    lrs = _lrs("exp_decay")
    assert lrs[:10] == [1.0] * 10
    assert lrs[10:20] == [pytest.approx(0.5)] * 10
    assert lrs[39] == pytest.approx(0.125)


@pytest.mark.parametrize("name", ["linear", "cos"])
def test_warmup_then_decay_to_the_final_value(name: str) -> None:
    lrs = _lrs(name)
    assert lrs[0] == pytest.approx(1 / 8)
    assert all(a < b for a, b in zip(lrs[:8], lrs[1:9]))  # warm-up rises
    assert lrs[8] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[8:], lrs[9:]))  # then never rises
    assert lrs[40] == pytest.approx(0.01, rel=1e-3)


def test_fixed_is_constant() -> None:
    assert set(_lrs("fixed")) == {1.0}


def test_scheduler_state_round_trips() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    kw = dict(total_steps=40, steps_per_epoch=10, learning_rate_decay=0.5, warmup_steps=8, final_div_factor=100.0)
    first = build_scheduler(optimizer, "cos", **kw)
    for _ in range(13):
        optimizer.step()
        first.step()
    state = first.state_dict()
    optimizer2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    second = build_scheduler(optimizer2, "cos", **kw)
    second.load_state_dict(state)
    optimizer2.param_groups[0]["lr"] = optimizer.param_groups[0]["lr"]
    for _ in range(5):
        optimizer.step(); first.step(); optimizer2.step(); second.step()
        assert optimizer2.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])
