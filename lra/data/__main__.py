"""`python -m lra.data`: prepare a task's arrays from the release files, or generate a generated task.

    python -m lra.data tasks
    python -m lra.data prepare text --source ~/lra_release/aclImdb [--root data]
    python -m lra.data generate listops [--root data] [--seed 0]

The tasks are the files of the Hydra task group, conf/task/<name>.yaml: a task's `data` node and `dataset` sizes
are those of `python launch.py task=<name>` (lra/data/tasks.py composes them).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

from lra.data import LOADERS, check_source_used, prepare
from lra.data.base import GeneratedLoader
from lra.data.tasks import task_names, task_preset, task_presets
from lra.errors import ConfigError

EPILOG = """examples:
  python -m lra.data tasks                                           list the tasks and what they need
  python -m lra.data prepare listops-release --source lra_release/listops-1000
                                                                     (the release files of ListOps)
  python -m lra.data prepare text --source aclImdb                   (aclImdb_v1.tar.gz, extracted)
  python -m lra.data prepare retrieval --source lra_release/tsv_data
  python -m lra.data prepare image --source cifar-10-batches-bin     (cifar-10-binary.tar.gz, extracted)
  python -m lra.data prepare pathfinder32 --source lra_release/pathfinder32 --set difficulty=easy
  python -m lra.data prepare image-small                             (the digits ship with scikit-learn)
  python -m lra.data generate listops                                (96000/2000/2000, as LRA's generator)
  python -m lra.data generate pathfinder-small --train 2000

Prepared arrays go to <root>/<loader>/<hash of the parameters>/ with a manifest.json; a training run with the
same `data` config finds them there (data.root, default `data`). Generated tasks are drawn from the task's
data.seed (as training draws them) unless --seed says otherwise."""


def _value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _data_config(args) -> dict:
    data = task_preset(args.task)["data"]
    data["root"] = args.root
    if getattr(args, "source", None):
        data["source"] = args.source
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError("--set", item, "is not KEY=VALUE", "write e.g. --set max_length=1000")
        data[key.removeprefix("data.")] = _value(value)
    return data


def _run(args, sizes=None, seed: int | None = None) -> int:
    data = _data_config(args)
    if getattr(args, "source", None):
        check_source_used(data, key="--source",
                          switch=f"`python -m lra.data prepare {{}} --source {shlex.quote(args.source)}`")
    loader = LOADERS.get(data["loader"])
    if isinstance(loader, GeneratedLoader) and sizes is None:
        sizes = task_preset(args.task)["dataset"]
    if seed is None:
        seed = data.get("seed", 0)
    started = time.time()
    folder, manifest = prepare(data, sizes=sizes, seed=seed, force=args.force)
    seconds = time.time() - started
    print(f"{args.task}: {folder} ({seconds:.1f} s; {folder}/manifest.json has the details)")
    for key in ("source", "skipped_empty_images"):
        if key in manifest:
            print(f"  {key}: {manifest[key]}")
    for split, info in manifest.get("splits", {}).items():
        print(f"  {split}: {json.dumps(info, sort_keys=True)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    names = task_names()

    parser = argparse.ArgumentParser(prog="python -m lra.data", description=__doc__.split("\n")[0],
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("tasks", help="list the tasks, their data nodes, sample counts and model sizes")
    bench = commands.add_parser("bench", help="time batch gathering per task (and, with --generators, the "
                                              "Pathfinder generator)")
    bench.add_argument("--tasks", nargs="*", choices=names, metavar="TASK",
                       help="tasks to time (default: one per distinct array shape): " + ", ".join(names))
    bench.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    bench.add_argument("--seconds", type=float, default=2.0, help="time per task (default 2)")
    bench.add_argument("--generators", action="store_true", help="also time the Pathfinder generator")
    bench.add_argument("--images", type=int, default=1000, help="images per generator timing (default 1000)")
    bench.add_argument("--workers", type=int, default=None, help="generator processes (default: all cores)")
    bench.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")

    for name, help_text in (("prepare", "prepare a task's arrays from its release files (once)"),
                            ("generate", "generate a generated task's arrays now (else the first run does)")):
        sub = commands.add_parser(name, help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter,
                                  epilog=EPILOG)
        sub.add_argument("task", choices=names, metavar="TASK",
                         help=f"a file of conf/task/ (as launch.py's task=...): one of: {', '.join(names)}")
        sub.add_argument("--root", default="data", help="folder of prepared arrays (data.root; default: data)")
        sub.add_argument("--set", action="append", metavar="KEY=VALUE",
                         help="override one parameter of the task's data node (repeatable), e.g. max_length=1000")
        sub.add_argument("--force", action="store_true", help="prepare again even if matching arrays exist")
        if name == "prepare":
            sub.add_argument("--source", help="the folder with the release files (data.source)")
        else:
            sub.add_argument("--seed", type=int, default=None, help="generator seed (default: the task's data.seed)")
            for split in ("train", "dev", "test"):
                sub.add_argument(f"--{split}", type=int, help=f"samples in {split} (default: the task's)")

    args = parser.parse_args(argv)
    try:
        if args.command == "tasks":
            for task, spec in task_presets().items():
                print(f"{task}:\n  data: {json.dumps(spec['data'])}\n  dataset: {json.dumps(spec['dataset'])}"
                      f"\n  model: {json.dumps(spec['model'])}")
            return 0
        if args.command == "bench":
            from lra.bench.data import main as bench_main  # deferred for start-up: the benchmarks load torch

            return bench_main(args)
        if args.command == "prepare":
            return _run(args)
        sizes = task_preset(args.task)["dataset"]
        for split in ("train", "dev", "test"):
            if getattr(args, split) is not None:
                sizes[split] = getattr(args, split)
        return _run(args, sizes=sizes, seed=args.seed)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
