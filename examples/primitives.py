"""A tour of nnprobe's Rust-backed primitives on real torch tensors and NumPy arrays."""

import nnprobe
import numpy as np
import torch

torch.manual_seed(0)
w = torch.randn(512, 256)
print("weights         ", nnprobe.stats(w))
print("transposed view ", nnprobe.stats(w.t()))
print("bfloat16        ", nnprobe.stats(w.bfloat16()))
g = torch.randn(1000)
g[3] = float("nan")
print("with a NaN      ", nnprobe.stats(g))
s = nnprobe.stats(np.abs(np.random.default_rng(0).normal(size=10_000)).astype(np.float32), hist=True)
peak = int(s.hist_counts.argmax())
print(f"log2 histogram   most values in [2^{s.hist_edges[peak]:.0f}, 2^{s.hist_edges[peak + 1]:.0f})")

x = torch.randn(7, 4, 16)  # [T, B, C]
lay = nnprobe.layout(x.permute(1, 0, 2))
print("\n" + lay.explain())
print("can view as (4, -1)?", lay.can_view((4, -1)), "| groups of [T,B,C] -> [T*B, C]:", nnprobe.reshape_groups((7, 4, 16), (28, 16)))
