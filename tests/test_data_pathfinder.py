"""Pathfinder from the release layout (metadata text lines + PNGs), including the real metadata lines."""

import json
import shutil

import numpy as np
import pytest
from data_fixtures import data_cfg, metadata_line, png_bytes, real_samples, write_pathfinder

from lra.data import load_splits
from lra.errors import ConfigError


def picture(code: int, size: int = 32) -> np.ndarray:
    """An image whose first pixel is `code` (to recognise it after shuffling), with a bright diagonal."""
    img = np.zeros((size, size), dtype=np.uint8)
    img[np.arange(size), np.arange(size)] = 255
    img[0, 0] = code
    return img


def batches(empty=(1, 2)):
    out = {}
    for b, count in ((0, 6), (1, 5)):
        out[b] = [((b + i) % 2, b"" if (b, i) == empty else png_bytes(picture(10 * b + i + 1)))
                  for i in range(count)]
    return out


def test_release_images_labels_split_and_empty_skips(tmp_path):
    write_pathfinder(tmp_path / "lra_release", "curv_contour_length_14", batches())
    cfg = data_cfg("pathfinder", tmp_path / "data", tmp_path, difficulty="hard")
    splits = load_splits(cfg, {"train": 8, "dev": 1, "test": 1})  # 10 non-empty images: 80/10/10
    expected = {10 * b + i + 1: (b + i) % 2 for b, n in ((0, 6), (1, 5)) for i in range(n) if (b, i) != (1, 2)}
    got = {}
    for split in splits.values():
        assert split.tokens.shape[1] == 1024 and np.all(split.lengths == 1024)
        for row, label in zip(np.asarray(split.tokens), split.labels):
            img = row.reshape(32, 32).astype(np.int64) - 1  # token = pixel + 1
            assert img[5, 5] == 255 and img[5, 6] == 0
            got[int(img[0, 0])] = int(label)
    assert got == expected
    manifest = json.loads(next((tmp_path / "data" / "pathfinder").glob("*/manifest.json")).read_text())
    assert manifest["skipped_empty_images"] == 1 and manifest["metadata_lines"] == 11
    assert manifest["skipped_examples"] == ["curv_contour_length_14/imgs/1/sample_2.png"]
    assert manifest["folder"] == "curv_contour_length_14"
    with pytest.raises(ConfigError, match=r"dataset\.train=9.*only 8"):
        load_splits(cfg, {"train": 9, "dev": 1, "test": 1})


@pytest.mark.parametrize("difficulty, folder, zeros", [("hard", "curv_contour_length_14", 20),
                                                       ("easy", "curv_baseline", None)])
def test_real_metadata_lines(tmp_path, difficulty, folder, zeros):
    """The first 30 real metadata lines of the release, with PNGs written here for the images they name."""
    real = real_samples("pathfinder", "pathfinder32", folder, "metadata", "0.npy")
    base = tmp_path / "pathfinder32" / folder
    (base / "metadata").mkdir(parents=True)
    shutil.copy(real, base / "metadata" / "0.npy")
    lines = real.read_text().split("\n")[:-1]
    assert len(lines) == 30
    labels = {}
    for line in lines:
        fields = line.split(" ")
        (base / fields[0]).mkdir(parents=True, exist_ok=True)
        index = int(fields[2])
        (base / fields[0] / fields[1]).write_bytes(png_bytes(picture(index + 1)))
        labels[index + 1] = int(fields[3])
    splits = load_splits(data_cfg("pathfinder", tmp_path / "data", tmp_path / "pathfinder32", difficulty=difficulty),
                         {"train": 24, "dev": 3, "test": 3})
    got = {int(r[0]) - 1: int(y) for s in splits.values() for r, y in zip(np.asarray(s.tokens), s.labels)}
    assert got == labels
    if zeros is not None:
        assert sum(1 for v in labels.values() if v == 0) == zeros


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines[:2] + ["imgs/0 sample_2.png 2"] + lines[3:], r"metadata/0\.npy'?: line 3: has 3 space"),
    (lambda lines: lines[:1] + [lines[1].replace(" 1 1.0 ", " x 1.0 ", 1)] + lines[2:],
     r"metadata/0\.npy'?: line 2: label \(field 3\) is 'x'"),
    (lambda lines: lines + ["imgs/0 sample_99.png 99 1 1.0 14 4 2 0.5 1 1"],
     r"metadata/0\.npy'?: line 7: names the image .*sample_99\.png, which does not exist"),
    (lambda lines: lines[:5] + [lines[5][:9]], r"line 6: has 2 space-separated fields.*truncated"),
])
def test_release_corrupt_metadata(tmp_path, edit, message):
    images = batches(empty=None)
    lines = [metadata_line(0, i, label) for i, (label, _) in enumerate(images[0])]
    text = "\n".join(edit(lines)) + "\n"
    write_pathfinder(tmp_path, "curv_contour_length_14", images, metadata_text={0: text})
    with pytest.raises(ConfigError, match=message):
        load_splits(data_cfg("pathfinder", tmp_path / "data", tmp_path), {"train": 1, "dev": 1, "test": 1})


