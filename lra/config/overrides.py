"""Check a `launch.py` command line before Hydra runs it: every override, and every value of a sweep.

Hydra reports a misspelt key, an unknown group option or an unparsable override in several lines, with advice
that is often wrong ("use +model.num_layer=4"), exits 1, and by then may have made an output folder (and a sweep's
parent MLflow run). `check_command_line(argv)` composes the config here first, the way Hydra will (same search
path, config name, `-cd`, `hydra.mode`), turns the first problem into one `ConfigError`
(`<key>=<value>: <problem>; fix: <nearest valid names>`), and runs `lra.config.validate` on every config the
command would train, so nothing is made for a config that can never run.

A multirun is checked value by value: each value of each sweep (`attention=softmax,tpr`, `choice(...)`,
`range(...)`, `glob(...)`, the sweeper's `params`) composed with the other overrides at their first value; an
interval is checked at its middle.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from lra.config import validate as validate_config
from lra.errors import ConfigError, Verbatim

MAX_VALUES_PER_SWEEP = 50  # a long range() is checked at its first values and its last one
HYDRA_DOCS_HINT = "see `python launch.py --help` for the groups and `python launch.py --cfg job` for the keys"


@dataclass
class CommandLine:
    """What Hydra will do with argv: the config, the overrides and whether it trains (and how often)."""

    args: argparse.Namespace
    config_name: Optional[str]
    overrides: list[str]
    trains: bool  # a run or a multirun (not --cfg, --help, --info, ...)


def _parser() -> argparse.ArgumentParser:
    """Hydra's command-line parser, with its errors (a usage block of 8 lines) as one ConfigError."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def refuse(message: str) -> None:
        raise ConfigError("command line", Verbatim(message), "not understood",
                          "see `python launch.py --help`; overrides are key=value, options such as -m start with -")

    parser.error = refuse  # type: ignore[method-assign]
    return parser


def hydra_order(argv: Sequence[str]) -> list[str]:
    """`argv` with Hydra's options before the overrides: `launch.py attention=softmax -m training.seed=1,2` is
    what `launch.py -m attention=softmax training.seed=1,2` means, but Hydra's parser refuses overrides on both
    sides of an option. Raises ConfigError for a command line argparse cannot read."""
    parsed = _parser().parse_intermixed_args(list(argv))
    rest = list(argv)
    for override in reversed(parsed.overrides):  # remove the overrides from the end, in order
        del rest[len(rest) - 1 - rest[::-1].index(override)]
    return rest + list(parsed.overrides)


def parse_command_line(argv: Sequence[str], config_name: Optional[str]) -> CommandLine:
    args = _parser().parse_args(list(argv))
    name = args.config_name if args.config_name is not None else config_name
    quiet = args.help or args.hydra_help or args.info is not None or args.shell_completion
    return CommandLine(args, name, list(args.overrides), trains=not quiet and args.cfg is None)


class Composer:
    """Hydra's own config loader for this command line (the search path `@hydra.main` would build)."""

    def __init__(self, calling_file: str, config_path: Optional[str], args: argparse.Namespace) -> None:
        from hydra._internal.hydra import Hydra
        from hydra._internal.utils import create_automatic_config_search_path
        from hydra.core.global_hydra import GlobalHydra

        if args.config_path is not None:
            config_path = args.config_path
        search_path = create_automatic_config_search_path(calling_file, None, config_path)
        if args.config_dir is not None:
            from hydra.core.config_search_path import SearchPathQuery

            folder = Path(args.config_dir).resolve()
            if not folder.is_dir():
                raise ConfigError("--config-dir", args.config_dir, "is not a folder",
                                  "give the folder of the config files, e.g. -cd sweeps")
            search_path.prepend(provider="command-line", path=f"file://{folder}",
                                anchor=SearchPathQuery(provider="schema"))
        self.global_hydra = GlobalHydra.instance()
        self.was_initialized = self.global_hydra.is_initialized()
        self.hydra = Hydra.create_main_hydra2(task_name=Path(calling_file).stem, config_search_path=search_path)

    def close(self) -> None:
        if not self.was_initialized:
            self.global_hydra.clear()

    def compose(self, config_name: Optional[str], overrides: Sequence[str], multirun: bool = False) -> DictConfig:
        from hydra.types import RunMode

        return self.hydra.compose_config(config_name=config_name, overrides=list(overrides),
                                         run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN,
                                         with_log_configuration=False)

    def mode_is_multirun(self, config_name: Optional[str], overrides: Sequence[str]) -> bool:
        from hydra.types import RunMode

        return self.hydra.get_mode(config_name=config_name, overrides=list(overrides)) == RunMode.MULTIRUN

    def groups(self, parent: str = "") -> list[str]:
        """Every config group below `parent` ("attention", "hydra/launcher", ...)."""
        loader = self.hydra.config_loader
        found = []
        for name in loader.list_groups(parent):
            path = f"{parent}/{name}" if parent else name
            found.append(path)
            found.extend(self.groups(path))
        return found

    def options(self, group: str) -> list[str]:
        return sorted(self.hydra.config_loader.get_group_options(group))


