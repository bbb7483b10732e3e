"""Pathfinder from the LRA release: `pathfinder32/{curv_baseline,curv_contour_length_9,curv_contour_length_14}`.

Each difficulty folder holds `metadata/<k>.npy` (despite the name: text, one line per image,
`imgs/<k> sample_<i>.png <i> <label> ...`) and `imgs/<k>/sample_<i>.png`. As LRA
(`lra_benchmarks/data/pathfinder.py`): the image path is fields 0 and 1, the label field 3, and empty image files
are skipped (`tf.strings.length(image) > 0`), here counted in the manifest. LRA's tfds splits are easy /
intermediate / hard; its results use hard (`curv_contour_length_14`). The images, in metadata order (files sorted
by number), are put in a seeded order (`split_seed`) and split 80/10/10. Pixel v becomes token v + 1
(0 is the pad id; vocabulary 257).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lra.data.base import DataFileError, ReleaseLoader, find_layout
from lra.data.image import split_80_10_10
from lra.data.params import require
from lra.data.store import Builder, TreeHasher, label_histogram

DIFFICULTIES = {"easy": "curv_baseline", "intermediate": "curv_contour_length_9", "hard": "curv_contour_length_14"}
RESOLUTIONS = (32, 64, 128, 256)


@dataclass(frozen=True)
class PathfinderParams:
    resolution: int = 32  # LRA's pathfinder32 (1024 tokens); also 64/128/256 folders in the release
    difficulty: str = "hard"  # easy | intermediate | hard (LRA's tfds split names; LRA reports hard)
    split_seed: int = 0  # seeds the order before the 80/10/10 split


def _metadata_key(path: Path) -> tuple:
    return (0, int(path.stem), "") if re.fullmatch(r"\d+", path.stem) else (1, 0, path.stem)


def read_metadata(path: Path) -> list[tuple[int, str, str, int]]:
    """(line number, image folder, image file, label) of each line of one metadata file."""
    try:
        text = path.read_bytes().decode("ascii")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise DataFileError(path, line, "not a text metadata line (binary data in a metadata file?)") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # LRA: split('\n')[:-1]
    out = []
    for number, line in enumerate(lines, start=1):
        fields = line.rstrip("\r").split(" ")
        if len(fields) < 4:
            raise DataFileError(path, number, f"has {len(fields)} space-separated fields, expected at least 4 "
                                "('imgs/<k> sample_<i>.png <i> <label> ...')"
                                + (" (the file may be truncated)" if number == len(lines) else ""))
        if fields[3] not in ("0", "1"):
            raise DataFileError(path, number, f"label (field 3) is {fields[3]!r}, expected 0 or 1")
        if not fields[1].endswith(".png"):
            raise DataFileError(path, number, f"image name (field 1) {fields[1]!r} is not a .png")
        out.append((number, fields[0], fields[1], int(fields[3])))
    return out


def decode_png(data: bytes) -> np.ndarray:
    """A PNG's pixels as a (height, width) uint8 gray image."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode != "L":
            img = img.convert("L")
        return np.asarray(img, dtype=np.uint8)


