"""The local Pathfinder generator: paths, markers, balance, determinism, and the generated tasks."""

import dataclasses
import math

import numpy as np
import pytest

from lra.data import LOADERS, check_data_config, load_splits, snakes
from lra.data.params import parse
from lra.data.tasks import task_preset
from lra.errors import ConfigError


def params(task: str) -> snakes.SnakeParams:
    loader, _, p = parse(task_preset(task)["data"], LOADERS)  # the task's data node in conf/task/<task>.yaml
    assert isinstance(p, snakes.SnakeParams)
    return p


def points(paddle):
    ty, tx, hy, hx = paddle
    t = np.linspace(0, 1, 21)
    return np.c_[ty + (hy - ty) * t, tx + (hx - tx) * t]


def distance(snake_a, snake_b) -> float:
    a = np.concatenate([points(p) for p in snake_a])
    b = np.concatenate([points(p) for p in snake_b])
    return float(np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min())


@pytest.mark.parametrize("task, count", [("pathfinder32-generated", 24), ("pathfinder-small", 24),
                                         ("pathfinder64-generated", 6), ("pathfinder128-generated", 6)])
def test_markers_lie_on_one_path_exactly_for_positives(task, count):
    p = params(task)
    widest = p.paddle_margin_max or p.paddle_margin
    for i in range(count):
        label = i % 2
        img, info = snakes.draw_sample(p, label, np.random.default_rng(i))
        assert img.shape == (p.resolution, p.resolution) and img.dtype == np.uint8
        first, second = info["marker_snakes"]
        assert (first == second) == (label == 1)
        a, b = info["snakes"][first], info["snakes"][second]
        assert info["markers"][0] == pytest.approx(a[0][:2])  # the tail of the first paddle of one snake
        assert info["markers"][1] == pytest.approx(b[-1][2:])  # the head of the last paddle of (that | the other)
        for y, x in info["markers"]:
            assert img[int(y // 1), int(x // 1)] >= 200  # a bright disc
        for snake in info["snakes"]:
            assert len(snake) == p.contour_length
            for prev, nxt in zip(snake[:-1], snake[1:]):
                gap = math.hypot(nxt[0] - prev[2], nxt[1] - prev[3])
                assert 0.5 * p.paddle_margin <= gap <= 2 * widest + 0.5  # dashed: one gap per margin pair
                turn = math.atan2(nxt[2] - nxt[0], nxt[3] - nxt[1]) - math.atan2(prev[2] - prev[0], prev[3] - prev[1])
                assert abs((turn + math.pi) % (2 * math.pi) - math.pi) <= math.pi / 2 / p.continuity + 1e-6
        everything = info["snakes"] + info["distractors"]
        assert all(len(d) == p.distractor_length for d in info["distractors"])
        for j in range(len(everything)):
            for k in range(j + 1, len(everything)):
                assert distance(everything[j], everything[k]) >= 1.0  # no crossing, no touching


def test_labels_balanced_and_images_deterministic(monkeypatch):
    p = params("pathfinder-small")
    monkeypatch.setattr(snakes, "CHUNK", 8)
    images, labels = snakes.generate_images(p, 30, seed=0, workers=1)
    assert labels.sum() == 15 and set(labels.tolist()) == {0, 1}
    again, labels2 = snakes.generate_images(p, 30, seed=0, workers=2)  # 4 chunks over 2 processes
    assert np.array_equal(images, again) and np.array_equal(labels, labels2)
    other, _ = snakes.generate_images(p, 30, seed=1, workers=1)
    assert not np.array_equal(images, other)
    odd = snakes.balanced_labels(7, np.random.default_rng(0))
    assert sorted(odd.tolist()) == [0, 0, 0, 0, 1, 1, 1]
    assert 0.05 < (images > 0).mean() < 0.6  # ink on a dark background


def test_generated_task_through_load_splits(tmp_path):
    cfg = {**task_preset("pathfinder-small")["data"], "root": str(tmp_path)}
    splits = load_splits(cfg, {"train": 12, "dev": 4, "test": 4}, seed=0)
    train = splits["train"]
    assert train.tokens.shape == (12, 256) and np.all(train.lengths == 256)
    assert train.tokens.min() >= 1 and train.tokens.max() <= 256  # pixel + 1
    assert train.labels.sum() == 6 and splits["dev"].labels.sum() == 2
    assert not np.array_equal(splits["dev"].tokens, splits["test"].tokens)


@pytest.mark.parametrize("key, value, message", [
    ("resolution", 4, "must be in 8..256"), ("paddle_thickness", 0.3, "must be a positive multiple of 0.5"),
    ("seed_distance", 20, "must be in 1..resolution/2"), ("continuity", 0.0, r"must be in \(0, 4\]"),
    ("num_distractor_snakes", -1, "must be >= 0"),
])
def test_generator_parameters_checked(key, value, message):
    with pytest.raises(ConfigError, match=rf"data\.{key}={value!r}: {message}"):
        check_data_config({**task_preset("pathfinder-small")["data"], key: value})


def test_snakes_that_cannot_fit_are_a_config_error(tmp_path):
    cfg = {**task_preset("pathfinder-small")["data"], "root": str(tmp_path), "contour_length": 40}
    with pytest.raises(ConfigError, match=r"data\.contour_length=40: two target snakes of 40 paddles did not fit "
                                          r"in a 16x16 image"):
        load_splits(cfg, {"train": 2, "dev": 2, "test": 2})


def test_path_x_uses_lra_arguments_and_draws_margins_per_image():
    """LRA's Pathfinder128 arguments; snakes2 draws the margin of each image from paddle_margin_list [2, 3]."""
    p = params("pathfinder128-generated")
    assert (p.resolution, p.contour_length, p.paddle_length, p.paddle_thickness, p.marker_radius, p.seed_distance,
            p.continuity) == (128, 14, 5, 1.5, 3.0, 20, 1.8)
    assert (p.paddle_margin, p.paddle_margin_max, p.num_distractor_snakes) == (2, 3, 7)
    gaps = set()
    for i in range(8):
        img, info = snakes.draw_sample(p, i % 2, np.random.default_rng(i))
        assert img.shape == (128, 128)
        a = info["snakes"][0]
        gaps.add(round(math.hypot(a[1][0] - a[0][2], a[1][1] - a[0][3])))
    assert len(gaps) >= 2  # both margins occur
    p64 = params("pathfinder64-generated")
    assert (p64.resolution, p64.paddle_thickness, p64.marker_radius, p64.seed_distance, p64.continuity) == \
        (64, 1.0, 2.5, 12, 1.8)


def test_backtracking_keeps_the_snakes_valid_and_leaves_pathfinder32_unchanged():
    p = params("pathfinder32-generated")
    assert p.backtrack == 0 and p.paddle_margin_max is None
    identity = LOADERS["pathfinder-generated"].identity(p, {"train": 1, "dev": 1, "test": 1}, 0)
    assert "backtrack" not in identity["params"] and "paddle_margin_max" not in identity["params"]
    p64 = params("pathfinder64-generated")
    with_backtrack = [snakes.draw_sample(p64, 1, np.random.default_rng(i))[1]["tries"] for i in range(5)]
    without = dataclasses.replace(p64, backtrack=0)
    assert "backtrack" in LOADERS["pathfinder-generated"].identity(p64, {"train": 1, "dev": 1, "test": 1}, 0)["params"]
    with pytest.raises(snakes.SnakesDoNotFit):  # snakes2's restarts alone rarely fit two 14-paddle snakes at 64
        for i in range(3):
            snakes.draw_sample(without, 1, np.random.default_rng(i), max_tries=20)
    assert max(with_backtrack) < 200


@pytest.mark.parametrize("key, value, message", [
    ("backtrack", -1, r"must be in 0\.\.1000"), ("paddle_margin_max", 1, "must be null or >= data.paddle_margin")])
def test_new_generator_parameters_checked(key, value, message):
    with pytest.raises(ConfigError, match=rf"data\.{key}={value!r}: {message}"):
        check_data_config({**task_preset("pathfinder128-generated")["data"], key: value})
