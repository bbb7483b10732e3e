"""Path-X (128x128, 16,384 tokens): every attention mechanism trains two steps with a small model."""

from __future__ import annotations

import time

import pytest
from mlflow.tracking import MlflowClient

from lra.attention import ATTENTIONS
from lra.compose import compose_config

pytestmark = pytest.mark.long  # about 10-60 s per mechanism on a 2-core CPU


@pytest.mark.parametrize("attention", sorted(ATTENTIONS))
def test_every_mechanism_takes_two_steps_on_path_x(attention: str, tmp_path_factory) -> None:
    from lra.run.train import train

    tmp = tmp_path_factory.getbasetemp() / "pathx"
    tmp.mkdir(exist_ok=True)
    cfg = compose_config([
        "task=pathfinder128-generated", f"attention={attention}", "dataset.train=4", "dataset.dev=2",
        "dataset.test=2", "model.embedding_dim=32", "model.transformer_hidden_dim=32", "model.num_head=2",
        "model.head_dim=16", "model.num_layers=1", "training.batch_size=2", "training.max_steps=2",
        "training.log_every=1", "training.num_eval_steps=1", "tracking.system_metrics=false",
        "hardware.device=cpu", f"data.root={tmp / 'data'}", f"checkpoint.dir={tmp / 'checkpoints'}",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}", f"tracking.run_name={attention}"])
    assert cfg.model.max_seq_len == 16384
    start = time.perf_counter()
    metrics = train(cfg)
    seconds = time.perf_counter() - start
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("pathfinder128-generated").experiment_id],
                                filter_string=f"attributes.run_name = '{attention}'")
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert run.data.params["resolved.total_steps"] == "2"
    print(f"Path-X {attention}: 2 steps + eval in {seconds:.1f} s, peak memory {metrics['peak_memory_mb']:.0f} MB, "
          f"{metrics['samples_per_second']:.2f} samples/s")


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=pytest.mark.gpu), "cpu"])
def test_attention_benchmark_covers_the_path_x_length(device: str) -> None:
    """`python -m lra.bench attention --lengths 16384`: every mechanism is measured at T = 16,384 (on the CPU the
    quadratic ones take minutes: there only softmax and the two linear ones)."""
    import torch

    from lra.bench.attention import default_candidates, run_attention_bench

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
    names = None if device == "cuda" else ["softmax", "hrr-bundled", "tpr"]
    candidates = default_candidates(names, False)
    result = run_attention_bench(candidates, lengths=[16384], batch=1, heads=2, head_dim=32, repeats=1, warmup=0,
                                 device=torch.device(device), matmul_size=256, log=lambda _: None)
    rows = {row["mechanism"]: row for row in result["results"]}
    assert set(rows) == {c.label for c in candidates} and rows["softmax"]["T"] == 16384
    for row in rows.values():
        assert row["T"] == 16384 and row["time_median_s"] > 0 and row["peak_memory_bytes"] > 0
