"""Runs the registered checks over a run's figures, step by step, and keeps the findings: one
per (code, module), with the step it was first raised and how many times it was."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from ..figures import Plan, StepFigures
from ..findings import CATALOGUE, Finding
from .base import Check, Raised, RunContext
from .registry import CHECKS


class Judge:
    def __init__(self, plan: Plan, checks: Iterable[type[Check]] = CHECKS) -> None:
        self.run = RunContext(plan)
        self._by_trigger: dict[str, list[Check]] = {}
        for cls in checks:
            check = cls(self.run)
            for trigger in cls.wakes_on:
                self._by_trigger.setdefault(trigger, []).append(check)
        self._checks = [c for cs in self._by_trigger.values() for c in cs]
        self._checks = [c for k, c in enumerate(self._checks) if c not in self._checks[:k]]
        self._plain = (self._checks_for(["step"]), self._checks_for(["step", "loss"]))  # by: a loss or not
        self.findings: list[Finding] = []
        self._finished = False
        self._index: dict[tuple[str, str | None], int] = {}

    def judge(self, figs: StepFigures) -> list[Finding]:
        """Judge one step's figures; returns the findings raised for the first time."""
        if not figs.events and figs.sampled is None and figs.val_loss is None:
            # the every-step path: the checks woken by "step" (and "loss"), worked out once
            woken = self._plain[figs.loss is not None]
        else:
            woken = self._woken(figs)
        new: list[Finding] = []
        for check in woken:
            for r in check.judge(figs):
                f = self._keep(r)
                if f is not None:
                    new.append(f)
        return new

    def _woken(self, figs: StepFigures) -> list[Check]:
        triggers = ["step"]
        if figs.loss is not None:
            triggers.append("loss")
        if figs.val_loss is not None:
            triggers.append("val_loss")
        s = figs.sampled
        if s is not None and s.judged:
            self.run.saw_forward(s.act_order)
            triggers.append("sampled")
        for e in figs.events:
            if e.kind not in triggers:
                triggers.append(e.kind)
        return self._checks_for(triggers)

    def _checks_for(self, triggers: list[str]) -> list[Check]:
        woken: list[Check] = []
        for t in triggers:
            for check in self._by_trigger.get(t, ()):
                if check not in woken:
                    woken.append(check)
        return woken

    def finish(self) -> list[Finding]:
        """The run is over: the verdicts only a whole run gives (once; later calls return [])."""
        if self._finished:
            return []
        self._finished = True
        new: list[Finding] = []
        for check in self._checks:
            for r in check.finish():
                f = self._keep(r)
                if f is not None:
                    new.append(f)
        return new

    def _keep(self, r: Raised) -> Finding | None:
        key = (r.code, r.module)
        if r.code == "non-finite":
            # only the first place NaN/Inf appears matters; what follows is its consequence
            key = next((k for k in self._index if k[0] == r.code), key)
        idx = self._index.get(key)
        if idx is not None:
            f = self.findings[idx]
            f.data["last_step"] = r.step
            self.findings[idx] = replace(f, count=f.count + 1)
            return None
        entry = CATALOGUE[r.code]
        f = Finding(r.code, r.severity or entry.severity, r.message, r.module, r.step, entry.fix, dict(r.data))
        self._index[key] = len(self.findings)
        self.findings.append(f)
        return f
