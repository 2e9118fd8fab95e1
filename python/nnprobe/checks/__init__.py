"""One-shot checks, one module per family of findings: lint (structure), init, deps (dependency
masks), layout_trace, data, recipe (overfit one batch, reproducibility)."""
