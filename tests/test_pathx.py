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
    from lra.train import train

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
