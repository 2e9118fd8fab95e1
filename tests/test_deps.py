"""Dependency masks, batch independence and causality: each mistake planted and fixed, the exact
and group methods against each other and against brute-force perturbation."""

import math

import nnprobe
import numpy as np
import pytest
import torch
import torch.nn as nn
from checks_zoo import CausalConv, TimeMajorMixer, TinyGPT, small_cnn
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe import _core


def perturbation_mask(f, x, dim=0, out_dim=0):
    """Oracle: output slice i depends on input slice j when changing slice j changes slice i
    (float64 models: a real dependency always moves the output)."""
    base = f(x)
    n_in, n_out = x.shape[dim], base.shape[out_dim]
    mask = np.zeros((n_out, n_in), bool)
    g = torch.Generator().manual_seed(1)
    for j in range(n_in):
        xp = x.clone()
        idx = [slice(None)] * x.ndim
        idx[dim] = j
        xp[tuple(idx)] += torch.randn(xp[tuple(idx)].shape, generator=g, dtype=x.dtype)
        diff = (f(xp) - base).abs().movedim(out_dim, 0).reshape(n_out, -1).amax(1)
        mask[:, j] = (diff > 0).numpy()
    return mask


# ---- the core kernels against NumPy ------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4), st.data())
def test_nonzero_along_matches_numpy_on_any_strides(shape, data):
    rng = np.random.default_rng(len(shape))
    a = (rng.random(shape) < 0.3) * rng.standard_normal(shape)
    perm = data.draw(st.permutations(range(len(shape))))
    view = torch.from_numpy(a).permute(*perm)  # a strided view
    keep = data.draw(st.lists(st.integers(0, len(shape) - 1), unique=True, max_size=len(shape)))
    got, nonfinite = _core.nonzero_along(view, keep)
    v = view.numpy()
    rest = tuple(k for k in range(v.ndim) if k not in keep)
    want = (v != 0).any(axis=rest) if rest else (v != 0)
    order = sorted(keep)
    want = np.transpose(want, [order.index(k) for k in keep]) if keep else want
    assert got.shape == tuple(v.shape[k] for k in keep)
    np.testing.assert_array_equal(got, want)
    assert not nonfinite


def test_group_codes_decode_a_permutation_exactly():
    n = 37
    perm = np.random.default_rng(0).permutation(n)
    truth = np.zeros((n, n), bool)
    truth[perm, np.arange(n)] = True
    codes = _core.group_codes(n)
    hits = (codes.astype(int) @ truth.astype(int)) > 0
    mask, ambiguous = _core.group_decode(hits, n)
    np.testing.assert_array_equal(mask, truth)
    assert not ambiguous.any()
    assert codes.shape[0] <= 2 * (math.log2(n) + 1)


# ---- batch independence ----------------------------------------------------------------------

def test_time_major_view_mixes_the_batch_and_names_where():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5)
    rep = nnprobe.check_batch_independence(TimeMajorMixer(), x)
    assert not rep.ok
    assert {"batch-mixing", "view-mixes-batch"} <= rep.codes()
    mixing = next(f for f in rep.findings if f.code == "batch-mixing")
    assert mixing.severity == "error"
    assert "before 'fc'" in mixing.message  # the reshape in the model's own forward, before fc
    view = next(f for f in rep.findings if f.code == "view-mixes-batch")
    assert view.data["in_shape"] == [3, 4, 6] and view.data["out_shape"] == [4, 18]
    assert view.data["where"].startswith("checks_zoo.py:")
    # the oracle agrees on every pair
    model = TimeMajorMixer().double()
    m = nnprobe.dependency_mask(model, x.double(), method="exact")
    np.testing.assert_array_equal(m.mask, perturbation_mask(model.eval(), x.double()))
    assert m.leaks


def test_permute_fix_is_independent():
    torch.manual_seed(0)
    rep = nnprobe.check_batch_independence(TimeMajorMixer(fixed=True), torch.randn(4, 3, 5))
    assert rep.ok and rep.findings == []
    np.testing.assert_array_equal(rep.mask.mask, np.eye(4, dtype=bool))


