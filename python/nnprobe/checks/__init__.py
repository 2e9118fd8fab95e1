"""The runtime judges: pure functions of a run's figures.

Each check is one file under its family's folder (loss, modes, gradients, units, optimizer,
precision); it gets the run's plan once and then each step's `StepFigures`, keeps its own small
state, and returns what it raised. A check never holds a probe, prints, writes or touches a module, so the
same checks judge a live run (`nnprobe.watch`) and a finished one from its log
(`nnprobe check LOG_DIR`). `registry.CHECKS` lists them; `judge.Judge` runs them.

Every threshold is chosen to keep a clean, correct training loop silent (a false alarm is as bad
as a miss) and is cited in the catalogue's explain() text. A judgement that could flicker on one
noisy batch needs a *persistent* condition: several sampled steps in a row, or a window's median.
"""
