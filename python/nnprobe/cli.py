"""The `nnprobe` command (also `python -m nnprobe`): demo, report, check, explain, bench."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    import torch

    from . import demo
    from .report import from_probe, render, save_mask

    # the demo models are tiny: one thread is fastest, and immune to a busy neighbour
    torch.set_num_threads(1)
    out = Path(args.out)
    bugs: list[str | None] = [None, *demo.BUGS] if args.bug == "all" else [args.bug]
    if args.bug not in (None, "all") and args.bug not in demo.BUGS:
        print(f"unknown bug {args.bug!r}; choose from: {', '.join(demo.BUGS)}, all", file=sys.stderr)
        return 2
    results = []
    for bug in bugs:
        label = bug or "clean"
        what = demo.BUGS[bug].what if bug else "a correct training loop"
        print(f"\n== nnprobe demo: {label}: {what}", flush=True)
        run_dir = out / label if len(bugs) > 1 else out
        probe, one_shot, deps = demo.run(bug, run_dir, steps=args.steps, console=not args.quiet, progress=not args.quiet)
        for f in one_shot:
            print(f"  one-shot check: {f}")
        if not args.quiet:
            print(probe.summary())
        mask = deps.mask.mask
        save_mask(run_dir / "log", "batch independence", mask)  # so that `nnprobe report` draws it too
        run = from_probe(probe)
        run.masks = [("batch independence", mask)]
        extra = [{"code": f.code, "severity": f.severity, "message": f.message, "module": f.module, "step": f.step,
                  "hint": f.hint, "count": f.count} for f in one_shot]
        page = render(run, run_dir / "report.html", title=f"nnprobe demo: {label}", extra_findings=extra)
        codes = probe.codes() | {f.code for f in one_shot}
        serious = {f.code for f in list(probe.findings) + list(one_shot) if f.severity in ("error", "warning")}
        want = set(demo.expected_codes(bug))
        ok = want <= codes if bug else not serious
        results.append((label, want, codes, serious, ok))
        print(f"report: {page}")
    if len(results) > 1 or args.bug == "all":
        print("\n== summary: planted mistake -> expected finding -> caught?")
        for label, want, _codes, serious, ok in results:
            exp = ", ".join(sorted(want)) or "(nothing above info)"
            got = ", ".join(sorted(serious)) or "nothing above info"
            print(f"  {'ok ' if ok else 'MISS'} {label:14s} expects {exp:45s} raised: {got}")
    return 0 if all(r[-1] for r in results) else 1


def _report(args: argparse.Namespace) -> int:
    from .report import load_log, render

    # whatever the log holds, the answer is a page or a one-line error, never a traceback
    try:
        run = load_log(args.log_dir, args.run)
        page = render(run, args.output)
    except (OSError, ValueError) as e:  # no log, no usable run (LogError), an unwritable output
        print(f"nnprobe report: {e}", file=sys.stderr)
        return 2
    if run.skipped:
        print(f"nnprobe report: warning: skipped {run.skipped} malformed line(s) of {run.source}", file=sys.stderr)
    for problem in run.problems:
        print(f"  {problem}", file=sys.stderr)
    if run.others and args.run is None:
        print(f"nnprobe report: {len(run.others) + 1} runs in {args.log_dir}; the report shows the latest, "
              f"{run.source} (--run NAME for another: {', '.join(run.others)})", file=sys.stderr)
    print(page)
    return 0


def _check(args: argparse.Namespace) -> int:
    from .replay import judge_log

    try:
        findings = judge_log(args.log_dir, args.run)
    except (OSError, ValueError) as e:
        print(f"nnprobe check: {e}", file=sys.stderr)
        return 2
    for f in findings:
        print(f)
    serious = [f for f in findings if f.severity in ("error", "warning")]
    print(f"{len(findings)} findings, {len(serious)} above info")
    return 1 if serious else 0


def _explain(args: argparse.Namespace) -> int:
    from .findings import CATALOGUE, explain

    if args.code in (None, "all"):
        for code, e in CATALOGUE.items():
            print(f"{code:26s} {e.severity:8s} {e.title}")
        return 0
    try:
        print(explain(args.code))
    except KeyError as e:
        print(f"nnprobe explain: {e.args[0]}", file=sys.stderr)
        return 2
    return 0


def _bench(args: argparse.Namespace) -> int:
    # benches/ is not installed with the package: look in the current clone, then beside the source
    candidates = [Path.cwd() / "benches" / "run.py", Path(__file__).resolve().parents[2] / "benches" / "run.py"]
    script = next((c for c in candidates if c.exists()), candidates[0])
    if not script.exists():
        print("nnprobe bench runs benches/ from a clone of the repository; run it from the clone's top folder "
              f"(looked for {script})", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(script), *args.rest])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nnprobe", description="Catch the mistakes that make neural-network training fail silently.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="train a small model with a planted mistake and show what nnprobe finds")
    d.add_argument("--bug", default=None, help="a planted mistake (see --list), or 'all'; none: a clean run")
    d.add_argument("--list", action="store_true", help="list the mistakes the demo can plant")
    d.add_argument("--out", default="nnprobe-demo", help="where the log and report.html go (default: ./nnprobe-demo)")
    d.add_argument("--steps", type=int, default=150)
    d.add_argument("--quiet", action="store_true", help="no live findings, progress bar or summary")
    r = sub.add_parser("report", help="write the HTML report of a watched run's log directory")
    r.add_argument("log_dir", help="the log_dir given to nnprobe.watch (or one log file in it)")
    r.add_argument("-o", "--output", default="report.html")
    r.add_argument("--run", default=None, metavar="NAME",
                   help="which run when the log_dir holds several: its file name or a unique part of it (default: the latest)")
    c = sub.add_parser("check", help="judge a finished run again from its log, with today's checks")
    c.add_argument("log_dir", help="the log_dir given to nnprobe.watch (or one log file in it)")
    c.add_argument("--run", default=None, metavar="NAME", help="which run when the log_dir holds several (default: the latest)")
    e = sub.add_parser("explain", help="what a finding code means, why it hurts, how to fix it")
    e.add_argument("code", nargs="?", default=None)
    b = sub.add_parser("bench", help="run the benchmarks in benches/ (from a clone)")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    if args.cmd == "demo" and args.list:
        from . import demo

        for name, bug in demo.BUGS.items():
            print(f"{name:14s} {bug.what}  ->  {', '.join(bug.expects)}")
        return 0
    return {"demo": _demo, "report": _report, "check": _check, "explain": _explain, "bench": _bench}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
