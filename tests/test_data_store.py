"""Prepared arrays and manifests: reuse, re-preparation, no pickles; Split.batch; the `python -m lra.data` CLI."""

import json
import re
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
    meta = manifest["arrays"]["train.tokens"]
    assert {key: meta[key] for key in ("shape", "dtype")} == {"shape": [2, 8], "dtype": "uint8"}
    assert meta["bytes"] == 128 + 16 and len(meta["sha256"]) == 64  # the .npy header, then 2 x 8 bytes
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


# ---------------------------------------------------------------------------------------------------------------
# damaged prepared folders (issue 14, item 8): named, prepared again (generated) or refused (release, no source)

TINY_SIZES = {"train": 40, "dev": 8, "test": 8}


def _generated(tmp_path):
    from lra.data.tasks import task_preset

    cfg = {**task_preset("listops-small")["data"], "root": str(tmp_path / "data")}
    splits = load_splits(cfg, TINY_SIZES)
    return cfg, splits, folder_of(tmp_path / "data", "listops-generated")


def test_manifest_records_sizes_and_checksums(tmp_path):
    from lra.data.store import sha256_file

    _, _, folder = _generated(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, meta in manifest["arrays"].items():
        file = folder / f"{name}.npy"
        assert meta["bytes"] == file.stat().st_size and meta["sha256"] == sha256_file(file)


@pytest.mark.parametrize("content", ["[]", "null", '"text"', '{"format_version": 1}',
                                     '{"format_version": 1, "arrays": {"train.tokens": [1, 2]}}'])
def test_manifest_that_is_not_the_expected_object_is_prepared_again(tmp_path, content):
    from lra.data.store import open_prepared

    cfg, before, folder = _generated(tmp_path)
    (folder / "manifest.json").write_text(content)
    reason = open_prepared(folder, {"anything": 1})
    assert isinstance(reason, str) and str(folder / "manifest.json") in reason
    after = load_splits(cfg, TINY_SIZES)  # generated data: drawn again, the same samples
    assert isinstance(json.loads((folder / "manifest.json").read_text()), dict)
    assert np.array_equal(after["train"].tokens, before["train"].tokens)
    assert np.array_equal(after["test"].labels, before["test"].labels)


def test_release_manifest_that_is_not_an_object_names_the_file(tmp_path):
    write_imdb(tmp_path, REVIEWS)
    cfg = data_cfg("text", tmp_path / "data", tmp_path, max_length=8)
    load_splits(cfg, SIZES)
    folder = folder_of(tmp_path / "data", "text")
    (folder / "manifest.json").write_text("[]")
    with pytest.raises(ConfigError, match=re.escape(str(folder / "manifest.json")) + " holds a JSON list"):
        load_splits({**cfg, "source": None}, SIZES)
    assert len(load_splits(cfg, SIZES)["train"]) == 2  # with its source: prepared again
    assert isinstance(json.loads((folder / "manifest.json").read_text()), dict)


def test_array_of_another_size_is_prepared_again(tmp_path):
    from lra.data.store import open_prepared

    cfg, before, folder = _generated(tmp_path)
    identity = json.loads((folder / "manifest.json").read_text())["identity"]
    with open(folder / "train.tokens.npy", "ab") as f:
        f.write(b"\0" * 64)
    reason = open_prepared(folder, identity)
    assert isinstance(reason, str) and "train.tokens.npy has" in reason and "bytes, the manifest says" in reason
    assert np.array_equal(load_splits(cfg, TINY_SIZES)["train"].tokens, before["train"].tokens)
    assert isinstance(open_prepared(folder, identity), tuple)


def test_changed_array_fails_its_checksum_and_is_prepared_again(tmp_path):
    from lra.data.store import open_prepared

    cfg, before, folder = _generated(tmp_path)
    identity = json.loads((folder / "manifest.json").read_text())["identity"]
    tokens = np.load(folder / "dev.tokens.npy", mmap_mode="r+")
    tokens[0, 0] = (int(tokens[0, 0]) + 1) % 16  # same size, same shape: only the checksum tells
    tokens.flush()
    del tokens
    reason = open_prepared(folder, identity)
    assert isinstance(reason, str) and "dev.tokens.npy does not match its checksum" in reason
    assert np.array_equal(load_splits(cfg, TINY_SIZES)["dev"].tokens, before["dev"].tokens)


def test_zeroed_labels_are_noticed_by_the_histogram(tmp_path):
    """Even where the manifest has no checksums (written before they were recorded), the labels are compared
    with the manifest's label histograms."""
    from lra.data.store import open_prepared

    cfg, before, folder = _generated(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    for meta in manifest["arrays"].values():
        del meta["sha256"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert isinstance(open_prepared(folder, manifest["identity"]), tuple)  # intact: accepted
    labels = np.load(folder / "train.labels.npy", mmap_mode="r+")
    assert labels.any()
    labels[:] = 0
    labels.flush()
    del labels
    reason = open_prepared(folder, manifest["identity"])
    assert isinstance(reason, str) and "train.labels.npy do not match the manifest's histogram" in reason
    assert np.array_equal(load_splits(cfg, TINY_SIZES)["train"].labels, before["train"].labels)


def test_zeroed_labels_in_a_shared_array_are_noticed(tmp_path):
    """image-digits keeps one `all.labels` array for three splits: compared with the histograms' sum."""
    from lra.data.store import open_prepared

    cfg = data_cfg("image-digits", tmp_path / "data")
    load_splits(cfg, SIZES)
    folder = folder_of(tmp_path / "data", "image-digits")
    manifest = json.loads((folder / "manifest.json").read_text())
    for meta in manifest["arrays"].values():
        del meta["sha256"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    labels = np.load(folder / "all.labels.npy", mmap_mode="r+")
    labels[:5] = 0
    labels.flush()
    del labels
    reason = open_prepared(folder, manifest["identity"])
    assert isinstance(reason, str) and "all.labels.npy do not match the manifest's histograms" in reason


@pytest.mark.long
def test_cli_with_damaged_manifests(tmp_path):
    """The real commands: generated data with a manifest of `[]` are drawn again (exit 0); prepared release data
    with one, and no source, end in one error line naming the file (exit 2)."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "lra.data", *args, "--root", str(tmp_path / "data")],
                              capture_output=True, text=True, timeout=300)

    generate = ("generate", "listops-small", "--train", "30", "--dev", "5", "--test", "5")
    assert run(*generate).returncode == 0
    folder = folder_of(tmp_path / "data", "listops-generated")
    first = np.load(folder / "train.tokens.npy")
    (folder / "manifest.json").write_text("[]")
    result = run(*generate)
    assert result.returncode == 0, result.stderr
    assert f"{folder} not used: {folder / 'manifest.json'} holds a JSON list" in result.stderr  # one warning
    assert isinstance(json.loads((folder / "manifest.json").read_text()), dict)
    assert np.array_equal(np.load(folder / "train.tokens.npy"), first)

    write_imdb(tmp_path, REVIEWS)
    assert run("prepare", "text-small", "--source", str(tmp_path / "aclImdb")).returncode == 0
    text_folder = folder_of(tmp_path / "data", "text")
    (text_folder / "manifest.json").write_text("[]")
    result = run("prepare", "text-small")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data.source=None: no prepared text data"), result.stderr
    assert str(text_folder / "manifest.json") in lines[0] and "Traceback" not in result.stderr