# ---------------------------------------------------------------------------------------------------------------
# parsing


def _parse(text: str, composer: Optional[Composer] = None) -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = composer.hydra.config_loader if composer is not None else None
    return OverridesParser.create(config_loader=loader).parse_overrides([text])[0]


def _key_and_value(text: str) -> tuple[str, Verbatim]:
    """An override's key (without ~, + or ++) and its value as typed."""
    key, sep, value = text.partition("=")
    return key.lstrip("~+"), Verbatim(value if sep else "")


def parse_error(text: str, error: Exception) -> ConfigError:
    """An override Hydra's grammar rejects, as one line."""
    key, value = _key_and_value(text)
    detail = str(error).splitlines()
    detail = [line for line in detail if line.strip() and not line.startswith("See https://")]
    reason = detail[-1].strip() if detail else "cannot be parsed"
    reason = reason.removeprefix("LexerNoViableAltException: ")
    if "=" not in text and not text.startswith("~"):
        return ConfigError(key, value, "an override needs a value", f"write {key}=VALUE")
    if value.count("[") != value.count("]") or value.count("{") != value.count("}"):
        fix = "close the brackets (a list is [1,2]), or quote the value for a string: " + f"{key}='\"{value}\"'"
    elif value.count("(") != value.count(")"):
        fix = "close the parentheses, e.g. choice(1,2) or interval(0.1,0.5)"
    else:
        fix = (f"quote a value with special characters ({key}='\"{value}\"'); a list is [a,b], a sweep a,b with "
               "-m")
    return ConfigError(key, value, f"Hydra cannot parse this override ({reason})", fix)


