"""`nnprobe demo`: a small model on generated data, trained with one planted mistake from the
seeds' checklists, watched live; then the summary and the HTML report.

Everything is generated here (nothing is downloaded): a 10-class problem of 32 features
(Gaussian clusters, standardised) and, for the layout bug, short sequences of 6 steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Bug:
    name: str
    what: str
    expects: tuple[str, ...]  # codes that must be raised when the bug is planted


BUGS: dict[str, Bug] = {b.name: b for b in [
    Bug("zero-grad", "optimizer.zero_grad() is never called", ("zero-grad-missing",)),
    Bug("softmax-ce", "the model ends in Softmax and feeds CrossEntropyLoss", ("probabilities-into-loss", "activation-on-logits")),
    Bug("nll-logits", "NLLLoss gets raw scores instead of log_softmax", ("logits-into-nll",)),
    Bug("eval-mode", "model.eval() is left on while training", ("eval-mode-training",)),
    Bug("no-eval", "the validation pass runs without model.eval()", ("train-mode-eval",)),
    Bug("lr-high", "SGD with a learning rate of 5: the ReLUs die and the loss stalls", ("dead-units", "loss-not-decreasing")),
    Bug("lr-low", "the learning rate is 1e5x too low", ("update-ratio",)),
    Bug("dead-relu", "a bias of -6 at init kills the ReLUs of the first layer", ("dead-units",)),
    Bug("saturated", "weights 10x too large before tanh", ("saturated-activations",)),
    Bug("bias-bn", "a Linear with a bias feeds BatchNorm", ("bias-before-norm",)),
    Bug("view-permute", "[T,B,C].view(B, -1) where permute was meant", ("view-mixes-batch", "batch-mixing")),
    Bug("missing-param", "the optimizer was built before the head was replaced", ("param-not-in-optimizer",)),
    Bug("nan", "log of a ReLU output that reaches zero", ("non-finite",)),
    Bug("clipped-loss", "the per-example losses are clamped at 2.0 (meant as gradient clipping): outliers are ignored",
        ("loss-clipped",)),
    Bug("lr-per-batch", "StepLR(step_size=30), written for epochs, is stepped every batch", ("lr-schedule",)),
    Bug("overfit", "96 training examples, half of them mislabelled, trained on and on", ("overfitting",)),
    Bug("no-val", "the loop never evaluates on held-out data", ("no-validation",)),
    Bug("loss-scales", "an auxiliary MSE on one-hot targets scaled to 0-255 drowns the cross-entropy",
        ("loss-scale-mismatch",)),
]}


def make_data(n: int = 2048, features: int = 32, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=g) * 1.5
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, features, generator=g)
    x = (x - x.mean(0)) / x.std(0)
    return x, y


def make_sequences(n: int = 1024, steps: int = 6, channels: int = 8, classes: int = 4, seed: int = 0):
    """Label = which channel has the largest total over time: needs every step of one example."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, steps, channels, generator=g)
    y = x[:, :, :classes].sum(1).argmax(1)
    return x, y


class MLP(nn.Module):
    def __init__(self, features=32, hidden=64, classes=10, *, act=nn.ReLU, bias_before_bn=False, softmax=False):
        super().__init__()
        self.fc1 = nn.Linear(features, hidden, bias=bias_before_bn)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.act1 = act()
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, classes)
        self.out = nn.Softmax(dim=-1) if softmax else nn.Identity()

    def forward(self, x):
        x = self.drop(self.act1(self.bn1(self.fc1(x))))
        return self.out(self.head(self.act2(self.fc2(x))))


class SeqModel(nn.Module):
    """Time-major encoder ([T, B, C], as RNN code often is) and a classifier over all steps."""

    def __init__(self, steps=6, channels=8, hidden=16, classes=4, *, buggy_view=False):
        super().__init__()
        self.buggy_view = buggy_view
        self.enc = nn.Linear(channels, hidden)
        self.act = nn.ReLU()
        self.head = nn.Linear(steps * hidden, classes)

    def forward(self, x):  # x: [B, T, C]
        h = self.act(self.enc(x.transpose(0, 1)))  # [T, B, H]
        b = x.shape[0]
        flat = h.view(b, -1) if self.buggy_view else h.permute(1, 0, 2).reshape(b, -1)
        return self.head(flat)


