"""A Pathfinder generator: the snakes of Linsley et al. (2018), https://arxiv.org/abs/1805.08315, in numpy.

The algorithm of drewlinsley/pathfinder `snakes2.py` with the parameters LRA lists for pathfinder32
(`lra_benchmarks/data/pathfinder.py`): a snake is a chain of short straight paddles (`paddle_length` px long,
`paddle_thickness` px thick) separated by gaps (the paddle margin on each side, so the contour is dashed); each next
paddle turns by an angle drawn with weight cos(min(|turn| * continuity, 90 deg))^2, so turns are bounded by
90 deg / continuity; an occupancy mask (each paddle dilated by the margin, the image border included) is checked
before a paddle is placed, so no snake crosses or touches itself or another. Two target snakes start
`seed_distance` px apart near the centre and grow together; `num_distractor_snakes` short snakes of
`distractor_length` paddles are added where there is room. One marker (a disc) goes on the first paddle's tail of
target snake A; the other on the last paddle's head of snake A (label 1: connected) or of snake B (label 0).
Labels are exactly balanced in each split. Everything is drawn at twice the resolution (anti-aliased lines and
discs) and average-pooled 2x2, as the original draws at `antialias_scale` 2 and resizes.

Geometry works on a canvas padded by the stamp radius, with paddle "stamps" (ink, and the dilated halo) precomputed
for 72 orientations (5 degree steps), so placing a paddle is array slicing; all candidate turns of a step are
checked against the occupancy at once.

Compared with the release (its metadata lines; no release PNG was available to compare pixels):
- the same construction parameters: contour length 14 (hard; 6 easy, 9 intermediate), distractors of
  contour_length / 3 paddles (the release's lines say 4.67 for 14: snakes2 truncates it to 4 paddles, and
  20 / 4.67 gives 5 distractor snakes), paddle length 2, thickness 0.5, margin 1, continuity 1.0;
- labels: the release draws each label at random (its first 30 lines: 11/19 easy, 20/10 hard); here each split
  is exactly balanced;
- differences: orientations are quantised to 5 degrees; the occupancy test uses binary halos at 2x (radius
  thickness/2 + 0.6 margin, `HALO`) instead of thresholding the sum of two Lanczos-resized masks at 1.8; a dead end
  restarts the image as snakes2 does, but a step picks among the turns that fit instead of retrying 2 draws;
  paddles and markers are drawn at full intensity (snakes2 scales paddles by contrast 0.75 x 2 and its imsave
  rescales to the image maximum);
- Pathfinder-64 and Path-X (`pathfinder64-generated`, `pathfinder128-generated`) take the arguments LRA lists
  for them (`Pathfinder64`, `Pathfinder128` docstrings; paddle length 5 is snakes2_wrapper's default and what the
  release's pathfinder128 metadata lines say), with `backtrack`: a target snake at a dead end lifts its last
  paddle out and draws again among the turns that fit, up to `backtrack` times per image, before the image
  restarts. Without it (snakes2's way) a 64x64 image of two 14-paddle snakes takes about 2000 tries (2 images/s
  on one core), with 20 about 11 tries (80 images/s); Path-X goes from 77 tries to 4. It slightly favours
  shapes that fit, which snakes2's restarts do not; pathfinder32 keeps 0 (unchanged images);
- measured here (1000 images, `pathfinder32-generated`): mean pixel 17.9 / 255, 22.7% of pixels non-zero, 5.0%
  at or above 128; 4.8 of the 5 distractor snakes fit on average; 9 tries per image.
"""

from __future__ import annotations

import dataclasses
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import get_context

import numpy as np

from lra.data.base import GeneratedLoader
from lra.data.params import require
from lra.data.store import Builder, label_histogram
from lra.errors import ConfigError

AA = 2  # drawn at 2x, pooled 2x2
CHUNK = 256  # images per job of the process pool
N_ORIENT = 72  # 5 degree steps
STEP = 2 * math.pi / N_ORIENT
HALO = 0.6  # occupancy halo beyond the line, in margins (snakes2 lets the anti-aliased mask edges overlap)


