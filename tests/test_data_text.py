"""Byte-level IMDB (aclImdb layout) and AAN retrieval (new_aan_pairs tsv) on hand-written and real files."""

import numpy as np
import pytest
from data_fixtures import data_cfg, real_samples, write_aan, write_imdb

from lra.data import load_splits
from lra.errors import ConfigError


def toks(data: bytes) -> list[int]:
    return [b + 1 for b in data]


REVIEWS = {
    "train/pos": {"0_9.txt": b"Good!", "1_10.txt": "Caf\u00e9 <br />ok".encode()},
    "train/neg": {"0_3.txt": b"Bad.", "2_1.txt": b"Awful film"},
    "test/pos": {"0_10.txt": b"Fine"},
    "test/neg": {"0_2.txt": b"No"},
}


def by_text(split):
    """{bytes of the review: label} rebuilt from the tokens."""
    out = {}
    for row, n, label in zip(split.tokens, split.lengths, split.labels):
        assert np.all(row[n:] == 0) and np.all(row[:n] > 0)
        out[bytes(int(t) - 1 for t in row[:n])] = int(label)
    return out


def test_imdb_tokens_labels_and_lra_dev_split(tmp_path):
    source = write_imdb(tmp_path, REVIEWS)
    splits = load_splits(data_cfg("text", tmp_path / "data", tmp_path, max_length=16),  # finds aclImdb/ below
                         {"train": 4, "dev": 2, "test": 2})
    assert splits["train"].tokens.shape == (4, 16)
    assert by_text(splits["train"]) == {b"Good!": 1, "Caf\u00e9 <br />ok".encode(): 1, b"Bad.": 0,
                                        b"Awful film": 0}
    assert toks(b"Good!") == [72, 112, 112, 101, 34]
    row = [r for r, n in zip(splits["train"].tokens, splits["train"].lengths) if n == 14][0]
    assert row[:5].tolist() == [68, 98, 103, 0xC3 + 1, 0xA9 + 1]  # "Café": the two UTF-8 bytes of é, shifted
    assert by_text(splits["test"]) == {b"Fine": 1, b"No": 0}
    assert by_text(splits["dev"]) == by_text(splits["test"])  # LRA validates on the test set
    assert sorted(splits["train"].lengths.tolist()) == [4, 5, 10, 14]
    assert (tmp_path / "data" / "text").is_dir() and source.name == "aclImdb"


def test_imdb_seeded_order_and_dev_from_train(tmp_path):
    write_imdb(tmp_path, REVIEWS)
    cfg = data_cfg("text", tmp_path / "data", tmp_path / "aclImdb", max_length=16, dev_split="train",
                   dev_fraction=0.25)
    splits = load_splits(cfg, {"train": 3, "dev": 1, "test": 2})
    train, dev = by_text(splits["train"]), by_text(splits["dev"])
    assert len(train) == 3 and len(dev) == 1 and not set(train) & set(dev)
    assert set(train) | set(dev) == {b"Good!", "Caf\u00e9 <br />ok".encode(), b"Bad.", b"Awful film"}
    with pytest.raises(ConfigError, match=r"dataset\.train=4.*only 3 samples"):
        load_splits(cfg, {"train": 4, "dev": 1, "test": 2})
    again = load_splits({**cfg, "root": str(tmp_path / "other")}, {"train": 3, "dev": 1, "test": 2})
    assert np.array_equal(again["train"].tokens, splits["train"].tokens)  # the order is seeded
    reseeded = load_splits({**cfg, "split_seed": 5, "root": str(tmp_path / "other")}, {"train": 3, "dev": 1,
                                                                                       "test": 2})
    assert reseeded["train"].tokens.shape == (3, 16)


def test_imdb_truncation_only_when_asked(tmp_path):
    write_imdb(tmp_path, REVIEWS)
    cfg = data_cfg("text", tmp_path / "data", tmp_path, max_length=4)
    with pytest.raises(ConfigError, match=r"data\.truncate=False: 3 of the first 4 train samples are longer than "
                                          r"the task's length 4 \(the longest has 14 tokens\)"):
        load_splits(cfg, {"train": 4, "dev": 2, "test": 2})
    train = load_splits({**cfg, "truncate": True}, {"train": 4, "dev": 2, "test": 2})["train"]
    assert sorted(bytes(int(t) - 1 for t in r).decode("latin-1") for r in train.tokens) == \
        ["Awfu", "Bad.", "Caf\u00c3", "Good"]
    assert train.lengths.tolist() == [4, 4, 4, 4]


def test_imdb_real_reviews(tmp_path):
    """The 40 real aclImdb reviews of the shared samples: every byte, every label."""
    source = real_samples("text", "aclImdb")
    splits = load_splits(data_cfg("text", tmp_path, source), {"train": 20, "dev": 20, "test": 20})
    for part, split in (("train", splits["train"]), ("test", splits["test"])):
        expected = {}
        for label, name in ((1, "pos"), (0, "neg")):
            for path in sorted((source / part / name).glob("*.txt")):
                expected[path.read_bytes()] = label
        assert len(expected) == 20
        assert by_text(split) == expected
        assert split.lengths.max() <= 4000 and split.tokens.dtype == np.uint8  # no byte 255 in these reviews
    review = (source / "train" / "pos" / "1_7.txt").read_bytes()
    row = int(np.flatnonzero(splits["train"].lengths == len(review))[0])
    assert splits["train"].tokens[row, : len(review)].tolist() == toks(review)
    assert splits["train"].labels[row] == 1


