"""`watch()` and `Probe`: hooks into a model and its optimizer while it trains, takes the heavy
statistics on sampled steps, runs the cheap checks on every step, and reports findings.

The life of a step (a step is one `optimizer.step()`, or one `probe.step()` without optimizer):

- before its forward, when the step is sampled, forward hooks go on the watched modules (they
  are off the other steps: a module with any hook leaves PyTorch's fast call path);
- forward: a pre-hook on the model (every step) keeps a reference to the inputs and checks the
  train/eval mode; on sampled steps each module's output is reduced at once (an in-place ReLU
  would rewrite it later) and a gradient hook is put on it;
- the loss: `checks.losses` sees loss-function calls (the value, the input format);
- backward: sentinel hooks on two parameters notice a gradient that was not zeroed since the
  last optimizer step; on sampled steps the output-gradient hooks reduce the gradients;
- optimizer step pre-hook: the step's loss is judged (a non-finite one is located by re-running
  the saved inputs module by module, before the update lands); on sampled steps every gradient
  and weight is reduced in one parallel core call and small samples of the weights are kept;
- post-hook: the update (weights after minus the sample before) is reduced, the step's figures
  merge (across ranks too), go to history, checks and sinks; the next sampled step is chosen.

Nothing here raises into the training loop except `DiagnosticError` under `strict=True`: any
internal failure is logged once and that part of the probe switches off.

torch is imported only when `watch()` is called, so `import nnprobe` stays light.
"""

from __future__ import annotations

import atexit
import html
import logging
import math
import time
import weakref
from collections import deque
from dataclasses import replace
from typing import Any

import numpy as np

from .errors import DiagnosticError, InputError
from .findings import CATALOGUE, Finding
from .history import DEAD, FIELDS, KINDS, NF, RATIO, SATURATED, History, Rows

log = logging.getLogger("nnprobe")

FORCED_FIRST = 3  # the first steps are always sampled (init checks need them)
AUTO_AIM = 0.8  # every="auto" spends this share of the overhead budget, keeping the rest as margin
HIST_EVERY = 10  # histograms on one sampled step in HIST_EVERY, the first included
DEAD_PREFILTER = 0.5  # the dead-unit threshold: fewer zeros than this fraction rule it out
UPDATE_SAMPLE = 65536  # elements of a parameter kept to measure its update
LOCATE_MAX = 3  # re-runs to locate a non-finite loss (later ones only count)
JUMP_Z = 10.0  # a loss this many robust deviations above its recent median has "jumped"
JUMP_GAP = 20  # steps between two samples forced by loss jumps
ROOT = "(root)"  # the name of the watched model itself in findings


def watch(
    model: Any,
    optimizer: Any = None,
    *,
    every: int | str = "auto",
    overhead: float = 0.03,
    activations: bool = True,
    gradients: bool = True,
    weights: bool = True,
    updates: bool = True,
    checks: bool = True,
    log_dir: str | None = None,
    tensorboard: bool = False,
    wandb: bool = False,
    console: bool = True,
    strict: bool = False,
    device_stats: str = "auto",
) -> "Probe":
    """Watch `model` (and `optimizer`, or a list of optimizers, the first one's steps counting)
    while it trains. See `Probe` and SPEC section 2.

    every: "auto" spaces the sampled steps so the heavy statistics cost at most `overhead` of the
    step time; an int N samples one step in N. activations/gradients/weights/updates: which
    heavy statistics to take. checks: judge and report findings. log_dir: write a JSON Lines log
    there (see `nnprobe.sinks`). tensorboard: also write TensorBoard events (into log_dir, or
    TensorBoard's default runs/ folder). wandb: also log into the active wandb run (call
    wandb.init first; see `nnprobe.wandb_sink`). console: print each finding as it is raised.
    strict: raise `DiagnosticError` at the first error-severity finding. device_stats: "auto" (reduce
    CUDA tensors on their device), "copy" (copy them to the host, then the core), "device"
    (use torch operations even for CPU tensors).
    """
    return Probe(
        model, optimizer, every=every, overhead=overhead, activations=activations, gradients=gradients,
        weights=weights, updates=updates, checks=checks, log_dir=log_dir, tensorboard=tensorboard,
        wandb=wandb, console=console, strict=strict, device_stats=device_stats,
    )


