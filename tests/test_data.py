"""inspect_data(): each data problem planted and fixed, on sklearn's bundled digits and generated
data; figures against NumPy float64, duplicates and overlap against brute force."""

import nnprobe
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe import _core
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.data.astype(np.float32), d.target


def standardised(x):
    std = x.std(0)
    return ((x - x.mean(0)) / np.where(std > 0, std, 1)).astype(np.float32)


def brute_duplicates(x):
    first, out = {}, []
    for i, row in enumerate(x.reshape(len(x), -1)):
        key = row.tobytes()
        if key in first:
            out.append((i, first[key]))
        else:
            first[key] = i
    return out


# ---- the core's row hashing ---------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60), st.integers(1, 4), st.integers(2, 5), st.booleans(), st.integers(0, 99))
def test_duplicate_rows_match_brute_force(n, width, values, transposed, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, values, size=(n, width)).astype(np.float32)
    view = np.asfortranarray(x) if transposed else x  # strided rows hash like contiguous ones
    got = _core.duplicate_rows(view)
    assert [tuple(p) for p in got.tolist()] == brute_duplicates(x)
    np.testing.assert_array_equal(_core.row_hashes(view), _core.row_hashes(x))


def test_overlap_rows_match_a_set_of_row_bytes():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, size=(500, 3)).astype(np.int16)
    b = rng.integers(0, 4, size=(200, 3)).astype(np.int16)
    first = {}
    for i, r in enumerate(a):
        first.setdefault(r.tobytes(), i)
    want = [(j, first[r.tobytes()]) for j, r in enumerate(b) if r.tobytes() in first]
    assert [tuple(p) for p in _core.overlap_rows(a, b).tolist()] == want


# ---- findings -------------------------------------------------------------------------------------

def test_raw_digits_are_unnormalized_and_the_figures_are_numpys(digits):
    x, y = digits
    rep = nnprobe.inspect_data((x, y))
    assert rep.codes() == {"unnormalized-inputs", "constant-features"}
    np.testing.assert_allclose(rep.feature_mean, x.astype(np.float64).mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(rep.feature_std, x.astype(np.float64).std(0), rtol=1e-6, atol=1e-9)
    assert rep.constant_features == np.nonzero(x.std(0) == 0)[0].tolist()
    assert rep.class_counts == {k: int(v) for k, v in enumerate(np.bincount(y))}
    const = next(f for f in rep.findings if f.code == "constant-features")
    assert const.severity == "info"


def test_standardised_disjoint_digits_are_clean(digits):
    x, y = digits
    xs = standardised(x)[:, x.std(0) > 0]
    xtr, xte, ytr, yte = train_test_split(xs, y, test_size=0.25, random_state=0)
    rep = nnprobe.inspect_data((xtr, ytr), test=(xte, yte))
    assert rep.ok and rep.findings == []
    assert rep.n_test == len(xte) and len(rep.overlap) == 0


def test_class_imbalance_fires_above_ten_to_one(digits):
    x, y = digits
    xs = standardised(x)
    for keep_every, fires in [(20, True), (5, False)]:
        keep = (y != 3) | (np.arange(len(y)) % keep_every == 0)
        rep = nnprobe.inspect_data((xs[keep], y[keep]))
        got = [f for f in rep.findings if f.code == "class-imbalance"]
        assert bool(got) is fires
        if fires:
            counts = np.bincount(y[keep])
            assert got[0].data["ratio"] == pytest.approx(counts.max() / counts.min())


def test_non_finite_values_are_found_with_their_samples(digits):
    x, y = digits
    xs = standardised(x)
    xs[[7, 300], [3, 9]] = [np.nan, np.inf]
    rep = nnprobe.inspect_data((xs, y))
    f = next(f for f in rep.findings if f.code == "non-finite-data")
    assert f.severity == "error" and f.data["samples"] == [7, 300]
    assert rep.nonfinite_samples == [7, 300]
    assert "non-finite-data" not in nnprobe.inspect_data((standardised(x), y)).codes()


def test_duplicates_and_conflicting_labels(digits):
    x, y = digits
    xs, yd = standardised(x), y.copy()
    xs[100] = xs[50]
    yd[100] = (yd[50] + 1) % 10  # the copy carries another label
    rep = nnprobe.inspect_data((xs, yd))
    f = next(f for f in rep.findings if f.code == "duplicate-samples")
    assert f.severity == "warning" and f.data["conflicting_labels"] == 1
    assert rep.duplicates.tolist() == [[100, 50]]
    assert "sample 100 = 50" in f.message


def test_train_test_overlap(digits):
    x, y = digits
    xs = standardised(x)
    xtr, xte, ytr, yte = train_test_split(xs, y, test_size=0.25, random_state=0)
    leaked = np.concatenate([xte, xtr[:40]])  # 40 training samples slipped into the test set
    rep = nnprobe.inspect_data((xtr, ytr), test=(leaked, np.concatenate([yte, ytr[:40]])))
    f = next(f for f in rep.findings if f.code == "train-test-overlap")
    assert f.severity == "error" and f.data["count"] == 40
    assert rep.overlap[:, 0].tolist() == list(range(len(xte), len(xte) + 40))
    assert rep.overlap[:, 1].tolist() == list(range(40))
    # a float64 test split is compared in the data's dtype
    rep = nnprobe.inspect_data((xtr, ytr), test=leaked.astype(np.float64))
    assert "train-test-overlap" in rep.codes()


def test_images_are_judged_per_channel_from_datasets_and_loaders():
    g = torch.Generator().manual_seed(0)
    raw = torch.rand(200, 3, 8, 8, generator=g) * 255  # raw pixel values
    labels = torch.randint(0, 5, (200,), generator=g)
    ds = torch.utils.data.TensorDataset(raw, labels)
    rep = nnprobe.inspect_data(torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True))
    assert rep.codes() == {"unnormalized-inputs"}
    assert rep.feature_mean.shape == (3,)
    np.testing.assert_allclose(rep.feature_mean, raw.double().mean((0, 2, 3)).numpy(), rtol=1e-6)
    scaled = torch.utils.data.TensorDataset(raw / 255, labels)  # [0, 1]: fine
    assert nnprobe.inspect_data(scaled).findings == []


