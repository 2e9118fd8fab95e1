"""watch() overhead on the reference workloads (issue 3, SPEC section 4).

    python benches/bench_watch.py [--only mlp,cnn,gpt] [--quick] [--no-write]

Workloads on the CPU: an MLP on sklearn's digits (64-128-128-10, batch 64), a small CNN
(three conv-BatchNorm-ReLU blocks on 3x32x32 images, batch 32), a small GPT (4 layers, d=128,
4 heads, context 64, batch 16). Each is trained by Adam in several configurations, each its own
copy of the model (same initial weights, same batches), timed in turn, round after round, so a
busy neighbour on the shared machine slows them alike; the figure is the median over rounds of
the time per step:

- bare: the plain loop;
- watch default: `nnprobe.watch(model, opt)` (every="auto", a 3% budget);
- watch every=1: every statistic on every step;
- wandb: `wandb.watch(model, log="all", log_freq=1)` in offline mode, `wandb.log` each step;
- tensorboard: `SummaryWriter.add_histogram` of every parameter and gradient every step.

Each probe is opened before a warm-up (not timed) and kept open for the whole run: what is
measured is the steady state of a long run (every="auto" pays for its forced first samples
during the warm-up).

Also: the read-bandwidth floor of the watched bytes (`_core.read_floor` over a 256 MB float32
buffer gives the bandwidth; the bytes are every element the statistics read on one sampled
step), the time spent inside the core's passes on a sampled step, and peak RSS (each
configuration in its own process). Each run also checks what it timed: the watched models'
losses equal the bare one's bit for bit, and the probes found nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import nnprobe  # noqa: E402
from _results import machine, write_section  # noqa: E402
from nnprobe import _core  # noqa: E402


# --------------------------------------------------------------------------------- workloads
class GPTBlock(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.act = nn.GELU()
        self.out = nn.Linear(4 * d, d)
        self.drop = nn.Dropout(dropout)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))
        return x + self.drop(self.out(self.act(self.fc(self.ln2(x)))))


class GPT(nn.Module):
    def __init__(self, vocab: int = 65, d: int = 128, heads: int = 4, layers: int = 4, block: int = 64) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(block, d)
        self.blocks = nn.ModuleList(GPTBlock(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        with torch.no_grad():
            self.head.weight.mul_(0.1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


def cnn() -> nn.Module:
    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(*block(3, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def workload(name: str) -> tuple[Callable[[], nn.Module], Callable[[], Any], Callable[..., torch.Tensor]]:
    """(make model, make a batch iterator, loss function); the same batches for every copy."""
    if name == "mlp":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        X = torch.tensor((X - X.mean(0)) / (X.std(0) + 1e-6), dtype=torch.float32)
        Y = torch.tensor(y)

        def data():
            i = 0
            while True:
                j = (i * 64) % (len(X) - 64)
                yield X[j : j + 64], Y[j : j + 64]
                i += 1

        return (lambda: nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)),
                data, F.cross_entropy)
    if name == "cnn":
        g = torch.Generator().manual_seed(0)
        X = torch.randn(512, 3, 32, 32, generator=g)
        Y = torch.randint(0, 10, (512,), generator=g)

        def data():
            i = 0
            while True:
                j = (i * 32) % (len(X) - 32)
                yield X[j : j + 32], Y[j : j + 32]
                i += 1

        return cnn, data, F.cross_entropy
    if name == "gpt":
        g = torch.Generator().manual_seed(0)
        nxt = torch.randint(0, 65, (65, 3), generator=g)
        seq = [0]
        choice = torch.randint(0, 3, (40000,), generator=g).tolist()
        for c in choice:
            seq.append(int(nxt[seq[-1], c]))
        S = torch.tensor(seq)

        def data():
            gg = torch.Generator().manual_seed(1)
            while True:
                ix = torch.randint(0, len(S) - 65, (16,), generator=gg)
                x = torch.stack([S[i : i + 64] for i in ix])
                yield x, torch.stack([S[i + 1 : i + 65] for i in ix])

        return GPT, data, lambda o, t: F.cross_entropy(o.reshape(-1, o.shape[-1]), t.reshape(-1))
    raise SystemExit(f"unknown workload {name!r}")


# steps per round, rounds, warm-up steps. The warm-up covers the dense early samples the checks
# judge (every="auto": 21 in the first 100 steps, 31 by step 1000): a one-off cost of the first
# steps, not the steady state measured here. A round is long enough to hold about one sampled step of
# every="auto" (which samples one step in ~200 on the MLP, ~20 on the CNN, ~10 on the GPT), so
# that the median over rounds does not drop its periodic cost.
SETTINGS = {
    "mlp": (250, 9, 500),
    "cnn": (20, 7, 300),
    "gpt": (10, 7, 300),
}
QUICK = {"mlp": (40, 4, 200), "cnn": (4, 3, 8), "gpt": (3, 3, 8)}
CONFIGS = ("bare", "watch default", "watch every=1", "wandb", "tensorboard")


# ---------------------------------------------------------------------------------- trainers
class Trainer:
    def __init__(self, name: str, config: str, tmp: str) -> None:
        make, data, self.loss_fn = workload(name)
        torch.manual_seed(0)
        self.model = make()
        self.rng = torch.get_rng_state()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.data = data()
        self.config = config
        self.losses: list[float] = []
        self.probe = None
        self.tb = None
        self.wandb = None
        self.n = 0
        if config == "watch default":
            self.probe = nnprobe.watch(self.model, self.opt, console=False)
        elif config == "watch every=1":
            self.probe = nnprobe.watch(self.model, self.opt, every=1, console=False)
        elif config == "wandb":
            import wandb

            os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=tmp, WANDB_CONSOLE="off")
            self.wandb = wandb.init(project="nnprobe-bench", dir=tmp, mode="offline")
            wandb.watch(self.model, log="all", log_freq=1)
        elif config == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(tmp, f"tb-{name}"))

    def steps(self, k: int) -> None:
        # each copy draws its dropout masks from its own random stream, whatever the interleaving
        outer = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        try:
            self._steps(k)
        finally:
            self.rng = torch.get_rng_state()
            torch.set_rng_state(outer)

    def _steps(self, k: int) -> None:
        for _ in range(k):
            x, y = next(self.data)
            self.opt.zero_grad()
            loss = self.loss_fn(self.model(x), y)
            loss.backward()
            self.opt.step()
            if self.tb is not None:
                for pname, p in self.model.named_parameters():
                    self.tb.add_histogram(f"weights/{pname}", p, self.n)
                    self.tb.add_histogram(f"grads/{pname}", p.grad, self.n)
            value = loss.item()
            if self.wandb is not None:
                self.wandb.log({"loss": value})
            self.losses.append(value)
            self.n += 1

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.probe is not None:
            self.probe.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.unwatch(self.model)
            self.wandb.finish()


def watched_elements(probe: Any) -> int:
    """Elements the statistics read on one sampled step: every row's count, and the update
    samples twice (the difference and the weights before)."""
    mats = probe.store.matrices
    counts = np.nan_to_num(mats[-1, :, 0].astype(np.float64))
    upd = [i for i, r in enumerate(probe.plan.rows.rows) if r.kind == "updates"]
    return int(counts.sum() + counts[upd].sum())


def bandwidth() -> tuple[float, float, float]:
    """Read bandwidth (bytes/s) from a plain sum over 256 MB, and the core's stats pass over the
    same buffer without and with the histogram, as multiples of that plain read."""
    x = np.random.default_rng(0).standard_normal(64 << 20, dtype=np.float32)
    _core.read_floor(x)
    ts: dict[str, list[float]] = {"floor": [], "stats": [], "hist": []}
    for _ in range(5):
        for k, f in (("floor", lambda: _core.read_floor(x)), ("stats", lambda: _core.stats_array([x])),
                     ("hist", lambda: _core.stats_many([x], hist=True))):
            t0 = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t0)
    floor = statistics.median(ts["floor"])
    return x.nbytes / floor, statistics.median(ts["stats"]) / floor, statistics.median(ts["hist"]) / floor


def core_time_per_sampled_step(name: str, steps: int) -> tuple[float, int]:
    """Seconds inside the core's passes per sampled step (every=1), and elements watched."""
    import nnprobe.core as C
    import nnprobe.runtime.record as R

    spent = [0.0]
    orig_rows, orig_many = R.core_rows, C.stats_many

    def timed(f):
        def g(*a, **k):
            t0 = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t0
        return g

    tr = Trainer(name, "watch every=1", tempfile.gettempdir())
    tr.steps(3)
    R.core_rows = timed(orig_rows)
    C.stats_many = timed(orig_many)
    plain: list[float] = []
    hist: list[float] = []
    try:
        for _ in range(steps):
            spent[0] = 0.0
            rec = tr.probe._state.record
            with_hist = rec is not None and rec.hist
            tr.steps(1)
            (hist if with_hist else plain).append(spent[0])
    finally:
        R.core_rows, C.stats_many = orig_rows, orig_many
    elems = watched_elements(tr.probe)
    tr.close()
    return statistics.median(plain), statistics.median(hist) if hist else math.nan, elems