def _sweep_values(override: Any) -> list[str]:
    """Each value of a sweep override as the text after `=`, enough of them to check."""
    from hydra.core.override_parser.types import IntervalSweep

    if override.is_discrete_sweep():
        values = list(itertools.islice(override.sweep_string_iterator(), MAX_VALUES_PER_SWEEP + 1))
        if len(values) > MAX_VALUES_PER_SWEEP:
            *_, last = override.sweep_string_iterator()
            values = values[:MAX_VALUES_PER_SWEEP] + [last]
        return values
    sweep = override.value()
    if isinstance(sweep, IntervalSweep):  # its middle: a bound may be a value the sampler never gives (0, 1)
        low, high = sweep.start, sweep.end
        if "int" in (sweep.tags or set()) or (isinstance(low, int) and isinstance(high, int)):
            return [str((int(low) + int(high)) // 2)]
        return [repr((float(low) + float(high)) / 2)]
    return []


# ---------------------------------------------------------------------------------------------------------------
# explaining a failed composition


def _known_keys(node: Any, prefix: str = "") -> list[str]:
    if not OmegaConf.is_dict(node):
        return [prefix] if prefix else []
    keys = [prefix] if prefix else []
    for key in node.keys():
        keys.extend(_known_keys(node._get_node(key), f"{prefix}.{key}" if prefix else str(key)))
    return keys


def _nearest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    candidates = sorted(set(candidates))
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
    if not close and "." in name:  # a misspelt last part: compare siblings
        parent, leaf = name.rsplit(".", 1)
        siblings = [c for c in candidates if c.rsplit(".", 1)[0] == parent and "." in c]
        close = [f"{parent}.{m}" for m in difflib.get_close_matches(leaf, [c.rsplit(".", 1)[1] for c in siblings],
                                                                     n=n, cutoff=0.5)]
    return close


def explain(composer: Composer, config_name: Optional[str], overrides: Sequence[str], culprit: str,
            error: Exception) -> ConfigError:
    """Hydra's exception for `culprit` (composed after `overrides`) as one ConfigError with the nearest names."""
    from hydra.errors import MissingConfigException

    parsed = _parse(culprit)
    key, value = parsed.key_or_group, _key_and_value(culprit)[1]
    groups = composer.groups()
    message = str(error)
    cause = error.__cause__
    if isinstance(error, MissingConfigException) or (parsed.key_or_group in groups and "Could not find" in message):
        group = key.split("@")[0]
        options = composer.options(group) if group in groups else list(error.options or [])
        close = _nearest(value, options, n=1)
        hint = f"did you mean {group}={close[0]}? " if close else ""
        return ConfigError(key, value, f"no such option of the config group {group}",
                           f"{hint}use one of: {', '.join(options)}")
    if "Ambiguous value" in message or "requires --multirun" in message:
        return ConfigError(key, value, "a list of values is a sweep",
                           f"add -m to run one job per value (python launch.py -m {culprit}), or write a list as "
                           f"{key}=[{value}] or a string as {key}='\"{value}\"'")
    if "Sweeping over Hydra's configuration is not supported" in message:
        return ConfigError(key, value, "Hydra's own settings cannot be swept", "give one value")
    if "Could not append to config. An item is already at" in message:
        return ConfigError(key, value, "the key exists already, so '+' cannot add it",
                           f"set it without '+': {key}={value}")
    if "Could not delete from config" in message or "Could not delete" in message:
        known = _keys_without(composer, config_name, overrides)
        close = _nearest(key, [k for k in known + groups if not key.startswith(k + ".")], n=1)
        hint = f"did you mean ~{close[0]}? " if close else ""
        return ConfigError(f"~{key}", value, "there is no such key to delete", f"{hint}{HYDRA_DOCS_HINT}")
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) or "not in struct" in message:
        full = key  # the override's whole key (Hydra's full_key names only its first missing part)
        known = _keys_without(composer, config_name, overrides)
        close = _nearest(full, [k for k in known + [g for g in groups if not g.startswith("hydra")]
                                if k != full and not full.startswith(k + ".")])
        if close:
            fix = "did you mean " + " or ".join(close) + "?"
        else:
            parent = full.rsplit(".", 1)[0] if "." in full else ""
            siblings = sorted(k.rsplit(".", 1)[1] for k in known if "." in k and k.rsplit(".", 1)[0] == parent)
            fix = (f"the keys of {parent} are: {', '.join(siblings)}" if siblings else HYDRA_DOCS_HINT)
        return ConfigError(full, value, "no such key in the config", fix)
    first = (str(cause) if cause is not None else message).strip().splitlines()
    problem = first[0] if first else type(error).__name__
    return ConfigError(key, value, f"Hydra cannot apply this override ({problem})", HYDRA_DOCS_HINT)


def _keys_without(composer: Composer, config_name: Optional[str], overrides: Sequence[str]) -> list[str]:
    try:
        cfg = composer.compose(config_name, overrides)
    except Exception:  # the other overrides fail too: fall back to the config file alone
        try:
            cfg = composer.compose(config_name, [])
        except Exception:
            return []
    return _known_keys(cfg)


def compose_checked(composer: Composer, config_name: Optional[str], overrides: Sequence[str],
                    suspects: Optional[Sequence[str]] = None) -> DictConfig:
    """Compose `overrides` (RUN mode); on failure find the override to blame and raise it as a ConfigError.

    Group choices go first (Hydra applies them before the keys whatever the order), then the overrides one at a
    time: the first whose addition fails is the one to blame. `suspects` limits the blame to those."""
    try:
        return composer.compose(config_name, overrides)
    except ConfigError:
        raise
    except Exception as error:  # Hydra raises several types; each is explained below
        first_error = error
    try:
        composer.compose(config_name, [])
    except Exception as error:  # the config file itself: a missing -cn, a broken defaults list
        first = str(error).strip().splitlines()
        raise ConfigError("--config-name", config_name, first[0] if first else "cannot be composed",
                          "give a config of the config folder (-cn NAME, -cd FOLDER)") from None
    groups = set(composer.groups())
    ordered = sorted(overrides, key=lambda text: _key_and_value(text)[0].split("@")[0] not in groups)
    applied: list[str] = []
    for text in ordered:
        try:
            composer.compose(config_name, applied + [text])
        except Exception as error:
            if suspects is None or text in suspects:
                raise explain(composer, config_name, applied, text, error) from None
            continue  # not to blame here (checked on its own elsewhere): leave it out
        applied.append(text)
    culprit = suspects[-1] if suspects else overrides[-1]  # only the whole set fails: blame the last
    raise explain(composer, config_name, [o for o in overrides if o != culprit], culprit, first_error) from None


# ---------------------------------------------------------------------------------------------------------------
# the check


def app_config(cfg: DictConfig) -> DictConfig:
    """The composed config as the task function sees it: Hydra's own node left out (after HydraConfig is set, so
    `${hydra:...}` still resolves)."""
    from hydra.core.hydra_config import HydraConfig

    if "hydra" not in cfg:
        return cfg
    HydraConfig.instance().set_config(cfg)
    app = OmegaConf.masked_copy(cfg, [key for key in cfg.keys() if key != "hydra"])
    OmegaConf.set_struct(app, True)
    return app


def _sweeper_params(cfg: DictConfig) -> list[str]:
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None)
    if params is None or not OmegaConf.is_dict(params):
        return []
    return [f"{key}={value}" for key, value in params.items() if value is not None]