class Probe:
    """A running watch. A context manager; `close()` removes every hook it added."""

    def __init__(self, model: Any, optimizer: Any = None, *, every: int | str = "auto", overhead: float = 0.03,
                 activations: bool = True, gradients: bool = True, weights: bool = True, updates: bool = True,
                 checks: bool = True, log_dir: str | None = None, tensorboard: bool = False, console: bool = True,
                 wandb: bool = False, strict: bool = False, device_stats: str = "auto") -> None:
        import torch

        from . import _tensor, distributed, hooks, sinks
        from .checks import losses, runtime

        self._torch = torch
        self._T = _tensor
        if not isinstance(model, torch.nn.Module):
            raise InputError(f"watch() expects a torch.nn.Module, got {type(model).__name__}")
        if optimizer is None:
            opts: list[Any] = []
        elif isinstance(optimizer, torch.optim.Optimizer):
            opts = [optimizer]
        elif isinstance(optimizer, (list, tuple)) and optimizer and all(isinstance(o, torch.optim.Optimizer) for o in optimizer):
            opts = list(optimizer)
        else:
            raise InputError(f"optimizer must be a torch.optim.Optimizer (or a list of them), got {type(optimizer).__name__}")
        if not (every == "auto" or (isinstance(every, int) and not isinstance(every, bool) and every >= 1)):
            raise ValueError(f"every must be 'auto' or a positive int, got {every!r}")
        if not (isinstance(overhead, (int, float)) and 0 < overhead <= 1):
            raise ValueError(f"overhead is a fraction of the step time in (0, 1], got {overhead!r}")
        if device_stats not in _tensor.DEVICE_POLICIES:
            raise ValueError(f"device_stats must be one of {_tensor.DEVICE_POLICIES}, got {device_stats!r}")

        self._model = model
        self._inner = model.module if type(model).__name__ in ("DistributedDataParallel", "DataParallel") else model
        self._opts = opts
        self._every = every
        self._overhead = float(overhead)
        self._want = {"activations": activations, "gradients": gradients, "weights": weights, "updates": updates}
        self._checks_on = checks
        self._strict = strict
        self._policy = device_stats
        self._dist = distributed.active()
        self._distributed = distributed
        self._reporting = distributed.rank() == 0
        self._step = 0
        self._busy = False
        self._closed = False
        self._off: set[str] = set()
        self._findings: list[Finding] = []
        self._fidx: dict[tuple[str, str | None], int] = {}

        self._structure()
        self._history = History(self._rows)
        self._checks = runtime.RuntimeChecks(self)
        self._losses_mod = losses
        self._loss_obs = losses.LossObserver(self)

        # per-step state
        self._record: Any = None
        self._pending: deque[Any] = deque()
        self._snap: list[tuple[Any, int, int, Any]] = []
        self._inputs: list[tuple[Any, Any]] = []
        self._fwd_grad = 0
        self._explicit: dict[int, float] = {}
        self._observed_loss: float | None = None
        self._loss_tensors: list[Any] = []
        self._loss_readback: tuple[int, Any] | None = None
        self._loss_buffer: list[tuple[int, float]] = []
        self._recent_losses: deque[float] = deque(maxlen=32)
        self._jump_limit = math.inf
        self._last_jump = -JUMP_GAP
        self._force_next = False
        self._located = 0
        self._nonfinite_step = -1
        self._sentinels: list[tuple[Any, str]] = []
        self._sentinel_state: list[Any] = []
        self._lr_peak: dict[tuple[int, int], float] = {}
        self._pos: dict[str, int] = {}
        self._sampled_count = 0
        # timing for every="auto"
        self._t_last: float | None = None
        self._bare: deque[float] = deque(maxlen=32)
        self._cheap: deque[float] = deque(maxlen=32)
        self._own_cheap = 0.0
        self._cost_est: float | None = None
        self._bare_boot: float | None = None
        self._spent = 0.0
        self._next_auto = FORCED_FIRST

        self._sinks: list[Any] = []
        if self._reporting:
            if wandb:  # first: without wandb or a run it fails before anything is opened
                from .wandb_sink import WandbSink

                self._sinks.append(WandbSink())
            if console:
                self._sinks.append(sinks.ConsoleSink())
            if log_dir is not None:
                self._sinks.append(sinks.JsonlSink(log_dir))
            if tensorboard:
                self._sinks.append(sinks.TensorBoardSink(log_dir))
        meta = {"model": type(self._inner).__name__, "every": every, "overhead": overhead,
                "world_size": self._world(), "device_stats": device_stats}
        for s in self._sinks:
            s.start(meta, self._rows)

        self._hooks = hooks.HookSet()
        self._sampled_hooks = hooks.HookSet()
        self._hookset = hooks.HookSet
        ref = weakref.ref(self)
        self._atexit = lambda: (lambda p: p is not None and p.close())(ref())
        try:
            self._hooks.forward_pre(model, self._make_root_hook(), with_kwargs=True)
            if opts:
                self._hooks.optimizer(opts[0], self._on_step_pre, self._on_step_post)
            losses.attach(self._loss_obs)
            atexit.register(self._atexit)
            self._begin_step()
        except BaseException:
            self.close()  # a half-made probe leaves nothing behind
            raise

    # ================================================================== structure
    def _world(self) -> int:
        if not self._dist:
            return 1
        import torch.distributed as dist

        return dist.get_world_size()

    def _structure(self) -> None:
        torch = self._torch
        nn = torch.nn
        inner = self._inner
        self._rows = rows = Rows()
        self._mod_name: dict[int, str] = {}
        self._mod_type: dict[str, str] = {}
        self._reg_pos: dict[str, int] = {}
        named = list(inner.named_modules())
        for k, (name, m) in enumerate(named):
            qual = name or ROOT
            self._mod_name[id(m)] = qual
            self._mod_type[qual] = type(m).__name__
            self._reg_pos[qual] = k
        self._watched: list[tuple[Any, int, int, str | None]] = []
        for name, m in named:
            qual = name or ROOT
            # loss modules (a scalar), and modules that only pass their input on or mask it (their
            # figures repeat their neighbours', at the cost of a pass each)
            if isinstance(m, (nn.modules.loss._Loss, nn.modules.dropout._DropoutNd, nn.Identity, nn.Flatten, nn.Unflatten)):
                continue
            has_children = next(m.children(), None) is not None
            has_own = next(m.parameters(recurse=False), None) is not None
            if has_children and not has_own:
                continue
            unit = None
            if isinstance(m, (nn.ReLU, nn.ReLU6)):
                unit = "relu"
            elif isinstance(m, nn.Tanh):
                unit = "tanh"
            elif isinstance(m, nn.Sigmoid):
                unit = "sigmoid"
            arow = rows.add(qual, "activations", qual, type(m).__name__, param=False, unit=unit) if self._want["activations"] else -1
            grow = rows.add(qual, "gradients", qual, type(m).__name__, param=False) if self._want["gradients"] else -1
            self._watched.append((m, arow, grow, unit))

        in_opt: dict[int, tuple[int, int]] = {}
        for oi, opt in enumerate(self._opts):
            for gi, group in enumerate(opt.param_groups):
                for p in group["params"]:
                    in_opt.setdefault(id(p), (oi, gi))
        self._in_opt = in_opt
        self._param_group: dict[str, tuple[int, int]] = {}
        self._params: list[tuple[Any, str, str]] = []  # (param, name, owner)
        self._grad_rows: list[tuple[Any, int]] = []
        self._weight_rows: list[tuple[Any, int]] = []
        self._update_rows: list[tuple[Any, int, int]] = []  # (param, row, stride)
        self._layer_grad_rows: list[int] = []
        self._ratio_rows: list[int] = []
        self._never_rows: list[int] = []
        self._outside: list[tuple[Any, str, str]] = []
        self._replicated_params: set[int] = set()
        for pname, p in inner.named_parameters():
            owner = pname.rpartition(".")[0] or ROOT
            otype = self._mod_type.get(owner, "")
            self._params.append((p, pname, owner))
            if id(p) in in_opt:
                self._param_group[pname] = in_opt[id(p)]
            if not p.requires_grad:
                continue
            if self._opts and id(p) not in in_opt:
                self._outside.append((p, pname, owner))
            embedding = otype in ("Embedding", "EmbeddingBag")
            sharded = type(p).__name__ == "DTensor"
            meta = {"shape": list(p.shape), "ndim": p.dim(), "sharded": sharded}
            if self._want["gradients"]:
                r = rows.add(pname, "gradients", owner, otype, param=True, **meta)
                self._grad_rows.append((p, r))
                if p.dim() >= 2 and not embedding:
                    self._layer_grad_rows.append(r)
            if self._want["weights"]:
                r = rows.add(pname, "weights", owner, otype, param=True, **meta)
                self._weight_rows.append((p, r))
                if id(p) in in_opt:
                    self._never_rows.append(r)
            if self._want["updates"]:
                local = self._T.local(p)
                k = self._T.sample_stride(local.numel(), local.shape[-1] if local.dim() else 1, UPDATE_SAMPLE)
                r = rows.add(pname, "updates", owner, otype, param=True, stride=k, **meta)
                self._update_rows.append((p, r, k))
                if p.dim() >= 2:
                    self._ratio_rows.append(r)
        self._n_aux = len(self._update_rows)
        self._aux_of = {r: len(rows) + j for j, (_, r, _) in enumerate(self._update_rows)}
        replicated = np.zeros(len(rows) + self._n_aux, dtype=bool)
        for i, row in enumerate(rows.rows):
            replicated[i] = row.param and not row.meta.get("sharded", False)
        for j, (p, r, _) in enumerate(self._update_rows):
            replicated[len(rows) + j] = replicated[r]
        self._replicated = replicated
        self._row_unit = {arow: unit for _, arow, _, unit in self._watched if arow >= 0 and unit}

        # modules whose behaviour depends on train/eval
        sens = []
        frozen_ok = []
        for name, m in named:
            if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
                sens.append((name or ROOT, m))
                frozen_ok.append((name or ROOT, m))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                sens.append((name or ROOT, m))
                # a BatchNorm whose affine parameters are frozen is usually kept in eval on purpose
                if not (m.affine and not any(q.requires_grad for q in m.parameters(recurse=False))):
                    frozen_ok.append((name or ROOT, m))
            elif isinstance(m, nn.MultiheadAttention) and m.dropout > 0:
                sens.append((name or ROOT, m))
                frozen_ok.append((name or ROOT, m))
        self._sensitive = sens
        self._train_sensitive = frozen_ok

    def _label(self, module: str | None) -> str:
        if module is None:
            return "the model"
        t = self._mod_type.get(module)
        return f"'{module}' ({t})" if t else f"'{module}'"

    def _module_position(self, module: str) -> int:
        """Where a module first ran in the forward (a module never called itself, like
        MultiheadAttention's out_proj whose weight its parent uses, takes its nearest ancestor's
        place); registration order for modules never seen."""
        name = module
        while True:
            pos = self._pos.get(name)
            if pos is not None:
                return pos
            if name in ("", ROOT) or "." not in name:
                break
            name = name.rpartition(".")[0]
        return 100_000 + self._reg_pos.get(module, 0)

    def _lr_of(self, pname: str) -> float | None:
        g = self._param_group.get(pname)
        if g is None:
            return None
        try:
            return float(self._opts[g[0]].param_groups[g[1]]["lr"])
        except (KeyError, IndexError, TypeError, ValueError):
            return None

    def _lr_max(self, pname: str) -> float:
        g = self._param_group.get(pname)
        return self._lr_peak.get(g, 0.0) if g is not None else 0.0

    # ================================================================== findings
    def _emit(self, code: str, message: str, module: str | None, step: int | None, data: dict[str, Any],
              severity: str | None = None) -> None:
        if not self._checks_on:
            return
        key = (code, module)
        if code == "non-finite":
            # only the first place NaN/Inf appears matters; what follows is its consequence
            key = next((k for k in self._fidx if k[0] == code), key)
        idx = self._fidx.get(key)
        if idx is not None:
            f = self._findings[idx]
            f.data["last_step"] = step
            self._findings[idx] = replace(f, count=f.count + 1)
            return
        entry = CATALOGUE[code]
        f = Finding(code, severity or entry.severity, message, module, step, entry.fix, dict(data))
        self._fidx[key] = len(self._findings)
        self._findings.append(f)
        for s in self._sinks:
            try:
                s.finding(f)
            except Exception as e:  # noqa: BLE001
                self._fail(f"sink {type(s).__name__}", e)
        if self._strict and f.severity == "error":
            raise DiagnosticError(f)

    def _fail(self, where: str, exc: BaseException) -> None:
        if where not in self._off:
            self._off.add(where)
            log.warning("nnprobe: %s failed and is switched off for this run (training is not affected): %r", where, exc)

    # ================================================================== hooks: every step
    def _make_root_hook(self) -> Any:
        is_grad_enabled = self._torch.is_grad_enabled

        def hook(module: Any, args: Any, kwargs: Any) -> None:
            # the hot path: a training forward only keeps a reference to its inputs (for locating
            # a non-finite loss later) and counts itself
            if is_grad_enabled():
                if self._fwd_grad == 0:
                    self._inputs = [(args, kwargs)]
                elif len(self._inputs) < 8:
                    self._inputs.append((args, kwargs))
                self._fwd_grad += 1
            elif self._sensitive and not self._busy:
                self._eval_forward()
            return None

        return hook

    def _eval_forward(self) -> None:
        """A forward with gradients disabled: an evaluation. Dropout/BatchNorm should be in eval mode."""
        if not self._checks_on:
            return
        try:
            training = [(n, m) for n, m in self._sensitive if m.training]
            # torch.optim.swa_utils.update_bn recalibrates BatchNorm this way on purpose
            if training and not all(getattr(m, "momentum", 0.1) is None for _, m in training):
                name, m = training[0]
                more = f" and {len(training) - 1} other Dropout/BatchNorm layers" if len(training) > 1 else ""
                self._emit("train-mode-eval",
                           f"a forward ran with gradients disabled (an evaluation) while {self._label(name)}{more} "
                           f"{'were' if more else 'was'} in train mode", name, self._step,
                           {"modules_in_train_mode": [n for n, _ in training]})
        except DiagnosticError:
            raise
        except Exception as e:  # noqa: BLE001
            self._fail("forward checks", e)

    def _on_step_pre(self, opt: Any, args: Any, kwargs: Any) -> None:
        if self._busy or self._closed:
            return None
        t0 = time.perf_counter()
        try:
            self._pre_step()
        except DiagnosticError:
            raise
        except Exception as e:  # noqa: BLE001
            self._fail("step checks", e)
        self._charge(time.perf_counter() - t0)
        return None

    def _on_step_post(self, opt: Any, args: Any, kwargs: Any) -> None:
        if self._busy or self._closed:
            return None
        t0 = time.perf_counter()
        rec = self._record
        s = self._step
        try:
            self._post_step()
        except DiagnosticError:
            raise
        except Exception as e:  # noqa: BLE001
            self._fail("step bookkeeping", e)
            self._step = s + 1
        self._charge(time.perf_counter() - t0, rec)
        self._clock(s, rec)
        return None

    def _charge(self, dt: float, rec: Any = False) -> None:
        rec = self._record if rec is False else rec
        if rec is not None:
            rec.own_time += dt
        else:
            self._own_cheap += dt

    def _sentinel_hook(self, i: int) -> Any:
        def hook(grad: Any) -> None:
            st = self._sentinel_state[i]
            if st is None or self._busy:
                return None
            self._sentinel_state[i] = None  # only the first backward after a step is judged
            try:
                p, name = self._sentinels[i]
                ref, version, step = st
                cur = p.grad
                if cur is not None and ref is not None and ref() is cur and cur._version == version:
                    self._emit("zero-grad-missing",
                               f"the backward after optimizer step {step} adds into {name}.grad, which still holds the "
                               "gradient that step already applied (no zero_grad() in between)", None, step + 1,
                               {"param": name, "after_step": step})
            except DiagnosticError:
                raise
            except Exception as e:  # noqa: BLE001
                self._fail("zero_grad check", e)
            return None

        return hook

    def _arm_sentinels(self) -> None:
        if not self._checks_on or "zero_grad check" in self._off:
            return
        if not self._sentinels:
            cands = [(p, n) for p, n, _ in self._params if p.requires_grad and p.grad is not None
                     and (not self._opts or id(p) in self._in_opt)]
            if not cands:
                return
            # one is enough (zero_grad() is called for all parameters at once) and each costs a
            # Python call per backward: the last one, usually the output layer, always in the graph
            picks = [cands[-1]]
            for i, (p, n) in enumerate(picks):
                self._sentinels.append((p, n))
                self._sentinel_state.append(None)
                self._hooks.tensor(p, self._sentinel_hook(i))
        for i, (p, _) in enumerate(self._sentinels):
            g = p.grad
            self._sentinel_state[i] = (None, 0, self._step) if g is None else (weakref.ref(g), g._version, self._step)

    # ================================================================== hooks: sampled steps
    def _make_forward_hook(self, arow: int, grow: int, unit: str | None) -> Any:
        torch = self._torch
        first_float = self._T.first_float_tensor
        in_backward = getattr(torch._C, "_current_graph_task_id", lambda: -1)

        def hook(module: Any, args: Any, out: Any) -> None:
            rec = self._record
            if rec is None or self._busy or not torch.is_grad_enabled() or in_backward() != -1:
                return None  # evaluation, or activation-checkpoint recomputation during backward
            t0 = time.perf_counter()
            try:
                t = first_float(out)
                if t is not None:
                    if arow >= 0 and "activations" not in self._off:
                        pub = rec.add(arow, t)
                        rec.seen_act(arow)
                        if unit is not None:
                            self._unit_stats(rec, arow, unit, t, pub)
                    if grow >= 0 and t.requires_grad and t.grad_fn is not None and "gradients" not in self._off:
                        t.register_hook(self._grad_hook(rec, grow))
            except DiagnosticError:
                raise
            except Exception as e:  # noqa: BLE001
                self._fail("activations", e)
            rec.own_time += time.perf_counter() - t0
            return None

        return hook

    def _grad_hook(self, rec: Any, grow: int) -> Any:
        def hook(g: Any) -> None:
            if rec.closed or self._busy:
                return None
            t0 = time.perf_counter()
            try:
                if self._T.readable(g):
                    rec.add(grow, g)
                    rec.seen_grad(grow)
            except Exception as e:  # noqa: BLE001
                self._fail("gradients", e)
            rec.own_time += time.perf_counter() - t0
            return None

        return hook

    def _unit_stats(self, rec: Any, row: int, unit: str, t: Any, pub: Any) -> None:
        T = self._T
        x = t.detach()
        if unit == "relu":
            if x.dim() < 2:
                rec.dead_known[row] = False
                return
            if x.dim() == 2:
                dims, units = (0,), x.shape[1]
            elif x.dim() == 3:  # (batch, time, features)
                dims, units = (0, 1), x.shape[2]
            else:  # (batch, channels, spatial...)
                dims, units = (0,) + tuple(range(2, x.dim())), x.shape[1]
            if units == 0 or x.numel() // units < 8:
                rec.dead_known[row] = False  # too few examples per unit to call one dead
                return
            if pub is not None and not rec.hist:
                # cheap ways to rule dead units out on the host (the exact fraction is still
                # measured on histogram steps, for the report): fewer zeros than the threshold
                # means fewer dead units; units alive on the first 8 examples are alive
                below = pub[T.ZEROS] < DEAD_PREFILTER * pub[T.COUNT]
                if not below and x.shape[0] > 8:
                    below = int((x[:8].amax(dim=dims) > 0).sum()) >= (1 - DEAD_PREFILTER) * units
                if below:
                    rec.dead_below.add(row)
                    rec.dead_known[row] = False
                    return
            # a ReLU's output is >= 0: a unit is alive where its maximum over the batch is > 0
            # (one reduction, no boolean temporary)
            alive = x.amax(dim=dims) > 0
            prev = rec.alive.get(row)
            if prev is None:
                rec.alive[row] = alive
                rec.dead_known.setdefault(row, True)
            elif prev.shape == alive.shape:
                rec.alive[row] = prev | alive
            else:
                rec.dead_known[row] = False
            return
        if pub is not None:  # the core's figures already rule saturation out
            if unit == "tanh" and not (pub[T.ABSMAX] >= 0.97):
                rec.add_count(rec.sat, row, 0.0)
                return
            if unit == "sigmoid" and pub[T.MIN] > 0.03 and pub[T.MAX] < 0.97:
                rec.add_count(rec.sat, row, 0.0)
                return
        if unit == "tanh":
            cnt = (x.abs() > 0.97).sum()
        else:
            cnt = ((x < 0.03) | (x > 0.97)).sum()
        rec.add_count(rec.sat, row, cnt if cnt.device.type != "cpu" else float(cnt))

    def _post_accumulate_hook(self, row: int) -> Any:
        def hook(p: Any) -> None:
            rec = self._record
            if rec is None or self._busy or p.grad is None or "gradients" in self._off:
                return None
            t0 = time.perf_counter()
            try:
                if self._T.readable(p.grad):
                    rec.set_latest(row, p.grad)
            except Exception as e:  # noqa: BLE001
                self._fail("gradients", e)
            rec.own_time += time.perf_counter() - t0
            return None

        return hook

    # ================================================================== step logic
    def _is_sampled(self, step: int) -> bool:
        if isinstance(self._every, int):
            return step % self._every == 0
        if step < FORCED_FIRST:
            return True
        if self._force_next and not self._dist:
            return True
        # a sampled step whose figures are still on their way from the device has not set the
        # next one yet (all ranks wait alike)
        return step >= self._next_auto and not self._pending

    def _begin_step(self) -> None:
        """Before the forward of step `self._step`: arm the sampled-step hooks if it is sampled."""
        sampled = self._is_sampled(self._step)
        self._force_next = False
        if not sampled or self._closed:
            return
        from ._record import StepRecord
        hist = self._sampled_count % HIST_EVERY == 0
        self._sampled_count += 1
        rec = StepRecord(self._step, len(self._rows), self._policy, hist=hist)
        self._record = rec
        hs = self._sampled_hooks
        if not hasattr(self, "_fwd_hooks"):
            self._fwd_hooks = [self._make_forward_hook(a, g, u) for _, a, g, u in self._watched]
        for (m, arow, grow, _), fn in zip(self._watched, self._fwd_hooks):
            if arow >= 0 or grow >= 0:
                hs.forward(m, fn)
        if not self._opts:
            # no optimizer: the step is probe.step(); weights and update samples are taken now,
            # gradients at their last accumulation (loops often clear them before probe.step)
            for p, row in self._grad_rows:
                hs.post_accumulate(p, self._post_accumulate_hook(row))
            self._take_params(rec)

    def _take_grads(self, rec: Any) -> None:
        """Every parameter gradient, in one parallel core call. Taken after the optimizer step: the
        gradients are still those the step used (optimizers do not modify them), and a closure
        (LBFGS, Lightning) computes them inside step(), after the pre-hook."""
        torch = self._torch
        rows: list[int] = []
        ts: list[Any] = []
        if "gradients" not in self._off:
            for p, row in self._grad_rows:
                g = p.grad
                if g is not None and g.layout == torch.strided:
                    rows.append(row)
                    ts.append(g)
        if rows:
            try:
                rec.add_many(rows, ts)
            except Exception as e:  # noqa: BLE001
                self._fail("gradients", e)

    def _take_params(self, rec: Any) -> None:
        """Before the update: every weight (one parallel core call) and the samples the update is
        measured against."""
        rows: list[int] = []
        ts: list[Any] = []
        if "weights" not in self._off:
            for p, row in self._weight_rows:
                rows.append(row)
                ts.append(p)
        if rows:
            try:
                rec.add_many(rows, ts, hist=False)
            except Exception as e:  # noqa: BLE001
                self._fail("weights", e)
        self._snap = []
        if "updates" not in self._off:
            try:
                for p, row, k in self._update_rows:
                    flat = self._T.local(p).detach().reshape(-1)
                    self._snap.append((p, row, k, (flat[::k] if k > 1 else flat).clone()))
            except Exception as e:  # noqa: BLE001
                self._snap = []
                self._fail("updates", e)

    def _take_updates(self, rec: Any) -> None:
        if not self._snap:
            return
        rows: list[int] = []
        ts: list[Any] = []
        try:
            for p, row, k, before in self._snap:
                flat = self._T.local(p).detach().reshape(-1)
                after = flat[::k] if k > 1 else flat
                rows += [row, self._aux_of[row]]
                ts += [after - before, before]
                rec.aux[row] = self._aux_of[row]
            rec.add_many(rows, ts, hist=False)
        except Exception as e:  # noqa: BLE001
            self._fail("updates", e)
        self._snap = []

    def _step_loss(self) -> float | None:
        """The loss of the step in progress: given by probe.step(loss) before the optimizer step,
        else the mean of the training loss calls observed."""
        obs = self._loss_obs
        vals = obs.values
        if vals:
            obs.values = []
        if obs.tensors:
            self._loss_tensors.extend(obs.tensors)
            obs.tensors = []
        if self._step in self._explicit:
            return self._explicit.pop(self._step)
        return sum(vals) / len(vals) if vals else None

    def _pre_step(self) -> None:
        s = self._step
        if self._loss_obs._pending:
            self._loss_obs.resolve()
        loss = self._step_loss()
        self._observed_loss = loss
        # device losses (CUDA) of this step are read at the next step, without waiting
        self._resolve_device_losses(s)
        late = False
        if loss is not None:
            if not math.isfinite(loss):
                self._on_nonfinite_loss(s, loss, before_update=True)
                late = True
            elif self._is_jump(loss):
                late = True
        if late and not self._dist:
            self._force_next = True
        self._check_modes(s)
        self._fwd_grad = 0
        if self._checks_on:
            for p, pname, owner in self._outside:
                if p.grad is not None:
                    if ("param-not-in-optimizer", owner) in self._fidx:
                        self._emit("param-not-in-optimizer", "", owner, s, {})  # counted; no norm (a GPU sync)
                        continue
                    self._emit("param-not-in-optimizer",
                               f"{pname} receives gradients (norm {float(p.grad.detach().norm()):.3g}) but is in no "
                               "param group of the optimizer: it never changes", owner, s, {"param": pname})
        rec = self._record
        if rec is not None or late:
            for oi, opt in enumerate(self._opts):
                for gi, group in enumerate(opt.param_groups):
                    lr = group.get("lr")
                    if isinstance(lr, (int, float)) and lr > self._lr_peak.get((oi, gi), -1.0):
                        self._lr_peak[(oi, gi)] = float(lr)
        if rec is None and late and not self._dist:
            # a non-finite or jumping loss on a step that was not sampled: its gradients and weights
            # are still here, before the update
            from ._record import StepRecord

            rec = self._record = StepRecord(s, len(self._rows), self._policy, hist=False)
        if rec is not None:
            self._take_params(rec)

    def _check_modes(self, s: int) -> None:
        """eval-mode-training: a training step while every Dropout/BatchNorm is in eval mode (one
        layer kept in eval on purpose, a frozen BatchNorm, is not flagged)."""
        if self._checks_on and self._train_sensitive and not any(m.training for _, m in self._train_sensitive):
            name, m = self._train_sensitive[0]
            n = len(self._train_sensitive)
            more = f" and the {n - 1} other Dropout/BatchNorm layers" if n > 1 else ""
            self._emit("eval-mode-training",
                       f"training step {s} runs with {self._label(name)}{more} in eval mode (call model.train() "
                       "after evaluating)", name, s, {"modules": [k for k, _ in self._train_sensitive]})

    def _post_step(self) -> None:
        s = self._step
        obs = self._loss_obs
        if obs.values or obs.tensors:
            # losses computed inside step() (a closure: LBFGS, Lightning): this step's, seen after
            # the update
            loss = self._step_loss()
            if loss is not None:
                self._observed_loss = loss
                if not math.isfinite(loss):
                    self._on_nonfinite_loss(s, loss, before_update=False)
                    if not self._dist:
                        self._force_next = True
        rec = self._record
        if rec is not None:
            self._take_grads(rec)
            self._take_updates(rec)
        self._end_step(s, rec)

    def _end_step(self, s: int, rec: Any) -> None:
        """Shared by the optimizer post-hook and probe.step() without optimizer."""
        self._arm_sentinels()
        if rec is not None:
            self._record = None
            self._sampled_hooks.remove()
            self._pending.append(rec.collect(self._n_aux))
            rec.closed = True
        if self._observed_loss is not None:
            self._set_loss(s, self._observed_loss)
            self._observed_loss = None
        self._finish_pending(s)
        self._step = s + 1
        if self._sinks and self._loss_buffer and self._loss_buffer[0][0] <= s - 100:
            for sk in self._sinks:
                try:
                    sk.losses(self._loss_buffer)
                except Exception as e:  # noqa: BLE001
                    self._fail(f"sink {type(sk).__name__}", e)
            self._loss_buffer = []
        self._begin_step()

    def _finish_pending(self, s: int, wait: bool = False) -> None:
        """Merge and judge sampled steps whose figures are on the host: CPU ones at once, device
        ones one step later (the same rule on every rank, so the collectives match)."""
        while self._pending:
            col = self._pending[0]
            if not wait and col.on_device and col.rec.step >= s:
                break
            self._pending.popleft()
            try:
                with np.errstate(all="ignore"):  # overflowing figures are data here, not errors
                    self._finalize(col)
            except DiagnosticError:
                raise
            except Exception as e:  # noqa: BLE001
                self._fail("statistics", e)

    def _finalize(self, col: Any) -> None:
        T = self._T
        rec = col.rec
        moments, sat, dead = col.get()
        R = len(self._rows)
        sat_arr = np.zeros(R)
        dead_arr = np.full(R, np.nan)
        for row, v in sat.items():
            sat_arr[row] = v
        for row, v in dead.items():
            dead_arr[row] = v
        proposal = float(self._proposal(rec))
        if self._dist:
            moments, sat_arr, dead_arr, proposal = self._distributed.merge(moments, self._replicated, sat_arr, dead_arr, proposal)
        if not isinstance(self._every, int):
            self._next_auto = max(self._next_auto, int(proposal))
        pub = T.moments_to_public(moments)
        present = moments[:R, T.COUNT] > 0
        mat = np.full((R, NF), np.nan)
        mat[present, : T.NFIELDS] = pub[:R][present]
        fin = moments[:R, T.COUNT] - moments[:R, T.NAN] - moments[:R, T.INF]
        for row in self._row_unit:
            if present[row]:
                if self._row_unit[row] == "relu":
                    mat[row, DEAD] = dead_arr[row]
                elif fin[row] > 0:
                    mat[row, SATURATED] = sat_arr[row] / fin[row]
        if rec.aux:
            urows = np.fromiter(rec.aux.keys(), dtype=np.int64)
            arows = np.fromiter(rec.aux.values(), dtype=np.int64)
            rms_all = T.rms(pub)
            w, u = rms_all[arows], rms_all[urows]
            with np.errstate(all="ignore"):
                # weights still about zero (a bias at init) have no meaningful ratio
                ok = present[urows] & np.isfinite(w) & (w > 1e-6) & np.isfinite(u)
                mat[urows[ok], RATIO] = u[ok] / w[ok]
        self._history.append(rec.step, mat.astype(np.float32))
        hists = {row: c for row, c in rec.hists.items() if row < R}
        if self._dist and rec.hist:
            hists = self._distributed.merge_hist(hists, R, self._replicated[:R])
        for i, row in enumerate(rec.act_order):
            self._pos.setdefault(self._rows.rows[row].module, len(self._pos))
        if hists:
            idx = np.array(sorted(hists), dtype=np.int64)
            self._history.add_hist(rec.step, idx, np.stack([hists[i] for i in idx]).astype(np.uint64))
        if self._checks_on:
            self._checks.on_record(rec.step, mat, rec.act_order, rec.grad_order, rec.dead_below)
        for sk in self._sinks:
            try:
                sk.record(rec.step, mat, present, self._loss_buffer, hists)
            except Exception as e:  # noqa: BLE001
                self._fail(f"sink {type(sk).__name__}", e)
        self._loss_buffer = []

    # ================================================================== every="auto"
    def _clock(self, s: int, rec: Any) -> None:
        now = time.perf_counter()
        last, self._t_last = self._t_last, now
        if last is None or s == 0:
            self._own_cheap = 0.0
            return  # the first step pays one-off costs: not a measure of anything
        dt = now - last
        if rec is None:
            self._bare.append(dt)
            self._cheap.append(self._own_cheap)
        else:
            base = dt - rec.own_time
            self._bare_boot = base if self._bare_boot is None else min(self._bare_boot, base)
            bare = self._bare_estimate(base)
            extra = max(dt - bare, rec.own_time)
            self._spent += extra
            self._cost_est = extra if self._cost_est is None else 0.7 * self._cost_est + 0.3 * extra
        self._own_cheap = 0.0

    def _bare_estimate(self, fallback: float) -> float:
        if len(self._bare) >= 3:
            return max(float(np.median(self._bare)) - float(np.median(self._cheap)), 1e-9)
        if self._bare_boot is not None:  # no unsampled step yet: the sampled ones less our own time
            return max(min(self._bare_boot, fallback), 1e-9)
        return max(fallback, 1e-9)

    def _proposal(self, rec: Any) -> int:
        """The next step to sample under every="auto" (all ranks take the largest proposal)."""
        s = rec.step
        if isinstance(self._every, int) or self._cost_est is None:
            return max(s + 1, FORCED_FIRST)
        bare = self._bare_estimate(float("inf"))
        if not math.isfinite(bare):
            return s + 1
        # the every-step checks: the time measured in the optimizer hooks, and about as much again
        # that no timer sees (the model's forward pre-hook, the loss wrappers, the zero_grad
        # sentinel, PyTorch's slower call path for a module with hooks)
        cheap = 2 * float(np.median(self._cheap)) if self._cheap else 0.0
        # aim at 80% of the budget: what a sampled step adds is measured against noisy step times
        budget = AUTO_AIM * self._overhead * bare
        rate = max(budget - cheap, 0.25 * budget)
        # unused budget is kept for at most two samples: no bursts of samples after a quiet spell
        self._spent = max(self._spent, rate * s - 2 * self._cost_est)
        target = (self._spent + self._cost_est) / rate
        # the plan is fixed before the sampled step's forward, so at least one step ahead
        return int(max(s + 1, min(math.ceil(target), s + 1_000_000)))

    # ================================================================== the loss
    def _is_jump(self, loss: float) -> bool:
        """A loss far above the recent ones: JUMP_Z robust deviations and half again above the median
        of the last 32 losses (a late, tiny, noisy loss has outliers that are no event). The limit is
        refreshed every 8 losses; a jump samples a step at most once in JUMP_GAP steps."""
        if loss > self._jump_limit and self._step - self._last_jump >= JUMP_GAP:
            self._last_jump = self._step
            return True
        return False

    def _refresh_jump_limit(self) -> None:
        r = self._recent_losses
        if len(r) < 10:
            self._jump_limit = math.inf
            return
        ys = sorted(r)
        med = ys[len(ys) // 2]
        dev = sorted(abs(y - med) for y in ys)
        mad = dev[len(dev) // 2] * 1.4826
        self._jump_limit = med + max(JUMP_Z * mad, 0.5 * abs(med), 1e-12)

    def _set_loss(self, step: int, value: float) -> None:
        replaced = self._history.set_loss(step, value)
        if self._sinks:
            if replaced and self._loss_buffer and self._loss_buffer[-1][0] == step:
                self._loss_buffer[-1] = (step, value)
            else:
                self._loss_buffer.append((step, value))
        if not replaced and value == value and value not in (math.inf, -math.inf):
            r = self._recent_losses
            r.append(value)
            if len(r) >= 10 and len(self._history._loss_steps) % 8 == 0:
                self._refresh_jump_limit()
        if self._checks_on:
            lr = self._lr0() if self._opts else math.nan
            self._checks.on_loss(step, value, lr)

    def _lr0(self) -> float:
        try:
            return float(self._opts[0].param_groups[0]["lr"])
        except (KeyError, IndexError, TypeError, ValueError):
            return math.nan

    def _resolve_device_losses(self, s: int) -> None:
        """CUDA losses: start their copy now, judge them at the next step (no wait in the step)."""
        if self._loss_readback is not None:
            step, rb = self._loss_readback
            vals = rb.get()
            self._loss_readback = None
            if len(vals):
                v = float(np.mean(vals))
                self._set_loss(step, v)
                if not math.isfinite(v):
                    self._on_nonfinite_loss(step, v, before_update=False)
                    if not self._dist:
                        self._force_next = True
        if self._loss_tensors:
            t = self._torch.stack([x.float() for x in self._loss_tensors])
            self._loss_tensors = []
            self._loss_readback = (s, self._T.Readback(t))

    def _on_nonfinite_loss(self, step: int, value: float, *, before_update: bool) -> None:
        if not self._checks_on or self._nonfinite_step == step:
            return
        self._nonfinite_step = step
        if self._located >= LOCATE_MAX:
            key = next((k for k in self._fidx if k[0] == "non-finite"), None)
            if key is not None:
                self._emit("non-finite", "", key[1], step, {})
            return
        self._located += 1
        where, msg, data = self._locate()
        when = "" if before_update else " (after the update: the origin may be an earlier step's gradient)"
        self._emit("non-finite", f"the loss is {value} at step {step}; {msg}{when}", where, step,
                   {"loss": str(value), "phase": "forward", **data})

    def _locate(self) -> tuple[str | None, str, dict[str, Any]]:
        """Re-run the step's saved inputs under no_grad, module by module, and name the first module
        whose output is non-finite while its inputs are finite. RNG state and buffers (BatchNorm
        running statistics) are restored afterwards, so training is unchanged."""
        torch = self._torch
        T = self._T

        def finite(obj: Any) -> bool:
            return all(bool(torch.isfinite(t).all()) for t in T.tensors_in(obj) if T.readable(t))

        for args, kwargs in list(self._inputs):
            if not finite((args, kwargs)):
                return None, "the input batch itself holds NaN/Inf", {"origin": "input"}
        found: list[tuple[str, bool]] = []

        def hook(m: Any, a: Any, out: Any) -> None:
            if not found and not finite(out):
                found.append((self._mod_name.get(id(m), type(m).__name__), finite(a)))

        model = self._inner
        hs = self._hookset()
        for m in model.modules():
            hs.forward(m, hook)
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        saved = [(b, b.detach().clone()) for b in model.buffers()]
        self._busy = True
        try:
            for args, kwargs in list(self._inputs):
                with torch.no_grad():
                    model(*args, **kwargs)
                if found:
                    break
        finally:
            self._busy = False
            hs.remove()
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            with torch.no_grad():
                for b, v in saved:
                    b.copy_(v)
        if not found:
            return None, "every module's output is finite on a re-run: the loss computation itself made it", {"origin": "loss"}
        name, inputs_finite = found[0]
        mod = dict(model.named_modules()).get("" if name == ROOT else name)
        bad_w = mod is not None and not finite(list(mod.parameters(recurse=False)))
        msg = f"NaN/Inf first appears in the output of {self._label(name)}"
        if bad_w:
            msg += "; its weights are already non-finite (a non-finite gradient or update at an earlier step)"
        return name, msg, {"origin": "weights" if bad_w else "forward", "inputs_finite": inputs_finite}

    # ================================================================== public API
    def step(self, loss: Any = None) -> None:
        """Mark the end of a training step (without optimizer), and/or give its loss (a tensor or a
        number). With an optimizer, steps are counted by optimizer.step(): a loss given after it
        belongs to the step just taken, one given before it to the step in progress."""
        if self._closed:
            return
        try:
            value = None
            if loss is not None:
                value = float(loss.detach().float().mean()) if hasattr(loss, "detach") else float(loss)
            if self._opts:
                if value is None:
                    return
                if self._fwd_grad > 0 or self._step == 0:
                    self._explicit[self._step] = value  # read by the optimizer pre-hook
                else:
                    s = self._step - 1
                    self._set_loss(s, value)
                    if not math.isfinite(value):
                        self._on_nonfinite_loss(s, value, before_update=False)
                        if not self._dist:
                            self._force_next = True
                    elif self._is_jump(value) and not self._dist:
                        self._force_next = True
                return
            t0 = time.perf_counter()
            s = self._step
            if value is not None:
                self._explicit[s] = value
            self._loss_obs.resolve()
            observed = self._step_loss()
            self._resolve_device_losses(s)
            late = False
            if observed is not None:
                if not math.isfinite(observed):
                    self._on_nonfinite_loss(s, observed, before_update=False)
                    late = True
                elif self._is_jump(observed):
                    late = True
            if late and not self._dist:
                self._force_next = True
            self._observed_loss = observed
            if self._fwd_grad > 0:
                self._check_modes(s)
            self._fwd_grad = 0
            rec = self._record
            if rec is not None:
                self._take_updates(rec)
            self._end_step(s, rec)
            self._charge(time.perf_counter() - t0, rec)
            self._clock(s, rec)
        except DiagnosticError:
            raise
        except Exception as e:  # noqa: BLE001
            self._fail("step", e)

    def close(self) -> None:
        """Remove every hook, finish the pending figures, close the sinks (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            atexit.unregister(self._atexit)
        except Exception:  # noqa: BLE001
            pass
        self._sampled_hooks.remove()
        self._hooks.remove()
        self._losses_mod.detach(self._loss_obs)
        self._record = None
        self._inputs = []  # let the last batch go
        self._snap = []
        try:
            self._loss_obs.resolve(wait=True)
            self._resolve_device_losses(self._step)
            self._resolve_device_losses(self._step)
            self._finish_pending(self._step, wait=True)
        except DiagnosticError:
            raise
        except Exception as e:  # noqa: BLE001
            self._fail("close", e)
        finally:
            for sk in self._sinks:
                try:
                    if self._loss_buffer:
                        sk.losses(self._loss_buffer)
                    sk.close(self._step, list(self._findings))
                except Exception as e:  # noqa: BLE001
                    self._fail(f"sink {type(sk).__name__}", e)
            self._loss_buffer = []

    def __enter__(self) -> "Probe":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def findings(self) -> list[Finding]:
        return list(self._findings)

    def codes(self) -> set[str]:
        return {f.code for f in self._findings}

    @property
    def steps(self) -> int:
        """Steps seen so far."""
        return self._step

    @property
    def sampled_steps(self) -> np.ndarray:
        """The steps whose figures `history()` holds."""
        return self._history.steps

    def losses(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, loss values) of every step whose loss was seen."""
        return self._history.losses()

    def names(self, kind: str) -> list[str]:
        """The watched names of a kind (modules for activations, modules and parameters for
        gradients, parameters for weights and updates)."""
        return [r.name for r in self._rows.rows if r.kind == kind]

    def history(self, name: str, kind: str, stat: str) -> np.ndarray:
        """One figure of one row over the sampled steps (aligned with `sampled_steps`); NaN where
        the row was not seen. `name` is a module's qualified name ("(root)" for the model) or a
        parameter's; for a module, weights/updates (and gradients, when the module's output
        gradient is not watched) aggregate its own parameters. `stat` is one of the fields
        (count, nan, inf, zeros, min, max, mean, std, l2, absmax, absmean, dead, saturated,
        ratio) or "rms" / "nonfinite"."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        row = self._rows.find(name, kind)
        if row is not None:
            return self._history.column(row, stat)
        members = [i for i, r in enumerate(self._rows.rows) if r.param and r.kind == kind and r.module == name]
        if not members:
            known = sorted({r.name for r in self._rows.rows if r.kind == kind})
            raise KeyError(f"no {kind} row named {name!r}; watched: {', '.join(known[:20])}{' ...' if len(known) > 20 else ''}")
        return self._aggregate(members, stat)

    def _aggregate(self, members: list[int], stat: str) -> np.ndarray:
        T = self._T
        mats = self._history.matrices.astype(np.float64)
        if stat == "ratio":
            with np.errstate(all="ignore"):
                vals = mats[:, members, RATIO]
                out = np.full(len(mats), np.nan)
                ok = ~np.all(np.isnan(vals), axis=1)
                out[ok] = np.nanmax(vals[ok], axis=1)
                return out
        out = np.full(len(mats), np.nan)
        agg = np.zeros((len(mats), NF))
        for k in range(len(mats)):
            sub = mats[k, members, : T.NFIELDS]
            sub = sub[~np.isnan(sub[:, 0])]
            if not len(sub):
                continue
            m = T.empty_moments(1)
            T.merge_into(m, np.zeros(len(sub), dtype=np.int64), T.public_to_moments(sub))
            agg[k, : T.NFIELDS] = T.moments_to_public(m)[0]
            if stat in FIELDS:
                out[k] = agg[k, FIELDS.index(stat)]
            elif stat == "rms":
                out[k] = T.rms(agg[k : k + 1, : T.NFIELDS])[0]
            elif stat == "nonfinite":
                out[k] = agg[k, 1] + agg[k, 2]
            else:
                raise KeyError(f"unknown stat {stat!r}")
        return out

    def _last_measured(self, row: int, field: int) -> float | None:
        """The latest finite value of one figure of a row: dead and saturated fractions are only
        measured exactly on some sampled steps (ruled out cheaply on the others)."""
        if row < 0 or not len(self._history.matrices):
            return None
        col = self._history.matrices[:, row, field]
        ok = np.isfinite(col)
        return float(col[ok][-1]) if ok.any() else None

    def summary(self) -> str:
        """A per-layer table of the latest sampled figures, and the findings."""
        C = {f: i for i, f in enumerate(FIELDS)}
        head = ("layer", "type", "act mean", "act std", "dead", "sat", "out-grad rms", "param-grad rms", "update ratio", "findings")
        lines: list[tuple[str, ...]] = []
        by_module: dict[str, list[str]] = {}
        for f in self._findings:
            by_module.setdefault(f.module or "", []).append(f.code)

        def fmt(v: float | None, pct: bool = False) -> str:
            if v is None or not math.isfinite(v):
                return "-"
            return f"{v:.0%}" if pct else f"{v:.3g}"

        for m, arow, grow, unit in self._watched:
            name = self._mod_name[id(m)]
            act = self._history.last(arow) if arow >= 0 else None
            og = self._history.last(grow) if grow >= 0 else None
            prow = [i for i, r in enumerate(self._rows.rows) if r.param and r.module == name and r.kind == "gradients"]
            urow = [i for i, r in enumerate(self._rows.rows) if r.param and r.module == name and r.kind == "updates"]
            pg = self._aggregate(prow, "rms")[-1:] if prow and len(self._history.matrices) else []
            ratios = [self._history.last(i) for i in urow]
            ratio_vals = [float(x[RATIO]) for x in ratios if x is not None and math.isfinite(x[RATIO])]
            lines.append((
                name, type(m).__name__,
                fmt(float(act[C["mean"]]) if act is not None else None),
                fmt(float(act[C["std"]]) if act is not None else None),
                fmt(self._last_measured(arow, DEAD), pct=True),
                fmt(self._last_measured(arow, SATURATED), pct=True),
                fmt(float(np.sqrt(og[C["l2"]] ** 2 / max(og[0] - og[1] - og[2], 1))) if og is not None else None),
                fmt(float(pg[0]) if len(pg) else None),
                fmt(max(ratio_vals) if ratio_vals else None),
                ",".join(sorted(set(by_module.get(name, [])))) or "",
            ))
        widths = [max(len(head[i]), *(len(r[i]) for r in lines)) if lines else len(head[i]) for i in range(len(head))]
        out = [f"nnprobe watch: {self._step} steps, {len(self._history.steps)} sampled, {len(self._findings)} findings"]
        out.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        out.append("  ".join("-" * w for w in widths))
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in lines]
        general = [f for f in self._findings]
        if general:
            out.append("")
            out += [str(f) for f in general]
        return "\n".join(out)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<nnprobe.Probe {state}: {self._step} steps, {len(self._findings)} findings>"

    def report(self, path: str) -> str:
        """A minimal self-contained HTML page (the summary table, the findings, the loss curve).
        The full report with per-layer plots is `nnprobe report LOG_DIR` (another issue)."""
        steps, values = self.losses()
        svg = ""
        fin = np.isfinite(values)
        if fin.sum() >= 2:
            xs, ys = steps[fin].astype(float), values[fin]
            x0, x1 = xs.min(), max(xs.max(), xs.min() + 1)
            y0, y1 = ys.min(), max(ys.max(), ys.min() + 1e-12)
            pts = " ".join(f"{10 + 580 * (x - x0) / (x1 - x0):.1f},{190 - 180 * (y - y0) / (y1 - y0):.1f}" for x, y in zip(xs, ys))
            svg = (f'<h2>Loss</h2><svg width="600" height="200" style="border:1px solid #ccc">'
                   f'<polyline fill="none" stroke="#1f77b4" points="{pts}"/></svg>'
                   f"<p>steps {int(x0)}..{int(xs.max())}, loss {y0:.4g}..{ys.max():.4g}</p>")
        items = "".join(
            f"<li><b>{html.escape(f.severity)}</b> <code>{html.escape(f.code)}</code> "
            f"{html.escape(f.module or '')} step {f.step} x{f.count}: {html.escape(f.message)}"
            f"<br><i>{html.escape(f.hint)}</i></li>" for f in self._findings
        ) or "<li>no findings</li>"
        page = (f"<!doctype html><meta charset='utf-8'><title>nnprobe report</title>"
                f"<h1>nnprobe report</h1><h2>Findings</h2><ul>{items}</ul>{svg}"
                f"<h2>Layers</h2><pre>{html.escape(self.summary())}</pre>")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(page)
        return path