def peak_rss(name: str, config: str, steps: int) -> int:
    """Peak RSS (KiB) of a fresh process running `steps` steps of one configuration."""
    # VmHWM, not ru_maxrss: the latter keeps the parent's high-water mark across fork and exec
    code = (f"import sys; sys.path.insert(0, {HERE!r}); import bench_watch as b, tempfile; "
            f"t = b.Trainer({name!r}, {config!r}, tempfile.mkdtemp()); t.steps({steps}); t.close(); "
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def interleave(trainers: dict[str, Trainer], rounds: int, per_round: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {c: [] for c in trainers}
    order = list(trainers)
    for _ in range(rounds):
        order = order[1:] + order[:1]  # rotate who goes first
        for c in order:
            t0 = time.perf_counter()
            trainers[c].steps(per_round)
            trainers[c].flush()
            times[c].append((time.perf_counter() - t0) / per_round)
    return times


def run(name: str, quick: bool, tmp: str, peers: bool) -> dict[str, Any]:
    """Two phases: nnprobe against the bare loop, then the peers against the bare loop. The peers
    keep working in background threads and processes after their steps (TensorBoard's event
    writer, wandb's service), which would slow whichever configuration runs next: they get a
    phase of their own, and TensorBoard's flush is timed as part of its steps."""
    per_round, rounds, warm = (QUICK if quick else SETTINGS)[name]
    res: dict[str, Any] = {}
    phases = [("bare", "watch default", "watch every=1")]
    if peers:
        phases.append(("bare", "wandb", "tensorboard"))
    for k, configs in enumerate(phases):
        trainers = {c: Trainer(name, c, tmp) for c in configs}
        for t in trainers.values():
            t.steps(warm)
        # the peers' cost is per step, not periodic: shorter rounds do for them (TensorBoard's
        # histograms cost 25 bare MLP steps each)
        times = interleave(trainers, rounds, per_round if k == 0 else max(1, per_round // 5))
        for c, v in times.items():
            res[c if k == 0 or c != "bare" else "bare (peers phase)"] = statistics.median(v)
            if c != "bare":
                # the ratio to the bare loop of the same round, median over rounds: neighbours on a
                # shared machine come and go slower than a round
                ordered = sorted(a / b for a, b in zip(v, times["bare"]))
                res[f"ratio {c}"] = statistics.median(ordered)
                # the middle half of the per-round ratios: the spread the median is read against
                q = len(ordered) // 4
                res[f"spread {c}"] = (ordered[q], ordered[-1 - q])
        bare = trainers["bare"].losses
        if k == 0:
            for c in ("watch default", "watch every=1"):
                assert trainers[c].losses == bare, f"{name}: {c} changed the training"
                loud = [str(f) for f in trainers[c].probe.findings if f.severity != "info"]
                assert loud == [], (name, c, loud)
            res["sampled"] = len(trainers["watch default"].probe.sampled_steps)
            res["steps"] = trainers["watch default"].probe.steps
        for t in trainers.values():
            t.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="mlp,cnn,gpt")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    names = args.only.split(",")
    bw, kernel, kernel_hist = bandwidth()
    tmp = tempfile.mkdtemp(prefix="nnprobe-bench-")
    rows = []
    notes = []
    for name in names:
        res = run(name, args.quick, tmp, not args.no_peers)
        core_s, core_hist_s, elems = core_time_per_sampled_step(name, 4 if args.quick else 11)
        floor = 4 * elems / bw
        bare = res["bare"]
        line = {"workload": name, "bare_ms": 1e3 * bare, "res": res, "core_ms": 1e3 * core_s, "core_hist_ms": 1e3 * core_hist_s,
                "floor_ms": 1e3 * floor,
                "watched_MB": 4 * elems / 1e6}
        if not args.no_memory:
            msteps = 60 if name == "mlp" else 6
            line["rss"] = {c: peak_rss(name, c, msteps) for c in ("bare", "watch default", "watch every=1")}
        rows.append(line)
        print(json.dumps({k: v for k, v in line.items() if k != "res"}
                         | {c: round(res["ratio " + c], 3) for c in CONFIGS if c in res and c != "bare"}), flush=True)

    load = os.getloadavg()
    cmd = ("python benches/bench_watch.py" + (" --quick" if args.quick else "")
           + (f" --only {args.only}" if args.only != "mlp,cnn,gpt" else "")
           + (f" --threads {args.threads}" if args.threads else "") + (" --no-peers" if args.no_peers else ""))
    head = ("| workload | bare ms/step | watch default | watch every=1 | wandb log=all | TB histograms | sampled (default) "
            "| core / floor | core, histogram step | every=1 extra / floor | peak RSS default / every=1 |")
    table = [head, "|" + "---|" * 11]
    for ln in rows:
        res = ln["res"]
        b = res["bare"]
        def ratio(c: str, res: dict[str, Any] = res) -> str:
            if c not in res:
                return "-"
            lo, hi = res.get(f"spread {c}", (math.nan, math.nan))
            return f"{res['ratio ' + c]:.3f}x ({lo:.3f}-{hi:.3f})"

        extra = (res["watch every=1"] - b) * 1e3
        rss = ln.get("rss")
        mem = f"{rss['watch default'] / rss['bare']:.3f}x / {rss['watch every=1'] / rss['bare']:.3f}x" if rss else "-"
        table.append(
            f"| {ln['workload']} | {b * 1e3:.2f} | {ratio('watch default')} | {ratio('watch every=1')} | {ratio('wandb')} | "
            f"{ratio('tensorboard')} | {res['sampled']} of {res['steps']} | {ln['core_ms']:.3f} / {ln['floor_ms']:.3f} ms "
            f"= {ln['core_ms'] / ln['floor_ms']:.2f}x | {ln['core_hist_ms'] / ln['floor_ms']:.2f}x | "
            f"{extra:.2f} ms = {extra / ln['floor_ms']:.1f}x | {mem} |"
        )
    body = "\n".join([
        f"Command: `{cmd}` (torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"{nnprobe.get_num_threads()} core threads). Machine: {machine()}; read bandwidth {bw / 1e9:.1f} GB/s "
        f"(`_core.read_floor`, 256 MB).",
        "",
        "Time per step as a ratio to the bare loop: each round times every configuration in turn, the ratio to "
        "the bare loop of the same round is taken, and the median over rounds reported (the peers against a bare "
        "loop timed in their own phase: their background writers would slow whatever runs next). "
        "Ratios: the median over rounds of each round's ratio to the bare loop of the same round, with the "
        "middle half of the per-round ratios in brackets. "
        "`core / floor`: time inside the core's passes on a sampled step (median; steps without histograms) against "
        "reading the watched bytes once at the read bandwidth; `core, histogram step`: the same on the one sampled "
        "step in ten that also takes histograms of activations and gradients. `every=1 extra`: what statistics on "
        "every step add to a step, against the same floor. "
        "Peak RSS: a fresh process per configuration.",
        "",
        *table,
        "",
        f"The core's own pass over the 256 MB buffer takes {kernel:.2f}x the plain read ({kernel_hist:.2f}x with the "
        "histogram): that is the best `core / floor` can be with this build of the core.",
        "",
        *notes,
        f"Run time {time.perf_counter() - t_start:.0f} s; load average at the start {load_start[0]:.1f}, at the end "
        f"{load[0]:.1f} (the 2 cores are shared with other work: the absolute times move, the ratios less so).",
    ])
    print(body)
    if not args.no_write:
        write_section(f"watch() overhead, {torch.get_num_threads()} torch thread(s)", body)


if __name__ == "__main__":
    main()
