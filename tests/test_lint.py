"""lint(): each structural mistake planted and fixed; bias cancellation checked against torch by
perturbing the bias; fx and hooks give the same answers; data-flow order, not registration order."""

import nnprobe
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from checks_zoo import TimeMajorMixer, TinyGPT, mlp, small_cnn

METHODS = ["fx", "hooks"]


class LinearTimeBN(nn.Module):
    """Linear over features of [B, T, F], then BatchNorm1d over F (channels after a permute)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x):
        return self.bn(self.fc(x).permute(0, 2, 1))


class LinearLengthBN(nn.Module):
    """Linear over the length of [B, C, L], then BatchNorm1d over C: the bias varies along L inside
    each channel's statistics, so only its mean is removed."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(7, 7)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        return self.bn(self.fc(x))


class Residual(nn.Module):
    def __init__(self, fan_out=False):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fan_out = fan_out

    def forward(self, x):
        h = self.conv(x)
        if self.fan_out:  # the conv's output is also used without the norm: its bias matters
            return self.bn(h) + h
        return self.bn(h + x)


def rms():
    return nn.RMSNorm(6)


# (name, model factory, input shape, what the oracle must say: is the bias wasted?)
BIAS_CASES = [
    ("conv-batchnorm", lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), (4, 3, 6, 6), True),
    ("conv-groupnorm-2-groups", lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4)), (4, 3, 6, 6), False),
    ("conv-groupnorm-per-channel", lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(4, 4)), (4, 3, 6, 6), True),
    ("conv-instancenorm", lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4)), (4, 3, 6, 6), True),
    ("conv-layernorm-chw", lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm([4, 4, 4])), (4, 3, 6, 6), False),
    ("conv-layernorm-width", lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm(4)), (4, 3, 6, 6), True),
    ("conv-flatten-batchnorm1d", lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.BatchNorm1d(64)), (4, 3, 6, 6), True),
    ("linear-batchnorm", lambda: nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6)), (8, 5), True),
    ("linear-layernorm", lambda: nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6)), (8, 5), False),
    ("linear-rmsnorm", lambda: nn.Sequential(nn.Linear(5, 6), rms()), (8, 5), False),
    ("linear-relu-batchnorm", lambda: nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.BatchNorm1d(6)), (8, 5), False),
    ("linear-permute-batchnorm", LinearTimeBN, (4, 7, 5), True),
    ("linear-over-length-batchnorm", LinearLengthBN, (4, 4, 7), False),
    ("residual-add-batchnorm", Residual, (4, 4, 5, 5), True),
    ("fan-out", lambda: Residual(fan_out=True), (4, 4, 5, 5), False),
]


