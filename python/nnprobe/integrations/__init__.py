"""Integrations with training frameworks (imported on demand; nnprobe does not depend on them)."""