def build(bug: str | None):
    """The model, its optimizer, loss function and data for one run with `bug` planted."""
    torch.manual_seed(0)
    if bug == "view-permute" or bug == "view-permute-fixed":
        x, y = make_sequences()
        seq = SeqModel(buggy_view=bug == "view-permute")
        return seq, torch.optim.Adam(seq.parameters(), lr=3e-3), nn.CrossEntropyLoss(), x, y
    x, y = make_data()
    model = MLP(
        act=nn.Tanh if bug == "saturated" else nn.ReLU,
        bias_before_bn=bug == "bias-bn",
        softmax=bug == "softmax-ce",
    )
    if bug == "dead-relu":
        with torch.no_grad():
            model.fc2.bias.fill_(-6.0)
    if bug == "saturated":
        with torch.no_grad():
            model.fc2.weight.mul_(10.0)
    if bug == "lr-high":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-8 if bug == "lr-low" else 3e-3)
    if bug == "missing-param":
        model.head = nn.Linear(64, 10)  # replaced after the optimizer was built
    loss_fn: Callable = nn.CrossEntropyLoss()
    if bug == "nll-logits":
        loss_fn = nn.NLLLoss()
    return model, opt, loss_fn, x, y


def train(model, opt, loss_fn, x, y, *, bug: str | None, steps: int, batch: int, on_step=None, probe=None) -> list[float]:
    """The ordinary training loop, with the planted mistake where it lives in real code."""
    g = torch.Generator().manual_seed(1)
    losses = []
    val_x, val_y = x[:256], y[:256]
    eval_every = 25
    if bug == "overfit":  # a small training set with noisy labels, and a held-out one
        val_x, val_y = x[-256:], y[-256:]
        x, y = x[:96], torch.where(torch.arange(96) % 2 == 0, (y[:96] + 1) % 10, y[:96])
        eval_every = 10
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1) if bug == "lr-per-batch" else None
    if bug == "eval-mode":
        model.eval()
    else:
        model.train()
    for step in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        if bug != "zero-grad":
            opt.zero_grad()
        out = model(x[idx])
        if bug == "nan":
            out = torch.log(F.relu(out)) if step >= 5 else out
        if bug == "clipped-loss":
            loss = F.cross_entropy(out, y[idx], reduction="none").clamp(max=2.0).mean()
        else:
            loss = loss_fn(out, y[idx])
        if bug == "loss-scales":
            loss = loss + F.mse_loss(out, F.one_hot(y[idx], out.shape[-1]).float() * 255)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if probe is not None:
            probe.step(loss=loss)
        losses.append(loss.item())
        if step % eval_every == eval_every - 1 and bug != "no-val":  # a validation pass, as real loops do
            if bug != "no-eval":
                model.eval()
            with torch.no_grad():
                loss_fn(model(val_x), val_y)
            if bug != "eval-mode":
                model.train()
        if on_step is not None:
            on_step(step, losses[-1])
    return losses


def run(bug: str | None, out: Path, *, steps: int = 150, batch: int = 64, console=None, progress: bool = True):
    """One demo run: lint, layout trace and batch-independence checks, then the watched training.
    Returns (probe, findings of the one-shot checks)."""
    import nnprobe

    model, opt, loss_fn, x, y = build(bug)
    one_shot = []
    one_shot += nnprobe.lint(model, x[:8], loss_fn=loss_fn).findings
    with nnprobe.trace_layout() as trace:
        model.eval()
        with torch.no_grad():
            model(x[:8])
        model.train()
    one_shot += trace.findings
    deps = nnprobe.check_batch_independence(model, x[:16])
    one_shot += deps.findings
    seen: set[tuple[str, str | None]] = set()  # lint and the layout trace both see a bad view
    unique = []
    for f in one_shot:
        if (f.code, f.module) not in seen:
            seen.add((f.code, f.module))
            unique.append(f)
    one_shot = unique
    out.mkdir(parents=True, exist_ok=True)
    # every=3 rather than "auto": a demo wants dense plots more than the last percent of speed
    probe = nnprobe.watch(model, optimizer=opt, every=3, log_dir=out / "log", console=console if console is not None else True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"training ({bug or 'no bug'})", unit="step", leave=False)
    try:
        with probe:
            train(model, opt, loss_fn, x, y, bug=bug, steps=steps, batch=batch, probe=probe,
                  on_step=(lambda s, value: (bar.update(1), bar.set_postfix(loss=f"{value:.3f}")) if bar else None))
    finally:
        if bar is not None:
            bar.close()
    return probe, one_shot, deps


def expected_codes(bug: str | None) -> tuple[str, ...]:
    return BUGS[bug].expects if bug else ()

