"""The model's measured peak memory (`model_peak_memory_mb`, the report's memory on a CPU): what it counts, that
it grows with the chunk, and that measuring it changes nothing in the run."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from lra.data import Split
from lra.model import LRAClassifier
from lra.run.memory import largest_chunk, model_peak_memory_mb, peak_memory
from lra.run.step import train_step


def _model(attention: str = "softmax") -> LRAClassifier:
    torch.manual_seed(0)
    return LRAClassifier(vocab_size=11, max_seq_len=64, embedding_dim=16, transformer_hidden_dim=32, head_dim=8,
                         num_head=2, num_layers=2, dropout_prob=0.1, attention_dropout=0.1, pooling_mode="MEAN",
                         num_classes=3, learn_pos_emb=True, tied_weights=False, attention=attention)


def _split(n: int = 40, t: int = 64) -> Split:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, t + 1, n)
    tokens = rng.integers(1, 11, (n, t)) * (np.arange(t)[None, :] < lengths[:, None])
    return Split(tokens=tokens, lengths=lengths, labels=rng.integers(0, 3, n))


def test_the_largest_chunk_holds_the_longest_samples():
    split = _split()
    chunk = largest_chunk(split, 4)
    longest = np.sort(split.lengths)[-4:]
    assert sorted(chunk["mask"].sum(1).tolist()) == longest.tolist()
    assert chunk["input_ids"].shape == (4, longest.max())


def test_the_measure_counts_parameters_optimiser_state_and_the_step_and_grows_with_the_chunk():
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cpu = torch.device("cpu")
    params_mb = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    small = model_peak_memory_mb(model, optimizer, _split(), chunk_size=2, device=cpu)
    large = model_peak_memory_mb(model, optimizer, _split(), chunk_size=32, device=cpu)
    assert small > 4 * params_mb  # parameters, gradients and AdamW's two moments at the least
    assert large > small + 0.1  # activations of 32 long samples against 2


def test_measuring_changes_nothing_in_the_run():
    """The same step after a measurement: the same parameters and the same random stream (dropout)."""
    runs = []
    for measure in (False, True):
        model = _model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        if measure:
            model_peak_memory_mb(model, optimizer, _split(), chunk_size=8, device=torch.device("cpu"))
            assert all(p.grad is None for p in model.parameters()) and not optimizer.state
        batch = largest_chunk(_split(), 12)
        train_step(model, batch, optimizer, chunk_size=6, autocast=contextlib.nullcontext(),
                   scaler=torch.amp.GradScaler("cpu", enabled=False))
        runs.append(([p.detach().clone() for p in model.parameters()], torch.rand(3)))
    (plain, plain_draw), (measured, measured_draw) = runs
    assert all(torch.equal(a, b) for a, b in zip(plain, measured))
    assert torch.equal(plain_draw, measured_draw)


def test_profiler_notes_stay_off_the_console_and_other_stderr_output_is_kept(capfd):
    import sys

    def work():
        (torch.ones(256, 256, requires_grad=True) * 2).sum().backward()
        print("kept", file=sys.stderr)

    assert peak_memory(work, torch.device("cpu")).bytes >= 256 * 256 * 4
    err = capfd.readouterr().err
    assert "kept" in err and "USDT" not in err and "profiler_start" not in err


@pytest.mark.gpu
def test_on_cuda_the_measure_is_the_allocators_and_changes_nothing():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible")
    cuda = torch.device("cuda")
    model = _model().to(cuda)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    params_mb = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    small = model_peak_memory_mb(model, optimizer, _split(), chunk_size=2, device=cuda)
    large = model_peak_memory_mb(model, optimizer, _split(), chunk_size=32, device=cuda)
    assert 4 * params_mb < small < large
    assert all(p.grad is None for p in model.parameters())
