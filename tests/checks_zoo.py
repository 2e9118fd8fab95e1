"""Small models for the one-shot check tests: each mistake planted, and its fix.

Tests run on two CPU cores shared with other jobs: torch's intra-op threads would spin against
each other (a 200-step overfit went from 0.1 s to 15 s under load), so the tests use one thread.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)


class TimeMajorMixer(nn.Module):
    """Takes [B, T, C], works time-major, then flattens per example: with `fixed=False` the classic
    bug [T, B, C].view(B, -1) (interleaves examples), with `fixed=True` the permute first."""

    def __init__(self, c: int = 5, h: int = 6, t: int = 3, fixed: bool = False) -> None:
        super().__init__()
        self.rnn = nn.Linear(c, h)
        self.fc = nn.Linear(t * h, 2)
        self.fixed = fixed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h = torch.tanh(self.rnn(x.transpose(0, 1)))  # [T, B, H]
        if self.fixed:
            h = h.permute(1, 0, 2)
        return self.fc(h.reshape(b, -1))


class Attention(nn.Module):
    def __init__(self, d: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.heads, self.causal = heads, causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads, causal)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """Token embedding + learned positions, two blocks, a head: causal unless `causal=False`."""

    def __init__(self, vocab: int = 13, d: int = 16, heads: int = 2, layers: int = 2, causal: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(64, d) * 0.02)
        self.blocks = nn.Sequential(*[Block(d, heads, causal) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx) + self.pos[: idx.shape[1]]
        return self.head(self.ln(self.blocks(x)))


class CausalConv(nn.Module):
    """Conv1d over [B, C, T] padded by k-1 on both sides; keeping outputs [shift, shift + T) is
    causal for shift 0 and reads `shift` steps ahead otherwise (the off-by-one)."""

    def __init__(self, c: int = 4, k: int = 3, shift: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c, c, k, padding=k - 1)
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-1]
        return self.conv(x)[..., self.shift:self.shift + t]


def small_cnn(classes: int = 10, bias: bool = False) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=bias), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=bias), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes),
    )


def mlp(inputs: int = 10, hidden: int = 32, outputs: int = 4, *, bias: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs, bias=bias))


class Awkward(nn.Module):
    """Shared module used twice, a frozen layer, in-place ReLU, a dict output with a None in it."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(6, 6)
        self.frozen = nn.Linear(6, 6).requires_grad_(False)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> dict:
        h = self.act(self.shared(x))
        h = self.act(self.shared(self.act(self.frozen(h))))
        return {"logits": self.head(h), "aux": None, "step": 3}
