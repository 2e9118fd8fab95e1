"""Sinks: the JSON Lines log (complete, flushed, readable after a kill), TensorBoard event files
(read back by TensorBoard's own EventAccumulator) and the console (a line per finding)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import nnprobe
import torch
import torch.nn.functional as F
from fixtures import models as Z
from nnprobe.report.logfile import log_files, new_log_name, read_runs

TESTS = os.path.dirname(os.path.abspath(__file__))


def read_jsonl(log_dir):
    """The records of the one log file in `log_dir`."""
    (path,) = log_files(log_dir)
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def train_with_bug(tmp_path, **kw):
    torch.manual_seed(0)
    model = Z.mlp(dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with nnprobe.watch(model, opt, every=1, log_dir=str(tmp_path), **kw) as probe:
        # probabilities into cross_entropy: an error finding at step 1
        Z.train(model, opt, Z.batches(*Z.digits()), 12, loss_fn=lambda o, y: F.cross_entropy(o.softmax(1), y))
    return probe


def test_jsonl_log_is_complete(tmp_path):
    probe = train_with_bug(tmp_path, console=False)
    recs = read_jsonl(tmp_path)
    start, end = recs[0], recs[-1]
    assert start["type"] == "start" and start["version"] == 1 and start["model"] == "Sequential"
    assert start["fields"][:11] == list(nnprobe.STATS_FIELDS) and start["fields"][11:] == ["dead", "saturated", "ratio"]
    assert start["hist"] == {"lo": -48, "bins": 64, "unit": "log2|x|"}
    kinds = {(r["name"], r["kind"]) for r in start["rows"]}
    assert {("0", "activations"), ("0", "gradients"), ("0.weight", "gradients"), ("0.weight", "weights"),
            ("0.weight", "updates"), ("1", "activations")} <= kinds
    steps = [r for r in recs if r["type"] == "step"]
    assert [r["step"] for r in steps] == list(range(12))
    first = steps[0]
    assert set(first["stats"]) == {"activations", "gradients", "weights", "updates"}
    act = dict(zip(start["fields"], first["stats"]["activations"]["0"]))
    assert act["count"] == 64 * 64 and act["std"] > 0
    relu = dict(zip(start["fields"], first["stats"]["activations"]["1"]))
    assert 0 <= relu["dead"] <= 1
    upd = dict(zip(start["fields"], first["stats"]["updates"]["3.weight"]))
    assert 0 < upd["ratio"] < 1
    # histograms on the first sampled step and every tenth after it
    assert [r["step"] for r in steps if "hist" in r] == [0, 10]
    h = first["hist"]["activations"]["0"]
    assert len(h) == 64 and sum(h) == act["count"] - act["zeros"]
    assert "0.weight" in first["hist"]["gradients"]
    # every step's loss is there, across the records
    losses = [pair for r in recs if r["type"] in ("step", "losses") for pair in r["losses"]]
    assert [s for s, _ in losses] == list(range(12)) and all(v > 0 for _, v in losses)
    assert first["loss"] == losses[0][1]
    finds = [r for r in recs if r["type"] == "finding"]
    assert [f["code"] for f in finds] == ["probabilities-into-loss"] and finds[0]["step"] == 1
    assert end["type"] == "end" and end["step"] == 12
    assert end["findings"][0]["code"] == "probabilities-into-loss"
    assert probe.findings[0].code == "probabilities-into-loss"


def test_sparse_sampling_still_logs_every_loss(tmp_path):
    torch.manual_seed(0)
    model = Z.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with nnprobe.watch(model, opt, every=50, log_dir=str(tmp_path), console=False) as probe:
        Z.train(model, opt, Z.batches(*Z.digits()), 230, probe=probe)  # probe.step(loss=...) every step
    recs = read_jsonl(tmp_path)
    assert [r["step"] for r in recs if r["type"] == "step"] == [0, 50, 100, 150, 200]
    losses = [s for r in recs if r["type"] in ("step", "losses") for s, _ in r["losses"]]
    assert losses == list(range(230))


def test_a_killed_run_leaves_a_readable_log(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {TESTS!r})
        import nnprobe
        from fixtures import models as Z
        torch.set_num_threads(1)
        model = Z.mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        probe = nnprobe.watch(model, opt, every=2, log_dir={str(tmp_path)!r}, console=False)
        data = Z.batches(*Z.digits())
        for step in range(10**9):
            Z.train(model, opt, data, 1)
            if step == 8:
                print("ready", flush=True)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    recs = read_jsonl(tmp_path)  # every line parses: no half-written record
    assert recs[0]["type"] == "start"
    assert [r["step"] for r in recs if r["type"] == "step"][:5] == [0, 2, 4, 6, 8]


def test_tensorboard_events_load_in_event_accumulator(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_with_bug(tmp_path, console=False, tensorboard=True)
    files = [f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents")]
    assert files
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "loss" in tags["scalars"]
    assert [e.step for e in acc.Scalars("loss")] == list(range(12))
    assert "activations/0/std" in tags["scalars"] and "updates/3.weight/ratio" in tags["scalars"]
    assert "gradients/0.weight/rms" in tags["scalars"]
    assert "activations/0/log2_magnitude" in tags["histograms"]
    h = acc.Histograms("activations/0/log2_magnitude")
    assert [e.step for e in h] == [0, 10] and h[0].histogram_value.num > 0
    text = [t for t in tags["tensors"] if t.startswith("findings/")]
    assert text == ["findings/probabilities-into-loss/text_summary"]


def test_console_prints_one_line_per_finding(tmp_path, capsys):
    train_with_bug(tmp_path)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "nnprobe" in line]
    assert len(lines) == 1 and "ERROR" in lines[0] and "probabilities-into-loss" in lines[0]


def test_console_false_is_silent(tmp_path, capsys):
    train_with_bug(tmp_path, console=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_a_failing_sink_does_not_stop_training(tmp_path, caplog):
    import nnprobe.sinks as S

    def boom(self, *a, **k):
        raise OSError("disk full")

    orig = S.JsonlSink.record
    S.JsonlSink.record = boom
    try:
        probe = train_with_bug(tmp_path, console=False)
    finally:
        S.JsonlSink.record = orig
    assert probe.steps == 12
    assert any("JsonlSink" in r.getMessage() for r in caplog.records)


def test_two_probes_on_one_log_dir_lose_nothing(tmp_path):
    """Two probes writing to one log_dir at the same time (before: both opened nnprobe.jsonl with
    "w", and the second truncated the first)."""
    torch.manual_seed(0)
    runs = {}
    for name, steps in (("a", 10), ("b", 7)):
        model = Z.mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        runs[name] = (model, opt, steps, nnprobe.watch(model, opt, every=1, log_dir=str(tmp_path), console=False))
    data = Z.batches(*Z.digits())
    for step in range(10):  # interleaved: a step of one, then a step of the other
        for model, opt, steps, probe in runs.values():
            if step < steps:
                Z.train(model, opt, data, 1, probe=probe)
    for *_, probe in runs.values():
        probe.close()
    files = log_files(tmp_path)
    assert len(files) == 2 and all(p.name.startswith("nnprobe-") and p.suffix == ".jsonl" for p in files)
    for p in files:  # each file whole: every line its own record, start first and end last
        recs = [json.loads(line) for line in p.read_text().splitlines()]
        assert recs[0]["type"] == "start" and recs[-1]["type"] == "end"
    logs, unusable = read_runs(tmp_path)
    assert unusable == [] and all(log.skipped == 0 and log.ended for log in logs)
    assert sorted(len(log.steps) for log in logs) == [7, 10]
    for log in logs:
        n = len(log.steps)
        assert [s.step for s in log.steps] == list(range(n))
        assert [r.step for r in log.losses] == list(range(n))


def test_a_legacy_single_file_log_is_still_read_and_comes_first(tmp_path):
    train_with_bug(tmp_path, console=False)
    (new,) = log_files(tmp_path)
    new.rename(tmp_path / "nnprobe.jsonl")  # what versions before one-file-per-probe wrote
    train_with_bug(tmp_path, console=False)
    files = log_files(tmp_path)
    assert files[0].name == "nnprobe.jsonl" and files[1].name.startswith("nnprobe-")
    logs, _ = read_runs(tmp_path)
    assert [len(log.steps) for log in logs] == [12, 12]
    assert all([f.code for f in log.findings] == ["probabilities-into-loss"] for log in logs)


def test_log_file_names_sort_in_start_order_and_never_collide():
    names = [new_log_name() for _ in range(200)]
    pattern = re.compile(rf"nnprobe-(\d{{8}}T\d{{6}}\.\d{{6}}Z)-{os.getpid()}-[0-9a-f]{{6}}\.jsonl")
    assert all(pattern.fullmatch(n) for n in names), names[0]
    times = [pattern.fullmatch(n).group(1) for n in names]
    assert times == sorted(times)  # a name made later never sorts before an earlier one
    assert len(set(names)) == 200  # the same microsecond still gives two names (pid and random part)
