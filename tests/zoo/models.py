"""The zoo: small versions of the models people really train, their data, and one training loop.

Everything is built from random-init tiny configs (transformers) or `weights=None`
(torchvision) and trained on generated data or scikit-learn's bundled digits: nothing is
downloaded. Each task is learnable, so a correct loop shows a falling loss; the sizes keep a
whole run to a second or two on one CPU thread.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import nnprobe
import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- data


def digits(n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits, standardised: [n, 64] float, [n] labels 0..9."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:n], dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    return x, torch.tensor(y[:n], dtype=torch.long)


def batches(x: torch.Tensor, y: torch.Tensor, size: int, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled minibatches."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - size + 1, size):
            idx = perm[i : i + size]
            yield x[idx], y[idx]


def token_classes(n: int = 256, seq: int = 16, vocab: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences labelled by whether token 1 occurs in them (a bag-of-words task)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (n, seq), generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    pos = torch.randint(0, seq, (n,), generator=g)
    ids[y == 1, pos[y == 1]] = 1
    return ids, y


def counting_tokens(n: int = 128, seq: int = 16, vocab: int = 32, seed: int = 0) -> torch.Tensor:
    """Sequences that count upwards modulo `vocab` from a random start: next-token prediction is
    learnable from the previous token alone."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (n, 1), generator=g)
    return (start + torch.arange(seq)) % vocab