class DictDataset(torch.utils.data.Dataset):
    def __init__(self, n, dup=False):
        g = torch.Generator().manual_seed(1)
        self.x = torch.rand(n, 1, 4, 4, generator=g)
        if dup:
            self.x[9] = self.x[2]
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": self.x[i], "label": i % 2}


def test_map_style_dataset_of_dicts_names_dataset_indices():
    rep = nnprobe.inspect_data(DictDataset(50, dup=True), progress=True)
    assert rep.n_samples == 50 and rep.class_counts == {0: 25, 1: 25}
    assert rep.duplicates.tolist() == [[9, 2]]
    # the same data through a shuffled loader still names dataset indices
    loader = torch.utils.data.DataLoader(DictDataset(50, dup=True), batch_size=8, shuffle=True)
    assert nnprobe.inspect_data(loader).duplicates.tolist() == [[9, 2]]
    assert nnprobe.inspect_data(DictDataset(50)).findings == []
    assert nnprobe.inspect_data(DictDataset(50), max_samples=20).n_samples == 20


@pytest.mark.parametrize("shifted", [False, True])
def test_sequence_targets_equal_to_inputs_are_target_in_input(shifted):
    tokens = torch.randint(0, 50, (64, 17), generator=torch.Generator().manual_seed(0))
    x, y = (tokens[:, :-1], tokens[:, 1:]) if shifted else (tokens, tokens.clone())
    rep = nnprobe.inspect_data((x, y))
    assert ("target-in-input" in rep.codes()) is not shifted
    assert "unnormalized-inputs" not in rep.codes()  # integer tokens are not features to scale
    if not shifted:
        (f,) = [f for f in rep.findings if f.code == "target-in-input"]
        assert f.severity == "error" and f.data["same_position"] == 1.0 and "y[:, t] == x[:, t]" in f.message


class Windows(torch.utils.data.Dataset):
    """Windows of one token stream, as language-model datasets are built: off by one, or not."""

    def __init__(self, shift: int, hf: bool = False):
        self.tokens = torch.randint(0, 30, (5000,), generator=torch.Generator().manual_seed(1))
        self.shift, self.hf = shift, hf

    def __len__(self):
        return 200

    def __getitem__(self, i):
        x = self.tokens[i * 20 : i * 20 + 16]
        y = self.tokens[i * 20 + self.shift : i * 20 + self.shift + 16]
        return {"input_ids": x, "labels": y} if self.hf else (x, y)


@pytest.mark.parametrize("shift,fires", [(0, True), (1, False)])
def test_target_in_input_through_a_loader(shift, fires):
    loader = torch.utils.data.DataLoader(Windows(shift), batch_size=32, shuffle=True)
    assert ("target-in-input" in nnprobe.inspect_data(loader).codes()) is fires


def test_hugging_face_labels_are_shifted_by_the_model():
    # {"input_ids": x, "labels": x}: the Hugging Face convention, the model shifts inside
    assert "target-in-input" not in nnprobe.inspect_data(torch.utils.data.DataLoader(Windows(0, hf=True), batch_size=32)).codes()


def test_float_sequences_equal_to_their_targets_are_an_autoencoder():
    x = torch.randn(64, 10, 3)
    assert "target-in-input" not in nnprobe.inspect_data((x, x.clone())).codes()


def test_bad_input_is_refused_clearly():
    with pytest.raises(nnprobe.InputError, match="samples"):
        nnprobe.inspect_data((np.zeros((3, 2)), np.zeros(4)))
    with pytest.raises(nnprobe.InputError, match="Dataset, a DataLoader"):
        nnprobe.inspect_data(object())
    with pytest.raises(nnprobe.InputError, match="values each"):
        nnprobe.inspect_data(np.zeros((3, 2)), test=np.zeros((3, 5)))


def test_whole_numbered_regression_targets_are_not_classes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 4)).astype(np.float32)
    ages = rng.integers(18, 90, 500).astype(np.float32)  # 72 whole values: a regression target
    rep = nnprobe.inspect_data((x, ages))
    assert rep.class_counts == {} and "class-imbalance" not in rep.codes()
    assert rep.target_mean[0] == pytest.approx(ages.astype(np.float64).mean())
    labels = (rng.random(500) < 0.03).astype(np.float32)  # 0./1. labels for BCE: classes
    rep = nnprobe.inspect_data((x, labels))
    assert set(rep.class_counts) == {0, 1} and "class-imbalance" in rep.codes()
