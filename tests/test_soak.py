"""The 60-second soak (`make soak` runs 5 minutes): 16 clients sending photos and bad inputs to the
real server while retraining jobs run and go live; nothing breaks, leaks or answers wrongly."""

import json
import subprocess
import sys

import pytest

from conftest import PROJECT_ROOT

SECONDS = 60


@pytest.fixture(scope="module")
def soak(tmp_path_factory, shipped_model_dir):
    out = tmp_path_factory.mktemp("soak") / "soak.json"
    run = subprocess.run([sys.executable, "-m", "scripts.soak", "--clients", "16", "--seconds", str(SECONDS),
                          "--model", str(shipped_model_dir), "--json", str(out)],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=SECONDS * 6 + 120)
    assert out.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    return run, json.loads(out.read_text())


pytestmark = pytest.mark.slow


def test_it_ran_the_whole_time_with_many_requests(soak):
    _, summary = soak
    assert summary["seconds"] >= SECONDS - 1 and summary["clients"] == 16
    assert summary["statuses"].get("200", 0) > 50
    assert sum(summary["statuses"].get(code, 0) for code in ("400", "404", "405", "413", "415")) > 5


def test_no_5xx_and_every_answer_as_expected(soak):
    _, summary = soak
    assert summary["five_xx"] == 0, summary["statuses"]
    assert summary["unexpected"] == 0, summary["unexpected_samples"]
    assert summary["transport_errors"] == 0, summary["transport_samples"]


def test_no_worker_restarted(soak):
    _, summary = soak
    assert summary["workers_start"] == summary["workers_end"] and len(summary["workers_end"]) >= 1
    assert summary["worker_timeouts_in_log"] == 0


def test_worker_memory_grew_less_than_ten_percent(soak):
    _, summary = soak
    assert all(growth is not None and growth < 0.10 for growth in summary["rss_growth"].values()), summary


def test_every_prediction_names_a_valid_version_while_jobs_went_live(soak):
    _, summary = soak
    assert summary["versions_seen"] and set(summary["versions_seen"]) <= set(summary["versions_valid"])
    assert any(job["status"] in ("succeeded", "cancelled") for job in summary["jobs"]), summary["jobs"]


def test_the_script_reports_every_check(soak):
    run, summary = soak
    assert summary["checks"] and all(summary["checks"].values()), summary["checks"]
    assert run.returncode == 0 and "soak: all checks hold" in run.stdout