def bias_is_wasted(model, shape):
    """Oracle: in train mode, does moving the first layer's bias change the output at all?"""
    torch.manual_seed(0)
    x = torch.randn(*shape)
    layer = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    model.train()
    with torch.no_grad():
        before = model(x)
        layer.bias += torch.randn_like(layer.bias) * 3
        after = model(x)
    return torch.allclose(before, after, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name, factory, shape, wasted", BIAS_CASES, ids=[c[0] for c in BIAS_CASES])
def test_bias_before_norm_fires_exactly_when_torch_cancels_the_bias(name, factory, shape, wasted, method):
    assert bias_is_wasted(factory(), shape) is wasted  # the oracle agrees with the table
    torch.manual_seed(0)
    model = factory()
    rep = nnprobe.lint(model, torch.randn(*shape), method=method)
    assert rep.method == method
    fired = [f for f in rep.findings if f.code == "bias-before-norm"]
    assert bool(fired) is wasted, rep
    if fired:
        first = next(n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
        assert fired[0].module == first  # the pair is named by its first layer
        assert fired[0].severity == "warning"


@pytest.mark.parametrize("method", METHODS)
def test_bias_false_before_batchnorm_is_silent(method):
    rep = nnprobe.lint(small_cnn(bias=False), torch.randn(2, 3, 8, 8), method=method)
    assert rep.ok and rep.findings == []
    rep = nnprobe.lint(small_cnn(bias=True), torch.randn(2, 3, 8, 8), method=method)
    assert [f.module for f in rep.findings if f.code == "bias-before-norm"] == ["0", "3"]


class DropBN(nn.Module):
    def __init__(self, order):
        super().__init__()
        self.fc = nn.Linear(5, 6, bias=False)
        self.drop = nn.Dropout(0.5)
        self.bn = nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, 6, bias=False)
        self.order = order

    def forward(self, x):
        h = self.fc(x)
        if self.order == "dropout-bn":
            return self.bn(self.drop(h))
        if self.order == "bn-dropout":
            return self.drop(F.relu(self.bn(h)))
        return self.bn(self.fc2(self.drop(F.relu(h))))  # dropout -> linear -> bn: not adjacent


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("order, fires", [("dropout-bn", True), ("bn-dropout", False), ("dropout-linear-bn", False)])
def test_dropout_before_batchnorm(order, fires, method):
    rep = nnprobe.lint(DropBN(order), torch.randn(4, 5), method=method)
    got = [f for f in rep.findings if f.code == "dropout-before-batchnorm"]
    assert bool(got) is fires
    if fires:
        assert got[0].module == "drop"


class FunctionalHead(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.body = mlp(outputs=3)
        self.act = act

    def forward(self, x):
        out = self.body(x)
        return self.act(out) if self.act else out


LOGIT_CASES = [
    (nn.Softmax(dim=-1), nn.CrossEntropyLoss(), "activation-on-logits"),
    (nn.ReLU(), nn.CrossEntropyLoss(), "activation-on-logits"),
    (nn.Sigmoid(), nn.BCEWithLogitsLoss(), "activation-on-logits"),
    (lambda o: torch.softmax(o, -1), F.cross_entropy, "activation-on-logits"),
    (lambda o: o.sigmoid(), F.binary_cross_entropy_with_logits, "activation-on-logits"),
    (None, nn.CrossEntropyLoss(), None),
    (None, nn.BCEWithLogitsLoss(), None),
    (nn.LogSoftmax(dim=-1), nn.CrossEntropyLoss(), None),  # log_softmax is idempotent under CE
    (nn.Sigmoid(), nn.BCELoss(), None),
    (nn.LogSoftmax(dim=-1), nn.NLLLoss(), None),
    (None, nn.NLLLoss(), "logits-into-nll"),
    (nn.Softmax(dim=-1), nn.NLLLoss(), "logits-into-nll"),
    (nn.Softmax(dim=-1), None, None),  # without a loss a final softmax is a choice, not a mistake
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("act, loss, code", LOGIT_CASES)
def test_final_activation_against_the_loss(act, loss, code, method):
    model = nn.Sequential(mlp(outputs=3), act) if isinstance(act, nn.Module) else FunctionalHead(act)
    rep = nnprobe.lint(model, torch.randn(4, 10), loss_fn=loss, method=method)
    codes = {f.code for f in rep.findings} & {"activation-on-logits", "logits-into-nll"}
    assert codes == ({code} if code else set()), rep
    if code:
        f = next(f for f in rep.findings if f.code == code)
        assert f.severity == "error"
        if isinstance(act, nn.Module):
            assert f.module == "1"  # the activation module itself
        elif act is not None:
            assert "test_lint.py" in f.message  # a functional call is named with its line


@pytest.mark.parametrize("method", METHODS)
def test_stacked_linear(method):
    rep = nnprobe.lint(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)), torch.randn(3, 4), method=method)
    (f,) = rep.findings
    assert (f.code, f.module, f.severity) == ("stacked-linear", "0", "warning")
    assert not rep.ok
    # a bottleneck narrower than both ends (LoRA's A then B) is a deliberate low-rank map: info
    rep = nnprobe.lint(nn.Sequential(nn.Linear(16, 2), nn.Linear(2, 16)), torch.randn(3, 16), method=method)
    (f,) = rep.findings
    assert f.severity == "info" and f.data["low_rank"] and rep.ok
    rep = nnprobe.lint(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1), nn.Linear(8, 2)), torch.randn(3, 4), method=method)
    assert rep.codes() == {"stacked-linear"}
    rep = nnprobe.lint(nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2)), torch.randn(3, 4), method=method)
    assert rep.findings == []