@dataclass(frozen=True)
class SnakeParams:
    """LRA's pathfinder32 arguments (lra_benchmarks/data/pathfinder.py, `Pathfinder32` docstring)."""

    resolution: int = 32  # window_size [32, 32]
    contour_length: int = 14  # paddles per target snake (release: 6 easy, 9 intermediate, 14 hard)
    distractor_length: int = 4  # contour_length // 3
    num_distractor_snakes: int = 5  # 20 // distractor_length
    paddle_length: int = 2
    paddle_thickness: float = 0.5
    paddle_margin: int = 1  # paddle_margin_list [1]
    paddle_margin_max: int | None = None  # each image draws its margin from paddle_margin..this (Path-X: [2, 3])
    marker_radius: float = 1.5
    seed_distance: int = 7
    continuity: float = 1.0
    padding: int = 1
    backtrack: int = 0  # dead ends of the target snakes undone paddle by paddle before the image restarts (0: snakes2)


class Geometry:
    """Stamps and sizes at 2x for one parameter set."""

    def __init__(self, p: SnakeParams) -> None:
        self.S = p.resolution * AA
        self.L = p.paddle_length * AA
        self.m = p.paddle_margin * AA
        self.half = p.paddle_thickness * AA / 2
        self.r = p.marker_radius * AA
        self.h = int(math.ceil(self.L + self.half + self.m + 1))  # stamp radius
        # the canvas is padded so that a stamp at any candidate tail (at most L + 2m outside the image) fits
        self.P = self.h + int(math.ceil(self.L + 2 * self.m + 1))
        self.W = self.S + 2 * self.P  # padded canvas side
        # where the first target snake starts: the centre, 2 seed distances clear of the border (snakes2)
        c, b = self.S // 2, max(AA, (p.resolution // 2 - 2 * p.seed_distance) * AA)
        ys, xs = np.mgrid[c - b: c + b, c - b: c + b]
        self.centre = ys.ravel(), xs.ravel()
        size = 2 * self.h + 1
        yy, xx = np.mgrid[-self.h: self.h + 1, -self.h: self.h + 1].astype(np.float64)
        self.sin = np.sin(np.arange(N_ORIENT) * STEP)
        self.cos = np.cos(np.arange(N_ORIENT) * STEP)
        self.ink = np.zeros((N_ORIENT, size, size), dtype=np.float32)
        self.halo = np.zeros((N_ORIENT, size, size), dtype=bool)
        for k in range(N_ORIENT):
            uy, ux = self.sin[k], self.cos[k]
            t = np.clip(yy * uy + xx * ux, 0, self.L)  # projection onto the segment from 0 to L*u
            d = np.hypot(yy - t * uy, xx - t * ux)
            self.ink[k] = np.clip(self.half + 0.5 - d, 0, 1)
            self.halo[k] = d <= self.half + HALO * self.m
        self.halo_u8 = self.halo.astype(np.uint8)
        # halo pixels as (dy, dx) from the tail, padded to one width by repeating the tail pixel
        cells = [np.argwhere(self.halo[k]) - self.h for k in range(N_ORIENT)]
        width = max(len(c) for c in cells)
        cells = np.stack([np.concatenate([c, np.zeros((width - len(c), 2), dtype=c.dtype)]) for c in cells])
        self.halo_dy, self.halo_dx = cells[..., 0], cells[..., 1]  # (N_ORIENT, width)
        self.halo_offsets = self.halo_dy * self.W + self.halo_dx  # flat offsets from the tail

        # the turns a next paddle may take, with their continuity weights (snakes.get_coords_cmf)
        turns = np.arange(-(N_ORIENT // 4), N_ORIENT // 4 + 1)  # -90..+90 degrees
        delta = np.minimum(np.abs(turns) * STEP * p.continuity, math.pi / 2)
        weights = np.cos(delta) ** 2
        keep = weights > 1e-9
        self.turns, self.turn_weights = turns[keep], weights[keep]
        # per orientation k of the last paddle: each candidate's orientation, tail offset (tail -> head -> pivot
        # one margin past the head -> new tail one margin further), the flat offsets of its halo pixels, and
        # which of those lie in the last paddle's own halo (the next paddle may touch its predecessor)
        reach = self.L + self.m
        ks = (np.arange(N_ORIENT)[:, None] + self.turns[None, :]) % N_ORIENT  # (N_ORIENT, J)
        self.next_k = ks
        self.next_dy = np.rint(reach * self.sin[:, None] + self.m * self.sin[ks]).astype(np.int64)
        self.next_dx = np.rint(reach * self.cos[:, None] + self.m * self.cos[ks]).astype(np.int64)
        ry = self.next_dy[..., None] + self.halo_dy[ks]  # (N_ORIENT, J, width), relative to the last tail
        rx = self.next_dx[..., None] + self.halo_dx[ks]
        self.next_offsets = ry * self.W + rx
        inside = (np.abs(ry) <= self.h) & (np.abs(rx) <= self.h)
        own = np.zeros(ry.shape, dtype=np.uint8)
        for k in range(N_ORIENT):
            iy, ix = np.clip(ry[k] + self.h, 0, size - 1), np.clip(rx[k] + self.h, 0, size - 1)
            own[k] = self.halo[k][iy, ix] & inside[k]
        self.next_own = own


@lru_cache(maxsize=8)
def geometry(p: SnakeParams) -> Geometry:
    return Geometry(p)


class Canvas:
    """Occupancy counts and ink on the padded 2x canvas; positions are (y, x) in unpadded 2x pixels.

    `occupied` counts the halos covering each pixel (the border counts as one forever), so a snake's latest
    paddle can be lifted out of the occupancy while its next paddle is checked, and put back after.
    """

    def __init__(self, p: SnakeParams, g: Geometry) -> None:
        self.p, self.g = p, g
        self.ink = np.zeros((g.W, g.W), dtype=np.float32)
        self.occupied = np.ones((g.W, g.W), dtype=np.uint8)
        border = g.P + p.padding * AA
        self.occupied[border: g.W - border, border: g.W - border] = 0
        self.flat = self.occupied.reshape(-1)

    def window(self, y: int, x: int) -> tuple[slice, slice]:
        # the stamp is centred on the tail, at (y + P, x + P) in padded coordinates
        o = self.g.P - self.g.h
        return slice(y + o, y + o + 2 * self.g.h + 1), slice(x + o, x + o + 2 * self.g.h + 1)

    def free(self, ys: np.ndarray, xs: np.ndarray, ks: np.ndarray) -> np.ndarray:
        """Which paddles (tail y, x, orientation k) have their whole halo on unoccupied canvas (the area
        outside the image is occupied, and every halo covers its tail)."""
        g = self.g
        base = (ys + g.P) * g.W + (xs + g.P)
        return ~self.flat[base[:, None] + g.halo_offsets[ks]].any(axis=1)

    def occupy(self, paddle: tuple[int, int, int], sign: int = 1) -> None:
        y, x, k = paddle
        wy, wx = self.window(y, x)
        if sign > 0:
            self.occupied[wy, wx] += self.g.halo_u8[k]
        else:
            self.occupied[wy, wx] -= self.g.halo_u8[k]

    def draw(self, y: int, x: int, k: int) -> None:
        wy, wx = self.window(y, x)
        np.maximum(self.ink[wy, wx], self.g.ink[k], out=self.ink[wy, wx])

    def disc(self, cy: float, cx: float) -> None:
        g = self.g
        yy, xx = np.mgrid[0: g.S, 0: g.S].astype(np.float32)
        d = np.hypot(yy - cy, xx - cx)
        inner = self.ink[g.P: g.P + g.S, g.P: g.P + g.S]
        np.maximum(inner, np.clip(g.r + 0.5 - d, 0, 1), out=inner)

    def image(self) -> np.ndarray:
        """The 1x image, uint8: 2x2 average pooling of the 2x ink."""
        g = self.g
        inner = self.ink[g.P: g.P + g.S, g.P: g.P + g.S]
        pooled = inner.reshape(g.S // AA, AA, g.S // AA, AA).mean(axis=(1, 3))
        return np.round(np.clip(pooled, 0, 1) * 255).astype(np.uint8)


class Snake:
    """A chain of paddles, each (tail y, tail x, orientation index) in 2x pixels."""

    def __init__(self, y: int, x: int, k: int, g: Geometry) -> None:
        self.g = g
        self.paddles = [(y, x, k)]

    def head(self, i: int = -1) -> tuple[float, float]:
        y, x, k = self.paddles[i]
        return y + self.g.L * float(self.g.sin[k]), x + self.g.L * float(self.g.cos[k])

    def tail(self, i: int = 0) -> tuple[float, float]:
        y, x, _ = self.paddles[i]
        return float(y), float(x)


def _extend(snake: Snake, canvas: Canvas, rng: np.random.Generator) -> bool:
    """Add one paddle: a turn drawn by continuity weight among those whose halo is free of every paddle but the
    snake's own last one (which the next paddle may touch, as in snakes2)."""
    g = canvas.g
    y, x, k = snake.paddles[-1]
    base = (y + g.P) * g.W + (x + g.P)
    counts = canvas.flat[base + g.next_offsets[k]]  # (J, width) halo counts at each candidate's halo pixels
    ok = ~(counts > g.next_own[k]).any(axis=1)
    cumulative = np.cumsum(g.turn_weights * ok)
    if cumulative[-1] <= 0:
        return False
    i = min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), len(ok) - 1)
    paddle = (y + int(g.next_dy[k, i]), x + int(g.next_dx[k, i]), int(g.next_k[k, i]))
    snake.paddles.append(paddle)
    canvas.occupy(paddle)
    return True


def _seed(canvas: Canvas, rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray,
          tries: int = 16) -> tuple[int, int, int] | None:
    """A first paddle: tail drawn among (ys, xs), orientation uniform, halo free; occupies it."""
    k = rng.integers(0, N_ORIENT, tries)
    pick = rng.integers(0, len(ys), tries)
    good = np.flatnonzero(canvas.free(ys[pick], xs[pick], k))
    if len(good) == 0:
        return None
    j = good[0]
    paddle = (int(ys[pick[j]]), int(xs[pick[j]]), int(k[j]))
    canvas.occupy(paddle)
    return paddle


def _target_snakes(p: SnakeParams, g: Geometry, canvas: Canvas, rng) -> list[Snake] | None:
    """The two target snakes, seeded near the centre and grown together (snakes2.two_snakes); None on a
    dead end (the caller starts the image again, as snakes2 does)."""
    first = _seed(canvas, rng, *g.centre)
    if first is None:
        return None
    angles = rng.integers(0, 360, 16) * math.pi / 180
    d = p.seed_distance * AA
    ys = np.rint(first[0] + d * np.sin(angles)).astype(np.int64)
    xs = np.rint(first[1] + d * np.cos(angles)).astype(np.int64)
    second = _seed(canvas, rng, ys, xs)
    if second is None:
        return None
    snakes = [Snake(*first, g), Snake(*second, g)]
    budget = p.backtrack
    while any(len(s.paddles) < p.contour_length for s in snakes):
        snake = min(snakes, key=lambda s: len(s.paddles))  # grow together: the shorter one first
        if _extend(snake, canvas, rng):
            continue
        if budget <= 0 or len(snake.paddles) < 2:
            return None
        budget -= 1  # lift the last paddle out; the next draw picks again among the turns that fit
        canvas.occupy(snake.paddles.pop(), -1)
    return snakes


def _distractor(p: SnakeParams, g: Geometry, canvas: Canvas, rng) -> Snake | None:
    """A short snake anywhere there is room; on a dead end its paddles are lifted out again."""
    free_y, free_x = np.nonzero(canvas.occupied[g.P: g.P + g.S, g.P: g.P + g.S] == 0)
    if len(free_y) == 0:
        return None
    start = _seed(canvas, rng, free_y, free_x)
    if start is None:
        return None
    snake = Snake(*start, g)
    for _ in range(p.distractor_length - 1):
        if not _extend(snake, canvas, rng):
            for paddle in snake.paddles:
                canvas.occupy(paddle, -1)
            return None
    return snake


def draw_sample(p: SnakeParams, label: int, rng: np.random.Generator, max_tries: int = 1000) -> tuple[np.ndarray, dict]:
    """One image (resolution x resolution uint8) with `label`; and what was drawn, in 1x pixel coordinates:
    {"snakes": [[(tail y, tail x, head y, head x) per paddle] per target snake], "markers": [(y, x), (y, x)],
     "marker_snakes": (snake of marker 0, snake of marker 1), "distractors": [...], "tries": n}."""
    if p.paddle_margin_max is not None:  # snakes2 samples the margin once per image from paddle_margin_list
        margin = int(rng.integers(p.paddle_margin, p.paddle_margin_max + 1))
        p = dataclasses.replace(p, paddle_margin=margin, paddle_margin_max=None)
    g = geometry(p)
    for attempt in range(1, max_tries + 1):
        canvas = Canvas(p, g)
        snakes = _target_snakes(p, g, canvas, rng)
        if snakes is not None:
            break
    else:
        raise SnakesDoNotFit(f"two target snakes of {p.contour_length} paddles did not fit in a "
                             f"{p.resolution}x{p.resolution} image in {max_tries} tries")
    distractors = []
    for _ in range(p.num_distractor_snakes):
        for _retry in range(5):  # snakes2: max_distractor_contour_retrial 4, incomplete allowed
            snake = _distractor(p, g, canvas, rng)
            if snake is not None:
                distractors.append(snake)
                break
    for snake in snakes + distractors:
        for paddle in snake.paddles:
            canvas.draw(*paddle)
    origin = int(rng.integers(0, 2))
    terminal = origin if label == 1 else 1 - origin
    m0, m1 = snakes[origin].tail(0), snakes[terminal].head(-1)
    canvas.disc(*m0)
    canvas.disc(*m1)

    def coords(snake: Snake) -> list[tuple[float, ...]]:
        return [tuple(v / AA for v in (*snake.tail(i), *snake.head(i))) for i in range(len(snake.paddles))]

    info = {"snakes": [coords(s) for s in snakes], "markers": [tuple(v / AA for v in m0), tuple(v / AA for v in m1)],
            "marker_snakes": (origin, terminal), "distractors": [coords(s) for s in distractors], "tries": attempt}
    return canvas.image(), info


class SnakesDoNotFit(RuntimeError):
    pass


def balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % 2).astype(np.int64)


