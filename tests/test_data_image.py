"""CIFAR-10 from binary records (grayscale as LRA) and scikit-learn's digits as pixel-token tasks."""

import numpy as np
import pytest
from data_fixtures import cifar_record, data_cfg, write_cifar

from lra.data import load_splits
from lra.data.image import rgb_to_gray
from lra.errors import ConfigError

SWATCHES = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (128, 128, 128)]
# by hand: trunc((0.2989 r + 0.5870 g + 0.1140 b) / 255 * 255.5) + 1
SWATCH_TOKENS = [77, 150, 30, 256, 129]  # red 76.37, green 149.98, blue 29.13, white 255.47, gray 128.24


def image(label: int) -> np.ndarray:
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[0, : len(SWATCHES)] = SWATCHES
    rgb[31, 31] = (label * 20, 0, 0)  # marks the record: red only, gray = trunc(label * 20 * 0.2989 * 255.5/255)
    return rgb


def cifar(tmp_path):
    train = [[cifar_record(2 * b + i, image(2 * b + i)) for i in range(2)] for b in range(5)]
    test = [cifar_record(3, image(3)), cifar_record(7, image(7))]
    return write_cifar(tmp_path, train, test)


def test_cifar_binary_records_grayscale_tokens_and_lra_splits(tmp_path):
    cifar(tmp_path)
    splits = load_splits(data_cfg("image", tmp_path / "data", tmp_path), {"train": 9, "dev": 1, "test": 2})
    train = splits["train"]
    assert train.tokens.shape == (9, 1024) and train.tokens.dtype == np.int16
    assert train.tokens[0, :5].tolist() == SWATCH_TOKENS
    assert np.all(train.tokens[:, 5:1023] == 1)  # black pixels are token 1: 0 stays the pad id
    assert train.labels.tolist() == list(range(9))  # file order: data_batch_1 .. data_batch_5
    assert train.tokens[:, 1023].tolist() == [int(v * 20 * 0.2989 * 255.5 / 255) + 1 for v in range(9)]
    assert train.lengths.tolist() == [1024] * 9
    assert splits["dev"].labels.tolist() == [9]  # LRA: train[90%:] is the dev split
    assert splits["test"].labels.tolist() == [3, 7]
    with pytest.raises(ConfigError, match=r"dataset\.train=10.*only 9 samples"):
        load_splits(data_cfg("image", tmp_path / "data", tmp_path), {"train": 10, "dev": 1, "test": 2})


def test_grayscale_matches_the_float_formula():
    rgb = np.random.default_rng(0).integers(0, 256, (4096, 3), dtype=np.uint8)
    exact = rgb.astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140]) / 255 * 255.5
    ours = rgb_to_gray(rgb).astype(np.int64)
    assert np.all(np.abs(ours - np.floor(exact)) <= 1)
    assert np.mean(ours == np.floor(exact)) > 0.99  # float32 rounding flips only values at an integer


def test_cifar_truncated_file_and_bad_label(tmp_path):
    root = cifar(tmp_path)
    data = (root / "data_batch_3.bin").read_bytes()
    (root / "data_batch_3.bin").write_bytes(data[:-100])
    with pytest.raises(ConfigError, match=r"data_batch_3\.bin'?: record 2: file size 6046 is not a positive "
                                          r"multiple of the 3073-byte record"):
        load_splits(data_cfg("image", tmp_path / "data", tmp_path), {"train": 1, "dev": 1, "test": 1})
    (root / "data_batch_3.bin").write_bytes(data[:3073] + bytes([11]) + data[3074:])
    with pytest.raises(ConfigError, match=r"data_batch_3\.bin'?: record 2: label byte 11 is outside 0\.\.9"):
        load_splits(data_cfg("image", tmp_path / "data", tmp_path), {"train": 1, "dev": 1, "test": 1})


def test_cifar_missing_batch(tmp_path):
    root = cifar(tmp_path)
    (root / "test_batch.bin").unlink()
    with pytest.raises(ConfigError, match=r"data_batch_1\.bin not found.*cifar-10-batches-bin.*test_batch\.bin"):
        load_splits(data_cfg("image", tmp_path / "data", tmp_path), {"train": 1, "dev": 1, "test": 1})


def test_digits_task(tmp_path):
    from sklearn.datasets import load_digits

    cfg = data_cfg("image-digits", tmp_path)
    splits = load_splits(cfg, {"train": 1437, "dev": 179, "test": 181})
    assert [len(s) for s in splits.values()] == [1437, 179, 181]
    digits = load_digits()
    labels_of = {}
    for img, label in zip(digits.images.reshape(-1, 64).astype(np.uint8), digits.target):
        labels_of.setdefault(img.tobytes(), set()).add(int(label))
    seen = set()
    for split in splits.values():
        assert split.tokens.shape[1] == 64 and split.tokens.min() >= 1 and split.tokens.max() <= 17
        assert np.all(split.lengths == 64)
        for row, label in zip(np.asarray(split.tokens), split.labels):
            assert int(label) in labels_of[(row - 1).astype(np.uint8).tobytes()]
            seen.add(row.tobytes())
    assert len(seen) >= 1790  # all images (a few digits repeat exactly)
    with pytest.raises(ConfigError, match=r"dataset\.train=1500.*only 1437"):
        load_splits(cfg, {"train": 1500, "dev": 1, "test": 1})
    other = load_splits({**cfg, "split_seed": 1}, {"train": 10, "dev": 1, "test": 1})
    assert not np.array_equal(other["train"].tokens, splits["train"].tokens[:10])