class RegisteredBackwards(nn.Module):
    """Modules registered in the opposite order of use: a registration-order linter sees bn before
    fc and misses the pair (and would pair 'out' with nothing)."""

    def __init__(self):
        super().__init__()
        self.out = nn.Linear(6, 2)
        self.bn = nn.BatchNorm1d(6)
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        return self.out(F.relu(self.bn(self.fc(x))))


class Untraceable(RegisteredBackwards):
    def forward(self, x):
        h = self.fc(x)
        if h.sum() > -1e9:  # data-dependent control flow: symbolic tracing fails
            h = self.bn(h)
        return self.out(F.relu(h))


@pytest.mark.parametrize("method", METHODS)
def test_lint_follows_data_flow_not_registration_order(method):
    rep = nnprobe.lint(RegisteredBackwards(), torch.randn(5, 4), method=method)
    assert rep.order == ["fc", "bn", "out"]
    assert [(f.code, f.module) for f in rep.findings] == [("bias-before-norm", "fc")]


def test_untraceable_models_fall_back_to_hooks():
    rep = nnprobe.lint(Untraceable(), torch.randn(5, 4))
    assert rep.method == "hooks"
    assert [(f.code, f.module) for f in rep.findings] == [("bias-before-norm", "fc")]
    with pytest.raises(Exception):
        nnprobe.lint(Untraceable(), torch.randn(5, 4), method="fx")


@pytest.mark.parametrize("method", METHODS)
def test_the_classic_view_bug_is_a_lint_finding_too(method):
    rep = nnprobe.lint(TimeMajorMixer(), torch.randn(4, 3, 5), method=method)
    (f,) = [f for f in rep.findings if f.code == "view-mixes-batch"]
    assert f.module == "TimeMajorMixer" and f.data["where"].startswith("checks_zoo.py:")
    rep = nnprobe.lint(TimeMajorMixer(fixed=True), torch.randn(4, 3, 5), method=method)
    assert rep.findings == []


ZOO = [
    ("mlp", lambda: mlp(), (4, 10), nn.CrossEntropyLoss()),
    ("cnn", lambda: small_cnn(), (2, 3, 8, 8), nn.CrossEntropyLoss()),
    ("gpt", lambda: TinyGPT(), None, nn.CrossEntropyLoss()),
    ("fixed mixer", lambda: TimeMajorMixer(fixed=True), (4, 3, 5), nn.CrossEntropyLoss()),
]


@pytest.mark.parametrize("name, factory, shape, loss", ZOO, ids=[z[0] for z in ZOO])
def test_clean_models_are_silent_with_both_methods(name, factory, shape, loss):
    torch.manual_seed(0)
    x = torch.randint(0, 13, (2, 6)) if shape is None else torch.randn(*shape)
    model = factory()
    reports = [nnprobe.lint(model, x, loss_fn=loss, method=m) for m in METHODS]
    for rep in reports:
        assert rep.ok and rep.findings == [], rep
    assert reports[0].order == reports[1].order


def test_lint_changes_nothing_in_the_model():
    torch.manual_seed(0)
    model = small_cnn(bias=True).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    nnprobe.lint(model, torch.randn(4, 3, 8, 8) * 5 + 3, method="hooks")
    nnprobe.lint(model, torch.randn(4, 3, 8, 8) * 5 + 3, method="fx")
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert np.isfinite(str(nnprobe.lint(model, torch.randn(4, 3, 8, 8))).count("\n"))


@pytest.mark.parametrize("method", METHODS)
def test_awkward_models_lint_cleanly(method):
    from checks_zoo import Awkward

    rep = nnprobe.lint(Awkward(), torch.randn(5, 6), loss_fn=nn.CrossEntropyLoss(), method=method)
    assert rep.findings == [], rep
    assert rep.order == ["shared", "act", "frozen", "act", "shared", "act", "head"]
