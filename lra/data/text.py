"""Byte-level IMDB (LRA "Text"): the `aclImdb` folder as Maas et al. (2011) ship it.

Token = byte + 1 (0 is padding), as LRA's `tfds.deprecated.text.ByteTextEncoder` does: vocabulary 257.
Labels: neg 0, pos 1 (as tfds `imdb_reviews`). Reviews are taken in a seeded order (`split_seed`), so the first N of
a split mix both labels. Validation: LRA validates on the test set (`lra_benchmarks/text_classification/
input_pipeline.py`: "use test set for validation because IMDb doesn't have val set"): `dev_split: test`; or
`dev_split: train` holds out the last `dev_fraction` of the (seeded) train order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lra.data.base import SPLITS, DataFileError, ReleaseLoader, find_layout
from lra.data.params import require
from lra.data.store import Builder, TreeHasher, label_histogram, token_dtype

BYTE_VOCAB = 257  # bytes 0..255 shifted by one past the pad id


@dataclass(frozen=True)
class TextParams:
    max_length: int = 4000  # LRA paper (byte-level text, 4K); LRA code's config says 1000
    dev_split: str = "test"  # "test": LRA's choice (dev = test set); "train": the tail of the train order
    dev_fraction: float = 0.1  # with dev_split=train: the share of train held out
    split_seed: int = 0  # seeds the order of the reviews in each split


def byte_tokens(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).astype(np.int16) + 1


def _review_key(path: Path) -> tuple:
    match = re.fullmatch(r"(\d+)_(\d+)\.txt", path.name)
    return (0, int(match.group(1)), path.name) if match else (1, 0, path.name)


class Text(ReleaseLoader):
    name = "text"
    Params = TextParams
    num_classes = 2
    vocab_size = BYTE_VOCAB
    description = "IMDB reviews, byte-level"
    layout = "PATH/train/{pos,neg}/*.txt and PATH/test/{pos,neg}/*.txt (the aclImdb folder of aclImdb_v1.tar.gz)"

    def seq_len(self, p: TextParams) -> int:
        return p.max_length

    def check(self, p: TextParams) -> None:
        require(p.max_length >= 1, "data.max_length", p.max_length, "must be >= 1", "LRA uses 4000 (paper)")
        require(p.dev_split in ("test", "train"), "data.dev_split", p.dev_split, "must be 'test' or 'train'",
                "use 'test' (LRA: validate on the test set) or 'train' (hold out data.dev_fraction of train)")
        require(0.0 < p.dev_fraction < 1.0, "data.dev_fraction", p.dev_fraction, "must be in (0, 1)",
                "e.g. 0.1")

    def identity(self, p: TextParams, sizes, seed) -> dict:
        return {"loader": self.name, "params": {"max_length": p.max_length, "split_seed": p.split_seed}}

    def locate(self, source: Path, p) -> Path:
        return find_layout(source, ["train/pos", "train/neg", "test/pos", "test/neg"], ["", "aclImdb"], self.layout)

    def _files(self, folder: Path, part: str) -> list[tuple[Path, int]]:
        files = []
        for label, name in ((0, "neg"), (1, "pos")):
            files += [(f, label) for f in sorted((folder / part / name).glob("*.txt"), key=_review_key)]
        return files

    def source_files(self, folder: Path, p) -> list[Path]:
        return [f for part in ("train", "test") for f, _ in self._files(folder, part)]

    def prepare(self, p: TextParams, folder: Path, builder: Builder) -> dict:
        hasher = TreeHasher()
        info = {}
        for split, part in (("train", "train"), ("test", "test")):
            files = self._files(folder, part)
            if not files:
                raise DataFileError(folder / part, 0, "no reviews in pos/ or neg/", unit="folder")
            order = np.random.default_rng(p.split_seed).permutation(len(files))
            docs, labels = [], []
            for path, label in files:
                data = path.read_bytes()
                hasher.add(str(path.relative_to(folder)), data)
                if not data:
                    raise DataFileError(path, 1, "empty review")
                docs.append(data)
                labels.append(label)
            docs = [docs[i] for i in order]
            labels = np.asarray(labels, dtype=np.int64)[order]
            full = np.array([len(d) for d in docs], dtype=np.int32)
            top = max(int(np.frombuffer(d[: p.max_length], np.uint8).max()) for d in docs) + 1
            tokens = builder.array(f"{split}.tokens", (len(docs), p.max_length), token_dtype(top))
            for i, doc in enumerate(docs):
                row = byte_tokens(doc[: p.max_length])
                tokens[i, : len(row)] = row
            builder.save(f"{split}.lengths", np.minimum(full, p.max_length))
            builder.save(f"{split}.full_lengths", full)
            builder.save(f"{split}.labels", labels)
            info[part] = {"count": len(docs), "label_histogram": label_histogram(labels),
                          "truncated": int((full > p.max_length).sum()), "longest": int(full.max()),
                          "mean_length": round(float(full.mean()), 1)}
        return {"splits": info, "source_sha256": hasher.hexdigest()}

    def splits(self, p: TextParams, arrays, manifest) -> dict:
        train = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("train.")}
        test = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("test.")}
        if p.dev_split == "test":
            return {"train": train, "dev": test, "test": test}
        n = len(train["labels"])
        n_dev = max(1, int(round(p.dev_fraction * n)))
        return {"train": {k: v[: n - n_dev] for k, v in train.items()},
                "dev": {k: v[n - n_dev:] for k, v in train.items()}, "test": test}


assert SPLITS == ("train", "dev", "test")
