"""The accumulation-chunked step equals the full-batch step; evaluation is chunk-invariant too."""

import contextlib

import pytest
import torch

from lra.model import LRAClassifier
from lra.run.step import eval_step, train_step


def _model(attention: str = "softmax", dual: bool = False) -> LRAClassifier:
    torch.manual_seed(0)
    return LRAClassifier(vocab_size=11, max_seq_len=24, embedding_dim=16, transformer_hidden_dim=32, head_dim=8,
                         num_head=2, num_layers=2, dropout_prob=0.0, attention_dropout=0.0, pooling_mode="MEAN",
                         num_classes=3, learn_pos_emb=True, tied_weights=False, attention=attention,
                         dual_encoder=dual)


def _batch(n: int = 12, t: int = 20, dual: bool = False) -> dict:
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(3, t + 1, (n,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    batch = {"input_ids": torch.randint(1, 11, (n, t), generator=g) * mask, "mask": mask,
             "labels": torch.randint(0, 3, (n,), generator=g)}
    if dual:
        batch["input_ids_2"], batch["mask_2"] = batch["input_ids"].flip(0), batch["mask"].flip(0)
    return batch


def _one_step(chunk: int, attention: str = "softmax", dual: bool = False, clip: float = 0.0):
    model = _model(attention, dual)
    # SGD, so that the parameters after one step compare the accumulated gradients themselves (Adam's first
    # step is about lr * sign(g), which turns float32 rounding in near-zero gradients into lr-sized changes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stats = train_step(model, _batch(dual=dual), optimizer, chunk_size=chunk, autocast=contextlib.nullcontext(),
                       scaler=scaler, grad_clip=clip)
    return stats, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("attention", ["softmax", "tpr", "hrr-bundled"])
@pytest.mark.parametrize("chunk", [3, 5])  # batch/4 and an uneven split of 12 (5, 5, 2)
def test_chunked_step_equals_full_batch_step(attention: str, chunk: int) -> None:
    full_stats, full_params = _one_step(12, attention)
    stats, params = _one_step(chunk, attention)
    assert stats.count == full_stats.count == 12
    assert stats.loss == pytest.approx(full_stats.loss, rel=1e-5)
    assert stats.correct == full_stats.correct
    for a, b in zip(params, full_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_chunked_step_with_clipping_and_dual_encoder() -> None:
    _, full_params = _one_step(12, dual=True, clip=0.1)
    _, params = _one_step(5, dual=True, clip=0.1)
    for a, b in zip(params, full_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_chunk_changes_the_update_only_when_it_is_wrongly_weighted() -> None:
    """Guard against a vacuous equality: one step really moves the parameters."""
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    _, after = _one_step(5)
    assert any(not torch.allclose(a, b) for a, b in zip(before, after))


def test_poisoned_loss_skips_the_update() -> None:
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    stats = train_step(model, _batch(), optimizer, chunk_size=4, autocast=contextlib.nullcontext(),
                       scaler=torch.amp.GradScaler("cpu", enabled=False), poison_loss=True)
    assert stats.loss != stats.loss  # NaN
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b.detach())


def test_eval_step_is_chunk_invariant() -> None:
    model = _model("hrr-quadratic")
    whole = eval_step(model, _batch(), chunk_size=12, autocast=contextlib.nullcontext())
    parts = eval_step(model, _batch(), chunk_size=5, autocast=contextlib.nullcontext())
    assert whole.count == parts.count == 12
    assert parts.loss == pytest.approx(whole.loss, rel=1e-5)
    assert parts.correct == whole.correct
