"""The comparison as a researcher sees it: a small sweep, `python -m lra.ui`, and the page rendered by headless
Chromium (Debian's `chromium`). The runs view must show the runs by name with their attention and test accuracy,
and not MLflow's GenAI overview; the compare page must show both runs. Screenshots of both are written to
$LRA_SCREENSHOT_DIR when it is set (docs/images/ holds the ones in the README)."""

from __future__ import annotations

import os
import re
import shutil
import urllib.request

import pytest
from browser import chromium, render_dom, screenshot, visible_text
from helpers import TINY, launch
from mlflow.tracking import MlflowClient
from ui_process import UIProcess

pytestmark = pytest.mark.long


@pytest.fixture
def browser():
    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI (.ci/services/chromium.sh installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")


def test_the_runs_view_and_the_compare_page_render_the_sweep(tmp_path, browser):
    result = launch(tmp_path, *TINY, "attention=softmax,tpr", multirun=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    sweep_id = re.search(r"sweep (\S+): parent MLflow run", result.stdout + result.stderr).group(1)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("listops-small").experiment_id],
                              f"tags.sweep_id = '{sweep_id}' and tags.attention LIKE '%'")
    accuracy = {run.info.run_name: run.data.metrics["test_accuracy"] for run in runs}
    assert sorted(accuracy) == ["softmax-listops-small-s0", "tpr-listops-small-s0"]

    ui = UIProcess(tmp_path, "--port", "0")  # exactly what a user runs
    try:
        runs_url = ui.wait_for("runs: ").split(" ", 1)[1]
        compare_url = ui.wait_for("compare: ").split(" ", 1)[1]

        page = visible_text(render_dom(runs_url))
        assert "Runs - Experiment" in page, page[:2000]  # the runs tab, not the GenAI "Overview - Experiment"
        for genai in ("Overview - Experiment", "Token Usage", "Traces 0", "Cost Breakdown"):
            assert genai not in page, page[:2000]
        assert f"lra: sweep {sweep_id}" in page  # the saved view is active
        assert "2 matching runs" in page, page[:3000]
        for name, value in accuracy.items():
            assert name in page
            assert repr(value) in page, (name, value, page[:3000])  # the test accuracy column
        assert "test_accuracy" in page and re.search(r"\battention\b.*\bsoftmax\b.*\btpr\b|"
                                                     r"\battention\b.*\btpr\b.*\bsoftmax\b", page)
        assert "listops-small (" in page  # the Dataset column: the task and its data's digest

        compared = visible_text(render_dom(compare_url, width=1600))
        assert "Comparing 2 Runs" in compared, compared[:2000]
        assert all(name in compared for name in accuracy)

        shots = [screenshot(runs_url, tmp_path / "ui-runs.png", width=1800, height=700),
                 screenshot(compare_url, tmp_path / "ui-compare.png", width=1600, height=1000)]
        for shot in shots:
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
            if os.environ.get("LRA_SCREENSHOT_DIR"):
                shutil.copy(shot, os.environ["LRA_SCREENSHOT_DIR"])
        base = runs_url.split("/#", 1)[0]
    finally:
        assert ui.stop() == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/health", timeout=5)
