"""The parameter side of a sampled step: every gradient and weight in one core call each, and
the update (weights after the step minus a strided sample taken before it)."""

from __future__ import annotations

from typing import Any

import torch

from .plan import Watched
from .record import StepRecord
from .state import LiveState
from .tensors import local


class ParamFigures:
    def __init__(self, watched: Watched, state: LiveState) -> None:
        self._w = watched
        self._state = state
        self.snapshot: list[tuple[torch.Tensor, int, int, torch.Tensor]] = []  # (param, row, stride, before)

    def grads(self, rec: StepRecord) -> None:
        """Taken after the optimizer step: the gradients are still those the step used, and a
        closure (LBFGS) computes them inside step()."""
        if "gradients" in self._state.off:
            return
        pairs = [(row, p.grad) for p, row in self._w.grad_rows if p.grad is not None and p.grad.layout == torch.strided]
        if pairs:
            try:
                rec.add_many([r for r, _ in pairs], [g for _, g in pairs])
            except Exception as e:  # noqa: BLE001
                self._state.fail("gradients", e)

    def weights(self, rec: StepRecord) -> None:
        """Before the update: every weight, and the samples the update is measured against."""
        st, w = self._state, self._w
        if "weights" not in st.off and w.weight_rows:
            try:
                rec.add_many([r for _, r in w.weight_rows], [p for p, _ in w.weight_rows], hist=False)
            except Exception as e:  # noqa: BLE001
                st.fail("weights", e)
        self.snapshot = []
        if "updates" not in st.off:
            try:
                for p, row, k in w.update_rows:
                    flat = local(p).detach().reshape(-1)
                    self.snapshot.append((p, row, k, (flat[::k] if k > 1 else flat).clone()))
            except Exception as e:  # noqa: BLE001
                self.snapshot = []
                st.fail("updates", e)

    def updates(self, rec: StepRecord) -> None:
        if not self.snapshot:
            return
        rows: list[int] = []
        ts: list[Any] = []
        try:
            for p, row, k, before in self.snapshot:
                flat = local(p).detach().reshape(-1)
                after = flat[::k] if k > 1 else flat
                aux = self._w.aux_of[row]
                rows += [row, aux]
                ts += [after - before, before]
                rec.aux[row] = aux
            rec.add_many(rows, ts, hist=False)
        except Exception as e:  # noqa: BLE001
            self._state.fail("updates", e)
        self.snapshot = []