def images(n: int = 256, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy 3x32x32 images whose class (0..3) is which quadrant holds a bright square."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    h = size // 2
    for k in range(4):
        r, c = divmod(k, 2)
        x[y == k, :, r * h + 4 : r * h + h - 4, c * h + 4 : c * h + h - 4] += 0.5
    return x, y


def sequences(n: int = 256, max_len: int = 12, vocab: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Variable-length token sequences (padded with 0) labelled by whether the token 1 occurs in
    them: [n, max_len] ids, [n] lengths, [n] labels."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, max_len + 1, (n,), generator=g)
    ids = torch.randint(2, vocab, (n, max_len), generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    for i in range(n):
        if y[i]:
            ids[i, torch.randint(0, int(lengths[i]), (1,), generator=g)] = 1
        ids[i, lengths[i] :] = 0
    return ids, lengths, y


def linear_regression(n: int = 256, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    return x, x @ w + 0.1 * torch.randn(n, 1, generator=g)


# ----------------------------------------------------------------------------- models


def tiny_bert(num_labels: int = 2, vocab: int = 64) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32,
                     num_labels=num_labels)  # type: ignore[call-arg]  # a PretrainedConfig kwarg
    return BertForSequenceClassification(cfg)


def tiny_gpt2(vocab: int = 32) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    # token ids inside the tiny vocabulary and the loss named: transformers logs about both otherwise
    cfg = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0,
                     loss_type="ForCausalLM")  # type: ignore[call-arg]  # a PretrainedConfig kwarg
    model = GPT2LMHeadModel(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight  # weight tying
    return model


def resnet18(num_classes: int = 4) -> nn.Module:
    from torchvision.models import resnet18 as build

    return build(weights=None, num_classes=num_classes)


class MLP(nn.Module):
    """Linear -> ReLU module -> Dropout -> Linear -> BatchNorm -> ReLU -> Linear: has every mode-
    dependent layer a train/eval check looks at."""

    def __init__(self, d_in: int = 64, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(hidden, hidden, bias=False)
        self.bn = nn.BatchNorm1d(hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.bn(self.fc2(self.drop(self.act1(self.fc1(x)))))))


class FunctionalMLP(nn.Module):
    """Activations called as functions in forward: `F.relu(self.fc(x))`, no ReLU module."""

    def __init__(self, d_in: int = 64, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


class LoRALinear(nn.Module):
    """A frozen base Linear plus a trainable low-rank update B @ A, B zero-initialised (LoRA)."""

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 8.0) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.lora_a.t() @ self.lora_b.t())


class LoRAClassifier(nn.Module):
    """A "pretrained" MLP, frozen, adapted with LoRA on both hidden layers and a new trainable head."""

    def __init__(self, d_in: int = 64, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.fc1 = LoRALinear(nn.Linear(d_in, hidden))
        self.act1 = nn.ReLU()
        self.fc2 = LoRALinear(nn.Linear(hidden, hidden))
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


class PackedLSTM(nn.Module):
    """Embedding -> LSTM over packed variable-length sequences -> Linear on the last hidden state."""

    def __init__(self, vocab: int = 20, dim: int = 16, hidden: int = 32, classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.head(h[-1])


def warmup_cosine(opt: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


# ----------------------------------------------------------------------------- ready-made tasks


@dataclass
class Task:
    """A model, how its loss is computed from a batch, and an endless stream of batches."""

    model: nn.Module
    loss_of: Callable[[nn.Module, Any], torch.Tensor]
    data: Iterator[Any]


def _ce(m: nn.Module, b: Any) -> torch.Tensor:
    return F.cross_entropy(m(b[0]), b[1])


def bert_task(seed: int = 0) -> Task:
    """Tiny BERT classifier; the loss comes from inside the model (`labels=`, dataclass output)."""
    torch.manual_seed(seed)
    ids, y = token_classes()
    return Task(tiny_bert(), lambda m, b: m(input_ids=b[0], labels=b[1]).loss, batches(ids, y, 32))


def gpt2_task(seed: int = 0) -> Task:
    """Tiny GPT-2 language model with tied input/output embeddings; loss inside the model."""
    torch.manual_seed(seed)
    ids = counting_tokens()
    return Task(tiny_gpt2(), lambda m, b: m(input_ids=b[0], labels=b[0]).loss, batches(ids, ids, 16))


def resnet_task(seed: int = 0) -> Task:
    torch.manual_seed(seed)
    x, y = images()
    return Task(resnet18(), _ce, batches(x, y, 16))


def digits_task(model: Callable[[], nn.Module], seed: int = 0, batch: int = 64) -> Task:
    """`model()` (built after seeding) on the digits, cross-entropy on its logits."""
    torch.manual_seed(seed)
    x, y = digits()
    return Task(model(), _ce, batches(x, y, batch))


def lstm_task(seed: int = 0) -> Task:
    torch.manual_seed(seed)
    ids, lengths, y = sequences()
    data = batches(torch.cat([ids, lengths[:, None]], 1), y, 32)
    return Task(PackedLSTM(), lambda m, b: F.cross_entropy(m(b[0][:, :-1], b[0][:, -1]), b[1]), data)


class Regressor(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def regression_task(seed: int = 0) -> Task:
    torch.manual_seed(seed)
    x, y = linear_regression()
    return Task(Regressor(), lambda m, b: F.mse_loss(m(b[0]), b[1]), batches(x, y, 32))


# ----------------------------------------------------------------------------- the training loop


@dataclass
class Run:
    probe: nnprobe.Probe
    losses: list[float] = field(default_factory=list)

    @property
    def findings(self) -> list[nnprobe.Finding]:
        return self.probe.findings

    def above_info(self) -> list[nnprobe.Finding]:
        return [f for f in self.probe.findings if f.severity != "info"]

    def text(self) -> str:
        head = f"losses {self.losses[0]:.4g} -> {self.losses[-1]:.4g} over {len(self.losses)} steps, " \
               f"{len(self.probe.sampled_steps)} sampled" if self.losses else "no losses"
        return head + "\n" + ("\n".join(str(f) for f in self.probe.findings) or "(no findings)")


def train(
    task: Task,
    opt: torch.optim.Optimizer,
    steps: int,
    *,
    every: int | str = 1,
    zero_grad: bool = True,
    accumulate: int = 1,
    scheduler: Any = None,
    autocast: torch.dtype | None = None,
    scaler: Any = None,
    each_step: Callable[[int], None] | None = None,
) -> Run:
    """A correct training loop (unless told otherwise) of `task.model` under
    `nnprobe.watch(task.model, opt, console=False)`; `each_step(i)` runs after step i (to plant a
    mistake or keep an EMA copy)."""
    model, loss_of, data = task.model, task.loss_of, task.data
    probe = nnprobe.watch(model, opt, every=every, console=False)
    run = Run(probe)
    ctx: Callable[[], Any] = (lambda: torch.autocast("cpu", dtype=autocast)) if autocast else contextlib.nullcontext
    try:
        for i in range(steps):
            if zero_grad:
                opt.zero_grad()
            total = 0.0
            for _ in range(accumulate):
                with ctx():
                    loss = loss_of(model, next(data)) / accumulate
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
                total += float(loss.detach())
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if scheduler is not None:
                scheduler.step()
            run.losses.append(total)
            if each_step is not None:
                each_step(i)
    finally:
        probe.close()
    return run


# ----------------------------------------------------------------------------- verdicts


def assert_learns(run: Run, factor: float = 0.8) -> None:
    """The loop is healthy: the mean loss of the last 5 steps is below `factor` x the first 5's."""
    first, last = sum(run.losses[:5]) / 5, sum(run.losses[-5:]) / 5
    assert last < factor * first, f"the model does not learn: {first:.4g} -> {last:.4g}\n{run.text()}"


def assert_silent(run: Run) -> None:
    """Nothing above "info"."""
    loud = run.above_info()
    assert not loud, f"{len(loud)} finding(s) above info on a correct loop:\n{run.text()}"


def assert_found(run: Run, code: str, module: str | Collection[str] | None = None, **data: Any) -> nnprobe.Finding:
    """A finding with `code` (naming `module`, or one of several, and with these `data` items,
    when given)."""
    hits = [f for f in run.findings if f.code == code]
    assert hits, f"no {code}:\n{run.text()}"
    if module is not None:
        allowed = {module} if isinstance(module, str) else set(module)
        hits = [f for f in hits if f.module in allowed]
        assert hits, f"{code} does not name {module!r}:\n{run.text()}"
    if data:
        hits = [f for f in hits if all(f.data.get(k) == v for k, v in data.items())]
        assert hits, f"no {code} with {data}:\n{run.text()}"
    return hits[0]
