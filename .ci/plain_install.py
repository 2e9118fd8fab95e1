"""CI smoke test: nnprobe installed as a user installs it (`pip install .`, no extras) runs its
main job, `nnprobe demo`, end to end, and writes the report.

Run with the interpreter of the test environment (`scripts/dev smoke` does). It builds the
wheel from this clone with pip, creates a fresh virtualenv (no system site-packages), installs
the wheel there with pip, and gives that virtualenv exactly the distributions a plain install
pulls in: the wheel's declared dependencies and theirs, no extras. Those are linked from the
test environment instead of downloaded, because torch from PyPI is several gigabytes of CUDA
libraries (the CPU wheels' index is not reachable from CI); `pip check` then confirms that every
declared requirement is met, and the script checks that matplotlib (and every other test extra)
cannot be imported there. A module the package imports without declaring it fails the demo.

    python .ci/plain_install.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import email.parser
import importlib.metadata as md
import os
import subprocess
import sys
import tempfile
import time
import venv
import zipfile
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        sys.exit(f"plain install: `{' '.join(map(str, cmd))}` failed ({r.returncode}):\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return r.stdout


def requires(metadata_requires: list[str] | None, extras: set[str]) -> list[Requirement]:
    """The requirements that apply here, with `extras` asked for (none: the plain install)."""
    out = []
    for text in metadata_requires or []:
        req = Requirement(text)
        marker: Marker | None = req.marker
        if marker is None or any(marker.evaluate({"extra": e}) for e in extras | {""}):
            out.append(req)
    return out


def closure(reqs: list[Requirement]) -> dict[str, md.Distribution]:
    """Every distribution of the current environment that `reqs` pull in, transitively."""
    dists: dict[str, md.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()  # a distribution may be asked for with different extras
    todo = list(reqs)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            sys.exit(f"plain install: {req} is required but not installed in {sys.prefix}")
        if not req.specifier.contains(dist.version, prereleases=True):
            sys.exit(f"plain install: {req} is required but {dist.version} is installed")
        dists[name] = dist
        todo += requires(dist.requires, set(req.extras))
    return dists


def link(dists: dict[str, md.Distribution], site: Path) -> None:
    """Links each distribution's top-level files and folders (its packages and its dist-info) into
    `site`, where pip and Python find them as installed."""
    for dist in dists.values():
        base = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] != ".."}:
            dest = site / top
            if not dest.exists() and (base / top).exists():
                dest.symlink_to(base / top)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = ap.parse_args()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nnprobe-plain-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work / "wheel", ROOT)
        (wheel,) = (work / "wheel").glob("nnprobe-*.whl")
        t_wheel = time.monotonic()
        with zipfile.ZipFile(wheel) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            declared = email.parser.BytesParser().parsebytes(z.read(meta)).get_all("Requires-Dist")
        env = work / "venv"
        venv.create(env, with_pip=True, clear=True)
        py = env / "bin" / "python"
        site = Path(run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
        dists = closure(requires(declared, set()))
        link(dists, site)
        run(py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)
        run(py, "-m", "pip", "check")
        # the point of the test: what only the test extra brings is not there
        visible = run(py, "-c", "import importlib.util as u, sys; "
                      "print(' '.join(m for m in sys.argv[1:] if u.find_spec(m)))", "matplotlib", "sklearn", "tensorboard",
                      "hypothesis", "pytest").split()
        if visible:
            sys.exit(f"plain install: the environment is not plain, it can import {' '.join(visible)}")
        out = work / "demo"
        run(env / "bin" / "nnprobe", "demo", "--steps", "40", "--out", out, "--quiet", cwd=work)
        run(env / "bin" / "nnprobe", "report", out / "log", "-o", out / "from-log.html", cwd=work)
        for page in (out / "report.html", out / "from-log.html"):
            text = page.read_text()
            if "<svg " not in text or "matplotlib" in text:
                sys.exit(f"plain install: {page} has no SVG plot, or mentions matplotlib")
        print(f"plain install: ok ({len(dists)} distributions, none of the extras; wheel built in "
              f"{t_wheel - t0:.0f} s, everything in {time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    os.environ.pop("PYTHONPATH", None)  # the demo must run the installed wheel, not a source tree
    raise SystemExit(main())
