"""benches/gpu_check.sh and the GPU overhead benchmark (benches/bench_gpu.py): the benchmark's
logic runs here on the CPU with a tiny model (timing, sync counting, the checks of what it timed,
the RESULTS.md writer); on a GPU it also shows that watch() adds no host synchronisation inside
the training step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))

import bench_gpu  # noqa: E402


def test_benchmark_logic_on_the_cpu_writes_its_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other\n\nkept\n")
    args = ["--device", "cpu", "--tiny", "--rounds", "2", "--steps", "2", "--results", str(results)]
    res = bench_gpu.main(args)
    assert res["losses_equal"] and res["findings"] == [] and res["syncs"]["bare"] is None
    assert res["bare_s"] > 0 and res["watched_s"] > 0 and res["total_steps"] == 8 + 2 * 2
    bench_gpu.main(args)  # a second run replaces its section, leaves the others
    text = results.read_text()
    assert text.count("## GPU check: CPU") == 1 and "## Other\n\nkept" in text
    assert "| watch() defaults |" in text and "python benches/bench_gpu.py --device cpu --tiny" in text


def test_gpu_check_script_runs_the_cuda_tests_and_the_benchmark():
    script = ROOT / "benches" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "scripts/dev setup" in text and "-m cuda" in text and "bench_gpu.py" in text
    assert "pip install" not in text and "uv " not in text  # installs nothing of its own


@pytest.mark.cuda
def test_cuda_watched_step_adds_no_host_sync():
    res = bench_gpu.measure("cuda", tiny=True, rounds=2, steps=3)
    assert res["losses_equal"] and res["findings"] == []
    assert res["syncs"]["watched"] == res["syncs"]["bare"], res["syncs"]
    assert res["syncs"]["every=1"] == res["syncs"]["bare"], res["syncs"]