def test_imdb_empty_review_and_missing_folder(tmp_path):
    write_imdb(tmp_path, {**REVIEWS, "test/neg": {"0_2.txt": b""}})
    with pytest.raises(ConfigError, match=r"test/neg/0_2\.txt'?: line 1: empty review"):
        load_splits(data_cfg("text", tmp_path / "data", tmp_path), {"train": 1, "dev": 1, "test": 1})
    (tmp_path / "bare").mkdir()
    with pytest.raises(ConfigError, match=r"train/pos not found.*aclImdb.*expected layout: PATH/train/\{pos,neg\}"
                                          r".*python -m lra.data prepare text"):
        load_splits(data_cfg("text", tmp_path / "data", tmp_path / "bare"), {"train": 1, "dev": 1, "test": 1})


# ----------------------------------------------------------------------------------------------- retrieval

AAN = {
    "train": [("1", "doc-a", "doc-b", b"Alpha beta", b"Gamma"), ("0.0", "doc-c", "doc-d", b"x", b"y z"),
              ("1.0", "doc-e", "doc-f", "na\u00efve".encode(), b"12345678")],
    "eval": [("0", "p", "q", b"dev one", b"dev two")],
    "test": [("1", "r", "s", b"t1", b"t2"), ("0", "u", "v", b"t3", b"t4")],
}


def test_retrieval_two_documents_per_sample(tmp_path):
    source = write_aan(tmp_path / "lra_release" / "tsv_data", AAN)
    splits = load_splits(data_cfg("retrieval", tmp_path / "data", tmp_path, max_length=10),
                         {"train": 3, "dev": 1, "test": 2})
    train = splits["train"]
    assert train.tokens.shape == train.tokens2.shape == (3, 10)
    assert train.tokens[0].tolist() == [66, 109, 113, 105, 98, 33, 99, 102, 117, 98]  # "Alpha beta" + 1
    assert train.tokens[0].tolist() == toks(b"Alpha beta") and train.lengths[0] == 10
    assert train.labels.tolist() == [1, 0, 1]
    assert train.tokens[1].tolist() == toks(b"x") + [0] * 9 and train.lengths[1] == 1
    assert train.tokens2[1].tolist() == toks(b"y z") + [0] * 7 and train.lengths2[1] == 3
    assert train.tokens[2, :6].tolist() == toks("na\u00efve".encode()) and train.lengths[2] == 6
    assert train.tokens2[2].tolist() == toks(b"12345678") + [0, 0] and train.lengths2[2] == 8
    assert splits["dev"].tokens[0, :7].tolist() == toks(b"dev one") and splits["dev"].labels.tolist() == [0]
    assert splits["test"].tokens2[1, :2].tolist() == toks(b"t4")
    assert source.name == "tsv_data"


def test_retrieval_truncates_documents_only_when_asked(tmp_path):
    write_aan(tmp_path, AAN)
    cfg = data_cfg("retrieval", tmp_path / "data", tmp_path, max_length=8)
    with pytest.raises(ConfigError, match=r"data\.truncate=False: 1 of the first 3 train samples.*longest has 10"):
        load_splits(cfg, {"train": 3, "dev": 1, "test": 1})
    train = load_splits({**cfg, "truncate": True}, {"train": 3, "dev": 1, "test": 1})["train"]
    assert train.tokens[0].tolist() == toks(b"Alpha be") and train.lengths[0] == 8
    assert train.tokens2[0, :5].tolist() == toks(b"Gamma") and train.lengths2[0] == 5


@pytest.mark.parametrize("line, message", [
    (b"1\tid1\tid2\tonly four\n", r"line 2: has 4 tab-separated fields, expected 5"),
    (b"1\tid1\tid2\ttext\tmore\textra\n", r"line 2: has 6 tab-separated fields"),
    (b"yes\tid1\tid2\ta\tb\n", r"line 2: label b?'yes' is not a number"),
    (b"2\tid1\tid2\ta\tb\n", r"line 2: label 2.0 is not 0 or 1"),
    (b"1\tid1\tid2\tcut off he", r"line 2: has 4 tab-separated fields.*truncated"),
    (b"\n", r"line 2: empty line"),
])
def test_retrieval_malformed_line_names_file_and_line(tmp_path, line, message):
    write_aan(tmp_path, AAN)
    path = tmp_path / "new_aan_pairs.eval.tsv"
    path.write_bytes(path.read_bytes() + line)
    with pytest.raises(ConfigError, match=rf"new_aan_pairs\.eval\.tsv'?: {message}"):
        load_splits(data_cfg("retrieval", tmp_path / "data", tmp_path), {"train": 1, "dev": 1, "test": 1})


def test_retrieval_missing_file(tmp_path):
    write_aan(tmp_path, {"train": AAN["train"], "eval": AAN["eval"]})
    with pytest.raises(ConfigError, match=r"new_aan_pairs\.train\.tsv not found.*new_aan_pairs\.test\.tsv.*"
                                          r"python -m lra\.data prepare retrieval"):
        load_splits(data_cfg("retrieval", tmp_path / "data", tmp_path), {"train": 1, "dev": 1, "test": 1})
