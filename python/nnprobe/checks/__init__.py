"""The checks, one module per family of findings: runtime (what `watch` judges while training
runs), losses (what it sees of the loss calls), lint (structure), init, deps (dependency masks),
layout_trace, data, recipe (overfit one batch, reproducibility)."""
