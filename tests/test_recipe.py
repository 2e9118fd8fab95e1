"""overfit_one_batch and check_reproducible: each planted and fixed, with no side effects."""

import random

import nnprobe
import numpy as np
import pytest
import torch
import torch.nn as nn
from checks_zoo import mlp


def batch(n=16, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 10, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_a_working_model_overfits_and_uses_its_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 4))
    rep = nnprobe.overfit_one_batch(model, batch(), nn.CrossEntropyLoss())  # Adam, lr 1e-3
    assert rep.ok and rep.findings == [], rep
    assert rep.reached and rep.target == pytest.approx(0.05 * rep.initial_loss)
    assert min(rep.losses) <= rep.target < rep.initial_loss
    assert len(rep.losses) == 200 and len(rep.baseline_losses) == 200
    assert min(rep.losses) * 4 / 3 <= min(rep.baseline_losses)


def test_training_a_copy_leaves_the_model_its_optimizer_and_the_rng_alone():
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    rep = nnprobe.overfit_one_batch(model, batch(), nn.CrossEntropyLoss(), optimizer=opt, steps=50)
    assert rep.losses[-1] < rep.losses[0]
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert opt.state_dict()["state"] == {}  # never stepped
    assert model.training


def test_optimizer_param_groups_are_copied():
    model = mlp()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1}, {"params": model[2].parameters(), "lr": 0.0}], lr=0.3)
    copy = mlp()
    clone = nnprobe.preflight.recipe.clone_optimizer(opt, model, copy)
    assert type(clone) is torch.optim.SGD
    assert [g["lr"] for g in clone.param_groups] == [0.1, 0.0]
    assert clone.param_groups[1]["params"][0] is copy[2].weight


class IgnoresInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        return self.net(x.detach() * 0)  # the bug: the input never reaches the network


def test_a_model_that_ignores_its_input_is_input_independent_and_cannot_overfit():
    torch.manual_seed(0)
    rep = nnprobe.overfit_one_batch(IgnoresInput(), batch(), nn.CrossEntropyLoss())
    assert rep.codes() == {"cannot-overfit-batch", "input-independent"}
    cannot = next(f for f in rep.findings if f.code == "cannot-overfit-batch")
    assert cannot.severity == "error" and "net.0.weight" in cannot.message  # no gradient reaches it
    assert rep.losses == pytest.approx(rep.baseline_losses)


def test_a_frozen_model_cannot_overfit_and_says_why():
    torch.manual_seed(0)
    model = mlp()
    rep = nnprobe.overfit_one_batch(model, batch(), nn.CrossEntropyLoss(), optimizer=lambda ps: torch.optim.SGD(ps, lr=0.0))
    f = next(f for f in rep.findings if f.code == "cannot-overfit-batch")
    assert f.severity == "error" and "barely moved" in f.message
    assert "input-independent" not in rep.codes()  # nothing trained: the baseline says nothing
    assert any("inconclusive" in n for n in rep.notes)


def test_a_learning_rate_far_too_high_diverges():
    torch.manual_seed(0)
    x, y = batch()
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))
    rep = nnprobe.overfit_one_batch(model, (x * 1e3, y.float()[:, None]), nn.MSELoss(),
                                    optimizer=lambda ps: torch.optim.SGD(ps, lr=10.0), baseline=False)
    f = next(f for f in rep.findings if f.code == "cannot-overfit-batch")
    assert f.severity == "error" and "learning rate is too high" in f.message


def test_conflicting_labels_are_named_as_the_reason():
    torch.manual_seed(0)
    x, y = batch(n=8)
    x[1] = x[0]
    y[1] = (y[0] + 1) % 4
    rep = nnprobe.overfit_one_batch(mlp(), (x, y), nn.CrossEntropyLoss(), target=0.01, baseline=False)
    f = next(f for f in rep.findings if f.code == "cannot-overfit-batch")
    assert "identical inputs with different labels" in f.message


def test_constant_labels_make_the_baseline_inconclusive_not_a_finding():
    torch.manual_seed(0)
    x, _ = batch()
    adam = lambda ps: torch.optim.Adam(ps, lr=1e-2)  # noqa: E731 (both runs learn the constant)
    rep = nnprobe.overfit_one_batch(mlp(), (x, torch.zeros(16, dtype=torch.long)), nn.CrossEntropyLoss(), optimizer=adam)
    assert rep.findings == []
    assert any("constant prediction" in n for n in rep.notes)


def train_run(generator_seed=None):
    def run(steps):
        x, y = batch(64)
        g = torch.Generator().manual_seed(generator_seed() if generator_seed else int(torch.randint(0, 2**31, (1,))))
        model = mlp()  # initialised from the seeded global generator
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        order = list(range(64))
        random.shuffle(order)
        losses = []
        for step in range(steps):
            idx = order[step * 8:(step + 1) * 8]
            noise = torch.randn(8, 10, generator=g) * 0.1 + float(np.random.rand()) * 1e-3
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx] + noise), y[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    return run


def test_a_seeded_run_reproduces_itself():
    rep = nnprobe.check_reproducible(train_run(), steps=5)
    assert rep.ok and rep.findings == []
    assert rep.first == rep.second and len(rep.first) == 5


def test_an_unseeded_generator_is_not_reproducible_and_global_state_is_restored():
    import time

    state = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    rep = nnprobe.check_reproducible(train_run(generator_seed=time.perf_counter_ns), steps=4)
    (f,) = rep.findings
    assert (f.code, f.severity, f.step) == ("not-reproducible", "warning", 0)
    assert random.getstate() == state[0]
    assert np.array_equal(np.random.get_state()[1], state[1])
    assert torch.equal(torch.get_rng_state(), state[2])
