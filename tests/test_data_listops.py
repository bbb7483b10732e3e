"""ListOps: tokenisation, the release loader on hand-written tsv files, and the generator against LRA's algorithm."""

import random

import numpy as np
import pytest
from data_fixtures import data_cfg, lra_to_string, lra_tree, write_listops

from lra.data import listops, load_splits
from lra.data.tasks import task_preset
from lra.errors import ConfigError

MAX, MIN, MED, SM, X = 12, 11, 13, 14, 15  # ids of [MAX [MIN [MED [SM and X in listops.VOCAB


def digit(v):
    return v + 1


def test_vocabulary_is_fixed_with_pad_zero():
    assert listops.VOCAB[0] == "<pad>" and listops.VOCAB_SIZE == 16
    assert [listops.TOKEN_ID[t] for t in ("[MIN", "[MAX", "[MED", "[SM", "X")] == [MIN, MAX, MED, SM, X]
    assert [listops.TOKEN_ID[str(v)] for v in range(10)] == list(range(1, 11))


def test_tokenize_as_lra_string_format():
    source = lra_to_string(lra_tree(["[MAX", 2, 9, ["[MIN", 4, 7], 0]))
    assert source == "( ( ( ( ( [MAX 2 ) 9 ) ( ( ( [MIN 4 ) 7 ) ] ) ) 0 ) ] )"
    assert listops.tokenize(source) == ["[MAX", "2", "9", "[MIN", "4", "7", "X", "0", "X"]
    ids = listops.encode(listops.tokenize(source))
    assert ids == [MAX, digit(2), digit(9), MIN, digit(4), digit(7), X, digit(0), X]
    assert listops.evaluate(ids) == 9


@pytest.mark.parametrize("expr, value", [
    (["[MIN", 4, 7, 1], 1), (["[MAX", 4, 7, 1], 7), (["[SM", 4, 7, 5], 6),
    (["[MED", 4, 7, 1, 9], 5),  # int(np.median([4, 7, 1, 9])) = int(5.5)
    (["[MED", 3, ["[SM", 9, 9], 1], 3), (["[SM", ["[MAX", 1, 2], ["[MIN", 8, 9]], 0),
])
def test_reference_evaluator(expr, value):
    assert listops.evaluate(listops.encode(listops.tokenize(lra_to_string(lra_tree(expr))))) == value


def release(tmp_path, rows=None):
    rows = rows or {
        "train": [(lra_to_string(lra_tree(["[MAX", 2, 9, ["[MIN", 4, 7], 0])), 9),
                  (lra_to_string(lra_tree(["[SM", 5, 6])), 1),
                  (lra_to_string(lra_tree(["[MED", 3, 8, 1])), 3)],
        "val": [(lra_to_string(lra_tree(["[MIN", 4, 2])), 2)],
        "test": [(lra_to_string(lra_tree(["[MAX", ["[SM", 9, 9], 1])), 8),
                 (lra_to_string(lra_tree(["[MIN", 0, 5])), 0)],
    }
    return write_listops(tmp_path / "lra_release" / "listops-1000", rows)


def test_release_tokens_lengths_labels_and_splits(tmp_path):
    source = release(tmp_path)
    assert (source / "basic_train.tsv").read_bytes().startswith(b"Source\tTarget\r\n")
    cfg = data_cfg("listops", tmp_path / "data", tmp_path, max_length=12)  # found below lra_release/listops-1000
    splits = load_splits(cfg, {"train": 3, "dev": 1, "test": 2})
    train = splits["train"]
    assert train.tokens.shape == (3, 12)
    assert train.tokens[0].tolist() == [MAX, 3, 10, MIN, 5, 8, X, 1, X, 0, 0, 0]
    assert train.tokens[1].tolist() == [SM, 6, 7, X] + [0] * 8
    assert train.lengths.tolist() == [9, 4, 5]
    assert train.labels.tolist() == [9, 1, 3] and train.labels.dtype == np.int64
    assert splits["dev"].tokens[0, :4].tolist() == [MIN, 5, 3, X] and splits["dev"].labels.tolist() == [2]
    assert splits["test"].labels.tolist() == [8, 0]
    assert splits["test"].tokens2 is None
    first = load_splits(cfg, {"train": 1, "dev": 1, "test": 1})
    assert len(first["train"]) == 1 and first["train"].labels.tolist() == [9]