def test_batchnorm_network_is_independent_in_eval_mode_and_modes_are_restored():
    torch.manual_seed(0)
    model = small_cnn()
    model.train()
    model[1].eval()  # a mixed state must come back as it was
    before = [m.training for m in model.modules()]
    rep = nnprobe.check_batch_independence(model, torch.randn(8, 3, 8, 8))
    assert rep.ok and not rep.findings
    assert [m.training for m in model.modules()] == before


def test_batchnorm_in_train_mode_mixes_and_the_mask_sees_it():
    # a plain function is not switched to eval: BatchNorm uses the batch's statistics
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3).train()
    x = torch.randn(6, 3)
    m = nnprobe.dependency_mask(lambda v: bn(v), x, method="exact")
    assert m.mask.all()  # every output depends on every example through the batch mean
    assert len(m.leaks) == 6 * 5


def test_softmax_outputs_summing_to_one_still_show_dependencies():
    # Summing each output slice (the naive backward) gives a zero gradient through a softmax:
    # the random positive weights do not.
    x = torch.randn(4, 5, requires_grad=True)
    mixed = lambda v: torch.softmax(v + v.mean(0, keepdim=True), dim=1)  # noqa: E731
    (g,) = torch.autograd.grad(mixed(x)[0].sum(), x)
    assert g.abs().max() < 1e-6  # the naive test sees nothing
    m = nnprobe.dependency_mask(mixed, x.detach(), method="exact")
    assert m.mask.all()


def random_mixer(pattern: np.ndarray, seed: int):
    """out[i] = sum_j P[i, j] * tanh(x[j] W): depends on example j exactly where P[i, j] != 0."""
    g = torch.Generator().manual_seed(seed)
    n_out, n_in = pattern.shape
    p = torch.from_numpy(pattern).double() * (torch.rand(n_out, n_in, generator=g, dtype=torch.float64) + 0.5)
    w = torch.randn(5, 3, generator=g, dtype=torch.float64)
    return lambda x: p @ torch.tanh(x @ w)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 12), st.integers(2, 12), st.floats(0.0, 0.4), st.integers(0, 10_000))
