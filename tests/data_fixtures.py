"""Writers of small files in the exact formats of the LRA release (and of aclImdb and CIFAR-10), for data tests.

Each writer mimics the code that made the real files: ListOps rows as `lra_benchmarks/data/listops.py` writes them
(csv module, tab delimiter, `\\r\\n` line ends, `to_string` with parentheses), CIFAR-10 records of 1 label byte and
3 x 1024 plane bytes, Pathfinder metadata lines as `snakes2.accumulate_meta` (space-separated) with PNGs.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

# Real slices of the release (see its SOURCES.md): beside the repository in shared/, or where the variable says.
REAL_SAMPLES = Path(os.environ.get("LRA_RELEASE_SAMPLES",
                                   Path(__file__).resolve().parents[2] / "shared" / "data" / "lra-release-samples"))


def real_samples(*parts: str) -> Path:
    """A path inside the real release samples; the test is skipped (with the reason) where they are absent."""
    import pytest

    path = REAL_SAMPLES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real release samples not found at {path} (set LRA_RELEASE_SAMPLES)")
    return path


# ---------------------------------------------------------------------------------------------------- ListOps

def lra_tree(expr):
    """A nested list like ['[MAX', 2, 9, ['[MIN', 4, 7], 0] as the tuple tree LRA's generate_tree builds."""
    if isinstance(expr, int):
        return expr
    op, *args = expr
    t = (op, lra_tree(args[0]))
    for arg in args[1:]:
        t = (t, lra_tree(arg))
    return (t, "]")


def lra_to_string(t) -> str:
    """LRA's to_string (lra_benchmarks/data/listops.py)."""
    if isinstance(t, str):
        return t
    if isinstance(t, int):
        return str(t)
    return "( " + lra_to_string(t[0]) + " " + lra_to_string(t[1]) + " )"


def write_listops(folder: Path, splits: dict[str, list[tuple[str, int]]]) -> Path:
    """basic_{train,val,test}.tsv with the header Source/Target, written with the csv module as LRA does."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with open(folder / f"basic_{split}.tsv", "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(["Source", "Target"])
            writer.writerows(rows)
    return folder


# ---------------------------------------------------------------------------------------------------- IMDB

def write_imdb(folder: Path, reviews: dict[str, dict[str, bytes]]) -> Path:
    """aclImdb/{train,test}/{pos,neg}/<name> from {'train/pos': {'0_9.txt': b'...'}, ...}."""
    root = folder / "aclImdb"
    for part in ("train/pos", "train/neg", "test/pos", "test/neg"):
        (root / part).mkdir(parents=True, exist_ok=True)
        for name, data in reviews.get(part, {}).items():
            (root / part / name).write_bytes(data)
    return root


# ---------------------------------------------------------------------------------------------------- AAN

def write_aan(folder: Path, splits: dict[str, list[tuple]]) -> Path:
    """new_aan_pairs.{train,eval,test}.tsv: label, id1, id2, text1, text2 per line, no header, no quoting."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        lines = [b"\t".join(f if isinstance(f, bytes) else str(f).encode() for f in row) for row in rows]
        (folder / f"new_aan_pairs.{split}.tsv").write_bytes(b"".join(line + b"\n" for line in lines))
    return folder


# ---------------------------------------------------------------------------------------------------- CIFAR-10

def cifar_record(label: int, rgb: np.ndarray) -> bytes:
    """One binary record: the label byte, then the red, green and blue planes (32x32 each, row-major)."""
    rgb = np.asarray(rgb, dtype=np.uint8).reshape(32, 32, 3)
    return bytes([label]) + rgb.transpose(2, 0, 1).tobytes()


def write_cifar(folder: Path, train: list[list[bytes]], test: list[bytes]) -> Path:
    """cifar-10-batches-bin/data_batch_{1..5}.bin (records per file) and test_batch.bin."""
    root = folder / "cifar-10-batches-bin"
    root.mkdir(parents=True, exist_ok=True)
    for i, records in enumerate(train, start=1):
        (root / f"data_batch_{i}.bin").write_bytes(b"".join(records))
    (root / "test_batch.bin").write_bytes(b"".join(test))
    return root


# ---------------------------------------------------------------------------------------------------- Pathfinder

def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def metadata_line(batch: int, index: int, label: int, contour_length: int = 14) -> str:
    """A line as snakes2.accumulate_meta writes it for LRA's pathfinder32 settings."""
    return (f"imgs/{batch} sample_{index}.png {index} {label} 1.0 {contour_length} {contour_length // 3} 2 0.5 1 1")


def write_pathfinder(folder: Path, difficulty_dir: str, batches: dict[int, list[tuple[int, bytes]]],
                     metadata_text: dict[int, str] | None = None, release_dir: str = "pathfinder32") -> Path:
    """pathfinder32/<difficulty_dir>/metadata/<k>.npy and imgs/<k>/sample_<i>.png from {k: [(label, png), ...]};
    `metadata_text` replaces the generated metadata of batch k by the given text."""
    root = folder / release_dir  # pathfinder32, pathfinder64 or pathfinder128 (Path-X)
    base = root / difficulty_dir
    (base / "metadata").mkdir(parents=True, exist_ok=True)
    for batch, images in batches.items():
        (base / "imgs" / str(batch)).mkdir(parents=True, exist_ok=True)
        lines = []
        for index, (label, data) in enumerate(images):
            (base / "imgs" / str(batch) / f"sample_{index}.png").write_bytes(data)
            lines.append(metadata_line(batch, index, label) + "\n")
        text = (metadata_text or {}).get(batch, "".join(lines))
        (base / "metadata" / f"{batch}.npy").write_text(text)
    return root


def data_cfg(loader: str, root: Path, source: Path | None = None, **params) -> dict:
    return {"loader": loader, "root": str(root), "source": None if source is None else str(source),
            "truncate": params.pop("truncate", False), **params}
