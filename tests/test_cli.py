"""The nnprobe command end to end, in a subprocess: exit codes, output, files written."""

import json
import subprocess
import sys

import pytest
from nnprobe import demo
from nnprobe.report.logfile import log_files


def nnprobe(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "nnprobe", *args], capture_output=True, text=True, timeout=timeout)


def test_explain_prints_the_catalogue_entry():
    r = nnprobe("explain", "zero-grad-missing")
    assert r.returncode == 0
    assert r.stdout.startswith("zero-grad-missing (error, runtime)") and "optimizer.zero_grad()" in r.stdout


def test_explain_unknown_code_fails_with_the_known_codes():
    r = nnprobe("explain", "no-such-code")
    assert r.returncode == 2 and "known codes" in r.stderr


def test_explain_without_a_code_lists_every_code():
    r = nnprobe("explain")
    from nnprobe.findings import CATALOGUE

    assert r.returncode == 0 and len(r.stdout.splitlines()) == len(CATALOGUE)


def test_demo_clean_run_raises_nothing_above_info(tmp_path):
    r = nnprobe("demo", "--out", str(tmp_path), "--steps", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nnprobe watch:" in r.stdout and "0 findings" in r.stdout  # the summary table
    assert (tmp_path / "report.html").stat().st_size > 10_000
    (log,) = log_files(tmp_path / "log")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[0]["type"] == "start" and records[-1]["type"] == "end" and records[-1]["findings"] == []


@pytest.mark.parametrize("bug", ["zero-grad", "softmax-ce", "view-permute"])
def test_demo_with_a_bug_shows_it_live_and_in_the_report(tmp_path, bug):
    r = nnprobe("demo", "--bug", bug, "--out", str(tmp_path), "--steps", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    page = (tmp_path / "report.html").read_text()
    for code in demo.BUGS[bug].expects:
        assert code in r.stdout + r.stderr
        assert code in page


def test_demo_unknown_bug_is_refused():
    r = nnprobe("demo", "--bug", "no-such-bug")
    assert r.returncode == 2 and "choose from" in r.stderr


def test_demo_list_names_every_bug():
    r = nnprobe("demo", "--list")
    assert r.returncode == 0 and all(name in r.stdout for name in demo.BUGS)


def test_report_command_reads_a_log_dir(tmp_path):
    r = nnprobe("demo", "--bug", "zero-grad", "--out", str(tmp_path / "run"), "--steps", "40", "--quiet")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "page.html"
    r = nnprobe("report", str(tmp_path / "run" / "log"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert "zero-grad-missing" in page and page.count("<svg") >= 4


def test_report_command_on_a_missing_log_is_a_clear_error(tmp_path):
    r = nnprobe("report", str(tmp_path), "-o", str(tmp_path / "x.html"))
    assert r.returncode == 2 and "nnprobe.jsonl" in r.stderr


def test_demo_all_catches_every_planted_mistake_and_keeps_the_clean_run_silent(tmp_path):
    r = nnprobe("demo", "--bug", "all", "--out", str(tmp_path), "--quiet", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = r.stdout.split("== summary")[1]
    assert summary.count(" ok ") + summary.count("\n  ok") >= len(demo.BUGS) and "MISS" not in summary
