"""Runs the benchmarks: `scripts/dev bench [stats|watch|deps|data|all] [args...]`."""

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = {"stats": "bench_stats.py", "watch": "bench_watch.py", "deps": "bench_deps.py", "data": "bench_data.py"}


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    names = [n for n in SCRIPTS if (HERE / SCRIPTS[n]).exists()] if which == "all" else [which]
    for name in names:
        if name not in SCRIPTS:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(SCRIPTS)} or all")
        print(f"== {name} ==", flush=True)
        sys.argv = [SCRIPTS[name]] + sys.argv[2:]
        runpy.run_path(str(HERE / SCRIPTS[name]), run_name="__main__")


if __name__ == "__main__":
    main()
