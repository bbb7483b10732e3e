"""Issue 14, items 7 and 10: every impossible config or argument ends in one `error:` line and exit 2 before any
run, output folder or file exists: Hydra's own override errors, sweeps value by value, the data against the
model, the machine (folders, memory), documented keys in every profile, sources a task would ignore, and the
benchmarks' arguments."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, TINY, launch, launch_args, launch_env

from lra.errors import ConfigError

HYDRA_NOISE = ("Traceback", "HYDRA_FULL_ERROR", "To append to your config use", "Could not override")


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a refused command (asserting there is exactly one, printed once, exit 2)."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    for noise in HYDRA_NOISE:
        assert noise not in result.stderr, result.stderr[-3000:]
    message = lines[0].removeprefix("error: ")
    assert (result.stdout + result.stderr).count(message) == 1, "the error is printed once"
    return lines[0]


def assert_nothing_made(tmp: Path) -> None:
    made = sorted(p.name for p in tmp.iterdir())
    for name in ("outputs", "multirun", "mlflow.db", "mlruns", "checkpoints"):
        assert name not in made, (name, made)


def assert_no_run(tmp: Path) -> None:
    """After the data was read: no output folder and no MLflow run (the store itself may exist: it is checked,
    and so made, before the data is read)."""
    made = sorted(p.name for p in tmp.iterdir())
    assert "outputs" not in made and "multirun" not in made, made
    if (tmp / "mlflow.db").exists():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        assert not experiments or client.search_runs(experiments) == []


# ------------------------------------------------------------------------------------------------------------
# Hydra's own errors, as ours

HYDRA_CASES = {
    # id: (overrides, words the error line must contain)
    "misspelt key": (["model.num_layer=4"], ["error: model.num_layer=4: no such key", "did you mean model.num_layers"]),
    "unknown group option": (["attention=flash"],
                             ["error: attention=flash: no such option of the config group attention",
                              "hrr-bundled, hrr-individual, hrr-quadratic, softmax, tpr"]),
    "bad syntax": (["model.num_layers=["], ["error: model.num_layers=[: Hydra cannot parse", "close the brackets"]),
    "misspelt group": (["attentio=tpr"], ["error: attentio=tpr: no such key", "did you mean attention"]),
    "plus on an existing key": (["+model.num_layers=3"], ["model.num_layers=3", "without '+'"]),
    "sweep without -m": (["attention=softmax,tpr"], ["attention=softmax,tpr", "add -m"]),
    "unknown launcher": (["hydra/launcher=nope"], ["hydra/launcher=nope", "joblib"]),
    "no value": (["model.num_layers"], ["model.num_layers=: an override needs a value"]),
    "value for a group of keys": (["model=3"], ["model=3: is a group of keys", "model.<key>=VALUE"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(HYDRA_CASES))
def test_hydra_override_errors_are_one_line(tmp_path: Path, case: str) -> None:
    overrides, words = HYDRA_CASES[case]
    line = error_line(launch(tmp_path, *TINY, *overrides))
    for word in words:
        assert word in line, (word, line)
    assert_nothing_made(tmp_path)
    assert not (tmp_path / "data").exists()


SWEEP_CASES = {
    "unknown option among values": (["attention=softmax,flash"], ["attention=flash", "no such option"]),
    "impossible value among values": (["training.batch_size=16,0"], ["training.batch_size=0", "at least 1"]),
    "misspelt key swept": (["model.num_layr=1,2"], ["model.num_layr=1", "did you mean model.num_layers"]),
    "choice()": (["training.lr_scheduler=choice(cos,step)"], ["training.lr_scheduler='step'", "exp_decay"]),
    "range()": (["model.num_layers=range(0,2)"], ["model.num_layers=0", "at least 1"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SWEEP_CASES))
def test_every_value_of_a_sweep_is_checked_before_the_sweep_starts(tmp_path: Path, case: str) -> None:
    overrides, words = SWEEP_CASES[case]
    line = error_line(launch(tmp_path, *TINY, *overrides, multirun=True))
    for word in words:
        assert word in line, (word, line)
    assert_nothing_made(tmp_path)  # no sweep folder, no parent MLflow run


@pytest.mark.slow
def test_sweep_file_params_are_checked_too(tmp_path: Path) -> None:
    """`-cd sweeps -cn compare_attention` sweeps `hydra.sweeper.params`; a bad fixed value fails at once."""
    args = [sys.executable, str(REPO / "launch.py"), "-cd", str(REPO / "sweeps"), "-cn", "compare_attention",
            *launch_args(tmp_path)[2:], "model.head_dim=0"]
    result = subprocess.run(args, cwd=tmp_path, env=launch_env(tmp_path), capture_output=True, text=True,
                            timeout=300)
    assert "model.head_dim=0: must be at least 1" in error_line(result)
    assert_nothing_made(tmp_path)


def test_sweep_values_are_enumerated_like_the_basic_sweeper(tmp_path: Path) -> None:
    """In-process: which override lists a multirun's check composes (each value once, the others at their
    first value; an interval at its middle; sweeper params from the sweep file)."""
    from lra.config.overrides import Composer, jobs_to_check, parse_command_line

    line = parse_command_line(["-m", "attention=softmax,tpr", "training.seed=0,1,2",
                               "training.learning_rate=interval(0.001,0.003)", "model.num_layers=2"], "config")
    composer = Composer(str(REPO / "launch.py"), "conf", line.args)
    try:
        jobs = jobs_to_check(composer, line)
    finally:
        composer.close()
    first = ["model.num_layers=2", "attention=softmax", "training.seed=0", "training.learning_rate=0.002"]
    assert jobs[0] == (first, None)
    suspects = [suspect for _, suspect in jobs[1:]]
    assert suspects == ["attention=tpr", "training.seed=1", "training.seed=2"]
    assert jobs[1][0] == ["model.num_layers=2", "attention=tpr", "training.seed=0", "training.learning_rate=0.002"]

    line = parse_command_line(["-cd", str(REPO / "sweeps"), "-cn", "compare_attention"], "config")
    composer = Composer(str(REPO / "launch.py"), "conf", line.args)
    try:
        jobs = jobs_to_check(composer, line)
    finally:
        composer.close()
    assert len(jobs) == 1 + 4 + 2  # five attentions x three seeds: each value once
    assert {s for _, s in jobs[1:]} == {"attention=hrr-individual", "attention=hrr-bundled", "attention=hrr-quadratic",
                                        "attention=tpr", "training.seed=1", "training.seed=2"}


@pytest.mark.parametrize("argv, words", [
    (["model.num_heads=4"], ["model.num_heads=4", "model.num_head"]),
    (["training.lr=0.1"], ["training.lr=0.1", "no such key"]),
    (["task=listops_small"], ["task=listops_small", "did you mean task=listops-small"]),
    (["~model.nope"], ["~model.nope", "no such key to delete"]),
    (["-m", "hydra.job.chdir=true,false"], ["hydra.job.chdir=true,false", "cannot be swept"]),
    (["-cn", "nope"], ["--config-name='nope'"]),
    (["training.seed=${oc.env:LRA_TEST_NEVER_SET}"], ["training.seed='${oc.env:LRA_TEST_NEVER_SET}'",
                                                      "cannot be resolved", "LRA_TEST_NEVER_SET"]),
])
def test_nearest_names_in_process(argv: list[str], words: list[str]) -> None:
    from lra.config.overrides import check_command_line

    with pytest.raises(ConfigError) as caught:
        check_command_line(argv, calling_file=str(REPO / "launch.py"))
    text = str(caught.value)
    for word in words:
        assert word in text, (word, text)


def test_valid_command_lines_pass(tmp_path: Path) -> None:
    from lra.config.overrides import check_command_line

    for argv in ([], ["-m", "attention=softmax,tpr", "training.seed=0,1"], ["attention=tpr", "--cfg", "job"],
                 ["-cd", str(REPO / "sweeps"), "-cn", "tiny_search"], ["+training.nonsense=1", "--cfg", "job"],
                 ["--help"], [f"checkpoint.dir={tmp_path / 'c'}", "hardware=auto"]):
        check_command_line(argv, calling_file=str(REPO / "launch.py"))


# ------------------------------------------------------------------------------------------------------------
# the data against the model: after loading, before any MLflow run; the unused run folder removed


@pytest.mark.slow
@pytest.mark.parametrize("override, words", [
    ("model.vocab_size=10", ["model.vocab_size=10", "token ids up to 15", "model.vocab_size=16"]),
    ("model.num_classes=5", ["model.num_classes=5", "labels up to 9", "model.num_classes=10"]),
])
def test_model_smaller_than_the_data_is_refused_before_any_run(tmp_path: Path, override: str,
                                                              words: list[str]) -> None:
    line = error_line(launch(tmp_path, *TINY, override))
    for word in words:
        assert word in line, (word, line)
    assert_no_run(tmp_path)  # the run folder Hydra made was removed; no MLflow run
    assert not (tmp_path / "checkpoints").exists()  # nor the checkpoint folder, locked before the data was read
    assert (tmp_path / "data").exists()  # the data was read (that is how the problem was found)


def test_check_against_data_in_process(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from lra.config import check_against_data
    from lra.data import load_splits
    from lra.data.tasks import task_preset

    splits = load_splits({**task_preset("image-small")["data"], "root": str(tmp_path)},
                         {"train": 50, "dev": 10, "test": 10})
    top = max(int(s.tokens.max()) for s in splits.values())
    ok = OmegaConf.create({"task": "image-small", "model": {"vocab_size": top + 1, "num_classes": 10}})
    check_against_data(ok, splits)
    with pytest.raises(ConfigError, match=f"model.vocab_size={top}: .*set model.vocab_size={top + 1}"):
        check_against_data(OmegaConf.merge(ok, {"model": {"vocab_size": top}}), splits)
    with pytest.raises(ConfigError, match="model.num_classes=9: .*labels up to 9"):
        check_against_data(OmegaConf.merge(ok, {"model": {"num_classes": 9}}), splits)


# ------------------------------------------------------------------------------------------------------------
# the machine: folders and memory, checked in validate, creating nothing


@pytest.mark.slow
@pytest.mark.parametrize("key", ["checkpoint.dir", "data.root"])
def test_folder_below_a_file_is_refused(tmp_path: Path, key: str) -> None:
    (tmp_path / "plain-file").write_text("not a folder")
    result = launch(tmp_path, *TINY, f"{key}={tmp_path / 'plain-file' / 'sub'}")
    line = error_line(result)
    assert f"{key}=" in line and "is a file, not a folder" in line
    assert_nothing_made(tmp_path)
    assert not (tmp_path / "data").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in any folder whatever its mode")
@pytest.mark.parametrize("key", ["checkpoint.dir", "data.root"])
def test_read_only_folder_is_refused(tmp_path: Path, key: str) -> None:
    from lra.compose import compose_config
    from lra.config import validate

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=f"{re.escape(key)}=.*cannot write in"):
            validate(compose_config([*TINY, f"data.root={tmp_path / 'd'}", f"checkpoint.dir={tmp_path / 'c'}",
                                     f"{key}={locked / 'x'}"]))
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_folder_no_one_can_write_is_refused_even_for_root() -> None:
    """/proc takes no new files, whoever asks (root passes os.access there; the probe file tells)."""
    from lra.config.preflight import check_writable

    with pytest.raises(ConfigError, match=r"checkpoint\.dir='/proc/lra-x/y': cannot write in /proc, the nearest "
                                          r"existing folder above it"):
        check_writable("checkpoint.dir", "/proc/lra-x/y", "why")


def test_write_probe_creates_nothing(tmp_path: Path) -> None:
    from lra.config.preflight import check_writable

    check_writable("checkpoint.dir", str(tmp_path / "a" / "b" / "c"), "why")
    check_writable("checkpoint.dir", str(tmp_path), "why")
    assert list(tmp_path.iterdir()) == []


def test_prepared_data_need_no_writable_root(tmp_path: Path) -> None:
    """A read-only data root is fine once the arrays are there (a shared, prepared data folder)."""
    from lra.compose import compose_config
    from lra.config import validate
    from lra.data import load_splits, prepared_manifest

    cfg = compose_config([*TINY, f"data.root={tmp_path / 'data'}", f"checkpoint.dir={tmp_path / 'c'}"])
    load_splits(cfg.data, cfg.dataset)
    assert prepared_manifest(cfg.data, cfg.dataset).is_file()
    validate(cfg)
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_dataset_larger_than_memory_is_refused(tmp_path: Path) -> None:
    line = error_line(launch(tmp_path, *TINY, "dataset.train=10000000000"))
    assert re.search(r"dataset\.train=10000000000: the data arrays need about [\d.]+ TB of memory, more than the "
                     r"[\d.]+ [GMT]B available; fix: set dataset\.train <= \d+", line), line
    assert_nothing_made(tmp_path)
    assert not (tmp_path / "data").exists()


def test_memory_estimate_follows_the_task(tmp_path: Path) -> None:
    from lra.data import arrays_estimate
    from lra.data.tasks import task_preset

    listops = arrays_estimate(task_preset("listops")["data"])
    assert listops.bytes_per_sample == 2000 * 1 + 4 + 8 and listops.generated and listops.in_memory
    retrieval = arrays_estimate({**task_preset("retrieval")["data"], "in_memory": False}, documents=2)
    assert retrieval.bytes_per_sample == 2 * (4000 * 2 + 4) + 8 and not retrieval.in_memory


# ------------------------------------------------------------------------------------------------------------
# documented keys, settable without + in every profile


def readme_keys() -> list[str]:
    """The keys of the table "Keys the seed lacks" in docs/configuration.md (a bare name continues the row's first key's path;
    `sweep.*` expands to the names its row lists), plus every key of the schema."""
    text = (REPO / "docs" / "configuration.md").read_text()
    table = text.split("## Keys the seed lacks", 1)[1].split("\n\n", 2)[1]
    keys: list[str] = []
    for row in table.splitlines()[2:]:
        first, meaning = row.split("|")[1], row.split("|")[3]
        names = re.findall(r"`([^`]+)`", first)
        prefix = ""
        for name in names:
            if name == "sweep.*":
                from lra.config import OBJECTIVES  # the row also names the default objective's value

                keys += [f"sweep.{n}" for n in re.findall(r"`(\w+)`", meaning) if n not in OBJECTIVES]
            elif "<" in name:
                continue  # data.<param>: a loader's own keys, not in every task
            elif "." in name or not prefix:
                prefix = name.rsplit(".", 1)[0] if "." in name else ""
                keys.append(name)
            else:
                keys.append(f"{prefix}.{name}")
    return keys


def test_readme_table_is_read() -> None:
    keys = readme_keys()
    for key in ("hardware.memory_budget_mb", "hardware.budget_margin", "training.learning_rate_decay",
                "sweep.objective", "sweep.trial_number", "checkpoint.resume", "data.truncate", "task"):
        assert key in keys, key


def _profiles(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


def test_every_documented_key_is_in_every_profile() -> None:
    from omegaconf import OmegaConf

    from lra.compose import compose_config
    from lra.config import Schema

    def leaves(node, prefix=""):
        for key in node.keys():
            child = node._get_node(key)
            path = f"{prefix}.{key}" if prefix else str(key)
            if OmegaConf.is_dict(child) and len(child) and path not in ("gpu_memory", "extra_attn_config",
                                                                         "attention", "data"):
                yield from leaves(child, path)
            else:
                yield path

    documented = set(readme_keys()) | set(leaves(OmegaConf.structured(Schema)))
    combos = ([[f"hardware={h}"] for h in _profiles("hardware")] + [[f"task={t}"] for t in _profiles("task")]
              + [[f"attention={a}"] for a in _profiles("attention")]
              + [[f"scheduler={s}"] for s in _profiles("scheduler")]
              + [[f"experiment={e}"] for e in _profiles("experiment")])
    missing = {}
    for combo in combos:
        cfg = compose_config([*combo, "hydra/job_logging=none", "hydra/hydra_logging=none"])
        absent = sorted(k for k in documented if OmegaConf.select(cfg, k, default="<absent>") == "<absent>")
        if absent:
            missing[" ".join(combo)] = absent
    assert not missing, missing


@pytest.mark.slow
@pytest.mark.parametrize("hardware", ["cpu", "seed", "gpu-bf16", "auto"])
def test_budget_keys_are_settable_without_plus(tmp_path: Path, hardware: str) -> None:
    result = launch(tmp_path, f"hardware={hardware}", "hardware.memory_budget_mb=123",
                    "hardware.budget_margin=0.5", "--cfg", "job")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "memory_budget_mb: 123" in result.stdout and "budget_margin: 0.5" in result.stdout
    assert_nothing_made(tmp_path)


# ------------------------------------------------------------------------------------------------------------
# a source the task would ignore


def _source_ignoring_tasks() -> list[str]:
    from lra.data import LOADERS, reads_source
    from lra.data.tasks import task_presets

    return sorted(t for t, spec in task_presets().items() if not reads_source(LOADERS[spec["data"]["loader"]]))


def test_every_task_that_reads_no_source_refuses_one(tmp_path: Path, capsys) -> None:
    from lra.data import LOADERS, reads_source
    from lra.data.__main__ import main
    from lra.data.tasks import task_presets

    presets = task_presets()
    expected = {"listops": "listops-release", "listops-small": "listops-release", "listops-medium": "listops-release",
                "pathfinder32-generated": "pathfinder32", "image-small": "image"}
    tasks = _source_ignoring_tasks()
    assert set(expected) <= set(tasks)
    for task in tasks:
        assert main(["prepare", task, "--source", str(tmp_path / "x"), "--root", str(tmp_path / "data")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --source=") and "would be ignored" in err, err
        assert len(err.splitlines()) == 1
        named = re.findall(r"python -m lra\.data prepare (\S+) --source", err)
        assert named and all(reads_source(LOADERS[presets[t]["data"]["loader"]]) for t in named), err
        if task in expected:
            assert named == [expected[task]], err
        if task.endswith("-generated") and task.removesuffix("-generated") in presets:
            assert named == [task.removesuffix("-generated")], err  # the same resolution
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_prepare_generated_task_with_source_as_a_command(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "lra.data", "prepare", "listops", "--source", str(tmp_path),
                             "--root", str(tmp_path / "data")], capture_output=True, text=True, timeout=120)
    line = error_line(result)
    assert "listops-release" in line and "would be ignored" in line
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_launch_with_a_source_the_task_ignores(tmp_path: Path) -> None:
    line = error_line(launch(tmp_path, *TINY, f"data.source={tmp_path}"))
    assert "data.source=" in line and "task=listops-release" in line
    assert_nothing_made(tmp_path)


# ------------------------------------------------------------------------------------------------------------
# the benchmarks' arguments


BENCH_CASES = [
    (["attention", "--lengths", "-5"], "--lengths=-5: sequence lengths must be at least 1"),
    (["attention", "--lengths", "256", "0"], "--lengths=0: sequence lengths must be at least 1"),
    (["attention", "--repeats", "0"], "--repeats=0: timed rounds must be at least 1"),
    (["attention", "--warmup", "-1"], "--warmup=-1: untimed rounds must be at least 0"),
    (["attention", "--batch", "0"], "--batch=0: the batch size must be at least 1"),
    (["attention", "--heads", "0"], "--heads=0"),
    (["attention", "--head-dim", "-2"], "--head-dim=-2"),
    (["attention", "--threads", "0"], "--threads=0"),
    (["attention", "--matmul-size", "0"], "--matmul-size=0"),
    (["step", "--repeats", "0"], "--repeats=0"),
    (["step", "--warmup", "-3"], "--warmup=-3"),
    (["budget", "--margin", "1.5"], "--margin=1.5: must lie in (0, 1]"),
    (["budget", "--memory-budget-mb", "0"], "--memory-budget-mb=0.0: the memory budget must be positive"),
    (["attention", "--lengths", "abc"], "--lengths='abc': invalid int value"),
    (["attention", "--lengths"], "--lengths: expected at least one argument"),
]


@pytest.mark.parametrize("argv, words", BENCH_CASES)
def test_bench_arguments_in_process(argv: list[str], words: str, capsys) -> None:
    from lra.bench.__main__ import main

    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own errors (through our one-line form)
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert words in err, (words, err)


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["attention", "--lengths", "-5"], ["attention", "--repeats", "0"]])
def test_bench_arguments_as_a_command(tmp_path: Path, argv: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "lra.bench", *argv], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    line = error_line(result)
    assert line.startswith(f"error: {argv[1]}={argv[2]}: ")
    assert result.stdout == ""


def test_missing_release_source_is_found_before_any_data_is_read(tmp_path: Path) -> None:
    """validate refuses release data that are neither prepared nor have a source (so before the tracking store
    or any run exists), and a source without the release layout; prepared data need no source."""
    from lra.compose import compose_config
    from lra.config import validate
    from lra.data import check_inputs

    base = ["task=image-small", f"data.root={tmp_path / 'data'}", f"checkpoint.dir={tmp_path / 'c'}"]
    cfg = compose_config(base)
    assert check_inputs(cfg.data, cfg.dataset) is False  # built in: nothing needed, nothing prepared yet
    text = ["task=text-small", f"data.root={tmp_path / 'data'}", f"checkpoint.dir={tmp_path / 'c'}"]
    with pytest.raises(ConfigError, match=r"data\.source=None: no prepared text data .*python -m lra\.data "
                                          r"prepare text-small --source PATH"):
        validate(compose_config(text))
    with pytest.raises(ConfigError, match=r"data\.source='.*nowhere': does not exist"):
        validate(compose_config([*text, f"data.source={tmp_path / 'nowhere'}"]))
    assert not (tmp_path / "data").exists() and not (tmp_path / "c").exists()