@pytest.mark.parametrize("data, message", [(b"\x89PNG\r\n\x1a\n garbage", r"cannot be read as a PNG"),
                                           (png_bytes(picture(1, size=16)), r"is 16x16, expected 32x32")])
def test_release_corrupt_image(tmp_path, data, message):
    images = batches(empty=None)
    images[1][3] = (1, data)
    write_pathfinder(tmp_path, "curv_contour_length_14", images)
    with pytest.raises(ConfigError, match=rf"metadata/1\.npy'?: line 4: image .*sample_3\.png {message}"):
        load_splits(data_cfg("pathfinder", tmp_path / "data", tmp_path), {"train": 1, "dev": 1, "test": 1})


def test_release_missing_difficulty(tmp_path):
    write_pathfinder(tmp_path, "curv_baseline", batches())
    with pytest.raises(ConfigError, match=r"curv_contour_length_14/metadata not found.*pathfinder32.*"
                                          r"python -m lra\.data prepare pathfinder32 --source PATH"):
        load_splits(data_cfg("pathfinder", tmp_path / "data", tmp_path), {"train": 1, "dev": 1, "test": 1})
    splits = load_splits(data_cfg("pathfinder", tmp_path / "data", tmp_path, difficulty="easy"),
                         {"train": 8, "dev": 1, "test": 1})
    assert len(splits["train"]) == 8


@pytest.mark.parametrize("task, size", [("pathfinder64", 64), ("pathfinder128", 128)])
def test_pathfinder64_and_path_x_from_the_release_layout(tmp_path, task, size):
    """lra_release/pathfinder{64,128}/<curv_*>/{metadata,imgs}: the task's data node reads them at full length."""
    from lra.data.tasks import task_preset

    images = [(i % 2, png_bytes(picture(i + 1, size))) for i in range(10)]
    write_pathfinder(tmp_path / "lra_release" / "lra_release", "curv_contour_length_14", {0: images},
                     release_dir=f"pathfinder{size}")
    preset = task_preset(task)
    assert preset["model"]["max_seq_len"] == size * size and preset["data"]["resolution"] == size
    cfg = {**preset["data"], "root": str(tmp_path / "data"), "source": str(tmp_path / "lra_release")}
    splits = load_splits(cfg, {"train": 8, "dev": 1, "test": 1})
    rows = {int(r[0]) - 1: r for s in splits.values() for r in np.asarray(s.tokens)}
    assert sorted(rows) == list(range(1, 11))
    for code, row in rows.items():
        assert row.shape == (size * size,)
        img = row.reshape(size, size).astype(np.int64) - 1
        assert img[size - 1, size - 1] == 255 and img[0, 1] == 0
    wrong = {**cfg, "root": str(tmp_path / "data2"), "resolution": 32}
    with pytest.raises(ConfigError, match=r"curv_contour_length_14/metadata not found"):
        load_splits(wrong, {"train": 8, "dev": 1, "test": 1})