def test_release_more_samples_than_exist(tmp_path):
    cfg = data_cfg("listops", tmp_path / "data", release(tmp_path))
    with pytest.raises(ConfigError, match=r"dataset\.train=4.*only 3 samples"):
        load_splits(cfg, {"train": 4, "dev": 1, "test": 1})


def test_release_long_rows_need_truncate(tmp_path):
    cfg = data_cfg("listops", tmp_path / "data", release(tmp_path), max_length=6)
    with pytest.raises(ConfigError, match=r"data\.truncate=False.*1 of the first 3 train samples.*longest has 9"):
        load_splits(cfg, {"train": 3, "dev": 1, "test": 1})
    cut = load_splits({**cfg, "truncate": True}, {"train": 3, "dev": 1, "test": 1})["train"]
    assert cut.tokens[0].tolist() == [MAX, 3, 10, MIN, 5, 8] and cut.lengths.tolist() == [6, 4, 5]


@pytest.mark.parametrize("mutate, line, message", [
    (lambda t: t.replace("Source\tTarget", "Src\tTarget"), 1, "header"),
    (lambda t: t.replace("\t9\r\n", "\r\n", 1), 2, "1 tab-separated fields"),
    (lambda t: t.replace("\t9\r\n", "\tnine\r\n", 1), 2, "not an integer"),
    (lambda t: t.replace("\t9\r\n", "\t12\r\n", 1), 2, "outside 0..9"),
    (lambda t: t.replace("[SM", "[FIRST", 1), 3, "unknown token '\\[FIRST'"),
    (lambda t: t[: t.index("\t3\r\n")], 4, "truncated"),
])
def test_release_corrupt_file_names_file_and_line(tmp_path, mutate, line, message):
    source = release(tmp_path)
    path = source / "basic_train.tsv"
    path.write_bytes(mutate(path.read_bytes().decode()).encode())
    with pytest.raises(ConfigError, match=rf"basic_train\.tsv.*line {line}: .*{message}") as info:
        load_splits(data_cfg("listops", tmp_path / "data", source), {"train": 1, "dev": 1, "test": 1})
    assert info.value.key == "data.source" and info.value.line == line


def test_release_missing_files_name_layout_and_command(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.source=None.*no prepared listops data.*basic_train\.tsv.*"
                                          r"python -m lra\.data prepare listops-release --source PATH --root \S+`"):
        load_splits(data_cfg("listops", tmp_path / "data"), {"train": 1, "dev": 1, "test": 1})
    sizes = {"train": 1, "dev": 1, "test": 1}
    with pytest.raises(ConfigError, match=r"nothing-here'?: does not exist.*expected layout: PATH/basic_train\.tsv"
                                          r".*python -m lra\.data prepare listops-release --source PATH"):
        load_splits(data_cfg("listops", tmp_path / "data", tmp_path / "nothing-here"), sizes)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"basic_train\.tsv not found \(looked in .*empty, .*empty/listops-1000"
                                          r".*expected layout.*python -m lra\.data prepare"):
        load_splits(data_cfg("listops", tmp_path / "data", tmp_path / "empty"), sizes)


def test_release_the_suggested_command_prepares_what_training_reads(tmp_path, capsys):
    import shlex

    from lra.data.__main__ import main

    cfg = data_cfg("listops", tmp_path / "data")
    with pytest.raises(ConfigError) as info:
        load_splits(cfg, {"train": 1, "dev": 1, "test": 1})
    command = shlex.split(str(info.value).split("`")[1].replace("PATH", str(release(tmp_path))))
    assert command[:5] == ["python", "-m", "lra.data", "prepare", "listops-release"]
    assert main(command[3:]) == 0
    assert "listops-release: " in capsys.readouterr().out
    assert load_splits(cfg, {"train": 3, "dev": 1, "test": 2})["train"].labels.tolist() == [9, 1, 3]  # no source


