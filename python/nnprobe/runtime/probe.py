"""`Probe`: a watched training run, from `watch()` to `close()`.

The life of a step (one `optimizer.step()`, or one `probe.step()` without optimizer; an
iteration whose update a GradScaler skipped is a step of its own, see `amp`):

- before its forward, when the step is sampled, forward hooks go on the watched modules (they
  are off the other steps: a module with any hook leaves PyTorch's fast call path);
- forward: a pre-hook on the model (every step) keeps a reference to the inputs and sees
  evaluations; on sampled steps each module's output is reduced at once and a gradient hook is
  put on it; the loss tap sees loss-function calls;
- backward: a sentinel hook notices a gradient that was not zeroed since the last step; on
  sampled steps the output-gradient hooks reduce the gradients;
- optimizer step pre-hook: the step's loss is taken (a non-finite one is located before the
  update lands), the learning rates and modes read; on sampled steps every weight is reduced;
- post-hook: the gradients and the update are reduced and the step's *figures* are complete but
  for a loss handed to `probe.step()` just after; they are judged by the checks (pure functions,
  `nnprobe.checks`) at the next step's start or at close, then go to history and sinks.

Nothing here raises into the training loop except `DiagnosticError` under `strict=True`: any
internal failure is logged once and that part of the probe switches off.
"""

from __future__ import annotations

import atexit
import functools
import math
import os
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DiagnosticError, InputError
from ..figures import Event, Plan, StepFigures
from ..options import DeviceStats, Every
from .accessors import Accessors

if TYPE_CHECKING:
    import torch

    from .history import History
    from .record import StepRecord

LOCATE_MAX = 3  # re-runs to locate a non-finite loss (later ones only count)


