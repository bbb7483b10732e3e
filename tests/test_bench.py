"""`python -m lra.bench`: tiny runs write well-formed results; the automatic budget picks a chunk that runs.
No timing assertions (timings on a shared machine mean nothing in a test)."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from lra.attention import ATTENTIONS
from lra.bench.__main__ import main
from lra.bench.attention import parse_candidate
from lra.bench.measure import peak_memory
from lra.errors import ConfigError
from lra.model import LRAClassifier
from lra.run.chunking import auto_chunk_size, full_length_batch, probe_chunk_size
from lra.run.step import train_step

CPU = torch.device("cpu")
TINY_MODEL = ["model.num_layers=1", "model.embedding_dim=16", "model.transformer_hidden_dim=32", "model.num_head=2",
              "model.head_dim=8", "dataset.train=64", "dataset.dev=8", "dataset.test=8", "training.batch_size=8",
              "hardware.num_threads=1"]


def test_cpu_peak_memory_counts_what_the_call_allocates():
    keep = []
    peak = peak_memory(lambda: keep.append(torch.empty(2**20, dtype=torch.float32)), CPU)  # 4 MiB, kept
    assert peak.bytes >= 4 * 2**20
    before = torch.ones(2**20)
    assert peak_memory(lambda: before.mul_(2), CPU).bytes < 2**20  # in place: nothing new
    assert peak_memory(lambda: torch.mm(torch.ones(8, 8), torch.ones(8, 8)), CPU).ops >= {"mm"}


def test_candidate_specs():
    c = parse_candidate("hrr-individual:block_size=0,eps=1e-5")
    assert (c.name, c.options, c.label) == ("hrr-individual", {"block_size": 0, "eps": 1e-5},
                                            "hrr-individual:block_size=0,eps=1e-05")
    with pytest.raises(ConfigError, match="attention.name"):
        parse_candidate("flash")
    with pytest.raises(ConfigError, match="attention.block_size"):
        parse_candidate("softmax:block_size=4")


def test_attention_bench_writes_json_and_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "attention.json"
    specs = list(ATTENTIONS) + ["hrr-individual:block_size=0"]
    assert main(["attention", "--lengths", "16", "24", "--repeats", "1", "--warmup", "0", "--heads", "2",
                 "--head-dim", "8", "--threads", "1", "--matmul-size", "128", "--mechanisms", *specs,
                 "--json", str(out), "--mlflow"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["benchmark"] == "attention" and result["reference"] == "softmax"
    assert {(r["mechanism"], r["T"]) for r in result["results"]} == {(s, T) for s in specs for T in (16, 24)}
    for r in result["results"]:
        assert r["time_median_s"] > 0 and r["peak_memory_bytes"] > 0 and len(r["times_s"]) == 1
        if r["mechanism"] == "softmax":
            assert r["time_ratio"] == 1.0 and r["memory_ratio"] == 1.0
    assert set(result["scaling"]) == set(specs)
    assert set(result["softmax_matmul_fraction"]) == {"16", "24"}
    assert "torch CPU allocator" in result["environment"]["memory_method"]
    for spec in specs:
        assert f"| {spec} |" in printed
    assert "T=16" in printed and "T=24" in printed and "scaling exponent" in printed

    import mlflow

    runs = mlflow.search_runs(experiment_names=["bench"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["heads"] == "2" and "time_ratio/tpr" in run.data.metrics
    assert [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)] == ["attention.json"]


def test_step_bench_tiny(tmp_path, capsys):
    out = tmp_path / "step.json"
    assert main(["step", "--attention", "softmax", "tpr", "--repeats", "1", "--warmup", "0", "--json", str(out),
                 f"data.root={tmp_path / 'data'}", *TINY_MODEL]) == 0
    result = json.loads(out.read_text())
    assert result["setup"]["chunks"] == [8, 4, 2]
    assert {(r["attention"], r["chunk"]) for r in result["results"]} == {(a, c) for a in ("softmax", "tpr")
                                                                         for c in (8, 4, 2)}
    for r in result["results"]:
        assert r["time_median_s"] > 0 and r["peak_memory_bytes"] > 0
        assert (r["time_ratio"] == 1.0) == (r["chunk"] == 8)
    assert set(result["data_fraction"]) == {"softmax", "tpr"} and result["data"]["samples_per_s"] > 0
    printed = capsys.readouterr().out
    assert "loading % of step time" in printed and "| tpr | 2 |" in printed


def test_step_bench_paired_ratio_and_overrides_after_the_attention_list(tmp_path):
    out = tmp_path / "step.json"
    # the overrides follow `--attention`'s values directly: argparse puts them in its list, main takes them back
    assert main(["step", "--repeats", "3", "--warmup", "0", "--json", str(out), "--attention", "tpr",
                 f"data.root={tmp_path / 'data'}", *TINY_MODEL]) == 0
    result = json.loads(out.read_text())
    assert result["setup"]["attentions"] == ["tpr"] and result["setup"]["batch_size"] == 8
    base = next(b for b in result["results"] if b["chunk"] == 8)
    for r in result["results"]:
        per_round = sorted(t / b for t, b in zip(r["times_s"], base["times_s"]))
        assert len(per_round) == 3 and r["time_ratio_paired"] == pytest.approx(per_round[1])


def test_step_bench_unknown_attention_names_the_option(capsys):
    assert main(["step", "--attention", "flash", "tpr"]) == 2
    assert "--attention='flash': unknown attention" in capsys.readouterr().err


def _tiny_model(attention: str = "softmax") -> LRAClassifier:
    torch.manual_seed(0)
    return LRAClassifier(vocab_size=16, max_seq_len=64, embedding_dim=16, transformer_hidden_dim=32, head_dim=8,
                         num_head=2, num_layers=1, dropout_prob=0.1, attention_dropout=0.1, pooling_mode="MEAN",
                         num_classes=3, learn_pos_emb=True, tied_weights=False, attention=attention)


def test_auto_chunk_size_fits_runs_and_shrinks_with_the_budget():
    model = _tiny_model()
    example = full_length_batch(2, 64, 16, 3)
    big = probe_chunk_size(model, example, device=CPU, max_chunk=12, memory_budget_mb=10_000)
    assert big.chunk == 12 and max(big.probes) == 12  # 1, 2, 4, 8, 12: everything fits
    one = big.probes[1]
    budget = (4.5 * one + big.reserved_mb) / 0.8  # room for about four samples
    small = probe_chunk_size(model, example, device=CPU, max_chunk=12, memory_budget_mb=budget)
    assert 1 <= small.chunk < big.chunk
    assert small.probes[small.chunk] + small.reserved_mb <= 0.8 * budget
    assert "auto chunk size" in small.describe()
    assert auto_chunk_size(model, example, device=CPU, max_chunk=12, memory_budget_mb=budget) == small.chunk

    # the chosen chunk runs in the real training step
    optimizer = torch.optim.AdamW(model.parameters())
    batch = full_length_batch(12, 64, 16, 3, seed=1)
    stats = train_step(model, batch, optimizer, chunk_size=small.chunk, autocast=contextlib.nullcontext(),
                       scaler=torch.amp.GradScaler("cpu", enabled=False))
    assert stats.count == 12 and torch.isfinite(torch.tensor(stats.loss))


def test_auto_chunk_size_leaves_the_model_and_rng_as_they_were():
    model = _tiny_model("hrr-bundled").eval()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    auto_chunk_size(model, full_length_batch(1, 64, 16, 3), device=CPU, max_chunk=4, memory_budget_mb=10_000)
    assert torch.equal(torch.rand(3), expected)
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_auto_chunk_size_names_the_key_when_nothing_fits():
    with pytest.raises(ConfigError, match="hardware.memory_budget_mb.*one sample"):
        auto_chunk_size(_tiny_model(), full_length_batch(1, 64, 16, 3), device=CPU, max_chunk=8,
                        memory_budget_mb=0.01)


def test_help():
    with pytest.raises(SystemExit) as exit_:
        main(["attention", "--help"])
    assert exit_.value.code == 0


def _result(times: dict[str, list[float]], memory: float = 1e6) -> dict:
    rows = [{"mechanism": m, "T": 64, "times_s": t, "time_median_s": sorted(t)[len(t) // 2],
             "peak_memory_bytes": memory} for m, t in times.items()]
    return {"benchmark": "attention", "results": rows, "setup": {}, "environment": {}}


def test_compare_calls_a_change_only_beyond_the_rounds_noise():
    from lra.bench.history import IMPROVED, REGRESSED, SAME, compare, spread

    assert spread([1.0, 1.1, 1.2]) == pytest.approx(0.1 / 1.1)  # quartiles 1.05 and 1.15
    assert spread([1.0, 1.0, 1.0, 1.0, 9.0]) == 0.0  # one stray round does not widen the band
    old = _result({"a": [1.0, 1.0, 1.0], "b": [0.9, 1.0, 1.3], "c": [1.0, 1.0, 1.0], "gone": [1.0]})
    new = _result({"a": [1.5, 1.5, 1.5], "b": [1.1, 1.1, 1.1], "c": [0.5, 0.5, 0.5], "new": [1.0]}, memory=2e6)
    verdicts = {v.figure: v.verdict for v in compare(old, new, tolerance=0.05)}
    assert verdicts["time a T=64"] == REGRESSED  # +50% where neither run varied
    assert verdicts["time b T=64"] == SAME  # +10% within the saved run's 20% spread
    assert verdicts["time c T=64"] == IMPROVED
    assert verdicts["memory a T=64"] == REGRESSED  # twice the memory
    assert verdicts["new T=64"] == "NEW" and verdicts["gone T=64"] == "GONE"


def test_save_then_compare_marks_every_figure_and_fails_on_a_regression(tmp_path, capsys):
    common = ["attention", "--lengths", "16", "--repeats", "3", "--warmup", "0", "--heads", "2", "--head-dim", "8",
              "--threads", "1", "--matmul-size", "64", "--mechanisms", "softmax", "tpr",
              "--results-dir", str(tmp_path / "results")]
    assert main([*common, "--save", "base"]) == 0
    saved = tmp_path / "results" / "base.json"
    result = json.loads(saved.read_text())
    for r in result["results"]:  # FLOPs and the GEMM fraction beside each time
        assert r["flops"] > 0 and 0 < r["gemm_fraction"] and r["flops_per_s"] == r["flops"] / r["time_median_s"]
    assert result["results"][0]["flops"] == 12 * 2 * 16**2 * 8  # softmax: 12·B·h·T²·H
    assert "of GEMM rate" in capsys.readouterr().out

    for r in result["results"]:  # a saved run 100 times faster than any machine: the new run REGRESSED
        r["times_s"] = [t / 100 for t in r["times_s"]]
        r["time_median_s"] /= 100
    (tmp_path / "results" / "fast.json").write_text(json.dumps(result))
    assert main([*common, "--compare", "fast"]) == 0  # reported, not failed
    printed = capsys.readouterr().out
    assert "| time softmax T=16 |" in printed and "REGRESSED" in printed
    assert main([*common, "--compare", "fast", "--fail-on-regression"]) == 1
    assert "REGRESSED against fast" in capsys.readouterr().err


def test_compare_with_a_missing_result_fails_before_measuring(tmp_path, capsys):
    assert main(["attention", "--lengths", "16", "--compare", "nothing", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --compare='nothing': no saved result") and "fix: save one first" in err
    assert main(["attention", "--lengths", "16", "--save", "../x"]) == 2
    assert main(["attention", "--lengths", "16", "--fail-on-regression"]) == 2


def test_gpu_command_says_nothing_ran_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: `python -m lra.bench gpu` runs for real there")
    assert main(["gpu"]) == 2
    assert "error: gpu='cuda': no CUDA device is visible to torch: nothing was run" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_tests_report_each_outcome():
    """The GPU tests run in pytest and come back one row each (skipped with the reason on a CPU machine)."""
    from lra.bench.gpu import gpu_table, parse_junit, run_tests

    rows = run_tests()
    assert len(rows) >= 8 and {r["test"] for r in rows} >= {"test_fp16_scaler_steps_once_per_batch_across_chunks",
                                                            "test_ddp_over_nccl_on_one_gpu_makes_the_one_process_update"}
    if not torch.cuda.is_available():
        assert {r["outcome"] for r in rows} == {"skipped"}
        assert all("no CUDA device" in r["detail"] for r in rows)
    failing = parse_junit('<testsuite><testcase name="t"><failure message="boom">x</failure></testcase></testsuite>')
    assert failing == [{"test": "t", "outcome": "failed", "detail": "boom"}]
    table = gpu_table({"gpu": "G", "torch": "2", "cuda": "12", "tests": failing,
                       "attention": {"setup": {"matmul_size": 2048}, "results": []},
                       "step": {"setup": {"batch_size": 8, "precision": "fp32"}, "results": []}})
    assert "| test t | failed | boom |" in table


@pytest.mark.slow
def test_gpu_check_plumbing_on_the_cpu(tmp_path):
    """What `python -m lra.bench gpu` runs after the tests, tried on the CPU at toy sizes: both benchmarks come
    back as one table with every mechanism's FLOP rate and every step figure."""
    from lra.bench.gpu import gpu_table, run_gpu_check

    result = run_gpu_check(lengths=[16], task="listops-small", repeats=1, warmup=0, tests=False, device="cpu",
                           overrides=[f"data.root={tmp_path / 'data'}", *TINY_MODEL], heads=2, head_dim=8,
                           matmul_size=64, log=lambda m: None)
    table = gpu_table(result)
    for name in ATTENTIONS:
        assert f"| attention {name} T=16 | measured |" in table and f"| step {name} chunk=8 | measured |" in table
    assert "of GEMM rate" in table
