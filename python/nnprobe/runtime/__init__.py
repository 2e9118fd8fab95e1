"""Watching a training run: `watch()` opens a `Probe` on a model and its optimizer.

The modules here are the only code that touches modules, tensors and optimizers while training
runs: `plan` (which rows are watched), `hooks` (the hooks and their owner), `record` (a sampled
step's figures as they are taken), `schedule` (which steps are sampled), `loss_tap` (what is seen
of the loss), `locate` (where a NaN first appeared), `history`, `distributed` (merging across
ranks), `tensors` (the torch -> core bridge) and `probe` (the lifecycle). They produce each
step's figures (`nnprobe.figures`); the checks (`nnprobe.checks`) judge them.

torch is imported only when `watch()` is called, so `import nnprobe` stays light.
"""

from __future__ import annotations

import os
from typing import Any

from .probe import Probe


def watch(
    model: Any,
    optimizer: Any = None,
    *,
    every: int | str = "auto",
    overhead: float = 0.03,
    activations: bool = True,
    gradients: bool = True,
    weights: bool = True,
    updates: bool = True,
    checks: bool = True,
    log_dir: str | os.PathLike[str] | None = None,
    tensorboard: bool = False,
    wandb: bool = False,
    console: bool = True,
    strict: bool = False,
    device_stats: str = "auto",
) -> Probe:
    """Watch `model` (and `optimizer`, or a list of optimizers, the first one's steps counting)
    while it trains. See `Probe` and SPEC section 2.

    every: "auto" takes the heavy statistics on the first steps and on a floor of steps chosen by
    step count (what the checks judge), plus extra ones while they cost at most `overhead` of the
    step time; an int N samples one step in N. activations/gradients/weights/updates: which
    heavy statistics to take. checks: judge and report findings. log_dir: write a JSON Lines log
    there (see `nnprobe.sinks`). tensorboard: also write TensorBoard events (into log_dir, or
    TensorBoard's default runs/ folder). wandb: also log into the active wandb run (call
    wandb.init first; see nnprobe.wandb_sink). console: print each finding as it is raised. strict:
    raise `DiagnosticError` at the first error-severity finding. device_stats: "auto" (reduce
    CUDA tensors on their device), "copy" (copy them to the host, then the core), "device"
    (use torch operations even for CPU tensors).
    """
    return Probe(
        model, optimizer, every=every, overhead=overhead, activations=activations, gradients=gradients,
        weights=weights, updates=updates, checks=checks, log_dir=log_dir, tensorboard=tensorboard, wandb=wandb,
        console=console, strict=strict, device_stats=device_stats,
    )


__all__ = ["Probe", "watch"]
