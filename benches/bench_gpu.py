"""watch() overhead on one GPU (SPEC section 7): a GPT-2-small-sized model (12 layers, d=768,
12 heads, context 1024, vocabulary 50257: 124M parameters), AdamW, bfloat16 autocast, batch 8.

    python benches/bench_gpu.py [--device cuda] [--tiny] [--rounds 12] [--steps 5] [--no-write]

Two copies of the model (same weights, same batches): one bare, one under `nnprobe.watch(model,
opt)` with its defaults (every="auto", a 3% budget), opened before a warm-up and kept open, so
what is measured is the steady state of a long run. Rounds alternate the two (`--steps` steps
each, the device synchronised only at the round's edges), and the figure is the median over
rounds of the time per step; the target is 1.02x.

Host synchronisations inside the step are counted with `torch.cuda.set_sync_debug_mode("warn")`
(each synchronising CUDA call warns) over the same number of steps of each copy, every step of
the watched one sampled (`every=1`, the worst case) and with defaults; the target is none added.
The run also checks what it timed: both copies' losses are equal step for step (watching
changes nothing) and the probes found nothing.

`--device cpu --tiny` runs the same logic on a small model on the CPU (the test suite does, so
the script stays runnable where no GPU is); `benches/gpu_check.sh` runs it on a GPU and writes
its figures to RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import nnprobe  # noqa: E402
from _results import RESULTS, machine, write_section  # noqa: E402
from bench_watch import GPTBlock  # noqa: E402

GPT2_SMALL = {"vocab": 50257, "d": 768, "heads": 12, "layers": 12, "block": 1024, "batch": 8}
TINY = {"vocab": 97, "d": 32, "heads": 2, "layers": 2, "block": 32, "batch": 4}
TARGET = 1.02


class GPT(nn.Module):
    def __init__(self, vocab: int, d: int, heads: int, layers: int, block: int, **_: Any) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(GPTBlock(d, heads, dropout=0.0) for _ in range(layers))  # the reference block
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied, as in GPT-2
        for emb in (self.tok, self.pos):
            nn.init.normal_(emb.weight, std=0.02)  # GPT-2's init: a first loss of about ln(vocabulary)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


class Run:
    """One copy of the model and its optimizer, fed the same batches as the others."""

    def __init__(self, base: nn.Module, cfg: dict[str, int], device: torch.device, watch: dict[str, Any] | None) -> None:
        self.model = copy.deepcopy(base).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=3e-4)
        self.cfg, self.device = cfg, device
        self.gen = torch.Generator(device="cpu").manual_seed(0)
        self.losses: list[torch.Tensor] = []
        self.probe = nnprobe.watch(self.model, self.opt, console=False, **watch) if watch is not None else None

    def steps(self, k: int) -> None:
        cfg, dev = self.cfg, self.device
        amp = torch.autocast(dev.type, dtype=torch.bfloat16)
        for _ in range(k):
            idx = torch.randint(0, cfg["vocab"], (cfg["batch"], cfg["block"] + 1), generator=self.gen).to(dev, non_blocking=True)
            self.opt.zero_grad(set_to_none=True)
            with amp:
                logits = self.model(idx[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))
            loss.backward()
            self.opt.step()
            self.losses.append(loss.detach())

    def close(self) -> None:
        if self.probe is not None:
            self.probe.close()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_syncs(run: Run, steps: int) -> int | None:
    """Synchronising CUDA calls over `steps` steps (None on a CPU, where nothing synchronises)."""
    if run.device.type != "cuda":
        return None
    sync(run.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run.steps(steps)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sync(run.device)
    return sum(1 for w in caught if "synchroniz" in str(w.message))


def measure(device: str = "cuda", tiny: bool = False, rounds: int = 12, steps: int = 5, warmup: int = 8) -> dict[str, Any]:
    dev = torch.device(device)
    cfg = TINY if tiny else GPT2_SMALL
    torch.manual_seed(0)
    base = GPT(**cfg)
    runs = {"bare": Run(base, cfg, dev, None), "watched": Run(base, cfg, dev, {})}
    for r in runs.values():
        r.steps(warmup)
    sync(dev)
    per_step: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, r in runs.items():
            sync(dev)
            t0 = time.perf_counter()
            r.steps(steps)
            sync(dev)
            per_step[name].append((time.perf_counter() - t0) / steps)
    med = {k: statistics.median(v) for k, v in per_step.items()}
    # the same batches, the same losses: watching changed nothing
    same = all(torch.equal(a, b) for a, b in zip(runs["bare"].losses, runs["watched"].losses, strict=True))
    syncs = {"bare": count_syncs(runs["bare"], steps), "watched": count_syncs(runs["watched"], steps)}
    every1 = Run(base, cfg, dev, {"every": 1})
    every1.steps(2)
    syncs["every=1"] = count_syncs(every1, steps)
    for r in [*runs.values(), every1]:
        r.close()
    findings = sorted({f.code for r in [*runs.values(), every1] if r.probe is not None for f in r.probe.findings})
    params = sum(p.numel() for p in base.parameters())
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU", "config": cfg, "params": params,
        "rounds": rounds, "steps": steps, "bare_s": med["bare"], "watched_s": med["watched"],
        "ratio": med["watched"] / med["bare"], "spread": _spread(per_step), "syncs": syncs,
        "sampled": len(runs["watched"].probe.sampled_steps) if runs["watched"].probe else 0,
        "total_steps": runs["watched"].probe.steps if runs["watched"].probe else 0,
        "losses_equal": same, "findings": findings, "torch": torch.__version__,
    }


def _spread(per_step: dict[str, list[float]]) -> float:
    """The interquartile range of the per-round ratios, as a fraction: how far to trust the ratio."""
    ratios = sorted(w / b for w, b in zip(per_step["watched"], per_step["bare"], strict=True))
    if len(ratios) < 4:
        return math.nan
    q = statistics.quantiles(ratios, n=4)
    return q[2] - q[0]


def section(res: dict[str, Any], command: str) -> tuple[str, str]:
    cfg = res["config"]
    s = res["syncs"]
    added = None if s["bare"] is None else s["watched"] - s["bare"]
    met = "met" if res["ratio"] <= TARGET else "not met"
    title = f"GPU check: {res['device']}"
    lines = [
        f"Machine: {res['device']}; host {machine()}; torch {res['torch']}.", "",
        f"    {command}", "",
        f"GPT ({cfg['layers']} layers, d={cfg['d']}, {cfg['heads']} heads, context {cfg['block']}, vocabulary "
        f"{cfg['vocab']}: {res['params'] / 1e6:.1f}M parameters), AdamW, bfloat16 autocast, batch {cfg['batch']}; "
        f"{res['rounds']} interleaved rounds of {res['steps']} steps, medians.", "",
        "| | time per step (ms) | vs bare |", "|---|---:|---:|",
        f"| bare | {1e3 * res['bare_s']:.2f} | 1.000x |",
        f"| watch() defaults | {1e3 * res['watched_s']:.2f} | {res['ratio']:.3f}x |", "",
        f"- Target {TARGET}x: **{met}** (interquartile range of the per-round ratios: {res['spread']:.3f}); "
        f"{res['sampled']} of {res['total_steps']} watched steps were sampled.",
        f"- Host synchronisations over {res['steps']} steps (`torch.cuda.set_sync_debug_mode(\"warn\")`): bare "
        f"{s['bare']}, watched with defaults {s['watched']}, every=1 {s['every=1']}"
        + (f"; added by watch(): {added}." if added is not None else " (not counted on a CPU)."),
        f"- Checked: the watched model's losses equal the bare one's step for step: {res['losses_equal']}; "
        f"findings: {', '.join(res['findings']) or 'none'}.",
    ]
    return title, "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a small model (for a CPU)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--results", default=str(RESULTS), help="the file the section goes to")
    a = ap.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --tiny, or on a machine with a GPU")
    res = measure(a.device, a.tiny, a.rounds, a.steps)
    cmd = "python benches/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    title, body = section(res, cmd.strip())
    print(f"## {title}\n\n{body}")
    if not a.no_write:
        write_section(title, body, path=Path(a.results))
    return res


if __name__ == "__main__":
    main()
