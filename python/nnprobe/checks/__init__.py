"""One-shot checks, one module per family of findings."""
