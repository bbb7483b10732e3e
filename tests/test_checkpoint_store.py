"""The run folder's lock, in-process: one owner at a time, and a refused config leaves no folder behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from lra.run.checkpoint import CheckpointStore, RunLockedError


def test_a_second_owner_is_refused_with_the_first_named(tmp_path: Path) -> None:
    first, second = CheckpointStore(tmp_path, "run"), CheckpointStore(tmp_path, "run")
    first.acquire()
    try:
        with pytest.raises(RunLockedError) as refused:
            second.acquire()
        assert "process" in refused.value.owner
    finally:
        first.release()
    second.acquire()  # free again once the first has released it
    second.release()


def test_a_refused_config_removes_only_the_folders_it_made(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints" / "nested"
    store = CheckpointStore(root, "run-a")
    store.acquire()
    store.release(discard_unused=True)
    assert not (tmp_path / "checkpoints").exists()  # every level it made, and nothing above

    other = CheckpointStore(root, "run-b")  # another config's folder, with its checkpoint
    other.acquire()
    (other.folder / "last.pt").write_bytes(b"x")
    other.release()
    store = CheckpointStore(root, "run-a")
    store.acquire()
    store.release(discard_unused=True)
    assert sorted(p.name for p in root.iterdir()) == ["run-b"]  # the shared root stays

    other = CheckpointStore(root, "run-b")  # a folder that existed before is never removed
    other.acquire()
    other.release(discard_unused=True)
    assert (other.folder / "last.pt").exists()
    assert not (other.folder / "owner.json").exists()
