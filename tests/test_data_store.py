"""Prepared arrays and manifests: reuse, re-preparation, no pickles; Split.batch; the `python -m lra.data` CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from data_fixtures import data_cfg, write_aan, write_imdb

from lra.data import load_splits
from lra.data.__main__ import main
from lra.errors import ConfigError

SIZES = {"train": 2, "dev": 1, "test": 1}
REVIEWS = {"train/pos": {"0_9.txt": b"Good!"}, "train/neg": {"0_3.txt": b"Bad."},
           "test/pos": {"0_10.txt": b"Fine"}, "test/neg": {"0_2.txt": b"No"}}


def folder_of(root, loader):
    (folder,) = (root / loader).iterdir()
    return folder


def test_manifest_records_and_arrays_are_plain_npy(tmp_path):
    write_imdb(tmp_path, REVIEWS)
    load_splits(data_cfg("text", tmp_path / "data", tmp_path, max_length=8), SIZES)
    folder = folder_of(tmp_path / "data", "text")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["identity"] == {"loader": "text", "params": {"max_length": 8, "split_seed": 0}}
    assert manifest["source_fingerprint"] == {"files": 4, "bytes": 15}
    assert len(manifest["source_sha256"]) == 64
    assert manifest["splits"]["train"]["label_histogram"] == {"0": 1, "1": 1}
    assert manifest["arrays"]["train.tokens"] == {"shape": [2, 8], "dtype": "uint8"}
    for npy in folder.glob("*.npy"):
        arr = np.load(npy, allow_pickle=False)  # never an object array
        assert arr.dtype != object
    assert not list((tmp_path / "data" / "text").glob(".*tmp*"))  # the temporary folder was renamed


def test_reused_when_manifest_matches_prepared_again_otherwise(tmp_path):
    source = write_imdb(tmp_path, REVIEWS)
    cfg = data_cfg("text", tmp_path / "data", tmp_path, max_length=8)
    load_splits(cfg, SIZES)
    folder = folder_of(tmp_path / "data", "text")
    mtime = (folder / "manifest.json").stat().st_mtime_ns
    load_splits(cfg, SIZES)  # same parameters, same source: reused
    assert (folder / "manifest.json").stat().st_mtime_ns == mtime
    without_source = load_splits({**cfg, "source": None}, SIZES)  # prepared data need no source
    assert len(without_source["train"]) == 2
    (source / "train" / "pos" / "0_9.txt").write_bytes(b"Great!!")  # the source changed: prepared again
    train = load_splits(cfg, SIZES)["train"]
    assert {bytes(int(t) - 1 for t in r[:n]) for r, n in zip(train.tokens, train.lengths)} == {b"Great!!", b"Bad."}
    assert json.loads((folder / "manifest.json").read_text())["source_fingerprint"]["bytes"] == 17
    np.save(folder / "train.labels.npy", np.zeros(5, dtype=np.int64))  # a damaged array: prepared again
    assert load_splits(cfg, SIZES)["train"].labels.shape == (2,)
    (folder / "manifest.json").write_text("{not json")
    assert len(load_splits(cfg, SIZES)["test"]) == 1
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"no prepared text data in .*unreadable .*manifest\.json"):
        load_splits({**cfg, "source": None}, SIZES)


def test_other_parameters_get_their_own_folder(tmp_path):
    write_imdb(tmp_path, REVIEWS)
    load_splits(data_cfg("text", tmp_path / "data", tmp_path, max_length=8), SIZES)
    load_splits(data_cfg("text", tmp_path / "data", tmp_path, max_length=16, dev_split="train",
                         dev_fraction=0.5), {"train": 1, "dev": 1, "test": 1})
    assert len(list((tmp_path / "data" / "text").iterdir())) == 2
    load_splits(data_cfg("text", tmp_path / "data", tmp_path, max_length=8, dev_split="train", dev_fraction=0.5),
                {"train": 1, "dev": 1, "test": 1})  # the dev split is taken at load time: same arrays
    assert len(list((tmp_path / "data" / "text").iterdir())) == 2


def test_in_memory_or_memory_mapped(tmp_path):
    cfg = data_cfg("image-digits", tmp_path)
    in_ram = load_splits(cfg, {"train": 100, "dev": 10, "test": 10})
    mapped = load_splits({**cfg, "in_memory": False}, {"train": 100, "dev": 10, "test": 10})
    assert not isinstance(in_ram["train"].tokens, np.memmap) and in_ram["train"].tokens.flags.writeable
    assert isinstance(mapped["train"].tokens, np.memmap) and not mapped["train"].tokens.flags.writeable
    for split in ("train", "dev", "test"):
        for field in ("tokens", "lengths", "labels"):
            assert np.array_equal(getattr(in_ram[split], field), getattr(mapped[split], field))


def test_split_batch_gives_int64_tensors(tmp_path):
    write_aan(tmp_path, {"train": [("1", "a", "b", b"abc", b"de"), ("0", "c", "d", b"f", b"ghij")],
                         "eval": [("1", "e", "f", b"x", b"y")], "test": [("0", "g", "h", b"z", b"w")]})
    train = load_splits(data_cfg("retrieval", tmp_path / "data", tmp_path, max_length=4), SIZES)["train"]
    batch = train.batch(np.array([1, 0, 1]))
    assert set(batch) == {"tokens", "lengths", "labels", "tokens2", "lengths2"}
    assert all(t.dtype == torch.int64 for t in batch.values())
    assert batch["tokens"].tolist() == [[103, 0, 0, 0], [98, 99, 100, 0], [103, 0, 0, 0]]
    assert batch["lengths2"].tolist() == [4, 2, 4] and batch["labels"].tolist() == [0, 1, 0]
    image = load_splits(data_cfg("image-digits", tmp_path / "data"), SIZES)["train"].batch([0])
    assert set(image) == {"tokens", "lengths", "labels"} and image["tokens"].shape == (1, 64)


def test_cli_prepare_generate_and_errors(tmp_path, capsys):
    root = str(tmp_path / "data")
    assert main(["prepare", "image-small", "--root", root]) == 0
    assert "image-small: " in capsys.readouterr().out
    assert main(["generate", "listops-small", "--root", root, "--train", "30", "--dev", "5", "--test", "5",
                 "--set", "min_length=12"]) == 0
    out = capsys.readouterr().out
    assert '"count": 30' in out and "listops-generated" in out
    assert main(["prepare", "text", "--root", root]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.source=None: no prepared text data") and "--root" in err
    write_imdb(tmp_path, REVIEWS)
    assert main(["prepare", "text-small", "--root", root, "--source", str(tmp_path / "aclImdb")]) == 0
    assert main(["prepare", "text", "--root", root, "--source", str(tmp_path), "--set", "max_lenght=3"]) == 2
    assert "did you mean 'max_length'" in capsys.readouterr().err
    assert main(["tasks"]) == 0
    assert "pathfinder-small" in capsys.readouterr().out


def test_cli_help_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "lra.data", "--help"], capture_output=True, text=True, check=True)
    assert "prepare" in out.stdout and "generate" in out.stdout
    out = subprocess.run([sys.executable, "-m", "lra.data", "prepare", "--help"], capture_output=True, text=True,
                         check=True)
    assert "--source" in out.stdout and "listops-medium" in out.stdout and "pathfinder32-generated" in out.stdout


def _generate_in_child(root: str, queue) -> None:
    from lra.data.tasks import task_preset

    try:
        splits = load_splits({**task_preset("listops-small")["data"], "root": root},
                             {"train": 2000, "dev": 50, "test": 50})
        queue.put(np.asarray(splits["train"].tokens).tobytes())
    except Exception as error:  # reported to the parent
        queue.put(repr(error))


def test_concurrent_first_use_is_safe(tmp_path):
    """Three processes (say, the jobs of a sweep) generating the same task at once all get the same arrays."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_generate_in_child, args=(str(tmp_path), queue)) for _ in range(3)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join()
    assert all(isinstance(r, bytes) for r in results), results
    assert results[0] == results[1] == results[2]
    assert len(list((tmp_path / "listops-generated").iterdir())) == 1  # one folder, no temporary leftovers
