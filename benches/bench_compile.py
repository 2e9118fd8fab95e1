"""watch() on a compiled model (SPEC section 11: the GPT workload under torch.compile, CPU,
watched with defaults at most 1.05x its unwatched compiled step).

    python benches/bench_compile.py [--backend inductor|aot_eager] [--rounds 9] [--steps 10] [--no-write]

Two copies of bench_watch's small GPT (same initial weights, same batches), each compiled, one of
them watched with `nnprobe.watch(model, opt)` (every="auto"); both warmed up (compilation, the
probe's first samples), then timed in turn, round after round; the figure is the median over
rounds of the time per step, with the spread of the per-round ratios. It also counts the graph
breaks and recompilations during the timed rounds (torch._dynamo.utils.counters), which must be
equal, and checks that the two copies trained bit for bit alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import nnprobe  # noqa: E402 - after the path: run from a clone
from _results import machine, write_section  # noqa: E402
from bench_watch import workload  # noqa: E402


class Copy:
    def __init__(self, watched: bool, backend: str) -> None:
        make, data, self.loss_fn = workload("gpt")
        torch.manual_seed(0)
        self.model = make()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.compiled = torch.compile(self.model, backend=backend)
        self.data = data()
        self.rng = torch.get_rng_state()
        self.losses: list[float] = []
        self.probe = nnprobe.watch(self.compiled, self.opt, console=False) if watched else None

    def steps(self, k: int) -> None:
        # each copy draws its dropout masks from its own random stream, whatever the interleaving
        outer = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        try:
            for _ in range(k):
                x, y = next(self.data)
                self.opt.zero_grad()
                loss = self.loss_fn(self.compiled(x), y)
                loss.backward()
                self.opt.step()
                if self.probe is not None:
                    self.probe.step(loss=loss)
                self.losses.append(float(loss.detach()))
        finally:
            self.rng = torch.get_rng_state()
            torch.set_rng_state(outer)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=10, help="steps per round")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from torch._dynamo.utils import counters

    copies = {"bare": Copy(False, args.backend), "watch default": Copy(True, args.backend)}
    t0 = time.perf_counter()
    for c in copies.values():
        c.steps(args.warmup)
    warm = time.perf_counter() - t0
    counted = {}
    times: dict[str, list[float]] = {k: [] for k in copies}
    for k, c in copies.items():  # graph breaks and recompilations of each copy alone, after warm-up
        counters.clear()
        c.steps(args.steps)
        counted[k] = (sum(counters["graph_break"].values()), sum(counters["recompiles"].values()),
                      counters["stats"]["unique_graphs"])
    for _ in range(args.rounds):
        for k, c in copies.items():
            t = time.perf_counter()
            c.steps(args.steps)
            times[k].append((time.perf_counter() - t) / args.steps)
    bare, watched = copies["bare"], copies["watch default"]
    assert watched.losses == bare.losses, "the watched copy trained differently"
    assert watched.probe is not None
    watched.probe.close()
    loud = [f for f in watched.probe.findings if f.severity != "info"]  # a benchmark never evaluates: no-validation is info
    assert not loud, loud
    ratios = [w / b for w, b in zip(times["watch default"], times["bare"])]
    med_b, med_w = statistics.median(times["bare"]), statistics.median(times["watch default"])
    lo, hi = min(ratios), max(ratios)
    body = (f"    python benches/bench_compile.py --backend {args.backend} --rounds {args.rounds} --steps {args.steps}\n\n"
            f"{machine()}. The small GPT of bench_watch, torch.compile(backend={args.backend!r}), one torch thread, "
            f"{args.warmup} warm-up steps (compilation included: {warm:.0f} s for both copies), then {args.rounds} "
            f"interleaved rounds of {args.steps} steps.\n\n"
            "| copy | ms/step (median) | ratio to bare | per-round ratios | graph breaks, recompiles, graphs after warm-up |\n"
            "|---|---:|---:|---|---|\n"
            f"| bare | {med_b * 1e3:.2f} | 1.000x | - | {counted['bare']} |\n"
            f"| watch default | {med_w * 1e3:.2f} | {med_w / med_b:.3f}x | {lo:.3f} to {hi:.3f} "
            f"(median {statistics.median(ratios):.3f}) | {counted['watch default']} |\n\n"
            f"- Target (SPEC section 11) at most 1.05x: **{'met' if med_w / med_b <= 1.05 else 'missed'}**. The watched "
            f"copy sampled {len(watched.probe.sampled_steps)} of {watched.probe.steps} steps; its losses equal the bare "
            "copy's bit for bit, and it found nothing above info.\n")
    print(body)
    if not args.no_write:
        write_section("watch() on a compiled model", body)


if __name__ == "__main__":
    main()
