"""`torchrun --standalone --nproc_per_node=2 launch.py ...` trains one model: the same parameters, dev accuracy
and test metrics as one process (dropout 0, SGD, batches that do not split evenly over the ranks), one MLflow
run, one Hydra output folder; a 2-rank run killed mid-epoch resumes under one process and ends as the
uninterrupted run does. Real torchrun, gloo, launch.py and sqlite stores."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from helpers import TINY, launch, launch_args, launch_env, wait_for_mid_epoch_checkpoint
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.long

# 481 training samples in batches of 15 (32 of 15, shares 8/7, and one of 1, shares 1/0: rank 1 joins the
# step with nothing), chunks of 4; dev 32 in batches 15, 15, 2; test 40. Dropout 0 and plain SGD: the only
# differences left are float32 rounding.
STEPS = 2 * 33
RUN = (*TINY, "dataset.train=481", "training.batch_size=15", "gpu_memory.softmax=4", "model.dropout_prob=0.0",
       "model.attention_dropout=0.0", "training.optimizer=sgd", "training.learning_rate=0.05",
       "training.checkpoint_every=3", "training.log_every=1")


def torchrun_args(tmp: Path, nproc: int, *overrides: str) -> list[str]:
    python, script, *rest = launch_args(tmp, *overrides)
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script, *rest]


def torchrun_env(tmp: Path) -> dict[str, str]:
    env = launch_env(tmp)
    (tmp / "tmp").mkdir(exist_ok=True)
    env["TMPDIR"] = str(tmp / "tmp")  # where rank 1 keeps its throw-away Hydra folder
    return env


def only_run(tmp: Path):
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("listops-small").experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def history(client: MlflowClient, run, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}


def checkpoint(tmp: Path, name: str = "last.pt") -> dict:
    (path,) = (tmp / "checkpoints").glob(f"*/{name}")
    return torch.load(path, weights_only=True)


def initial_parameters() -> dict[str, torch.Tensor]:
    """The model every run starts from (the seed's)."""
    from train_helpers import compose

    from lra.config import validate
    from lra.run.train import build_model

    cfg = validate(compose([o for o in RUN if not o.startswith("tracking.")]))
    torch.manual_seed(cfg.training.seed)
    return build_model(cfg).state_dict()


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("one")
    done = launch(tmp, *RUN)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp


def test_two_ranks_train_the_one_process_model(one_process: Path, tmp_path: Path) -> None:
    done = subprocess.run(torchrun_args(tmp_path, 2, *RUN), cwd=tmp_path, env=torchrun_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    assert done.stdout.count("FINISHED") == 1  # rank 0 alone reports

    client, run = only_run(tmp_path)  # one MLflow run
    ref_client, ref = only_run(one_process)
    assert run.info.status == "FINISHED" and run.data.params["resolved.world_size"] == "2"
    assert ref.data.params["resolved.world_size"] == "1"
    # the same dev accuracy after every epoch, the same per-step training loss, the same test metrics
    assert history(client, run, "eval_accuracy") == history(ref_client, ref, "eval_accuracy")
    losses, ref_losses = history(client, run, "train_loss"), history(ref_client, ref, "train_loss")
    assert losses.keys() == ref_losses.keys() and len(losses) == STEPS
    for step, value in losses.items():
        assert value == pytest.approx(ref_losses[step], rel=1e-4), step
    for key in ("test_accuracy", "best_eval_accuracy"):
        assert run.data.metrics[key] == ref.data.metrics[key], key
    assert run.data.metrics["test_loss"] == pytest.approx(ref.data.metrics["test_loss"], rel=1e-4)

    # the same parameters (float32 tolerance) and the same progress, whatever the number of processes
    ranks, one = checkpoint(tmp_path), checkpoint(one_process)
    timing = ("train_seconds", "window_seconds")
    assert ({k: v for k, v in ranks["progress"].items() if k not in timing}
            == pytest.approx({k: v for k, v in one["progress"].items() if k not in timing}, rel=1e-4))
    diff = max_difference(ranks["model"], one["model"])
    best = max_difference(checkpoint(tmp_path, "best.pt"), checkpoint(one_process, "best.pt"))
    print(f"2 gloo ranks vs 1 process after {one['progress']['global_step']} SGD steps: max parameter difference "
          f"{diff:.3g} (best.pt {best:.3g})")
    assert diff < 1e-5 and best < 1e-5
    assert max_difference(initial_parameters(), one["model"]) > 1e-3  # training moved them (not vacuous)

    # one Hydra output folder (rank 0's), and rank 1's throw-away folder is gone
    assert (tmp_path / "outputs" / ".hydra" / "config.yaml").exists()
    assert not list((tmp_path / "tmp").glob("lra-rank*"))


def test_killed_under_two_ranks_resumes_under_one(one_process: Path, tmp_path: Path) -> None:
    with open(tmp_path / "torchrun.log", "w") as log:
        process = subprocess.Popen(torchrun_args(tmp_path, 2, *RUN), cwd=tmp_path, env=torchrun_env(tmp_path),
                                   stdout=log, stderr=subprocess.STDOUT)
    ranks = []
    try:
        state = wait_for_mid_epoch_checkpoint(tmp_path, process, timeout=400,
                                              why_ended=lambda: (tmp_path / "torchrun.log").read_text()[-3000:])
        ranks = psutil.Process(process.pid).children(recursive=True)
    finally:
        # torchrun starts each rank in a session of its own: kill the ranks and torchrun, one by one, at once
        for proc in ranks:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        process.kill()
        process.wait(60)
        psutil.wait_procs(ranks, timeout=60)
    assert len(ranks) >= 2, (tmp_path / "torchrun.log").read_text()[-3000:]
    client, run = only_run(tmp_path)
    assert run.info.status == "RUNNING" and state["run_id"] == run.info.run_id

    resumed = launch(tmp_path, *RUN)  # one process now
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr + resumed.stdout and "warning" not in resumed.stderr, resumed.stderr[-3000:]
    client, run = only_run(tmp_path)  # the same MLflow run, continued
    assert run.info.status == "FINISHED"
    ref_client, ref = only_run(one_process)
    for key in ("test_accuracy", "best_eval_accuracy"):
        assert run.data.metrics[key] == ref.data.metrics[key], key
    assert run.data.metrics["test_loss"] == pytest.approx(ref.data.metrics["test_loss"], rel=1e-4)
    assert history(client, run, "eval_accuracy") == history(ref_client, ref, "eval_accuracy")
    assert max_difference(checkpoint(tmp_path)["model"], checkpoint(one_process)["model"]) < 1e-5


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-m", "long", "-q", "-s"]))