def test_exact_group_and_auto_agree_with_the_true_pattern(n_out, n_in, density, seed):
    rng = np.random.default_rng(seed)
    pattern = rng.random((n_out, n_in)) < density
    f = random_mixer(pattern, seed)
    x = torch.randn(n_in, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    exact = nnprobe.dependency_mask(f, x, method="exact")
    group = nnprobe.dependency_mask(f, x, method="group")
    auto = nnprobe.dependency_mask(f, x, method="auto")
    np.testing.assert_array_equal(exact.mask, pattern)
    np.testing.assert_array_equal(auto.mask, pattern)
    assert auto.exact and exact.exact
    # group: exact on every column that reaches at most one output, a superset elsewhere
    reach = pattern.sum(0)
    np.testing.assert_array_equal(group.mask[:, reach <= 1], pattern[:, reach <= 1])
    assert (group.mask >= pattern).all()
    np.testing.assert_array_equal(group.ambiguous, reach > 1)
    # and the verdict (is the batch independent?) is the same
    assert bool(group.leaks) == bool(exact.leaks)
    assert group.passes <= 2 * (math.log2(n_out) + 1)


def test_exact_and_group_agree_on_random_permutation_models():
    for seed in range(5):
        rng = np.random.default_rng(seed)
        n = 16
        pattern = np.zeros((n, n), bool)
        pattern[rng.permutation(n), np.arange(n)] = True
        f = random_mixer(pattern, seed)
        x = torch.randn(n, 5, dtype=torch.float64)
        exact = nnprobe.dependency_mask(f, x, method="exact")
        group = nnprobe.dependency_mask(f, x, method="group")
        np.testing.assert_array_equal(exact.mask, group.mask)
        np.testing.assert_array_equal(exact.mask, pattern)
        assert group.exact


def test_group_method_stays_within_its_pass_budget_for_a_batch_of_256():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    m = nnprobe.dependency_mask(model, torch.randn(256, 6), method="group")
    assert m.passes <= 2 * (math.log2(256) + 1)
    np.testing.assert_array_equal(m.mask, np.eye(256, dtype=bool))
    assert m.method == "group" and m.leaks == []


def test_ops_without_a_batching_rule_fall_back_to_one_backward_per_row():
    class Square(torch.autograd.Function):  # no vmap support: is_grads_batched raises
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * x * g

    x = torch.randn(5, 3)
    m = nnprobe.dependency_mask(lambda v: Square.apply(v).roll(1, 0), x, method="exact")
    np.testing.assert_array_equal(m.mask, np.roll(np.eye(5, dtype=bool), 1, axis=0))
    assert m.passes == 5


# ---- causality ---------------------------------------------------------------------------------

def test_causal_transformer_passes_and_the_unmasked_one_leaks_at_its_attention():
    torch.manual_seed(0)
    idx = torch.randint(0, 13, (2, 7))
    good = nnprobe.check_causal(TinyGPT(causal=True), idx)
    assert good.ok and not good.findings
    assert np.array_equal(good.mask.mask, np.tril(np.ones((7, 7), bool)))
    bad = nnprobe.check_causal(TinyGPT(causal=False), idx)
    assert bad.codes() == {"causal-leak"}
    f = bad.findings[0]
    assert f.module == "blocks.0.attn"
    assert f.data["max_ahead"] == 6
    assert set(bad.leaks) == {(i, j) for i in range(7) for j in range(7) if j > i}


def test_causal_check_on_embeddings_with_a_callable_that_starts_after_them():
    torch.manual_seed(0)
    gpt = TinyGPT(causal=True).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    body = lambda h: gpt.head(gpt.ln(gpt.blocks(h)))  # noqa: E731
    rep = nnprobe.check_causal(body, x)
    assert rep.ok
    with torch.no_grad():
        oracle = perturbation_mask(body, x, dim=1, out_dim=1)
    np.testing.assert_array_equal(rep.mask.mask, oracle)


@pytest.mark.parametrize("shift, leaks", [(0, False), (1, True), (2, True)])
def test_off_by_one_causal_convolution(shift, leaks):
    torch.manual_seed(0)
    conv = CausalConv(shift=shift).double()
    x = torch.randn(2, 4, 10, dtype=torch.float64)
    rep = nnprobe.check_causal(conv, x, dim=2)
    assert (rep.codes() == {"causal-leak"}) is leaks
    assert rep.ok is not leaks
    # oracle: output t reads inputs t - 2 + shift .. t + shift
    t = np.arange(10)
    want = (t[None, :] <= t[:, None] + shift) & (t[None, :] >= t[:, None] - 2 + shift)
    np.testing.assert_array_equal(rep.mask.mask, want)
    if leaks:
        assert rep.findings[0].data["max_ahead"] == shift


# ---- the mask object and bad input ----------------------------------------------------------

def test_plot_writes_an_svg(tmp_path):
    import xml.etree.ElementTree as ET

    m = nnprobe.dependency_mask(TimeMajorMixer(), torch.randn(4, 3, 5))
    path = m.plot(tmp_path / "mask.svg")
    root = ET.fromstring(path.read_text())
    assert root.tag.endswith("svg") and "leaks" in root.findtext("{http://www.w3.org/2000/svg}title")
    assert "leaks" in repr(m)
    with pytest.raises(nnprobe.InputError, match=".svg"):
        m.plot(tmp_path / "mask.png")


def test_bad_input_gets_clear_errors():
    model = nn.Linear(3, 2)
    with pytest.raises(nnprobe.InputError, match="at least 2 examples"):
        nnprobe.check_batch_independence(model, torch.randn(1, 3))
    with pytest.raises(nnprobe.InputError, match="floating input"):
        nnprobe.dependency_mask(model, torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(nnprobe.InputError, match="method"):
        nnprobe.dependency_mask(model, torch.randn(4, 3), method="fast")
    with pytest.raises(nnprobe.InputError, match="out of range"):
        nnprobe.dependency_mask(model, torch.randn(4, 3), dim=3)
    with pytest.raises(nnprobe.InputError, match="torch.Tensor"):
        nnprobe.check_batch_independence(model, np.zeros((4, 3)))


def test_awkward_models_shared_frozen_inplace_and_dict_outputs():
    from checks_zoo import Awkward

    torch.manual_seed(0)
    rep = nnprobe.check_batch_independence(Awkward(), torch.randn(5, 6))
    assert rep.ok and rep.findings == []
    m = nnprobe.dependency_mask(Awkward(), torch.randn(5, 6), method="exact")
    np.testing.assert_array_equal(m.mask, np.eye(5, dtype=bool))
