"""watch(..., wandb=True) in an offline wandb run, read back from the run's own files.

wandb 0.2x/0.3x keeps an offline run's history only in its transaction log
(`run-<id>.wandb`): wandb's LevelDB-style log of protobuf `Record`s (the format `wandb sync`
uploads). Its Python reader (`wandb.sdk.internal.datastore`) is gone since the Go core took over,
so `read_history` below reads the log with wandb's own protobuf definitions.
"""

from __future__ import annotations

import glob
import json
import math
import os
import struct
import sys
import time

import nnprobe
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures import models as Z
from nnprobe.runtime.hooks import snapshot

wandb = pytest.importorskip("wandb")

from nnprobe.wandb_sink import NoActiveRunError  # noqa: E402 - after importorskip: without wandb the module is skipped

KEYS = {"activations": ("mean", "std", "dead", "saturated"), "gradients": ("rms",), "updates": ("ratio",)}


def _records(path: str):
    """The protobuf `Record`s of a transaction log, as far as it is written."""
    from wandb.proto import wandb_internal_pb2 as pb

    with open(path, "rb") as fh:
        data = fh.read()
    assert data[:4] == b":W&B"
    block, header = 32768, 7  # LevelDB log: 32 KiB blocks; records carry crc32, length, type
    pos, buf = 7, b""
    while pos + header <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        if left < header or (kind == 0 and length == 0):  # a block's zero-padded tail
            pos += left
            continue
        if pos + header + length > len(data):
            return  # a record still being written
        chunk = data[pos + header:pos + header + length]
        pos += header + length
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL, FIRST | MIDDLE, LAST
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def read_history(run_dir: str, timeout: float = 60.0) -> list[dict]:
    """Every history row of a finished offline run, keys joined with '/', values decoded from
    JSON. `run.finish()` can return before wandb's core has written the whole log: wait for its
    exit record."""
    (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    deadline = time.monotonic() + timeout
    while True:
        recs = list(_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in recs) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return [{"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            for r in recs if r.WhichOneof("record_type") == "history"]


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    r = wandb.init(project="nnprobe-test", dir=str(tmp_path), mode="offline",
                   settings=wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True,
                                           x_disable_machine_info=True, disable_git=True, save_code=False,
                                           x_save_requirements=False))
    yield r
    r.finish()


def train(steps=12, **kw):
    torch.manual_seed(0)
    model = Z.mlp(dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with nnprobe.watch(model, opt, console=False, **kw) as probe:
        # probabilities into cross_entropy: an error finding at step 1
        Z.train(model, opt, Z.batches(*Z.digits()), steps, loss_fn=lambda o, y: F.cross_entropy(o.softmax(1), y))
    return probe


def expected_row(probe, i: int) -> dict[str, float]:
    """What the sink should log for the i-th sampled step, from the probe's own history."""
    step = int(probe.sampled_steps[i])
    out = {"nnprobe/step": step}
    ls, lv = probe.losses()
    out["nnprobe/loss"] = float(lv[list(ls).index(step)])
    for kind, stats in KEYS.items():
        for name in probe.names(kind):
            for stat in stats:
                v = probe.history(name, kind, stat)[i]
                if math.isfinite(v):
                    out[f"nnprobe/{kind}/{name}/{stat}"] = float(v)
    return out


def test_every_sampled_step_is_one_row_matching_the_probe_history(run):
    probe = train(every=1, wandb=True)
    run_dir = os.path.dirname(run.dir)  # run.dir is <run dir>/files
    run.finish()
    rows = read_history(run_dir)
    steps = [r for r in rows if "nnprobe/findings/_type" not in r]
    assert [r["nnprobe/step"] for r in steps] == list(range(12)) == list(probe.sampled_steps)
    hist_keys = {k for r in steps for k in r if k.endswith("/log2_magnitude/_type")}
    for i, row in enumerate(steps):
        want = expected_row(probe, i)
        got = {k: v for k, v in row.items() if not k.startswith("_") and "/log2_magnitude/" not in k}
        assert set(got) == set(want), set(got) ^ set(want)
        for k, v in want.items():
            assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-12), k
    assert {"nnprobe/activations/0/mean", "nnprobe/activations/1/dead", "nnprobe/gradients/0.weight/rms",
            "nnprobe/updates/5.weight/ratio"} <= set(steps[0])
    # histograms on the steps the probe took them (the first and every tenth after), in log2 units
    assert [r["nnprobe/step"] for r in steps if "nnprobe/activations/0/log2_magnitude/_type" in r] == [0, 10]
    assert "nnprobe/gradients/0.weight/log2_magnitude/_type" in hist_keys
    h = steps[0]["nnprobe/activations/0/log2_magnitude/values"]
    bins = steps[0]["nnprobe/activations/0/log2_magnitude/bins"]
    assert len(bins) == len(h) + 1 and all(b == int(b) for b in bins)
    assert sum(h) == probe.history("0", "activations", "count")[0] - probe.history("0", "activations", "zeros")[0]
    # the findings: one table at close, its file in the run's media folder
    (table_row,) = [r for r in rows if "nnprobe/findings/_type" in r]
    assert table_row["nnprobe/findings/_type"] == "table-file"
    with open(os.path.join(run_dir, "files", table_row["nnprobe/findings/path"])) as fh:
        table = json.load(fh)
    assert table["columns"] == ["code", "severity", "module", "step", "count", "message", "hint"]
    got_findings = [dict(zip(table["columns"], d)) for d in table["data"]]
    assert [(f["code"], f["severity"], f["step"]) for f in got_findings] == [
        (f.code, f.severity, f.step) for f in probe.findings]
    assert got_findings[0]["code"] == "probabilities-into-loss" and got_findings[0]["step"] == 1


def test_sparse_sampling_logs_only_the_sampled_steps(run):
    probe = train(steps=25, every=10, wandb=True)
    run_dir = os.path.dirname(run.dir)
    run.finish()
    steps = [r["nnprobe/step"] for r in read_history(run_dir) if "nnprobe/findings/_type" not in r]
    assert steps == list(probe.sampled_steps) and 0 < len(steps) < 25


def test_no_active_run_is_a_clear_error_and_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(wandb, "run", None)
    model = Z.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = snapshot(model, list(model.parameters()), [opt])
    with pytest.raises(NoActiveRunError, match=r"wandb\.init"):
        nnprobe.watch(model, opt, wandb=True, log_dir=str(tmp_path / "log"))
    assert snapshot(model, list(model.parameters()), [opt]) == before
    assert not (tmp_path / "log").exists()  # the check comes before any other sink opens
    assert issubclass(NoActiveRunError, (nnprobe.NnprobeError, RuntimeError))


def test_wandb_not_installed_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    model = Z.mlp()
    with pytest.raises(ModuleNotFoundError, match=r"nnprobe\[wandb\]"):
        nnprobe.watch(model, wandb=True)


def test_a_row_is_the_tensorboard_set_in_plain_numbers():
    """A row from host figures (the sink never sees a tensor): NumPy in, Python numbers out, NaN left out."""
    from nnprobe.figures import FIELDS, Rows
    from nnprobe.wandb_sink import WandbSink

    rows = Rows()
    rows.add("fc", "activations", "fc", "Linear", param=False)
    rows.add("fc.weight", "gradients", "fc", "Linear", param=True)
    sink = WandbSink.__new__(WandbSink)  # no run needed to compute a row
    sink._rows = rows
    mat = np.full((2, len(FIELDS)), np.nan, dtype=np.float32)
    mat[:, :11] = [[4, 0, 0, 0, -1, 1, 0.5, 0.25, 2.0, 1, 0.5]] * 2
    row = sink.scalars(3, mat, np.array([True, True]), [(2, 1.0), (3, 0.5)])
    assert row == {"nnprobe/step": 3, "nnprobe/loss": 0.5, "nnprobe/activations/fc/mean": 0.5,
                   "nnprobe/activations/fc/std": 0.25, "nnprobe/gradients/fc.weight/rms": 1.0}
    assert all(type(v) in (int, float) for v in row.values())
