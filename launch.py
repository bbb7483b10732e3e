"""One run: `python launch.py [overrides]`; a sweep: `python launch.py -m ...`. See README.md."""

import os
import signal
import sys


def _interrupted_at_start(signum: int, frame: object) -> None:
    """Ctrl-C before lra's own handlers are in place (imports, composing and checking the config): one line and
    out at once, exit 130. Raising KeyboardInterrupt there prints a traceback from wherever it landed, and an
    import it cuts short can fail later with an unrelated error (a RecursionError in numpy, seen)."""
    print("interrupted (SIGINT) during start-up; nothing was trained: run the same command again",
          file=sys.stderr, flush=True)
    os._exit(130)


_interrupted_at_start.lra_startup = True  # type: ignore[attr-defined]  # lra.parallel.interrupt: not a launcher's handler
signal.signal(signal.SIGINT, _interrupted_at_start)  # first of all, before the imports below

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from lra import redaction  # noqa: E402
from lra.disk import DiskFullError  # noqa: E402
from lra.errors import ConfigError  # noqa: E402
from lra.parallel.place import hydra_overrides_for_rank  # noqa: E402


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | tuple[float, ...]:
    """Train one model; return the metric a sweeper optimises (sweep.objective)."""
    from lra.config import validate  # deferred for start-up: `--help` and `--cfg` never import torch

    redaction.install()  # again in a launcher's worker process (joblib, submitit), which did not run __main__
    redaction.redact_files(_hydra_record_files())
    try:
        validate(cfg)  # before the heavier imports below: a bad config fails fast
        from lra.run.train import train  # deferred for start-up: a bad config fails before torch loads

        metrics = train(cfg)
    except ConfigError as error:
        if _is_multirun():
            raise  # the sweeper records a failed job and goes on
        _remove_unused_run_dir()
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except DiskFullError as error:  # a fault, not the user's input: exit 1; the checkpoints are as they were
        if _is_multirun():
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    objective = cfg.sweep.objective  # a list: a multi-objective Optuna sweep, one value per objective
    return tuple(metrics[name] for name in objective) if OmegaConf.is_list(objective) else metrics[objective]


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def _hydra_record_files() -> list[Path]:
    """The files Hydra wrote for this job before it started (`.hydra/*.yaml`, the sweep's `multirun.yaml`),
    which hold the command line as typed: a password in an override is masked in them."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    files = list((folder / (hydra_cfg.output_subdir or ".hydra")).glob("*.yaml")) if hydra_cfg.output_subdir else []
    if _is_multirun():
        files.append(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
    return files


def _remove_unused_run_dir() -> None:
    """A run refused before it trained (a problem only the data shows) leaves no output folder: remove the run
    folder Hydra made if it holds nothing but Hydra's `.hydra/` and the log, and its parents Hydra made (empty,
    below the launch folder)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir).resolve()
    if not folder.is_dir() or not {p.name for p in folder.iterdir()} <= {".hydra", f"{hydra_cfg.job.name}.log"}:
        return
    shutil.rmtree(folder, ignore_errors=True)
    launch_dir = Path(hydra_cfg.runtime.cwd).resolve()
    parent = folder.parent
    while parent != launch_dir and launch_dir in parent.parents:
        try:
            parent.rmdir()  # only an empty folder
        except OSError:
            break
        parent = parent.parent


def _check_command_line() -> None:
    """Every override and every config the command would train, checked before Hydra makes anything (options
    written after the overrides, `launch.py attention=softmax -m`, put first, as Hydra needs them)."""
    from lra.config.overrides import check_command_line, hydra_order  # deferred for start-up: only `__main__` needs it

    try:
        sys.argv[1:] = hydra_order(sys.argv[1:])
        check_command_line(sys.argv[1:], calling_file=os.path.abspath(__file__), config_path="conf",
                           config_name="config")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    redaction.install()  # before Hydra makes its log handlers: every line printed or logged is redacted
    _check_command_line()
    sys.argv += hydra_overrides_for_rank()  # torchrun's and srun's ranks other than 0: a folder of their own
    main()
