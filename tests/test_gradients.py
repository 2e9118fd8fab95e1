"""check_gradients: a wrong hand-written backward is named; correct ones, and plain autograd
models with ReLU kinks, are silent; the model, its modes, dtypes and random state are untouched."""

import nnprobe
import pytest
import torch
import torch.nn as nn


class Square(torch.autograd.Function):
    """x**2 with a hand-written backward; `wrong` forgets the factor 2."""

    @staticmethod
    def forward(ctx, x, wrong):
        ctx.save_for_backward(x)
        ctx.wrong = wrong
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return (g * x if ctx.wrong else 2 * g * x), None


class Scale(torch.autograd.Function):
    """w * x with the weight's gradient right and the input's (optionally) wrong sign."""

    @staticmethod
    def forward(ctx, x, w, wrong):
        ctx.save_for_backward(x, w)
        ctx.wrong = wrong
        return x * w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gx = -g * w if ctx.wrong else g * w
        return gx, (g * x).sum(0), None


class SquareAct(nn.Module):
    def __init__(self, wrong=False):
        super().__init__()
        self.wrong = wrong

    def forward(self, x):
        return Square.apply(x, self.wrong)


class ScaleLayer(nn.Module):
    def __init__(self, d, wrong=False):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d))
        self.wrong = wrong

    def forward(self, x):
        return Scale.apply(x, self.w, self.wrong)


def net(first_wrong=False, second_wrong=False):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), SquareAct(first_wrong), nn.Linear(16, 16), nn.ReLU(),
                         ScaleLayer(16, second_wrong), nn.Linear(16, 3))


def test_a_wrong_backward_is_named():
    rep = nnprobe.check_gradients(net(second_wrong=True), torch.randn(4, 8))
    (f,) = rep.findings
    assert f.code == "gradient-mismatch" and f.severity == "error" and f.module == "4"
    assert "'4' (ScaleLayer)" in f.message and not rep.ok
    assert [c.name for c in rep.checked] == ["1", "4"] and [c.ok for c in rep.checked] == [True, False]


def test_the_first_wrong_one_is_named():
    rep = nnprobe.check_gradients(net(first_wrong=True, second_wrong=True), torch.randn(4, 8))
    (f,) = rep.findings
    assert f.module == "1" and f.data["wrong"] == ["1", "4"] and "1 later module(s)" in f.message


def test_correct_custom_functions_are_silent():
    rep = nnprobe.check_gradients(net(), torch.randn(4, 8))
    assert rep.ok and rep.findings == [] and len(rep.checked) == 2
    assert all(c.error < 1e-5 for c in rep.checked), rep


@pytest.mark.parametrize("seed", range(3))
def test_a_plain_model_is_checked_whole_and_relu_kinks_do_not_count(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 64), nn.ReLU(),
                          nn.BatchNorm1d(64), nn.Linear(64, 3))
    rep = nnprobe.check_gradients(model, torch.randn(32, 8))
    assert rep.ok and [c.name for c in rep.checked] == ["(root)"], rep


def test_the_model_and_the_random_state_are_untouched():
    model = net(second_wrong=True)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 8)
    state = torch.get_rng_state()
    nnprobe.check_gradients(model, x)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.dtype == torch.float32 for p in model.parameters()) and model.training
    assert all(m.training for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_token_inputs_and_bad_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 8), SquareAct(True), nn.Linear(8, 2))
    (f,) = nnprobe.check_gradients(model, torch.randint(0, 10, (4, 5))).findings
    assert f.module == "1"
    with pytest.raises(nnprobe.InputError, match="inputs"):
        nnprobe.check_gradients(model)
    with pytest.raises(nnprobe.InputError, match="Module"):
        nnprobe.check_gradients(lambda x: x, torch.zeros(2))
