"""Every impossible config fails before training with one line naming the key, the value and the fix."""

from pathlib import Path

import pytest
from helpers import TINY, launch

pytestmark = pytest.mark.slow

CASES = {
    # id: (overrides, words the error line must contain)
    "misspelt key": (["+training.batchsize=8"], ["training.batchsize", "did you mean training.batch_size"]),
    "wrong type": (["training.batch_size=abc"], ["training.batch_size", "'abc'", "type int"]),
    "unknown attention name": (["attention.name=flash"], ["attention.name", "'flash'", "softmax", "tpr"]),
    "unknown attention option": (["+attention.scale=3"], ["attention.scale", "not an option"]),
    "unknown scheduler": (["training.lr_scheduler=step"], ["training.lr_scheduler", "'step'", "exp_decay, linear"]),
    "unknown pooling mode": (["model.pooling_mode=MAX"], ["model.pooling_mode", "'MAX'", "MEAN, CLS"]),
    "chunk of zero": (["gpu_memory.softmax=0"], ["gpu_memory.softmax", "=0", "positive integer"]),
    "fractional chunk": (["gpu_memory.softmax=2.5"], ["gpu_memory.softmax", "2.5", "positive integer"]),
    "empty dataset": (["dataset.train=0"], ["dataset.train", "=0", "at least 1"]),
    "fp16 on cpu": (["training.mixed_precision=fp16"], ["training.mixed_precision", "fp16", "bf16"]),
    "cuda without gpu": (["hardware.device=cuda"], ["hardware.device", "'cuda'", "hardware.device=cpu"]),
    "sequence longer than max_seq_len": (["model.max_seq_len=50"], ["model.max_seq_len", "=50", "data.truncate=true"]),
    "cls needs one more position": (["model.pooling_mode=CLS", "model.max_seq_len=128"],
                                    ["model.max_seq_len", "CLS", "model.max_seq_len=129"]),
    "negative memory budget": (["hardware=auto", "hardware.memory_budget_mb=-1"],
                               ["hardware.memory_budget_mb", "=-1", "must be positive"]),
    "bad objective": (["sweep.objective=accuracy"], ["sweep.objective", "eval_accuracy"]),
    # the mechanism's own option checks (issue 19: refused only after the data were generated)
    "negative hrr eps": (["attention=hrr-individual", "attention.eps=-1"], ["attention.eps", "=-1", "> 0"]),
    "zero cosine scale": (["attention=hrr-bundled", "attention.scale_init=0"], ["attention.scale_init", "> 0"]),
    "negative tpr eps": (["attention=tpr", "attention.eps=-1e-6"], ["attention.eps", "> 0"]),
    "negative block size": (["attention=hrr-individual", "attention.block_size=-3"],
                            ["attention.block_size", "=-3", "int >= 0"]),
    "option of the wrong type": (["attention=hrr-quadratic", "attention.learn_scale=maybe"],
                                 ["attention.learn_scale", "'maybe'", "true or false"]),
    "text for a number option": (["attention=hrr-individual", "attention.scale_init=abc"],
                                 ["attention.scale_init", "'abc'", "a number"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_fails_before_training(tmp_path: Path, case: str) -> None:
    overrides, words = CASES[case]
    result = launch(tmp_path, *TINY, *overrides)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert (result.stdout + result.stderr).count(lines[0].removeprefix("error: ")) == 1, "printed once"
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists(), "no run may start for a bad config"
    assert not (tmp_path / "data").exists(), "no data may be read or generated for a bad config"
    assert not (tmp_path / "outputs").exists(), "no output folder for a config that never ran"


@pytest.mark.parametrize("override, words", [
    ("task=nope", ["error: task=nope: no such option of the config group task", "listops-small"]),
    ("attention=nope", ["error: attention=nope: no such option of the config group attention", "softmax"]),
    ("scheduler=nope", ["error: scheduler=nope: no such option of the config group scheduler", "cos"]),
    ("training.batchsize=8", ["error: training.batchsize=8: no such key in the config",
                              "did you mean training.batch_size"]),
])
def test_unknown_group_option_or_key_is_refused_before_hydra_runs(tmp_path: Path, override: str,
                                                                 words: list[str]) -> None:
    """Hydra's own errors become our one line (exit 2), without Hydra's advice to add '+'."""
    result = launch(tmp_path, *TINY, override)
    assert result.returncode == 2, result.stderr[-1500:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-1500:]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "+" not in lines[0] and "HYDRA_FULL_ERROR" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "outputs").exists()