class Pathfinder(ReleaseLoader):
    name = "pathfinder"
    Params = PathfinderParams
    num_classes = 2
    vocab_size = 257
    description = "Pathfinder from the LRA release, pixels as tokens (pixel + 1)"
    layout = ("PATH/<difficulty folder>/metadata/<k>.npy and PATH/<difficulty folder>/imgs/<k>/sample_<i>.png, "
              "PATH being lra_release/pathfinder32 and the folders curv_baseline (easy), curv_contour_length_9 "
              "(intermediate), curv_contour_length_14 (hard)")

    def seq_len(self, p: PathfinderParams) -> int:
        return p.resolution * p.resolution

    def check(self, p: PathfinderParams) -> None:
        require(p.resolution in RESOLUTIONS, "data.resolution", p.resolution,
                f"must be one of {', '.join(map(str, RESOLUTIONS))}", "LRA's pathfinder32 uses 32")
        require(p.difficulty in DIFFICULTIES, "data.difficulty", p.difficulty,
                f"must be one of {', '.join(DIFFICULTIES)} ({', '.join(DIFFICULTIES.values())})",
                "LRA reports hard (curv_contour_length_14)")

    def locate(self, source: Path, p: PathfinderParams) -> Path:
        sub = f"pathfinder{p.resolution}"
        return find_layout(source, [f"{DIFFICULTIES[p.difficulty]}/metadata"],
                           ["", sub, f"lra_release/{sub}", f"lra_release/lra_release/{sub}"], self.layout)

    def metadata_files(self, folder: Path, p: PathfinderParams) -> list[Path]:
        return sorted((folder / DIFFICULTIES[p.difficulty] / "metadata").glob("*.npy"), key=_metadata_key)

    def source_files(self, folder: Path, p: PathfinderParams) -> list[Path]:
        return self.metadata_files(folder, p)  # stat-ing every image on each load would be slow: metadata only

    def prepare(self, p: PathfinderParams, folder: Path, builder: Builder) -> dict:
        base = folder / DIFFICULTIES[p.difficulty]
        files = self.metadata_files(folder, p)
        if not files:
            raise DataFileError(base / "metadata", 0, "no metadata/*.npy files", unit="folder")
        hasher = TreeHasher()
        entries = []  # (metadata file, line, image path, label)
        for meta in files:
            hasher.add(str(meta.relative_to(folder)), meta.read_bytes())
            for number, sub, name, label in read_metadata(meta):
                entries.append((meta, number, base / sub / name, label))
        kept, skipped = [], []
        for meta, number, image, label in entries:
            try:
                size = image.stat().st_size
            except FileNotFoundError:
                raise DataFileError(meta, number, f"names the image {image}, which does not exist") from None
            if size == 0:
                skipped.append(str(image.relative_to(folder)))
            else:
                kept.append((meta, number, image, label))
        if not kept:
            raise DataFileError(files[0], 1, "every image named in the metadata is empty")
        n = len(kept)
        order = np.random.default_rng(p.split_seed).permutation(n)
        slot = np.empty(n, dtype=np.int64)
        slot[order] = np.arange(n)  # sample i of `kept` goes to row slot[i]
        T = p.resolution * p.resolution
        tokens = builder.array("all.tokens", (n, T), np.int16)
        labels = np.empty(n, dtype=np.int64)
        for i, (meta, number, image, label) in enumerate(kept):
            data = image.read_bytes()
            hasher.add(str(image.relative_to(folder)), data)
            try:
                pixels = decode_png(data)
            except Exception as error:  # PIL raises several types for a corrupt PNG
                raise DataFileError(meta, number, f"image {image} cannot be read as a PNG: {error}") from None
            if pixels.shape != (p.resolution, p.resolution):
                raise DataFileError(meta, number, f"image {image} is {pixels.shape[1]}x{pixels.shape[0]}, expected "
                                    f"{p.resolution}x{p.resolution} (data.resolution)")
            tokens[slot[i]] = pixels.reshape(-1).astype(np.int16) + 1
            labels[slot[i]] = label
        builder.save("all.labels", labels)
        parts = split_80_10_10(n)
        info = {split: {"count": part.stop - part.start, "label_histogram": label_histogram(labels[part])}
                for split, part in zip(("train", "dev", "test"), parts)}
        return {"splits": info, "folder": DIFFICULTIES[p.difficulty], "metadata_lines": len(entries),
                "skipped_empty_images": len(skipped), "skipped_examples": skipped[:20],
                "source_sha256": hasher.hexdigest()}

    def splits(self, p, arrays, manifest) -> dict:
        tokens, labels = arrays["all.tokens"], arrays["all.labels"]
        lengths = np.full(len(labels), tokens.shape[1], dtype=np.int32)
        return {split: {"tokens": tokens[part], "lengths": lengths[part], "labels": labels[part]}
                for split, part in zip(("train", "dev", "test"), split_80_10_10(len(labels)))}
