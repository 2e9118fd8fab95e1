"""Reading logs that may be damaged or hostile (nnprobe.report.logfile): a bad line costs that line
only, is counted, and never stops the lines after it; `nnprobe report` answers with a page or a
one-line error, never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import nnprobe
import pytest
import torch
from fixtures import models as Z
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe import cli
from nnprobe.report.logfile import LogError, log_files, pick_run, read_log, read_runs


@pytest.fixture(scope="module")
def clean_lines(tmp_path_factory) -> list[str]:
    """The lines of a real run's log: sampled steps, histograms, losses, a finding, the end."""
    d = tmp_path_factory.mktemp("log")
    torch.manual_seed(0)
    model = Z.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with nnprobe.watch(model, opt, every=3, log_dir=str(d), console=False) as probe:
        Z.train(model, opt, Z.batches(*Z.digits()), 12, probe=probe, zero_grad=False)
    (path,) = log_files(d)
    lines = path.read_text().splitlines()
    types = [json.loads(line)["type"] for line in lines]
    assert types[0] == "start" and types[-1] == "end" and {"step", "finding"} <= set(types)
    return lines


def write(d: Path, lines: list[str | bytes]) -> Path:
    p = d / "nnprobe-20260101T000000.000000Z-1-abcdef.jsonl"
    p.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return p


def same_run(a, b) -> bool:
    return (a.start == b.start and a.steps == b.steps and a.losses == b.losses and a.findings == b.findings
            and a.ended == b.ended)


