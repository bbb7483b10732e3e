"""`python -m lra.bench {attention,step,budget,gpu}`: speed and memory, measured interleaved in one process.

  python -m lra.bench attention --lengths 1024 4096            # the five mechanisms, fwd+bwd, ratios to softmax
  python -m lra.bench attention --mechanisms softmax hrr-individual:block_size=0 hrr-individual:block_size=256
  python -m lra.bench attention --compile --lengths 1024        # eager and torch.compile side by side
  python -m lra.bench step --task listops-small                 # train_step per chunk size, and the loader
  python -m lra.bench budget --task listops --memory-budget-mb 4000   # the chunk auto_chunk_size picks
  python -m lra.bench attention --save before ... ; python -m lra.bench attention --compare before --fail-on-regression
  python -m lra.bench gpu                                       # on a GPU: the GPU tests and both benchmarks

Each prints markdown tables; --json PATH writes the full result, --mlflow logs a run to the experiment `bench`
($MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this folder). On a CPU that other jobs keep busy, compare with
--threads 1 (step: hardware.num_threads=1): there every parallel op can stall waiting for its second thread.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

import torch

from lra.attention import ATTENTIONS
from lra.bench import history
from lra.bench.attention import default_candidates, run_attention_bench
from lra.bench.gpu import failed, gpu_table, run_gpu_check
from lra.bench.output import attention_metrics, attention_report, log_to_mlflow, step_metrics, step_report, write_json
from lra.bench.step import compose, run_step_bench
from lra.config import resolve_device, resolve_precision
from lra.errors import ConfigError
from lra.run.chunking import full_length_batch, probe_chunk_size
from lra.run.step import autocast_context
from lra.run.train import build_model


class _Parser(argparse.ArgumentParser):
    """argparse with our error form: one `error:` line (no usage block), exit 2."""

    def error(self, message: str) -> NoReturn:
        argument, _, problem = message.partition(": ")
        key = argument.removeprefix("argument ").split("/")[0] if problem else self.prog
        kind, _, value = problem.partition(": ")
        if kind.startswith("invalid ") and value:  # "invalid int value: 'abc'"
            key, problem = f"{key}={value}", kind
        print(f"error: {key}: {problem or message}; fix: see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


# (argument, attribute, lowest allowed value, what it is): checked after parsing, before anything is measured
_LIMITS = (
    ("--lengths", "lengths", 1, "sequence lengths"),
    ("--batch", "batch", 1, "the batch size"),
    ("--heads", "heads", 1, "the number of heads"),
    ("--head-dim", "head_dim", 1, "the head dimension"),
    ("--matmul-size", "matmul_size", 1, "the GEMM size"),
    ("--threads", "threads", 1, "torch threads"),
    ("--repeats", "repeats", 1, "timed rounds"),
    ("--warmup", "warmup", 0, "untimed rounds"),
    ("--memory-budget-mb", "memory_budget_mb", None, "the memory budget"),
)


def check_args(args: argparse.Namespace) -> None:
    """Every numeric argument in range, as one ConfigError naming the argument, its value and the fix."""
    for flag, name, low, what in _LIMITS:
        value = getattr(args, name, None)
        if value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if low is None:
                if not item > 0:
                    raise ConfigError(flag, item, f"{what} must be positive", f"give {flag} > 0 (megabytes)")
            elif item < low:
                raise ConfigError(flag, item, f"{what} must be at least {low}", f"give {flag} >= {low}")
    margin = getattr(args, "margin", None)
    if margin is not None and not 0 < margin <= 1:
        raise ConfigError("--margin", margin, "must lie in (0, 1]", "give --margin 0.8")
    if getattr(args, "command", None) == "attention" and not args.lengths:
        raise ConfigError("--lengths", args.lengths, "no lengths", "give at least one, e.g. --lengths 1024")


def _common(p: argparse.ArgumentParser, repeats: int, warmup: int) -> None:
    p.add_argument("--repeats", type=int, default=repeats, help="timed rounds (default %(default)s)")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed rounds first (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write the full result as JSON")
    p.add_argument("--mlflow", action="store_true", help="log params, metrics and the JSON to the experiment `bench`")
    p.add_argument("--save", metavar="NAME", help="keep the result as RESULTS_DIR/NAME.json for later --compare")
    p.add_argument("--compare", metavar="NAME", help="mark each figure IMPROVED, SAME or REGRESSED against the "
                                                     "saved result NAME, beyond the rounds' own noise")
    p.add_argument("--fail-on-regression", action="store_true", help="with --compare: exit 1 if a figure "
                                                                      "REGRESSED")
    p.add_argument("--tolerance", type=float, default=0.05, help="with --compare: the smallest relative change "
                                                                  "called a change (default %(default)s)")
    p.add_argument("--results-dir", default="bench-results", help="where --save and --compare keep results "
                                                                  "(default %(default)s)")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m lra.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    a = sub.add_parser("attention", help="fwd+bwd time and peak memory of each mechanism over lengths")
    a.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    a.add_argument("--batch", type=int, default=1)
    a.add_argument("--heads", type=int, default=8)
    a.add_argument("--head-dim", type=int, default=64)
    a.add_argument("--mechanisms", nargs="+", metavar="NAME[:KEY=VALUE,...]",
                   help="registry names, with options (default: the five mechanisms with their defaults)")
    a.add_argument("--compile", action="store_true",
                   help="also run each mechanism through torch.compile (first call per length = compile time)")
    a.add_argument("--matmul-size", type=int, default=2048, help="N of the N x N float32 GEMM whose FLOP/s is "
                                                                  "the machine's matmul rate (default %(default)s)")
    a.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    a.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    _common(a, repeats=5, warmup=1)

    s = sub.add_parser("step", help="training-step time and memory per chunk size, and the data loader")
    s.add_argument("--task", default="listops-small")
    s.add_argument("--attention", nargs="+", default=["all"], help="'all' or attention names")
    s.add_argument("overrides", nargs="*", help="Hydra overrides of the run config, e.g. hardware=cpu")
    _common(s, repeats=10, warmup=2)

    b = sub.add_parser("budget", help="the chunk size auto_chunk_size picks for each attention")
    b.add_argument("--task", default="listops-small")
    b.add_argument("--attention", nargs="+", default=["all"])
    b.add_argument("--memory-budget-mb", type=float, help="CPU: the budget (default: available memory); "
                                                          "CUDA: a cap on the free memory")
    b.add_argument("--margin", type=float, default=0.8)
    b.add_argument("overrides", nargs="*", help="Hydra overrides of the run config")

    g = sub.add_parser("gpu", help="on a GPU: the GPU tests, then the attention and step benchmarks, one table")
    g.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    g.add_argument("--task", default="listops-small", help="the step benchmark's task (default %(default)s)")
    g.add_argument("--repeats", type=int, default=10, help="timed rounds (default %(default)s)")
    g.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default %(default)s)")
    g.add_argument("--no-tests", action="store_true", help="only the benchmarks")
    g.add_argument("--json", metavar="PATH", help="write the full result as JSON")
    g.add_argument("overrides", nargs="*", help="Hydra overrides of the step benchmark's config")
    return ap


def _attention_names(names: list[str]) -> list[str]:
    if "all" in names:
        return list(ATTENTIONS)
    if not names:
        raise ConfigError("--attention", names, "names no attention",
                          "give 'all' or attention names before the overrides")
    for name in names:
        if name not in ATTENTIONS:
            raise ConfigError("--attention", name, "unknown attention",
                              f"use 'all' or some of: {', '.join(ATTENTIONS)}")
    return names


def _configs(task: str, attentions: list[str], overrides: list[str]):
    """One composed config per attention. `--attention` takes several values, so overrides written after it
    (`--attention tpr hardware.num_threads=1`) land in its list: an item with `=` is an override, never a name."""

    names = [a for a in attentions if "=" not in a]
    overrides = [a for a in attentions if "=" in a] + list(overrides)
    return {name: compose([f"task={task}", f"attention={name}", *overrides]) for name in _attention_names(names)}


def _check_history_args(args) -> None:
    """Before any measuring: a bad name or a missing saved result fails at once."""

    if args.fail_on_regression and not args.compare:
        raise ConfigError("--fail-on-regression", True, "needs a saved result to compare with",
                          "add --compare NAME")
    if not 0 <= args.tolerance < 1:
        raise ConfigError("--tolerance", args.tolerance, "must lie in [0, 1)", "use e.g. --tolerance 0.05")
    if args.save:
        history.result_path(args.save, args.results_dir)
    if args.compare:
        history.load(args.compare, args.results_dir, benchmark=args.command)


def _finish(args, result, report: str, params: dict, metrics) -> int:
    """Print, write, log, save and compare; the exit status (1: a figure regressed and that should fail)."""

    print(report)
    if args.json:
        print(f"\nwrote {write_json(result, args.json)}")
    status = 0
    if args.compare:
        saved = history.load(args.compare, args.results_dir, benchmark=result["benchmark"])
        verdicts = history.compare(saved, result, tolerance=args.tolerance)
        print("\n" + history.report(verdicts, args.compare, history.environment_notes(saved, result)))
        if args.fail_on_regression and history.regressed(verdicts):
            print(f"error: a figure REGRESSED against {args.compare}", file=sys.stderr)
            status = 1
    if args.save:
        print(f"\nsaved {history.save(result, args.save, args.results_dir)}")
    if args.mlflow:
        run_id = log_to_mlflow(result, params, metrics, run_name=result["benchmark"])
        print(f"MLflow run {run_id} in experiment `bench`")
    return status


def attention(args) -> int:
    _check_history_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    candidates = default_candidates(args.mechanisms, args.compile)
    result = run_attention_bench(candidates, lengths=args.lengths, batch=args.batch, heads=args.heads,
                                 head_dim=args.head_dim, repeats=args.repeats, warmup=args.warmup, device=device,
                                 seed=args.seed, matmul_size=args.matmul_size,
                                 log=lambda m: print(m, file=sys.stderr, flush=True))
    params = {**{k: v for k, v in result["setup"].items()}, "device": str(device), "threads": torch.get_num_threads()}
    return _finish(args, result, attention_report(result), params, attention_metrics(result))


def step(args) -> int:
    _check_history_args(args)
    cfgs = _configs(args.task, args.attention, args.overrides)
    result = run_step_bench(cfgs, repeats=args.repeats, warmup=args.warmup, seed=args.seed,
                            log=lambda m: print(m, file=sys.stderr, flush=True))
    params = {k: v for k, v in result["setup"].items() if k not in ("model", "dataset")}
    params["overrides"] = " ".join(args.overrides)
    return _finish(args, result, step_report(result), params, step_metrics(result))


def budget(args) -> int:
    for name, cfg in _configs(args.task, args.attention, args.overrides).items():
        device = resolve_device(cfg.hardware.device)
        m = cfg.model
        torch.manual_seed(cfg.training.seed)
        model = build_model(cfg).to(device)
        example = full_length_batch(1, m.max_seq_len - (m.pooling_mode == "CLS"), m.vocab_size, m.num_classes,
                                    dual_encoder=m.dual_encoder, device=device)
        result = probe_chunk_size(model, example, device=device,
                                  autocast=autocast_context(device, resolve_precision(cfg.training.mixed_precision,
                                                                                      device)),
                                  max_chunk=cfg.training.batch_size, memory_budget_mb=args.memory_budget_mb,
                                  margin=args.margin)
        print(f"{name}: {result.describe()}")
    return 0


def gpu(args) -> int:
    if not torch.cuda.is_available():
        raise ConfigError("gpu", "cuda", "no CUDA device is visible to torch: nothing was run",
                          "run it on a machine with a GPU and a CUDA build of torch")
    result = run_gpu_check(lengths=args.lengths, task=args.task, repeats=args.repeats, warmup=args.warmup,
                           overrides=args.overrides, tests=not args.no_tests,
                           log=lambda m: print(m, file=sys.stderr, flush=True))
    print(gpu_table(result))
    if args.json:
        print(f"\nwrote {write_json(result, args.json)}")
    return 1 if failed(result) else 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        check_args(args)
        return {"attention": attention, "step": step, "budget": budget, "gpu": gpu}[args.command](args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