def jobs_to_check(composer: Composer, line: CommandLine) -> list[tuple[list[str], Optional[str]]]:
    """The override lists to compose and validate: for a run, the command's overrides; for a multirun, one list
    per value of each sweep (the other sweeps at their first value). Each with the override to blame."""
    parsed = []
    for text in line.overrides:
        try:
            parsed.append((text, _parse(text, composer)))
        except Exception as error:
            raise parse_error(text, error) from None
    multirun = line.args.multirun or composer.mode_is_multirun(
        line.config_name, [t for t, o in parsed if o.is_hydra_override() and not o.is_sweep_override()])
    if not multirun:
        return [(list(line.overrides), None)]
    fixed = [t for t, o in parsed if not o.is_sweep_override()]
    sweeps = [(t, o) for t, o in parsed if o.is_sweep_override()]
    given = {o.key_or_group for _, o in parsed}
    try:
        base = composer.compose(line.config_name, fixed, multirun=True)
    except Exception:
        base = None  # the fixed overrides are explained below
    if base is not None:
        for text in _sweeper_params(base):
            try:
                override = _parse(text, composer)
            except Exception as error:
                raise parse_error(text, error) from None
            if override.key_or_group in given:
                continue  # the command line's value wins
            if override.is_sweep_override():
                sweeps.append((text, override))
            else:
                fixed.append(text)
    for text, override in sweeps:
        if override.is_hydra_override():
            raise ConfigError(override.key_or_group, _key_and_value(text)[1], "Hydra's own settings cannot be swept",
                              "give one value (quote a sweeper's search space: "
                              f"'{override.key_or_group}=\"{_key_and_value(text)[1]}\"')")
    choices = []
    for text, override in sweeps:
        values = _sweep_values(override)
        if values:
            choices.append([f"{override.get_key_element()}={value}" for value in values])
    firsts = [options[0] for options in choices]
    jobs: list[tuple[list[str], Optional[str]]] = [(fixed + firsts, None)]
    for index, options in enumerate(choices):
        for option in options[1:]:
            jobs.append((fixed + firsts[:index] + [option] + firsts[index + 1:], option))
    return jobs


def _with_value(composer: Composer, first: DictConfig, text: Optional[str], groups: set[str]) -> Optional[DictConfig]:
    """The first job's config with one key set to another value of its sweep (a compose costs about 10x more);
    None where that takes a compose (a group choice) or fails (the compose then explains why)."""
    import copy

    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.types import OverrideType

    if text is None:
        return None
    override = _parse(text, composer)
    if override.key_or_group.split("@")[0] in groups or override.package is not None or override.is_delete():
        return None
    override.type = OverrideType.CHANGE  # the key is there already: the first value put it there
    cfg = copy.deepcopy(first)
    try:
        ConfigLoaderImpl._apply_overrides_to_config([override], cfg)
    except Exception:
        return None
    return cfg


def check_command_line(argv: Sequence[str], *, calling_file: str, config_path: Optional[str] = "conf",
                       config_name: Optional[str] = "config", validate: bool = True) -> None:
    """Raise ConfigError for the first problem of this `launch.py` command line; return if it can run."""
    line = parse_command_line(argv, config_name)
    args = line.args
    if (args.help or args.hydra_help or args.info is not None or args.shell_completion
            or getattr(args, "experimental_rerun", None) is not None):
        return  # nothing is trained, or the config comes from a pickle Hydra reruns
    composer = Composer(calling_file, config_path, line.args)
    try:
        if not line.trains:  # --cfg: the overrides must compose, the values need not be valid
            for text in line.overrides:
                try:
                    _parse(text)
                except Exception as error:
                    raise parse_error(text, error) from None
            compose_checked(composer, line.config_name, line.overrides)
            return
        jobs = jobs_to_check(composer, line)
        groups = set(composer.groups())
        first: Optional[DictConfig] = None  # the first job's config, without Hydra's node
        checked: set[tuple[str, ...]] = set()
        for overrides, suspect in jobs:
            if tuple(overrides) in checked:
                continue
            checked.add(tuple(overrides))
            cfg = _with_value(composer, first, suspect, groups) if first is not None else None
            if cfg is None:
                cfg = app_config(compose_checked(composer, line.config_name, overrides,
                                                 suspects=[suspect] if suspect is not None else None))
            if first is None:
                first = cfg
            if validate:

                validate_config(cfg)
    finally:
        composer.close()