def _draw_range(args: tuple) -> np.ndarray:
    p, seed, split_id, labels, start = args
    out = np.empty((len(labels), p.resolution * p.resolution), dtype=np.uint8)
    for j, label in enumerate(labels):
        rng = np.random.default_rng([seed, split_id, start + j])
        out[j] = draw_sample(p, int(label), rng)[0].reshape(-1)
    return out


def generate_images(p: SnakeParams, n: int, seed: int, split_id: int = 0, workers: int | None = None,
                    out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`n` images (n, resolution**2) uint8 and balanced labels; image i is drawn from the seed
    (seed, split_id, i), so the result does not depend on the number of worker processes."""
    labels = balanced_labels(n, np.random.default_rng([seed, split_id, 2**31]))
    if out is None:
        out = np.empty((n, p.resolution * p.resolution), dtype=np.uint8)
    workers = workers or min(os.cpu_count() or 1, 8)
    chunk = CHUNK
    jobs = [(p, seed, split_id, labels[s: s + chunk], s) for s in range(0, n, chunk)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as executor:
            for (_, _, _, _, s), block in zip(jobs, executor.map(_draw_range, jobs)):
                out[s: s + len(block)] = block
    else:
        for job in jobs:
            out[job[4]: job[4] + len(job[3])] = _draw_range(job)
    return out, labels


class PathfinderGenerated(GeneratedLoader):
    name = "pathfinder-generated"
    Params = SnakeParams
    num_classes = 2
    vocab_size = 257
    description = "Pathfinder drawn locally (Linsley et al. 2018 snakes), pixels as tokens (pixel + 1)"
    version = 1

    def seq_len(self, p: SnakeParams) -> int:
        return p.resolution * p.resolution

    def identity(self, p: SnakeParams, sizes: dict[str, int], seed: int) -> dict:
        # parameters added later are left out at their default, so arrays drawn before they existed stay valid
        out = super().identity(p, sizes, seed)
        for key, default in (("backtrack", 0), ("paddle_margin_max", None)):
            if out["params"][key] == default:
                del out["params"][key]
        return out

    def check(self, p: SnakeParams) -> None:
        require(8 <= p.resolution <= 256, "data.resolution", p.resolution, "must be in 8..256", "LRA uses 32")
        require(p.contour_length >= 1, "data.contour_length", p.contour_length, "must be >= 1", "LRA uses 14")
        require(p.distractor_length >= 1, "data.distractor_length", p.distractor_length, "must be >= 1",
                "LRA uses contour_length // 3")
        require(p.num_distractor_snakes >= 0, "data.num_distractor_snakes", p.num_distractor_snakes,
                "must be >= 0", "LRA uses 20 // distractor_length")
        require(p.paddle_length >= 1, "data.paddle_length", p.paddle_length, "must be >= 1", "LRA uses 2")
        require(0 < p.paddle_thickness <= 4 and (p.paddle_thickness * AA) % 1 == 0, "data.paddle_thickness",
                p.paddle_thickness, "must be a positive multiple of 0.5, at most 4", "LRA uses 0.5")
        require(p.paddle_margin >= 1, "data.paddle_margin", p.paddle_margin, "must be >= 1", "LRA uses 1")
        require(p.paddle_margin_max is None or p.paddle_margin_max >= p.paddle_margin, "data.paddle_margin_max",
                p.paddle_margin_max, "must be null or >= data.paddle_margin", "Path-X uses 3 (with paddle_margin 2)")
        require(0 <= p.backtrack <= 1000, "data.backtrack", p.backtrack, "must be in 0..1000",
                "the Path-X tasks use 20; 0 restarts the image at every dead end as snakes2 does")
        require(0.5 <= p.marker_radius <= p.resolution / 4, "data.marker_radius", p.marker_radius,
                "must be in 0.5..resolution/4", "LRA uses 1.5")
        require(1 <= p.seed_distance < p.resolution // 2, "data.seed_distance", p.seed_distance,
                "must be in 1..resolution/2", "LRA uses 7")
        require(0.0 < p.continuity <= 4.0, "data.continuity", p.continuity, "must be in (0, 4]", "LRA uses 1.0")
        require(0 <= p.padding < p.resolution // 4, "data.padding", p.padding, "must be in 0..resolution/4",
                "LRA uses 1")

    def generate(self, p: SnakeParams, sizes: dict[str, int], seed: int, builder: Builder) -> dict:
        info = {}
        T = p.resolution * p.resolution
        for split_id, split in enumerate(("train", "dev", "test")):
            n = sizes[split]
            try:
                pixels, labels = generate_images(p, n, seed, split_id)
            except SnakesDoNotFit as error:

                raise ConfigError("data.contour_length", p.contour_length, str(error),
                                  "lower data.contour_length, data.seed_distance or data.paddle_margin, or raise "
                                  "data.resolution") from None
            tokens = builder.array(f"{split}.tokens", (n, T), np.int16)
            tokens[:] = pixels.astype(np.int16) + 1
            builder.save(f"{split}.lengths", np.full(n, T, dtype=np.int32))
            builder.save(f"{split}.labels", labels)
            info[split] = {"count": n, "label_histogram": label_histogram(labels),
                           "mean_pixel": round(float(pixels.mean()), 2),
                           "ink_fraction": round(float((pixels > 0).mean()), 4)}
        return {"splits": info}
