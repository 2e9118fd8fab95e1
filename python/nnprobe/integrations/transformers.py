"""A Hugging Face `Trainer` callback that watches the model while `trainer.train()` runs.

    from nnprobe.integrations.transformers import NnprobeCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[NnprobeCallback()])

At train begin it opens `nnprobe.watch(model, optimizer, **watch_kwargs)` on the trainer's model
and optimizer (the one accelerate wraps: the probe hooks the torch optimizer inside, so a step is
one real optimizer step, after gradient accumulation). The probe sees the loss functions the
model calls on the steps it samples; the callback hands it the loss the Trainer logs when a
logged value is one step's (`logging_steps=1`, from the second step on) and not an average: the
Trainer has already read it to the host, so this adds no sync. At train end it closes the probe (every hook removed) and writes
`nnprobe-report.html` into `args.output_dir`; the JSON Lines log goes to `<output_dir>/nnprobe`
unless `log_dir` is given. `callback.probe` keeps the findings and history afterwards.

When training raises (an error in the model, the data or `compute_metrics`, out of memory,
Ctrl-C), the Trainer never calls `on_train_end`, and a probe left open would keep its hooks on the
model and its last batch in memory. So at train begin the callback finds the `Trainer` that runs
it (on the call stack) and guards the methods that make up its loop for the length of the run:
an exception closes the probe, writes the report of what it saw, and goes on unchanged. Where
the guard cannot be put (a Trainer that does not hold this callback, say), a probe left open is
closed at the next train begin, and at interpreter exit.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
from typing import Any

import transformers
from transformers import TrainerCallback

import nnprobe

log = logging.getLogger("nnprobe")

REPORT_NAME = "nnprobe-report.html"
LOG_SUBDIR = "nnprobe"
# the Trainer methods that run everything between on_train_begin and on_train_end; those this
# transformers version has are guarded (5.x: the epoch loop, the evaluation on start and the
# finishing; every version: the training step and the log/save/evaluate step)
GUARDED = ("_run_epoch", "_finalize_training", "_evaluate", "training_step", "_maybe_log_save_evaluate")


class NnprobeCallback(TrainerCallback):
    def __init__(self, *, report: bool = True, **watch_kwargs: Any) -> None:
        """`watch_kwargs` go to `nnprobe.watch` (every, overhead, strict, wandb, log_dir, ...).
        report: write `nnprobe-report.html` into the Trainer's `output_dir` when training ends."""
        self.watch_kwargs = watch_kwargs
        self.write_report = report
        self.probe: Any = None  # kept after training, for its findings and history
        self._open = False
        self._model_name = ""
        self.report_path: str | None = None
        self._output_dir: str | None = None
        self._is_main = True
        self._trainer: Any = None
        self._guarded: list[str] = []
        self._last_logged = self._first_step = 0

    # ------------------------------------------------------------------ Trainer events
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        self.close()  # a probe an earlier run left open (it raised where no guard was)
        if model is None:
            return
        # accelerate's AcceleratedOptimizer is a facade: hooks go on the torch optimizer it steps
        opt = getattr(optimizer, "optimizer", optimizer)
        self._output_dir = args.output_dir
        self._is_main = bool(state.is_world_process_zero)
        kw = dict(self.watch_kwargs)
        if "log_dir" not in kw and args.output_dir:
            kw["log_dir"] = os.path.join(args.output_dir, LOG_SUBDIR)
        self.report_path = None
        self._last_logged = self._first_step = state.global_step
        self.probe = nnprobe.watch(model, opt, **kw)
        self._open = True
        self._model_name = type(model).__name__
        trainer = _running_trainer(self)
        if trainer is not None:
            self._guard(trainer)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not self._open or not logs or "loss" not in logs:
            return
        window = state.global_step - self._last_logged
        self._last_logged = state.global_step
        value = logs["loss"]
        # one step's loss (an average over several would blur a spike or a NaN); the first step's
        # log covers the steps before the probe opened too
        if window == 1 and state.global_step - self._first_step >= 2 and isinstance(value, (int, float)) \
                and math.isfinite(value):
            self.probe.step(loss=float(value))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Close the probe (idempotent), take the guard off the Trainer, write the report."""
        self._unguard()
        if not self._open:
            return
        self._open = False
        try:
            self.probe.close()
        finally:
            if self.write_report and self._is_main and self._output_dir:
                self.report_path = _write_report(self.probe, self._output_dir, self._model_name)

    def _guard(self, trainer: Any) -> None:
        for name in GUARDED:
            method = getattr(trainer, name, None)
            if method is None or name in vars(trainer):  # absent, or set on the instance by someone else
                continue
            setattr(trainer, name, self._guarded_call(method))
            self._guarded.append(name)
        self._trainer = trainer

    def _guarded_call(self, method: Any) -> Any:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except BaseException:
                try:
                    self.close()
                except Exception as e:  # noqa: BLE001  (never mask the training's own exception)
                    log.warning("nnprobe: closing the probe after a training error failed: %r", e)
                raise

        call.__nnprobe_guard__ = True  # type: ignore[attr-defined]
        return call

    def _unguard(self) -> None:
        trainer, names = self._trainer, self._guarded
        self._trainer, self._guarded = None, []
        for name in names:
            if getattr(vars(trainer).get(name), "__nnprobe_guard__", False):
                delattr(trainer, name)


def _running_trainer(callback: NnprobeCallback) -> Any:
    """The Trainer whose callback handler is calling `callback` right now, from the call stack
    (transformers hands callbacks the model and optimizer, not the Trainer)."""
    frame = sys._getframe(1)
    for _ in range(32):
        if frame is None:
            return None
        obj = frame.f_locals.get("self")
        if isinstance(obj, transformers.Trainer) and callback in getattr(obj.callback_handler, "callbacks", ()):
            return obj
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _write_report(probe: Any, output_dir: str, model_name: str) -> str | None:
    """The HTML report of a closed probe (the one `nnprobe report` draws); a failure is logged,
    never raised: the training it watched has finished, or is raising its own error."""
    try:
        from ..report import from_probe, render

        os.makedirs(output_dir, exist_ok=True)
        path = render(from_probe(probe), os.path.join(output_dir, REPORT_NAME),
                      title=f"nnprobe: {model_name} in a Hugging Face Trainer")
        return str(path)
    except Exception as e:  # noqa: BLE001
        log.warning("nnprobe: could not write the report into %s: %r", output_dir, e)
        return None