def report(log_dir: Path, out: Path, *args: str) -> tuple[int, str]:
    """`nnprobe report` in this process (many cases, no interpreter start-up per case)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["report", str(log_dir), "-o", str(out), *args])
    return code, err.getvalue()


STEP = {"type": "step", "step": 3, "time": 1.0, "loss": 1.0, "losses": [[3, 1.0]], "stats": {}}
BAD_LINES = {
    "not JSON": "this is not json {",
    "a JSON list": "[1, 2, 3]",
    "a JSON number": "42",
    "a JSON string": '"step"',
    "null": "null",
    "an object without a type": '{"step": 3}',
    "an unknown type": '{"type": "steps", "step": 3}',
    "a type that is not a string": '{"type": ["step"], "step": 3}',
    "a step record without its step": '{"type": "step", "stats": {}}',
    "markup as the step": json.dumps({**STEP, "step": "<script>alert(1)</script>"}),
    "a step as a string": json.dumps({**STEP, "step": "3"}),
    "a step as a float": json.dumps({**STEP, "step": 3.0}),
    "a step as a bool": json.dumps({**STEP, "step": True}),
    "a negative step": json.dumps({**STEP, "step": -1}),
    "a huge step": json.dumps({**STEP, "step": 10**30}),
    "a 5000-digit step": '{"type": "step", "step": ' + "9" * 5000 + "}",
    "stats as a list": json.dumps({**STEP, "stats": []}),
    "figures as NaN strings": json.dumps({**STEP, "stats": {"activations": {"0": ["NaN"] * 14}}}),
    "a NaN literal": '{"type": "step", "step": 3, "loss": NaN}',
    "an infinite figure": '{"type": "step", "step": 3, "stats": {"activations": {"0": [' + ", ".join(["1e999"] * 14) + "]}}}",
    "too few figures": json.dumps({**STEP, "stats": {"activations": {"0": [1.0, 2.0]}}}),
    "a histogram of the wrong size": json.dumps({**STEP, "hist": {"activations": {"0": [1, 2, 3]}}}),
    "a negative histogram count": json.dumps({**STEP, "hist": {"activations": {"0": [-1] * 64}}}),
    "losses not pairs": '{"type": "losses", "losses": [[1]]}',
    "a loss's step as a string": '{"type": "losses", "losses": [["1", 0.5]]}',
    "a loss as a string": '{"type": "losses", "losses": [[1, "0.5"]]}',
    "losses as an object": '{"type": "losses", "losses": {"1": 0.5}}',
    "a finding without a code": '{"type": "finding", "severity": "error", "message": "m"}',
    "a finding's code as a number": '{"type": "finding", "code": 5, "severity": "error", "message": "m"}',
    "an unknown severity": '{"type": "finding", "code": "x", "severity": "fatal", "message": "m"}',
    "a finding's step as markup": '{"type": "finding", "code": "x", "severity": "info", "message": "m", "step": "<b>1</b>"}',
    "an end record with a bad finding": '{"type": "end", "step": 3, "findings": [1]}',
    "a second start record": '{"type": "start", "fields": ["count"], "rows": []}',
    "deep nesting, closed": "[" * 100_000 + "]" * 100_000,
    "deep nesting, open": '{"type": "step", "step": 1, "stats": ' + '{"a": ' * 100_000,
    "bytes that are not UTF-8": b'{"type": "step", "step": 3, "\xff\xfe": 1}',
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_a_bad_line_costs_that_line_only(tmp_path, clean_lines, case):
    clean = read_log(write(tmp_path, clean_lines))
    mid = len(clean_lines) // 2  # after it come steps, losses, a finding and the end: all must stay
    path = write(tmp_path, [*clean_lines[:mid], BAD_LINES[case], *clean_lines[mid:]])
    log = read_log(path)
    assert log.skipped == 1 and log.problems[0].startswith(f"line {mid + 1}: ")
    assert same_run(log, clean)
    code, err = report(tmp_path, tmp_path / "r.html")
    assert code == 0 and "warning: skipped 1 malformed line(s)" in err
    assert "<script>alert" not in (tmp_path / "r.html").read_text()


def test_a_clean_log_reads_whole(tmp_path, clean_lines):
    log = read_log(write(tmp_path, clean_lines))
    assert log.skipped == 0 and log.ended
    recs = [json.loads(line) for line in clean_lines]
    assert [s.step for s in log.steps] == [r["step"] for r in recs if r["type"] == "step"] and len(log.steps) >= 4
    assert [r.step for r in log.losses] == list(range(12))
    assert [f.code for f in log.findings] == ["zero-grad-missing"] and log.findings[0].count > 1
    assert len(log.steps[0].stats["activations"]["0"]) == len(log.start.fields)


def test_a_log_without_a_start_record_is_a_clean_error(tmp_path, clean_lines):
    write(tmp_path, clean_lines[1:])
    with pytest.raises(LogError, match="no start record"):
        read_log(log_files(tmp_path)[0])
    code, err = report(tmp_path, tmp_path / "r.html")
    assert code == 2 and "no start record" in err and not (tmp_path / "r.html").exists()


def test_an_empty_log_dir_and_an_unwritable_output_are_clean_errors(tmp_path, clean_lines):
    code, err = report(tmp_path, tmp_path / "r.html")
    assert code == 2 and "no nnprobe log" in err
    write(tmp_path, clean_lines)
    (tmp_path / "taken").write_text("")
    code, err = report(tmp_path, tmp_path / "taken" / "r.html")  # a file where a folder should be
    assert code == 2 and err.startswith("nnprobe report: ")


def test_every_run_in_a_log_dir_is_read_and_the_latest_is_the_default(tmp_path, clean_lines):
    older = write(tmp_path, clean_lines)
    newer = older.with_name("nnprobe-20260102T000000.000000Z-2-012345.jsonl")
    newer.write_text("\n".join(clean_lines[:4]) + "\n")  # a run killed early
    (tmp_path / "nnprobe-20260103T000000.000000Z-3-999999.jsonl").write_text("garbage\n")  # no run at all
    runs, unusable = read_runs(tmp_path)
    assert [r.path for r in runs] == [older, newer] and len(unusable) == 1 and "no start record" in unusable[0]
    assert pick_run(runs) is runs[1] and pick_run(runs, "-1-abc") is runs[0]
    with pytest.raises(LogError, match="2 runs match"):
        pick_run(runs, "nnprobe-2026")
    code, err = report(tmp_path, tmp_path / "r.html")
    assert code == 0 and "the report shows the latest" in err and older.name in err
    assert not runs[1].ended and "no end record" in (tmp_path / "r.html").read_text()
    code, err = report(tmp_path, tmp_path / "r.html", "--run", older.name)
    assert code == 0 and err == ""
    code, err = report(tmp_path, tmp_path / "r.html", "--run", "nope")
    assert code == 2 and "no run match" in err


# ---------------------------------------------------------------- generated

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
# values that no field of a record may hold (each field wants a number, string, list or object)
wrong = {
    "step": (st.text() | st.floats() | st.booleans() | st.integers(max_value=-1) | st.integers(min_value=2**53 + 1)
             | st.lists(st.integers())),
    "type": st.integers() | st.lists(st.text(max_size=3)) | st.none(),
    "stats": st.lists(json_values) | st.text() | st.integers(),
    "losses": st.dictionaries(st.text(max_size=3), st.floats()) | st.lists(st.lists(st.integers(), max_size=1), min_size=1) | st.text(),
    "severity": st.text(max_size=10).filter(lambda s: s not in ("error", "warning", "info")),
    "code": st.integers() | st.none() | st.lists(st.text()),
    "findings": st.lists(st.integers() | st.text(), min_size=1) | st.text(),
}
REQUIRED = {"step": ("type", "step"), "losses": ("type", "losses"), "finding": ("type", "code", "severity"),
            "end": ("type", "step"), "start": ("type", "fields", "rows")}


@st.composite
def broken_line(draw, clean_lines: list[str]) -> str | bytes:
    """A line that is certainly not a valid record: a real record damaged one way or another."""
    rec = json.loads(draw(st.sampled_from(clean_lines)))
    text = json.dumps(rec)
    how = draw(st.sampled_from(["truncate", "drop a key", "wrong type", "not an object", "deep", "not UTF-8"]))
    if how == "truncate":  # a proper prefix of an object is never valid JSON
        return text[: draw(st.integers(1, len(text) - 1))]
    if how == "drop a key":
        del rec[draw(st.sampled_from(REQUIRED[rec["type"]]))]
        return json.dumps(rec)
    if how == "wrong type":
        key = draw(st.sampled_from([k for k in wrong if k in rec and (k != "severity" or rec["type"] == "finding")]))
        rec[key] = draw(wrong[key])
        return json.dumps(rec)
    if how == "not an object":
        return json.dumps(draw(st.lists(json_values) | st.integers() | st.text() | st.floats(allow_nan=False)))
    if how == "deep":
        n = draw(st.integers(1_000, 200_000))
        return "[" * n + "]" * n
    cut = draw(st.integers(0, len(text)))
    return text[:cut].encode() + b"\xff" + text[cut:].encode()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_bad_lines_are_skipped_counted_and_cost_nothing_else(clean_lines, data):
    bad = data.draw(st.lists(broken_line(clean_lines), min_size=1, max_size=5))
    lines: list[str | bytes] = list(clean_lines)
    for b in bad:
        lines.insert(data.draw(st.integers(0, len(lines))), b)
    with tempfile.TemporaryDirectory() as d:
        log = read_log(write(Path(d), lines))
        assert log.skipped == len(bad)
        assert same_run(log, read_log(write(Path(d), clean_lines)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(json_values.map(json.dumps) | st.text(max_size=40) | st.binary(max_size=40), max_size=6),
       keep_start=st.booleans())
def test_nnprobe_report_never_fails_with_a_traceback(clean_lines, lines, keep_start):
    with tempfile.TemporaryDirectory() as d:
        write(Path(d), ([clean_lines[0]] if keep_start else []) + lines + clean_lines[1:3])
        code, err = report(Path(d), Path(d) / "r.html")
        assert (code, keep_start) in ((0, True), (2, False))  # without a start record nothing is usable
        assert err.startswith("nnprobe report: ") or (code == 0 and err == "")
