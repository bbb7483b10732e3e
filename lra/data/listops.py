"""ListOps: the release files (`listops-1000/basic_{train,val,test}.tsv`) and a local generator.

The generator follows the LRA one (google-research/long-range-arena `lra_benchmarks/data/listops.py`): a node
below `max_depth` is an operator with probability 0.25 (`VALUE_P`; otherwise a digit leaf), an operator takes
2..`max_args` arguments and is one of MIN MAX MED SM (sum mod 10), nodes at `max_depth` are leaves, a tree's length
counts an operator as 2 tokens (`[OP` and `]`) and a leaf as 1, trees with `min_length < length < max_length` are
kept, and duplicates are dropped. Every node's choices are independent draws, so the trees are drawn here level by
level for thousands of trees at once with numpy (the same distribution as LRA's depth-first recursion), which makes
the full 96k+2k+2k set take seconds instead of the reference script's many minutes.

Tokens follow the LRA tokenisation as fixed by the S4 code (state-spaces/s4 `listops_tokenizer`): parentheses are
dropped, `]` becomes `X`, whitespace splits; ids come from the fixed vocabulary `VOCAB` (0 is padding).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from lra.data.base import DataFileError, GeneratedLoader, ReleaseLoader, find_layout
from lra.data.params import require
from lra.data.store import Builder, label_histogram, sha256_file
from lra.errors import ConfigError

VOCAB = ("<pad>", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "[MIN", "[MAX", "[MED", "[SM", "X")
TOKEN_ID = {token: i for i, token in enumerate(VOCAB)}
VOCAB_SIZE = len(VOCAB)  # 16
OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
OP_IDS = np.array([TOKEN_ID[op] for op in OPERATORS], dtype=np.uint8)
DIGIT_IDS = np.array([TOKEN_ID[str(v)] for v in range(10)], dtype=np.uint8)
CLOSE_ID = TOKEN_ID["X"]
PARALLEL_MIN = 2000  # smaller sets are drawn in this process (a pool costs more than it saves)
VALUE_P = 0.25  # LRA: `r = random.random(); if r > VALUE_P: leaf` -> an operator with probability 0.25
_TRANSLATE = {ord("]"): "X", ord("("): None, ord(")"): None}


def tokenize(source: str) -> list[str]:
    """LRA/S4 ListOps tokens: `( ( [MAX 2 ) 9 ] )` -> ['[MAX', '2', '9', 'X']."""
    return source.translate(_TRANSLATE).split()


def encode(tokens: list[str]) -> list[int]:
    return [TOKEN_ID[t] for t in tokens]


def decode(ids) -> str:
    return " ".join(VOCAB[int(i)] for i in ids if int(i) != 0)


def evaluate(ids) -> int:
    """The value of one tokenised expression (a reference evaluator, for tests and checks)."""
    stack: list[list] = []
    result = None
    for i in ids:
        token = VOCAB[int(i)]
        if token == "<pad>":
            break
        if token in OPERATORS:
            stack.append([token])
            continue
        if token == "X":
            op, *args = stack.pop()
            value = {"[MIN": min, "[MAX": max, "[SM": lambda a: sum(a) % 10,
                     "[MED": lambda a: int(np.median(a))}[op](args)
        else:
            value = int(token)
        if stack:
            stack[-1].append(value)
        else:
            result = value
    if result is None or stack:
        raise ValueError("incomplete expression")
    return int(result)


def max_tree_length(max_depth: int, max_args: int) -> int:
    """The longest tree the generator can draw: every node above max_depth an operator with max_args args."""
    length = 1
    for _ in range(max_depth - 1):
        length = 2 + max_args * length
    return length


# ----------------------------------------------------------------------------------------------------------------
# the vectorised generator


def _generate_chunk(args: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw `batch` trees with the seed (seed, chunk); return the accepted ones as (tokens, lengths, labels)."""
    seed, chunk, batch, max_depth, max_args, min_length, max_length = args
    rng = np.random.default_rng([seed, chunk])
    levels = []  # per depth: dict of node arrays, nodes grouped by parent in parent order
    tree = np.arange(batch, dtype=np.int64)
    parent = np.full(batch, -1, dtype=np.int64)
    done_tokens = np.zeros(batch, dtype=np.int64)  # tokens of the levels drawn so far
    alive = np.ones(batch, dtype=bool)  # trees that may still stay under max_length
    for depth in range(1, max_depth + 1):
        n = len(tree)
        if depth < max_depth:
            is_op = rng.random(n) <= VALUE_P
        else:
            is_op = np.zeros(n, dtype=bool)
        arity = np.where(is_op, rng.integers(2, max_args + 1, n), 0)
        op = rng.integers(0, len(OPERATORS), n)
        value = rng.integers(0, 10, n)
        levels.append(dict(tree=tree, parent=parent, is_op=is_op, arity=arity, op=op, value=value))
        done_tokens += np.bincount(tree, weights=1 + is_op, minlength=batch).astype(np.int64)
        pending = np.bincount(tree, weights=arity, minlength=batch).astype(np.int64)
        alive &= done_tokens + pending < max_length  # each pending child adds at least one token
        grow = is_op & alive[tree]
        if not grow.any():
            break
        parent = np.repeat(np.flatnonzero(grow), arity[grow])
        tree = levels[-1]["tree"][parent]
    length = done_tokens
    accept = alive & (length > min_length) & (length < max_length)
    n_acc = int(accept.sum())
    tokens = np.zeros((n_acc, max_length), dtype=np.uint8)
    if n_acc == 0:
        return tokens, np.zeros(0, np.int32), np.zeros(0, np.int64)
    row_of_tree = np.cumsum(accept) - 1

    # keep the accepted trees' nodes, re-indexing parents
    kept = []
    prev_new_index = None
    for level in levels:
        keep = accept[level["tree"]]
        new_index = np.cumsum(keep) - 1
        lv = {k: v[keep] for k, v in level.items()}
        if prev_new_index is not None:
            lv["parent"] = prev_new_index[lv["parent"]]
        kept.append(lv)
        prev_new_index = new_index
    kept = [lv for lv in kept if len(lv["tree"])]

    # subtree sizes (tokens), bottom-up
    for lv in kept:
        lv["size"] = (1 + lv["is_op"]).astype(np.int64)
    for d in range(len(kept) - 1, 0, -1):
        child, up = kept[d], kept[d - 1]
        up["size"] += np.bincount(child["parent"], weights=child["size"], minlength=len(up["tree"])).astype(np.int64)

    # positions, top-down: a child starts after its parent's `[OP` and its earlier siblings
    kept[0]["pos"] = np.zeros(len(kept[0]["tree"]), dtype=np.int64)
    for d in range(1, len(kept)):
        child, up = kept[d], kept[d - 1]
        size = child["size"]
        before = np.cumsum(size) - size
        first = np.r_[True, child["parent"][1:] != child["parent"][:-1]]
        group_base = np.maximum.accumulate(np.where(first, np.arange(len(size)), 0))
        child["pos"] = up["pos"][child["parent"]] + 1 + before - before[group_base]

    # values, bottom-up
    for lv in kept:
        lv["val"] = lv["value"].copy()
    for d in range(len(kept) - 1, 0, -1):
        child, up = kept[d], kept[d - 1]
        par = child["parent"]
        starts = np.flatnonzero(np.r_[True, par[1:] != par[:-1]])
        owner = par[starts]
        counts = np.diff(np.r_[starts, len(par)])
        vals = child["val"]
        vmin = np.minimum.reduceat(vals, starts)
        vmax = np.maximum.reduceat(vals, starts)
        vsum = np.add.reduceat(vals, starts) % 10
        sorted_vals = vals[np.lexsort((vals, par))]
        vmed = (sorted_vals[starts + (counts - 1) // 2] + sorted_vals[starts + counts // 2]) // 2
        op = up["op"][owner]
        up["val"][owner] = np.choose(op, [vmin, vmax, vmed, vsum])  # order of OPERATORS

    for lv in kept:
        row = row_of_tree[lv["tree"]]
        pos = lv["pos"]
        ops = lv["is_op"]
        tokens[row[ops], pos[ops]] = OP_IDS[lv["op"][ops]]
        tokens[row[ops], pos[ops] + lv["size"][ops] - 1] = CLOSE_ID
        tokens[row[~ops], pos[~ops]] = DIGIT_IDS[lv["value"][~ops]]
    labels = kept[0]["val"].astype(np.int64)  # roots are in tree order
    return tokens, length[accept].astype(np.int32), labels


def generate(n: int, *, max_depth: int, max_args: int, min_length: int, max_length: int, seed: int,
             workers: int | None = None, chunk_trees: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` distinct ListOps samples in a fixed order: (tokens (n, max_length) uint8, lengths, labels).

    Deterministic in `seed` whatever the number of worker processes: chunk i of trees is drawn from the seed
    (seed, i) and chunks are consumed in order, duplicates (earlier ones win) dropped.
    """
    if chunk_trees is None:
        chunk_trees = int(np.clip(2_000_000 // max_length, 256, 8192))
    workers = workers or min(os.cpu_count() or 1, 8)
    params = (max_depth, max_args, min_length, max_length)
    seen: set[bytes] = set()
    out_tokens = np.zeros((n, max_length), dtype=np.uint8)
    out_lengths = np.zeros(n, dtype=np.int32)
    out_labels = np.zeros(n, dtype=np.int64)
    filled = 0
    chunk = 0
    drawn = 0
    executor = None
    if workers > 1 and n > PARALLEL_MIN:
        executor = ProcessPoolExecutor(workers, mp_context=get_context("fork"))
    try:
        while filled < n:
            wave = [(seed, chunk + i, chunk_trees) + params for i in range(4 * workers if executor else 1)]
            chunk += len(wave)
            results = executor.map(_generate_chunk, wave) if executor else map(_generate_chunk, wave)
            for tokens, lengths, labels in results:
                drawn += chunk_trees
                for i in range(len(labels)):
                    if filled == n:
                        break
                    digest = hashlib.blake2b(tokens[i, :lengths[i]].tobytes(), digest_size=16).digest()
                    if digest in seen:
                        continue
                    seen.add(digest)
                    out_tokens[filled] = tokens[i]
                    out_lengths[filled] = lengths[i]
                    out_labels[filled] = labels[i]
                    filled += 1
            if drawn >= 200_000 and filled < drawn * 1e-4:
                raise GeneratorStalled(filled, drawn)
    finally:
        if executor:
            executor.shutdown()
    return out_tokens, out_lengths, out_labels


class GeneratorStalled(RuntimeError):
    def __init__(self, kept: int, drawn: int) -> None:
        super().__init__(f"only {kept} of {drawn} drawn trees were accepted and distinct")
        self.kept, self.drawn = kept, drawn


# ----------------------------------------------------------------------------------------------------------------
# loaders


@dataclass(frozen=True)
class GeneratedParams:
    max_depth: int = 10  # LRA generator flags
    max_args: int = 10
    min_length: int = 500  # kept: min_length < length < max_length (strict, as LRA)
    max_length: int = 2000  # also the padded length T


class ListOpsGenerated(GeneratedLoader):
    name = "listops-generated"
    Params = GeneratedParams
    num_classes = 10
    vocab_size = VOCAB_SIZE
    description = "ListOps drawn locally with the LRA generator's algorithm"

    def seq_len(self, p: GeneratedParams) -> int:
        return p.max_length

    def check(self, p: GeneratedParams) -> None:
        require(1 <= p.max_depth <= 20, "data.max_depth", p.max_depth, "must be in 1..20", "LRA uses 10")
        require(2 <= p.max_args <= 20, "data.max_args", p.max_args, "must be in 2..20", "LRA uses 10")
        require(p.min_length >= 0, "data.min_length", p.min_length, "must be >= 0", "LRA uses 500")
        require(p.max_length >= 2, "data.max_length", p.max_length, "must be >= 2", "LRA uses 2000")
        require(p.min_length + 1 < p.max_length, "data.min_length", p.min_length,
                f"leaves no length strictly between it and data.max_length={p.max_length}",
                "lower data.min_length or raise data.max_length")
        longest = max_tree_length(p.max_depth, p.max_args)
        require(longest > p.min_length, "data.min_length", p.min_length,
                f"no tree of depth <= {p.max_depth} with <= {p.max_args} args is longer than it (longest {longest})",
                f"lower data.min_length below {longest} or raise data.max_depth")

    def generate(self, p: GeneratedParams, sizes: dict[str, int], seed: int, builder: Builder) -> dict:
        total = sum(sizes.values())
        try:
            tokens, lengths, labels = generate(total, max_depth=p.max_depth, max_args=p.max_args,
                                               min_length=p.min_length, max_length=p.max_length, seed=seed)
        except GeneratorStalled as error:
            raise ConfigError("data.min_length", p.min_length, f"the generator stalled: {error}",
                              "loosen data.min_length/data.max_length or lower the dataset sizes") from None
        info = {}
        start = 0
        for split in ("train", "dev", "test"):
            stop = start + sizes[split]
            builder.save(f"{split}.tokens", tokens[start:stop])
            builder.save(f"{split}.lengths", lengths[start:stop])
            builder.save(f"{split}.labels", labels[start:stop])
            info[split] = {"count": stop - start, "label_histogram": label_histogram(labels[start:stop]),
                           "mean_length": round(float(lengths[start:stop].mean()), 1)}
            start = stop
        return {"splits": info}


@dataclass(frozen=True)
class ReleaseParams:
    max_length: int = 2000  # LRA listops input pipeline: max_length=2000 (the release's lengths are < 2000)


class ListOpsRelease(ReleaseLoader):
    name = "listops"
    Params = ReleaseParams
    num_classes = 10
    vocab_size = VOCAB_SIZE
    description = "ListOps from the LRA release files"
    layout = ("PATH/basic_train.tsv, PATH/basic_val.tsv, PATH/basic_test.tsv (tab-separated, header "
              "'Source<TAB>Target'), as in lra_release/listops-1000/")
    FILES = {"train": "basic_train.tsv", "dev": "basic_val.tsv", "test": "basic_test.tsv"}

    def seq_len(self, p: ReleaseParams) -> int:
        return p.max_length

    def check(self, p: ReleaseParams) -> None:
        require(p.max_length >= 2, "data.max_length", p.max_length, "must be >= 2", "LRA uses 2000")

    def locate(self, source: Path, p) -> Path:
        return find_layout(source, ["basic_train.tsv"], ["", "listops-1000", "lra_release/listops-1000"],
                           self.layout)

    def source_files(self, folder: Path, p) -> list[Path]:
        return [folder / name for name in self.FILES.values()]

    def prepare(self, p: ReleaseParams, folder: Path, builder: Builder) -> dict:
        info = {}
        checksums = {}
        for split, name in self.FILES.items():
            path = folder / name
            checksums[name] = sha256_file(path)
            rows, labels = read_tsv(path)
            full = np.array([len(r) for r in rows], dtype=np.int32)
            tokens = builder.array(f"{split}.tokens", (len(rows), p.max_length), np.uint8)
            for i, row in enumerate(rows):
                row = row[: p.max_length]
                tokens[i, : len(row)] = row
            builder.save(f"{split}.lengths", np.minimum(full, p.max_length).astype(np.int32))
            builder.save(f"{split}.full_lengths", full)
            builder.save(f"{split}.labels", np.asarray(labels, dtype=np.int64))
            info[split] = {"file": name, "count": len(rows), "label_histogram": label_histogram(np.asarray(labels)),
                           "truncated": int((full > p.max_length).sum()), "longest": int(full.max(initial=0))}
        return {"splits": info, "source_sha256": checksums}


def read_tsv(path: Path) -> tuple[list[list[int]], list[int]]:
    """Rows of token ids and labels of one release tsv; a malformed line raises DataFileError(path, line)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise DataFileError(path, line, f"not UTF-8 text ({error.reason})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise DataFileError(path, 1, "empty file: expected the header 'Source<TAB>Target'")
    header = [f.strip().strip('"') for f in lines[0].rstrip("\r").split("\t")]
    if header != ["Source", "Target"]:
        raise DataFileError(path, 1, f"header is {lines[0].strip()!r}, expected 'Source<TAB>Target'")
    rows, labels = [], []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.rstrip("\r").split("\t")
        if len(fields) != 2:
            raise DataFileError(path, number, f"has {len(fields)} tab-separated fields, expected 2 (Source, Target)"
                                + (" (the file may be truncated)" if number == len(lines) else ""))
        source, target = fields[0].strip().strip('"'), fields[1].strip().strip('"')
        try:
            label = int(target)
        except ValueError:
            raise DataFileError(path, number, f"Target {target!r} is not an integer") from None
        if not 0 <= label <= 9:
            raise DataFileError(path, number, f"Target {label} is outside 0..9")
        tokens = tokenize(source)
        try:
            ids = encode(tokens)
        except KeyError as error:
            raise DataFileError(path, number, f"unknown token {error.args[0]!r} (known: {' '.join(VOCAB[1:])})") \
                from None
        if not ids:
            raise DataFileError(path, number, "empty Source")
        rows.append(ids)
        labels.append(label)
    return rows, labels