# ------------------------------------------------------------------------------------------------- generator

def lra_generate_tree(depth, max_depth, max_args, rng):
    """LRA's generate_tree (lra_benchmarks/data/listops.py), returning only the length."""
    r = rng.random() if depth < max_depth else 1
    if r > listops.VALUE_P:
        rng.choice(range(10))
        return 1
    length = 2
    for _ in range(rng.randint(2, max_args)):
        length += lra_generate_tree(depth + 1, max_depth, max_args, rng)
    rng.choice(listops.OPERATORS)
    return length


def test_generator_matches_lra_length_distribution():
    """Same acceptance rate and accepted-length distribution as LRA's recursive generator (no dedup here)."""
    max_depth, max_args, lo, hi = 5, 6, 20, 200
    rng = random.Random(0)
    ref = np.array([lra_generate_tree(1, max_depth, max_args, rng) for _ in range(30000)])
    ours = np.concatenate([listops._generate_chunk((1, c, 1000, max_depth, max_args, lo, hi))[1] for c in range(30)])
    ref_acc = ref[(ref > lo) & (ref < hi)]
    assert abs(len(ours) / 30000 - len(ref_acc) / 30000) < 0.012
    assert abs(np.mean(ours) - np.mean(ref_acc)) < 4
    assert abs(np.median(ours) - np.median(ref_acc)) < 6


def test_generator_samples_are_valid_distinct_and_deterministic(monkeypatch):
    monkeypatch.setattr(listops, "PARALLEL_MIN", 0)  # let the 2-worker call below use a process pool
    kw = dict(max_depth=4, max_args=5, min_length=10, max_length=40)
    tokens, lengths, labels = listops.generate(600, seed=3, workers=1, chunk_trees=256, **kw)
    assert tokens.shape == (600, 40) and tokens.dtype == np.uint8
    assert np.all((lengths > 10) & (lengths < 40))
    for row, n, label in zip(tokens, lengths, labels):
        assert np.all(row[:n] > 0) and np.all(row[n:] == 0)
        assert listops.evaluate(row) == label  # the label is the value of the expression
    assert len({row.tobytes() for row in tokens}) == 600  # deduplicated
    again = listops.generate(600, seed=3, workers=2, chunk_trees=256, **kw)
    assert all(np.array_equal(a, b) for a, b in zip((tokens, lengths, labels), again))  # any worker count
    other = listops.generate(600, seed=4, workers=1, chunk_trees=256, **kw)
    assert not np.array_equal(tokens, other[0])


def test_generated_task_through_load_splits(tmp_path):
    cfg = {**task_preset("listops-small")["data"], "root": str(tmp_path)}
    sizes = {"train": 300, "dev": 20, "test": 20}  # listops-small: 10 < length < 128
    splits = load_splits(cfg, sizes, seed=1)
    assert {k: len(v) for k, v in splits.items()} == sizes
    assert splits["train"].tokens.shape == (300, 128)
    rows = {r.tobytes() for s in splits.values() for r in np.asarray(s.tokens)}
    assert len(rows) == 340  # no sample in two splits
    assert all(listops.evaluate(r) == y for r, y in zip(splits["test"].tokens, splits["test"].labels))
    assert np.all(splits["dev"].lengths > 10)
    folder = next((tmp_path / "listops-generated").iterdir())
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    again = load_splits(cfg, sizes, seed=1)  # cached
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp
    assert np.array_equal(again["train"].tokens, splits["train"].tokens)
    assert not np.array_equal(load_splits(cfg, sizes, seed=2)["train"].tokens, splits["train"].tokens)


def test_generator_impossible_lengths_are_config_errors():
    from lra.data import check_data_config

    with pytest.raises(ConfigError, match=r"data\.min_length=200.*longest 122"):
        check_data_config({"loader": "listops-generated", "max_depth": 3, "max_args": 10, "min_length": 200,
                           "max_length": 400})
    with pytest.raises(ConfigError, match=r"data\.min_length=127.*strictly between"):
        check_data_config({"loader": "listops-generated", "max_depth": 3, "min_length": 127, "max_length": 128})
