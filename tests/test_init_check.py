"""check_init(): loss at init against ln C / the target variance, final bias against the prior;
each planted and fixed, figures checked against torch and NumPy float64."""

import math

import nnprobe
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from checks_zoo import mlp, small_cnn


def data(n=256, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 10, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_default_init_is_silent_and_the_loss_is_torchs():
    torch.manual_seed(0)
    x, y = data()
    model = mlp()
    rep = nnprobe.check_init(model, (x, y), nn.CrossEntropyLoss())
    assert rep.ok and rep.findings == []
    assert rep.expected == pytest.approx(math.log(4))
    model.train()
    with torch.no_grad():
        want = F.cross_entropy(model(x), y).item()
    assert rep.loss == pytest.approx(want, rel=1e-6)


def test_overconfident_init_fires_loss_at_init():
    torch.manual_seed(0)
    x, y = data()
    model = mlp()
    with torch.no_grad():
        model[2].weight.mul_(40)
    rep = nnprobe.check_init(model, (x, y), nn.CrossEntropyLoss())
    (f,) = [f for f in rep.findings if f.code == "loss-at-init"]
    assert f.severity == "warning"
    assert f.data["ratio"] > 1.5
    assert f.data["expected"] == pytest.approx(math.log(4))


def test_sum_reduction_is_compared_per_sample():
    torch.manual_seed(0)
    x, y = data()
    rep = nnprobe.check_init(mlp(), (x, y), nn.CrossEntropyLoss(reduction="sum"))
    assert rep.ok
    assert rep.loss == pytest.approx(math.log(4), rel=0.2)


def imbalanced(n=512, share=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 10, generator=g), (torch.rand(n, generator=g) < share).long()


def test_imbalanced_classes_with_a_zero_bias_fire_final_bias_init():
    torch.manual_seed(0)
    x, y = imbalanced()
    model = mlp(outputs=2)
    with torch.no_grad():
        model[2].bias.zero_()
    rep = nnprobe.check_init(model, (x, y), nn.CrossEntropyLoss())
    (f,) = rep.findings
    assert (f.code, f.module, f.severity) == ("final-bias-init", "2", "info")
    counts = np.bincount(y.numpy(), minlength=2)
    p = (counts + 0.5) / (counts.sum() + 1.0)
    assert f.data["log_prior"] == pytest.approx(np.log(p).tolist())
    # KL(p || uniform) = ln 2 - H(p), in float64
    assert f.data["kl"] == pytest.approx(math.log(2) + float(np.sum(p * np.log(p))), rel=1e-9)


def test_bias_set_to_the_log_prior_is_silent():
    torch.manual_seed(0)
    x, y = imbalanced()
    model = mlp(outputs=2)
    counts = torch.bincount(y, minlength=2).double()
    with torch.no_grad():
        model[2].bias.copy_(torch.log(counts / counts.sum()))
    rep = nnprobe.check_init(model, (x, y), nn.CrossEntropyLoss())
    assert rep.findings == []


def test_a_final_layer_without_bias_cannot_hold_the_prior():
    torch.manual_seed(0)
    x, y = imbalanced()
    rep = nnprobe.check_init(mlp(outputs=2, bias=False), (x, y), nn.CrossEntropyLoss())
    (f,) = rep.findings
    assert f.code == "final-bias-init" and "no bias" in f.message


def test_prior_argument_overrides_the_batch():
    torch.manual_seed(0)
    x, y = data(classes=2)  # a balanced batch...
    model = mlp(outputs=2)
    with torch.no_grad():
        model[2].bias.zero_()
    assert nnprobe.check_init(model, (x, y), nn.CrossEntropyLoss()).findings == []
    rep = nnprobe.check_init(model, (x, y), nn.CrossEntropyLoss(), prior={0: 9000, 1: 100})  # ...of skewed data
    assert rep.codes() == {"final-bias-init"}


def test_regression_far_from_zero_fires_both_and_the_fix_is_silent():
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = 50 + 2 * torch.randn(256, 1)
    model = mlp(outputs=1)
    rep = nnprobe.check_init(model, (x, y), nn.MSELoss())
    assert rep.codes() == {"loss-at-init", "final-bias-init"}
    assert rep.expected == pytest.approx(float(np.var(y.numpy().astype(np.float64))), rel=1e-5)
    bias = next(f for f in rep.findings if f.code == "final-bias-init")
    assert bias.data["target_mean"][0] == pytest.approx(float(y.double().mean()), rel=1e-6)
    with torch.no_grad():
        model[2].bias.fill_(float(y.mean()))
    assert nnprobe.check_init(model, (x, y), nn.MSELoss()).findings == []


def test_multilabel_bce_with_logits_prior():
    torch.manual_seed(0)
    x = torch.randn(512, 10)
    y = (torch.rand(512, 3) < torch.tensor([0.05, 0.5, 0.1])).float()
    model = mlp(outputs=3)
    rep = nnprobe.check_init(model, (x, y), nn.BCEWithLogitsLoss())
    assert rep.codes() == {"final-bias-init"}
    assert rep.expected == pytest.approx(math.log(2))
    p = y.mean(0).double().numpy()
    with torch.no_grad():
        model[2].bias.copy_(torch.from_numpy(np.log(p / (1 - p))))
    assert nnprobe.check_init(model, (x, y), nn.BCEWithLogitsLoss()).findings == []


def test_check_init_leaves_the_model_and_rng_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(small_cnn(), nn.Dropout(0.5)).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 3, 8, 8) * 4 + 2, torch.randint(0, 10, (8,))
    rng = torch.get_rng_state()
    rep = nnprobe.check_init(model, (x, y), nn.CrossEntropyLoss())
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model.training and not any(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert rep.final_layer == "0.8"


def test_an_unknown_loss_reports_the_value_only():
    torch.manual_seed(0)
    x, y = data()
    rep = nnprobe.check_init(mlp(), (x, y), lambda out, t: out.pow(2).mean())
    assert rep.findings == [] and rep.expected is None
    assert "no expected initial loss" in str(rep)


@pytest.mark.parametrize("raw", [True, False], ids=["raw-pixels", "normalised"])
def test_pretrained_input_mismatch(raw):
    from fixtures import models as Z

    model = Z.pretrained_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = Z.images(raw=raw), torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(0))
    rep = nnprobe.check_init(model, (x, y), nn.CrossEntropyLoss())
    found = [f for f in rep.findings if f.code == "pretrained-input-mismatch"]
    if raw:
        (f,) = found
        assert f.module == "bn" and f.severity == "warning" and f.data["z_rms"] > 1 and "'bn' (BatchNorm2d)" in f.message
    else:
        assert found == []
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # running stats restored
    assert not model.bn._forward_pre_hooks


def test_a_fresh_batchnorm_has_no_pretrained_statistics():
    from fixtures import models as Z

    torch.manual_seed(0)
    rep = nnprobe.check_init(Z.PretrainedCNN(), (Z.images(raw=True), torch.zeros(64, dtype=torch.long)), nn.CrossEntropyLoss())
    assert "pretrained-input-mismatch" not in rep.codes()
