"""Byte-level AAN document matching (LRA "Retrieval"): `new_aan_pairs.{train,eval,test}.tsv`.

Each line: label, id1, id2, text1, text2 separated by tabs, no header, no quoting (LRA reads them with
`use_quote_delim=False`). Each document becomes bytes + 1 (0 is padding; vocabulary 257), cut to `max_length`
(4000 in LRA) when `data.truncate` is true. A batch carries both documents: `tokens`/`lengths` and
`tokens2`/`lengths2`, for a dual encoder. The files are read twice (count and check, then write) so that even the
full 147k-pair train file is streamed into its memory map.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lra.data.base import DataFileError, ReleaseLoader, find_layout
from lra.data.params import require
from lra.data.store import Builder, label_histogram, token_dtype
from lra.data.text import BYTE_VOCAB, byte_tokens

FILES = {"train": "new_aan_pairs.train.tsv", "dev": "new_aan_pairs.eval.tsv", "test": "new_aan_pairs.test.tsv"}


@dataclass(frozen=True)
class RetrievalParams:
    max_length: int = 4000  # per document (LRA: max_length 4000 for each of the two)


def _records(path: Path):
    """(line number, label, text1, text2) per line; a malformed line raises DataFileError."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            complete = line.endswith(b"\n")
            line = line.rstrip(b"\r\n")
            if not line:
                raise DataFileError(path, number, "empty line")
            fields = line.split(b"\t")
            if len(fields) != 5:
                raise DataFileError(path, number, f"has {len(fields)} tab-separated fields, expected 5 "
                                    "(label, id1, id2, text1, text2)" + ("" if complete else
                                                                        " (the file ends mid-line: truncated?)"))
            try:
                value = float(fields[0])
            except ValueError:
                raise DataFileError(path, number, f"label {fields[0][:20]!r} is not a number") from None
            if value not in (0.0, 1.0):
                raise DataFileError(path, number, f"label {value} is not 0 or 1")
            yield number, int(value), fields[3], fields[4]


class Retrieval(ReleaseLoader):
    name = "retrieval"
    Params = RetrievalParams
    num_classes = 2
    vocab_size = BYTE_VOCAB
    description = "AAN citation matching, byte-level, two documents per sample"
    layout = ("PATH/new_aan_pairs.train.tsv, PATH/new_aan_pairs.eval.tsv, PATH/new_aan_pairs.test.tsv "
              "(as in lra_release/tsv_data/; tab-separated label, id1, id2, text1, text2, no header)")

    def seq_len(self, p: RetrievalParams) -> int:
        return p.max_length

    def check(self, p: RetrievalParams) -> None:
        require(p.max_length >= 1, "data.max_length", p.max_length, "must be >= 1", "LRA uses 4000")

    def locate(self, source: Path, p) -> Path:
        return find_layout(source, list(FILES.values()), ["", "tsv_data", "lra_release/tsv_data"], self.layout)

    def source_files(self, folder: Path, p) -> list[Path]:
        return [folder / name for name in FILES.values()]

    def prepare(self, p: RetrievalParams, folder: Path, builder: Builder) -> dict:
        info, checksums = {}, {}
        T = p.max_length
        for split, name in FILES.items():
            path = folder / name
            labels, full1, full2 = [], [], []
            top = 1
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
            checksums[name] = digest.hexdigest()
            for _, label, a, b in _records(path):  # pass 1: check every line, count, pick the dtype
                labels.append(label)
                full1.append(len(a))
                full2.append(len(b))
                for doc in (a[:T], b[:T]):
                    if doc:
                        top = max(top, int(np.frombuffer(doc, np.uint8).max()) + 1)
            if not labels:
                raise DataFileError(path, 1, "no samples")
            n = len(labels)
            tokens1 = builder.array(f"{split}.tokens", (n, T), token_dtype(top))
            tokens2 = builder.array(f"{split}.tokens2", (n, T), token_dtype(top))
            for i, (_, _, a, b) in enumerate(_records(path)):  # pass 2: write
                row = byte_tokens(a[:T])
                tokens1[i, : len(row)] = row
                row = byte_tokens(b[:T])
                tokens2[i, : len(row)] = row
            full1 = np.asarray(full1, dtype=np.int32)
            full2 = np.asarray(full2, dtype=np.int32)
            builder.save(f"{split}.lengths", np.minimum(full1, T))
            builder.save(f"{split}.lengths2", np.minimum(full2, T))
            builder.save(f"{split}.full_lengths", full1)
            builder.save(f"{split}.full_lengths2", full2)
            labels = np.asarray(labels, dtype=np.int64)
            builder.save(f"{split}.labels", labels)
            info[split] = {"file": name, "count": n, "label_histogram": label_histogram(labels),
                           "truncated_documents": int((full1 > T).sum() + (full2 > T).sum()),
                           "empty_documents": int((full1 == 0).sum() + (full2 == 0).sum()),
                           "longest": int(max(full1.max(), full2.max()))}
        return {"splits": info, "source_sha256": checksums}