class Probe(Accessors):
    """A running watch. A context manager; `close()` removes every hook it added. See `watch()`."""

    def __init__(self, model: Any, optimizer: Any = None, *, every: int | str = "auto", overhead: float = 0.03,
                 activations: bool = True, gradients: bool = True, weights: bool = True, updates: bool = True,
                 checks: bool = True, log_dir: str | os.PathLike[str] | None = None, tensorboard: bool = False, wandb: bool = False,
                 console: bool = True, strict: bool = False, device_stats: str = "auto", clock: Callable[[], float] | None = None) -> None:
        import torch

        from ..checks.judge import Judge
        from ..sinks import make_sinks
        from . import amp, distributed, hooks, loss_tap, plan
        from .flow import Flow
        from .history import History
        from .params import ParamFigures
        from .schedule import Schedule
        from .state import LiveState
        from .taps import RecipeTaps

        if not isinstance(model, torch.nn.Module):
            raise InputError(f"watch() expects a torch.nn.Module, got {type(model).__name__}")
        if optimizer is None:
            opts: list[torch.optim.Optimizer] = []
        elif isinstance(optimizer, torch.optim.Optimizer):
            opts = [optimizer]
        elif isinstance(optimizer, (list, tuple)) and optimizer and all(isinstance(o, torch.optim.Optimizer) for o in optimizer):
            opts = list(optimizer)
        else:
            raise InputError(f"optimizer must be a torch.optim.Optimizer (or a list of them), got {type(optimizer).__name__}")
        every = Every.parse(every)
        if not (isinstance(overhead, (int, float)) and 0 < overhead <= 1):
            raise ValueError(f"overhead is a fraction of the step time in (0, 1], got {overhead!r}")
        policy = DeviceStats.parse(device_stats)

        self._opts = opts
        self._strict = strict
        self._policy = str(policy)
        self._dist = distributed.active()
        self._distributed = distributed
        self._state = st = LiveState(clock)
        st.checks_on = checks
        self._w = w = plan.make(model, opts, {"activations": activations, "gradients": gradients, "weights": weights,
                                               "updates": updates})
        self.plan: Plan = w.plan
        self._compiled_at_start = plan.compiled(model)
        self._params = ParamFigures(w, st)
        self._learning_rates = plan.learning_rates
        self._history: History = History(w.plan.rows)
        self._judge = Judge(w.plan) if checks else None
        self._schedule = Schedule(every, float(overhead), self._dist)
        sinks = make_sinks(console=console, log_dir=log_dir, tensorboard=tensorboard, wandb=wandb) if distributed.rank() == 0 else []
        self._flow = Flow(w, st, self._schedule, self._judge, self._history, sinks,
                          distributed if self._dist else None, strict=strict)
        self._loss_obs = loss_tap.LossObserver(st)
        self._tap = loss_tap.FunctionTap(self._loss_obs)
        self._figs = StepFigures(0)
        self._explicit: dict[int, float] = {}
        self._loss_tensors: list[tuple[int, Any]] = []  # (step, a loss still on its device)
        self._loss_readback: tuple[list[int], Any] | None = None
        self._skip_flags: list[tuple[int, Any]] = []  # (step, a fused optimizer's found_inf on its way)
        self._step_skipped = False
        self._located = 0
        self._nonfinite_step = -1
        self._outside_seen: set[str] = set()
        self._closed = False
        meta = {"model": type(w.model).__name__, "every": every, "overhead": overhead,
                "world_size": distributed.world_size(), "device_stats": self._policy}
        self._flow.to_sinks("start", meta, w.plan)

        self._hooks = hooks.HookSet()
        self._sampled_hooks = hooks.HookSet()
        self._hookset = hooks.HookSet
        self._fwd_hooks = [hooks.forward_hook(st, m.module, m.act_row, m.grad_row, m.unit) for m in w.modules]
        self._sentinel: hooks.ZeroGradSentinel | None = None
        fref, hs = weakref.ref(self), (self._hooks, self._sampled_hooks)  # the taps must not hold the probe
        self._taps = RecipeTaps(st, w.model, self._loss_obs, self._flow.open, lambda: _figs_of(fref()),
                                lambda: hs[0].ids() | hs[1].ids(), distributed=bool(self._dist))
        ref = weakref.ref(self)
        self._atexit = functools.partial(_close_if_alive, ref)
        self._skips: Any = None
        try:
            mark = amp.marker(w.params, w.in_optimizer) if opts else None
            if mark is not None:  # before the root pre-hook: a skipped step ends before the next forward counts
                self._skips = amp.SkipWatch(st, w.model, mark, self._hooks, _weak(ref, "_on_skipped"))
            self._hooks.forward_pre(model, hooks.root_pre_hook(st, model, w.sensitive), with_kwargs=True)
            if opts:
                self._hooks.optimizer(opts[0], _weak(ref, "_on_step_pre"), _weak(ref, "_on_step_post"))
            atexit.register(self._atexit)
            # a probe dropped without close(): its hooks and function mode go with it
            self._finalizer = weakref.finalize(self, _release, st, [self._hooks, self._sampled_hooks, self._taps.hookset],
                                               self._tap)
            self._begin_step()
        except BaseException:
            self.close()  # a half-made probe leaves nothing behind
            raise

    @property
    def _compiled(self) -> bool:
        return self._compiled_at_start or self._state.traced

    # ================================================================== the step
    def _begin_step(self) -> None:
        """Before the forward of the step: arm the sampled-step hooks if it is sampled."""
        st, sch = self._state, self._schedule
        s = st.step
        self._figs = StepFigures(s)
        judged = sch.judged(s)
        sampled = judged or sch.extra(s, bool(self._flow.pending))
        sch.force_next = False
        if not sampled or self._closed:
            return
        from .record import StepRecord

        st.record = StepRecord(s, len(self.plan.rows), self._policy, hist=sch.take_hist(), judged=judged)
        if self._compiled:
            pass  # nothing enters the compiled graph: activations come from an eager re-run (_rerun)
        else:
            if judged:
                self._tap.open()
            for m, fn in zip(self._w.modules, self._fwd_hooks):
                if m.act_row >= 0 or m.grad_row >= 0:
                    self._sampled_hooks.forward(m.module, fn)
        if not self._opts:
            # no optimizer: the step is probe.step(); weights and update samples are taken now,
            # gradients at their last accumulation (loops often clear them before probe.step)
            from .hooks import post_accumulate_hook

            for p, row in self._w.grad_rows:
                self._sampled_hooks.post_accumulate(p, post_accumulate_hook(st, row))
            self._params.weights(st.record)

    def _on_step_pre(self, opt: Any, args: Any, kwargs: Any) -> None:
        st = self._state
        if st.busy or self._closed:
            return None
        t0 = st.clock()
        try:
            if self._skips is not None:
                self._skips.stepping(self._w.params, self._w.in_optimizer)
            self._resolve_device_losses(st.step)  # the last step's device loss, into its figures before they are judged
            self._taps.before_seal()
            self._flow.seal(st.step)
            self._pre_step()
        except Exception as e:  # noqa: BLE001
            st.fail("step checks", e)
        st.charge(st.clock() - t0)
        return None

    def _pre_step(self) -> None:
        st, figs = self._state, self._figs
        s = st.step
        late = self._take_loss(s, before_update=True)
        self._step_skipped = self._fused_skip(s)
        if not late and not self._step_skipped and self._sentinel is not None and self._sentinel.gradient_nonfinite():
            # no loss seen this step, or a finite one: a non-finite gradient says it all the same
            self._on_nonfinite_loss(s, math.nan, before_update=True, what="its gradient is non-finite")
            late = True
            if not self._dist:
                self._schedule.force_next = True
        self._resolve_device_losses(s)
        self._taps.end_of_backward(figs, s)
        w = self._w
        if w.train_sensitive and not any(m.training for _, m in w.train_sensitive):
            st.event("all-eval")
        st.fwd_grad = 0
        if st.checks_on:
            for p, pname, owner in w.outside:
                if p.grad is not None:
                    # the norm only the first time: on a device it is a synchronisation
                    norm = None if pname in self._outside_seen else float(p.grad.detach().norm())
                    self._outside_seen.add(pname)
                    st.event("outside-grad", param=pname, module=owner, norm=norm)
        figs.lrs = self._learning_rates(self._opts)
        rec = st.record
        if rec is None and late and not self._dist:
            # a non-finite or jumping loss on a step that was not sampled: its gradients and weights
            # are still here, before the update
            from .record import StepRecord

            rec = st.record = StepRecord(s, len(self.plan.rows), self._policy, hist=False, judged=True)
        if rec is not None and not self._step_skipped:
            self._params.weights(rec)
            self._rerun(rec)

    def _rerun(self, rec: StepRecord) -> None:
        """A compiled model's activations, by an eager no-grad forward outside its graph (before the
        update: the weights are those the step's forward used)."""
        st = self._state
        if not self._compiled or "activations" in st.off or not st.inputs:
            return
        from .locate import rerun

        hooks = [(m.module, fn) for m, fn in zip(self._w.modules, self._fwd_hooks) if m.act_row >= 0]
        try:
            rerun(self._w.model, list(st.inputs), st, hooks)
        except Exception as e:  # noqa: BLE001
            st.fail("activations", e)

    def _fused_skip(self, s: int) -> bool:
        """A GradScaler skipping this step inside a fused optimizer (amp.py): known now on the CPU,
        at the next step on a device."""
        from .amp import found_inf

        flag = found_inf(self._opts[0])
        if flag is None:
            return False
        if flag.device.type != "cpu":
            from .tensors import Readback

            self._skip_flags.append((s, Readback(flag.detach().float().reshape(1))))
            return False
        if not float(flag):
            return False
        self._state.event("skipped-step", fused=True)
        return True

    def _on_step_post(self, opt: Any, args: Any, kwargs: Any) -> None:
        st = self._state
        if st.busy or self._closed:
            return None
        t0 = st.clock()
        rec, s = st.record, st.step
        if self._skips is not None:
            self._skips.stepped()
        try:
            # losses computed inside step() (a closure: LBFGS, Lightning): this step's, after the update
            if self._loss_obs.values or self._loss_obs.tensors:
                self._take_loss(s, before_update=False)
            if rec is not None and not self._step_skipped:
                self._params.grads(rec)
                self._params.updates(rec)
            self._end_step(s)
            self._taps.after_step(s)
        except Exception as e:  # noqa: BLE001
            st.fail("step bookkeeping", e)
            st.step = s + 1
        st.charge(st.clock() - t0, rec)
        self._schedule.clock(st.clock(), s, st.own_cheap, rec)
        st.own_cheap = 0.0
        return None

    def _on_skipped(self, late: bool) -> None:
        """An iteration ended without optimizer.step() (a GradScaler skipped it; see amp.py): a
        step of its own, judged without its expected inf/NaN gradients. Noticed late (at the
        next backward), it is only counted, in the step that follows."""
        st = self._state
        if st.busy or self._closed:
            return
        if late:
            st.event("skipped-step", late=True)
            return
        t0 = st.clock()
        rec, s = st.record, st.step
        try:
            self._flow.seal(s)
            self._take_loss(s, before_update=True)
            self._resolve_device_losses(s)
            st.fwd_grad = 0
            self._figs.lrs = self._learning_rates(self._opts)
            st.event("skipped-step")
            if rec is not None and not self._dist:
                self._schedule.force_next = True  # the sample goes on to a step that updates
            self._end_step(s)
        except Exception as e:  # noqa: BLE001
            st.fail("skipped steps", e)
        st.charge(st.clock() - t0, rec)
        self._schedule.clock(st.clock(), s, st.own_cheap, rec)
        st.own_cheap = 0.0

    def _end_step(self, s: int) -> None:
        """Shared by the optimizer post-hook and probe.step() without optimizer."""
        st, figs = self._state, self._figs
        if st.checks_on and "zero_grad check" not in st.off:
            self._arm_sentinel(s)
        self._tap.close()
        rec = st.record
        if rec is not None:
            st.record = None
            self._sampled_hooks.remove()
            self._flow.pending.append((figs, rec.collect(self._w.n_aux)))
            rec.closed = True
            rec.outputs.clear()  # the step's activations, kept for functional units: let them go
        figs.events, st.events = st.events, []
        st.evaluated = False
        self._flow.open.append(figs)
        self._flow.finish_pending(s)
        st.step = s + 1
        self._begin_step()

    def _arm_sentinel(self, s: int) -> None:
        if self._sentinel is None:
            cands = [(p, n) for p, n, _ in self._w.params if p.requires_grad and p.grad is not None
                     and (not self._opts or id(p) in self._w.in_optimizer)]
            if not cands:
                return
            from .hooks import ZeroGradSentinel

            self._sentinel = ZeroGradSentinel(self._state, cands[-1][0], cands[-1][1], self._hooks)
        self._sentinel.arm(s)

    # ------------------------------------------------------------------ the loss
    def _take_loss(self, s: int, *, before_update: bool) -> bool:
        """The step's loss: given by probe.step(loss) before the optimizer step, else the mean of
        the training loss calls seen. True when it forces a sample (non-finite, or a jump)."""
        obs = self._loss_obs
        obs.resolve()
        vals, obs.values = obs.values, []
        if obs.tensors:
            self._loss_tensors.extend((s, t) for t in obs.tensors)
            obs.tensors = []
        if s in self._explicit:
            loss: float | None = self._explicit.pop(s)
        else:
            loss = sum(vals) / len(vals) if vals else None
        if loss is None:
            return False
        self._figs.loss = loss
        return self._judge_loss_now(s, loss, before_update=before_update)

    def _judge_loss_now(self, s: int, loss: float, *, before_update: bool) -> bool:
        """A non-finite loss is located at once (before the update lands, when it can be); both it
        and a jump force the next step to be sampled."""
        late = False
        if not math.isfinite(loss):
            self._on_nonfinite_loss(s, loss, before_update=before_update)
            late = True
        elif self._schedule.jumped(loss, s):
            late = True
        if late and not self._dist:
            self._schedule.force_next = True
        return late

    def _on_nonfinite_loss(self, step: int, value: float, *, before_update: bool, what: str | None = None) -> None:
        st = self._state
        if not st.checks_on or self._nonfinite_step == step:
            return
        self._nonfinite_step = step
        loss = what or str(value)
        if self._located >= LOCATE_MAX:
            st.event("nonfinite-loss", loss=loss, before_update=before_update, module=None, message="", data={})
            return
        self._located += 1
        from .locate import locate

        where, msg, data = locate(self._w.model, list(st.inputs), st, self.plan)
        st.event("nonfinite-loss", loss=loss, before_update=before_update, module=where, message=msg, data=data)

    def _set_loss(self, step: int, value: float) -> None:
        """A loss that arrived after its step ended (probe.step after optimizer.step, a device
        copy): into that step's figures while they are not judged yet."""
        for figs in (self._figs, *reversed(self._flow.open)):
            if figs.step == step:
                figs.loss = value
                return
        self._flow.late_loss(step, value)  # already judged: history and log only

    def _resolve_device_losses(self, s: int) -> None:
        """CUDA losses: start their copy now, take them at the next step (no wait in the step)."""
        while self._skip_flags:
            step, flag = self._skip_flags.pop(0)
            if flag.get()[0]:
                figs = next((f for f in self._flow.open if f.step == step), None)
                if figs is not None:
                    figs.events.append(Event("skipped-step", {"fused": True}))
        if self._loss_readback is not None:
            steps, rb = self._loss_readback
            vals = rb.get()
            self._loss_readback = None
            by_step: dict[int, list[float]] = {}
            for step, v in zip(steps, vals, strict=True):
                by_step.setdefault(step, []).append(float(v))
            for step, vs in by_step.items():
                v = float(np.mean(vs))
                self._set_loss(step, v)
                self._judge_loss_now(step, v, before_update=False)
        if self._loss_tensors:
            import torch

            from .tensors import Readback

            t = torch.stack([x.detach().float().reshape(()) for _, x in self._loss_tensors])
            self._loss_readback = ([step for step, _ in self._loss_tensors], Readback(t))
            self._loss_tensors = []

    # ================================================================== public API
    def step(self, loss: Any = None, val_loss: Any = None) -> None:
        """Mark the end of a training step (without optimizer), and/or give its loss (a tensor or a
        number) and a validation loss (held-out data; None on steps without an evaluation). With an
        optimizer, steps are counted by optimizer.step(): a loss given after it belongs to the step
        just taken, one given before it to the step in progress. A loss tensor's graph is read for
        an upper clamp (`loss-clipped`)."""
        st = self._state
        if self._closed:
            return
        try:
            value = None
            if loss is not None and on_device(loss):
                # read at the next step without a synchronisation, like the loss tap's device losses
                late = not (st.fwd_grad > 0 or st.step == 0) and bool(self._opts)
                self._loss_tensors.append((st.step - 1 if late else st.step, loss.detach().float().mean()))
                loss = None
            if loss is not None:
                value = _scalar(loss)
            if val_loss is not None:
                self._figs.val_loss = _scalar(val_loss)
            if self._opts:
                if value is None:
                    return
                of = st.step if st.fwd_grad > 0 or st.step == 0 else st.step - 1
                if getattr(loss, "grad_fn", None) is not None:
                    self._taps.loss_given(loss, of)
                if of == st.step:
                    self._explicit[st.step] = value  # read by the optimizer pre-hook
                else:
                    self._set_loss(st.step - 1, value)
                    self._judge_loss_now(st.step - 1, value, before_update=False)
                return
            t0 = st.clock()
            s = st.step
            if value is not None:
                self._explicit[s] = value
            if getattr(loss, "grad_fn", None) is not None:
                self._taps.loss_given(loss, s)
            self._taps.before_seal()
            self._take_loss(s, before_update=False)
            self._resolve_device_losses(s)
            self._taps.end_of_backward(self._figs, s)
            self._figs.lrs = None
            w = self._w
            if st.fwd_grad > 0 and w.train_sensitive and not any(m.training for _, m in w.train_sensitive):
                st.event("all-eval")
            st.fwd_grad = 0
            rec = st.record
            if rec is not None:
                self._params.updates(rec)
                self._rerun(rec)
            self._end_step(s)
            self._taps.after_step(s)
            self._flow.seal(st.step)
            st.charge(st.clock() - t0, rec)
            self._schedule.clock(st.clock(), s, st.own_cheap, rec)
            st.own_cheap = 0.0
        except DiagnosticError:
            raise
        except Exception as e:  # noqa: BLE001
            st.fail("step", e)

    def close(self) -> None:
        """Remove every hook, judge what is left, close the sinks (idempotent)."""
        if self._closed:
            return
        self._closed = True
        st = self._state
        try:
            atexit.unregister(self._atexit)
        except Exception:  # noqa: BLE001
            pass
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()  # removes the hooks and the loss tap now
        else:
            taps = getattr(self, "_taps", None)
            _release(st, [getattr(self, "_hooks", None), getattr(self, "_sampled_hooks", None),
                          taps.hookset if taps is not None else None], getattr(self, "_tap", None))
        st.record = None
        st.inputs = []  # let the last batch go
        self._params.snapshot = []
        try:
            self._loss_obs.resolve(wait=True)
            self._taps.at_close(self._figs)
            if st.events or self._figs.val_loss is not None:
                # events after the last step (an evaluation after training): a step of their own
                self._figs.events, st.events = st.events, []
                self._figs.lrs = self._learning_rates(self._opts) if self._opts else None
                self._flow.open.append(self._figs)
            self._resolve_device_losses(st.step)
            self._resolve_device_losses(st.step)
            self._flow.finish_pending(st.step, wait=True)
            self._flow.seal(st.step + 1, wait=True)
            for f in self._judge.finish() if self._judge is not None else ():
                self._flow.to_sinks("finding", f)
        except DiagnosticError:
            raise
        except Exception as e:  # noqa: BLE001
            st.fail("close", e)
        finally:
            self._flow.close(st.step, self.findings)

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _scalar(loss: Any) -> float:
    """A loss as a number: a one-element tensor by item() (one call), a larger one by its mean."""
    if not hasattr(loss, "detach"):
        return float(loss)
    return float(loss.item()) if loss.numel() == 1 else float(loss.detach().float().mean())


def on_device(loss: Any) -> bool:
    """A loss tensor that is not on the host (reading it now would wait for the device)."""
    device = getattr(loss, "device", None)
    return device is not None and getattr(device, "type", "cpu") != "cpu"


def _weak(ref: weakref.ReferenceType[Probe], method: str) -> Callable[..., None]:
    """An optimizer hook that holds the probe weakly."""

    def hook(*args: Any) -> None:
        p = ref()
        if p is not None:
            getattr(p, method)(*args)

    return hook


def _close_if_alive(ref: weakref.ReferenceType[Probe]) -> None:
    p = ref()
    if p is not None:
        p.close()


def _figs_of(p: Probe | None) -> StepFigures | None:
    return p._figs if p is not None else None


def _release(state: Any, hooksets: list[Any], tap: Any) -> None:
    """Remove a probe's hooks and function mode; holds no reference to the probe (its finalizer)."""
    state.closed = True
    for hs in hooksets:
        if hs is not None:
            hs.remove()
    if tap is not None:
        tap.close()
