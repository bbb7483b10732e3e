"""Pixels as tokens: CIFAR-10 in grayscale (LRA "Image") and scikit-learn's 8x8 digits (`image-small`).

Every pixel value v becomes token v + 1, so that 0 stays the pad id of every task (no image is padded: lengths
are always T). This is LRA's input up to a renaming of the embedding rows; the vocabulary is 257 for 8-bit images
and 18 for the digits (values 0..16).

CIFAR-10 comes from its binary version (`cifar-10-batches-bin`: records of 1 label byte + 3072 pixel bytes, red
then green then blue planes, row-major), never the pickled one. Grayscale as LRA's `tf.image.rgb_to_grayscale`:
weights (0.2989, 0.5870, 0.1140) on [0, 1] floats in float32, then back to uint8 by multiplying by 255.5 and
truncating (TF's `convert_image_dtype`). Splits as LRA (tfds `train[:90%]`, `train[90%:]`, `test`): the first
45000 train records in file order, the last 5000, and the 10000 test records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lra.data.base import DataFileError, ReleaseLoader, find_layout
from lra.data.params import require
from lra.data.store import Builder, label_histogram, sha256_file

RECORD = 1 + 3 * 32 * 32  # 3073 bytes
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)  # tf.image.rgb_to_grayscale


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) uint8, as tf.image.rgb_to_grayscale on a uint8 image."""
    flt = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
    gray = flt @ GRAY_WEIGHTS
    return (gray * np.float32(255.5)).astype(np.uint8)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(gray pixels (n, 1024) uint8, labels (n,)) of one binary batch file; a bad record raises DataFileError."""
    data = path.read_bytes()
    if len(data) == 0 or len(data) % RECORD:
        n = len(data) // RECORD
        raise DataFileError(path, n + 1, f"file size {len(data)} is not a positive multiple of the {RECORD}-byte "
                            f"record: record {n + 1} is incomplete (truncated file?)", unit="record")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels > 9)
    if len(bad):
        raise DataFileError(path, int(bad[0]) + 1, f"label byte {labels[bad[0]]} is outside 0..9 "
                            "(not a CIFAR-10 binary batch?)", unit="record")
    rgb = records[:, 1:].reshape(-1, 3, 1024).transpose(0, 2, 1)  # (n, 1024, 3)
    return rgb_to_gray(rgb), labels


@dataclass(frozen=True)
class CifarParams:
    dev_fraction: float = 0.1  # LRA: tfds train[90%:] is the dev split (5000 of 50000)


class Cifar10(ReleaseLoader):
    name = "image"
    Params = CifarParams
    num_classes = 10
    vocab_size = 257
    description = "CIFAR-10, grayscale, 1024 pixels as tokens (pixel + 1)"
    layout = ("PATH/data_batch_1.bin .. PATH/data_batch_5.bin and PATH/test_batch.bin "
              "(the cifar-10-batches-bin folder of cifar-10-binary.tar.gz)")

    def seq_len(self, p) -> int:
        return 1024

    def check(self, p: CifarParams) -> None:
        require(0.0 < p.dev_fraction < 1.0, "data.dev_fraction", p.dev_fraction, "must be in (0, 1)",
                "LRA uses 0.1")

    def identity(self, p, sizes, seed) -> dict:
        return {"loader": self.name}  # the arrays do not depend on dev_fraction

    def locate(self, source: Path, p) -> Path:
        return find_layout(source, list(TRAIN_FILES) + [TEST_FILE], ["", "cifar-10-batches-bin"], self.layout)

    def source_files(self, folder: Path, p) -> list[Path]:
        return [folder / f for f in TRAIN_FILES + (TEST_FILE,)]

    def prepare(self, p, folder: Path, builder: Builder) -> dict:
        info, checksums = {}, {}
        for split, files in (("train", TRAIN_FILES), ("test", (TEST_FILE,))):
            pixels, labels = [], []
            for name in files:
                checksums[name] = sha256_file(folder / name)
                gray, lab = read_cifar_batch(folder / name)
                pixels.append(gray)
                labels.append(lab)
            pixels = np.concatenate(pixels)
            labels = np.concatenate(labels)
            builder.save(f"{split}.tokens", pixels.astype(np.int16) + 1)
            builder.save(f"{split}.labels", labels)
            info[split] = {"count": len(labels), "label_histogram": label_histogram(labels),
                           "files": list(files)}
        return {"splits": info, "source_sha256": checksums}

    def splits(self, p: CifarParams, arrays, manifest) -> dict:
        train_tokens, train_labels = arrays["train.tokens"], arrays["train.labels"]
        n = len(train_labels)
        n_train = n - max(1, int(round(p.dev_fraction * n)))
        full = np.full(n, 1024, dtype=np.int32)
        test_n = len(arrays["test.labels"])
        return {
            "train": {"tokens": train_tokens[:n_train], "lengths": full[:n_train], "labels": train_labels[:n_train]},
            "dev": {"tokens": train_tokens[n_train:], "lengths": full[n_train:], "labels": train_labels[n_train:]},
            "test": {"tokens": arrays["test.tokens"], "lengths": np.full(test_n, 1024, dtype=np.int32),
                     "labels": arrays["test.labels"]},
        }


def split_80_10_10(n: int) -> tuple[slice, slice, slice]:
    """train = the first 80% (rounded down), dev = the next 10% (rounded down), test = the rest."""
    n_train, n_dev = n * 8 // 10, n // 10
    return slice(0, n_train), slice(n_train, n_train + n_dev), slice(n_train + n_dev, n)


@dataclass(frozen=True)
class DigitsParams:
    split_seed: int = 0  # seeds the 80/10/10 split of the 1797 images


class Digits(ReleaseLoader):
    name = "image-digits"
    Params = DigitsParams
    num_classes = 10
    vocab_size = 18  # values 0..16, shifted by one
    description = "scikit-learn's 8x8 digits (1797 images, values 0..16), 64 pixels as tokens (value + 1)"
    builtin = True
    layout = "none: the images ship with scikit-learn"

    def seq_len(self, p) -> int:
        return 64

    def prepare(self, p: DigitsParams, folder, builder: Builder) -> dict:
        import sklearn
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = digits.images.reshape(len(digits.images), 64)
        assert images.min() >= 0 and images.max() <= 16 and np.all(images == np.round(images))
        order = np.random.default_rng(p.split_seed).permutation(len(images))
        tokens = images[order].astype(np.uint8) + 1
        labels = digits.target[order].astype(np.int64)
        builder.save("all.tokens", tokens)
        builder.save("all.labels", labels)
        parts = split_80_10_10(len(labels))
        info = {split: {"count": part.stop - part.start, "label_histogram": label_histogram(labels[part])}
                for split, part in zip(("train", "dev", "test"), parts)}
        import hashlib
        return {"splits": info, "source": f"sklearn {sklearn.__version__} load_digits",
                "source_sha256": hashlib.sha256(np.ascontiguousarray(digits.images).tobytes()).hexdigest()}

    def splits(self, p, arrays, manifest) -> dict:
        tokens, labels = arrays["all.tokens"], arrays["all.labels"]
        lengths = np.full(len(labels), 64, dtype=np.int32)
        return {split: {"tokens": tokens[part], "lengths": lengths[part], "labels": labels[part]}
                for split, part in zip(("train", "dev", "test"), split_80_10_10(len(labels)))}
