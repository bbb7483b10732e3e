"""GPU readiness: mixed precision, the CUDA memory metric, the automatic chunk on CUDA, DDP over NCCL.

Every test here needs a CUDA device and is skipped with the reason where none is visible. `python -m lra.bench
gpu` runs them, then the attention and step benchmarks on the GPU, and prints one table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ddp_worker
import pytest
import torch
from helpers import TINY, launch, launch_args, launch_env

from lra.model import LRAClassifier
from lra.parallel.distributed import Distributed
from lra.run.chunking import full_length_batch, probe_chunk_size
from lra.run.memory import peak_memory
from lra.run.run_state import PeakMemory
from lra.run.step import autocast_context, train_step

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device is visible to torch")]

CUDA = torch.device("cuda", 0)
HERE = Path(__file__).resolve().parent


def _model(dropout: float = 0.0) -> LRAClassifier:
    torch.manual_seed(0)
    return LRAClassifier(vocab_size=11, max_seq_len=64, embedding_dim=32, transformer_hidden_dim=64, head_dim=16,
                         num_head=2, num_layers=2, dropout_prob=dropout, attention_dropout=dropout,
                         pooling_mode="MEAN", num_classes=3, learn_pos_emb=True, tied_weights=False,
                         attention="softmax").to(CUDA)


def _batch(n: int = 12, t: int = 60) -> dict:
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(5, t + 1, (n,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    batch = {"input_ids": torch.randint(1, 11, (n, t), generator=g) * mask, "mask": mask,
             "labels": torch.randint(0, 3, (n,), generator=g)}
    return {k: v.to(CUDA) for k, v in batch.items()}


def _update(precision: str, chunk: int, scaler: torch.amp.GradScaler | None = None):
    """One SGD step; the parameter change it made, the scaler, and the stats."""
    model = _model()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scaler = scaler or torch.amp.GradScaler(CUDA.type, enabled=precision == "fp16")
    stats = train_step(model, _batch(), optimizer, chunk_size=chunk, autocast=autocast_context(CUDA, precision),
                       scaler=scaler)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return after - before, scaler, stats


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0).item()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_chunked_step_follows_the_float32_update(precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    reference, _, ref_stats = _update("fp32", chunk=12)
    whole, _, whole_stats = _update(precision, chunk=12)
    chunked, _, stats = _update(precision, chunk=5)  # 5, 5, 2
    assert stats.count == whole_stats.count == 12 and torch.isfinite(torch.tensor(stats.loss))
    assert stats.loss == pytest.approx(ref_stats.loss, rel=3e-2)
    assert reference.abs().max() > 1e-4  # the step moved the parameters
    assert _cosine(chunked, reference) > 0.99 and _cosine(chunked, whole) > 0.99


def test_fp16_scaler_steps_once_per_batch_across_chunks():
    """growth_interval=1 doubles the scale at every `update()` without an overflow: after one batch of four
    chunks the scale has doubled once, not four times, and the update is the unscaled one."""
    scaler = torch.amp.GradScaler(CUDA.type, init_scale=2.0**10, growth_factor=2.0, growth_interval=1)
    update, scaler, _ = _update("fp16", chunk=3, scaler=scaler)
    assert scaler.get_scale() == 2.0**11
    reference, _, _ = _update("fp32", chunk=12)
    assert _cosine(update, reference) > 0.99
    assert update.abs().max().item() < 10 * reference.abs().max().item()  # unscaled (not 2^10 times larger)


def test_cuda_memory_metric_counts_the_allocator():
    memory = PeakMemory(CUDA)
    keep = torch.empty(64 * 2**20, dtype=torch.uint8, device=CUDA)  # 64 MiB
    assert memory.mb >= 64
    peak = peak_memory(lambda: torch.empty(32 * 2**20, dtype=torch.uint8, device=CUDA), CUDA)
    assert peak.bytes >= 32 * 2**20
    del keep


def test_auto_chunk_on_cuda_fits_the_budget_and_shrinks_with_it():
    model = _model()
    example = full_length_batch(2, 63, 11, 3, device=CUDA)
    free = probe_chunk_size(model, example, device=CUDA, max_chunk=64)
    assert free.chunk == 64 and free.budget_mb > 0  # a small model: everything fits the free memory
    one = free.probes[1]
    capped = probe_chunk_size(model, example, device=CUDA, max_chunk=64,
                              memory_budget_mb=(4.5 * one + free.reserved_mb) / 0.8)
    assert 1 <= capped.chunk < 64 and capped.probes[capped.chunk] + capped.reserved_mb <= 0.8 * capped.budget_mb


@pytest.mark.slow
def test_launch_with_auto_chunk_on_cuda(tmp_path):
    from mlflow.tracking import MlflowClient

    done = launch(tmp_path, *TINY, "hardware=auto", "training.mixed_precision=true")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gpu_memory.softmax=auto: auto chunk size" in done.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("listops-small").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["resolved.device"].startswith("cuda")
    assert run.data.params["resolved.precision"] in ("bf16", "fp16")
    assert int(run.data.params["resolved.chunk_size"]) >= 1 and run.data.metrics["peak_memory_mb"] > 0


def _torchrun(nproc: int, *args: str, cwd: Path | None = None, env: dict | None = None):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", *args], cwd=cwd, env=env or dict(os.environ),
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_ddp_over_nccl_on_one_gpu_makes_the_one_process_update(tmp_path):
    out = tmp_path / "rank0.pt"
    done = _torchrun(1, str(HERE / "ddp_worker.py"), str(out), "--device", "cuda")
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = torch.load(out, weights_only=False)
    assert ranks["backend"] == "nccl" and ranks["world_size"] == 1
    one = ddp_worker.run(Distributed(device=CUDA))
    assert ranks["dev"][2] == one["dev"][2] == ddp_worker.N
    for key, value in one["params"].items():
        torch.testing.assert_close(ranks["params"][key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_torchrun_launch_on_one_gpu(tmp_path):
    from mlflow.tracking import MlflowClient

    python, script, *rest = launch_args(tmp_path, *TINY, "hardware.device=auto")
    done = _torchrun(1, script, *rest, cwd=tmp_path, env=launch_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("listops-small").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["resolved.device"] == "cuda:0"
    assert run.data.params["resolved.world_size"] == "1"
