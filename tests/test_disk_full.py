"""A full disk (issue 19): one `error:` line naming the folder, the space free and needed and the fix; no
temporary file left; `last.pt` and `previous.pt` untouched; the same command resumes once there is room. On a real
tmpfs (mounting one needs root, as in CI; the tests skip saying so where it cannot be mounted), filled up while the
real `launch.py` trains."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from helpers import TINY, launch, launch_args, launch_env, wait_for_mid_epoch_checkpoint

# 40 steps per epoch, a checkpoint every 3 steps: still training when the disk is filled
LONG = (*TINY, "dataset.train=640", "training.num_epochs=2", "training.checkpoint_every=3", "attention=tpr")


class Tmpfs:
    """A real tmpfs of `size` mounted at `folder` (unmounted at the end)."""

    def __init__(self, folder: Path, size: str) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or mounted.returncode}): the "
                        "full-disk tests need root (CI runs them as root)")

    def fill(self) -> Path:
        """Write a file until the tmpfs has no byte left; the file."""
        filler = self.folder / "filler"
        with open(filler, "wb", buffering=0) as handle:
            for chunk in (2**16, 2**12, 2**9, 1):
                try:
                    while True:
                        handle.write(b"\0" * chunk)
                except OSError:
                    continue
        return filler

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.folder)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.folder)], capture_output=True)


@pytest.fixture
def tmpfs_at(tmp_path: Path) -> Iterator:
    mounted: list[Tmpfs] = []

    def mount(folder: Path, size: str = "4m") -> Tmpfs:
        mounted.append(Tmpfs(folder, size))
        return mounted[-1]

    yield mount
    for fs in mounted:
        fs.unmount()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _runs(tmp: Path) -> list:
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("listops-small").experiment_id])


def _start(tmp: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(launch_args(tmp, *overrides), cwd=tmp, env=launch_env(tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_full_disk_during_a_save_leaves_the_checkpoints_as_they_were(tmpfs_at, tmp_path: Path) -> None:
    """In-process, on a real tmpfs: the save that does not fit raises DiskFullError, the rest stays."""
    from lra.run.checkpoint import CheckpointStore
    from lra.disk import DiskFullError

    fs = tmpfs_at(tmp_path / "fs", "256k")
    store = CheckpointStore(fs.folder, "key")
    store.acquire()
    state = {"model": {"w": torch.zeros(4000)}, "optimizer": {}, "scheduler": {}, "scaler": {}, "rng": {},
             "progress": {"completed": False}, "run_id": "r"}
    store.save_last(state)
    store.save_last({**state, "run_id": "r2"})
    before = {name: _digest(store.folder / name) for name in ("last.pt", "previous.pt")}
    fs.fill()
    with pytest.raises(DiskFullError) as caught:
        store.save_last({**state, "run_id": "r3"})
    message = str(caught.value)
    assert message.startswith(f"no space left in {store.folder} to write last.pt (0 B free, ")
    assert "KiB needed); fix: free space in" in message and "run the same command" in message
    assert sorted(p.name for p in store.folder.iterdir()) == [".lock", "last.pt", "owner.json", "previous.pt"]
    assert before == {name: _digest(store.folder / name) for name in ("last.pt", "previous.pt")}
    store.release()


def test_a_full_disk_while_the_model_folder_is_written_leaves_no_partial_file(tmpfs_at, tmp_path: Path) -> None:
    from lra.record.artifacts import write_model_folder
    from lra.disk import DiskFullError

    fs = tmpfs_at(tmp_path / "fs", "64k")  # room for the config and meta.json, not for the weights
    model = torch.nn.Linear(200, 100)  # 80 KiB of weights
    cfg = OmegaConf.create({"tracking": {"uri": "http://user:pw123456@host:5000"}})
    with pytest.raises(DiskFullError) as caught:
        write_model_folder(fs.folder / "key", model, cfg, {"run_id": "r"})
    assert f"no space left in {fs.folder / 'key' / 'model'} to write the model files" in str(caught.value)
    assert not list((fs.folder / "key").rglob("*.tmp-*")), list((fs.folder / "key").rglob("*"))
    fs.resize("1m")
    out = write_model_folder(fs.folder / "key", model, cfg, {"run_id": "r"})
    assert "pw123456" not in (out / "config.yaml").read_text()


@pytest.mark.slow
def test_a_disk_that_fills_up_while_a_run_trains_ends_it_in_one_line_and_the_rerun_resumes(
        tmpfs_at, tmp_path: Path) -> None:
    fs = tmpfs_at(tmp_path / "checkpoints", "8m")
    process = _start(tmp_path, *LONG)
    wait_for_mid_epoch_checkpoint(tmp_path, process, why_ended=lambda: process.communicate()[1][-2000:])
    (folder,) = [p.parent for p in fs.folder.glob("*/last.pt")]
    while not (folder / "previous.pt").exists():
        assert process.poll() is None
        time.sleep(0.02)
    fs.fill()
    time.sleep(1)  # a save whose file was written before the disk was full has renamed it by now
    before = {name: _digest(folder / name) for name in ("last.pt", "previous.pt")}
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 1, stderr[-3000:]
    line = _last_line(stderr)
    assert line.startswith(f"error: no space left in {folder} to write last.pt (0 B free, "), line
    assert "needed); fix: free space in" in line and "run the same command: it resumes" in line, line
    assert "Traceback" not in stderr
    assert not list(fs.folder.rglob("*.tmp-*")), list(folder.iterdir())
    assert before == {name: _digest(folder / name) for name in ("last.pt", "previous.pt")}
    (failed,) = _runs(tmp_path)
    assert failed.info.status == "FAILED"
    step = torch.load(folder / "last.pt", weights_only=True)["progress"]["global_step"]

    (fs.folder / "filler").unlink()  # space freed: the same command again
    again = launch(tmp_path, *LONG, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {folder} at epoch" in again.stdout + again.stderr
    (run,) = _runs(tmp_path)
    assert run.info.run_id == failed.info.run_id and run.info.status == "FINISHED"
    assert torch.load(folder / "last.pt", weights_only=True)["progress"]["global_step"] > step


@pytest.mark.slow
def test_a_full_artifact_folder_ends_the_run_in_one_line_and_the_rerun_logs_the_model(
        tmpfs_at, tmp_path: Path) -> None:
    """The MLflow artifact folder (./mlruns of a local store) fills up during training: the model artifacts at
    the end do not fit; nothing partial is left; the rerun tests the best weights again and logs them."""
    fs = tmpfs_at(tmp_path / "mlruns", "8m")
    process = _start(tmp_path, *LONG)
    wait_for_mid_epoch_checkpoint(tmp_path, process, why_ended=lambda: process.communicate()[1][-2000:])
    (config,) = fs.folder.glob("*/*/artifacts/config.yaml")
    fs.fill()
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 1, stderr[-3000:]
    model = config.parent / "model"
    line = _last_line(stderr)
    assert line.startswith(f"error: no space left in {model} to write the model artifacts ("), line
    assert "0 B free" in line and "needed); fix: free space in" in line and "Traceback" not in stderr
    assert not model.exists() or not list(model.iterdir()), list(model.iterdir())
    (failed,) = _runs(tmp_path)
    assert failed.info.status == "FAILED"

    (fs.folder / "filler").unlink()
    again = launch(tmp_path, *LONG, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    (run,) = _runs(tmp_path)
    assert run.info.run_id == failed.info.run_id and run.info.status == "FINISHED"
    assert sorted(p.name for p in model.iterdir()) == ["config.yaml", "meta.json", "weights.safetensors"]
