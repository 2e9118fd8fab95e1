"""Bad input gets a clear error naming what was passed and what to do; never a crash."""

import nnprobe
import numpy as np
import pytest
import torch
from nnprobe.errors import DeviceError, DtypeError, InputError, LayoutError, NnprobeError

CASES = [
    ([1.0, 2.0], InputError, "numpy.asarray"),
    ("text", InputError, "got str"),
    (None, InputError, "got NoneType"),
    (torch.randn(3, dtype=torch.complex64), DtypeError, "x.real"),
    (np.zeros(3, dtype=np.complex128), DtypeError, "abs"),
    (np.zeros(3, dtype=">f4"), DtypeError, "newbyteorder"),
    (np.zeros(3, dtype=object), DtypeError, "astype"),
    (np.zeros(3, dtype=[("a", "f4"), ("b", "i2")]), DtypeError, "unsupported"),
    (torch.randn(3, device="meta"), DeviceError, "meta"),
    (torch.randn(4, 4).to_sparse(), InputError, "to_dense"),
]


@pytest.mark.parametrize("bad,error,hint", CASES, ids=[repr(type(c[0]).__name__) + str(i) for i, c in enumerate(CASES)])
def test_bad_input_raises_a_clear_error(bad, error, hint):
    with pytest.raises(error, match=hint):
        nnprobe.stats(bad)
    with pytest.raises(NnprobeError):
        nnprobe.stats_many([np.zeros(2), bad])


def test_errors_subclass_the_builtins_users_catch():
    assert issubclass(DtypeError, TypeError) and issubclass(LayoutError, ValueError)
    assert issubclass(InputError, TypeError) and issubclass(DeviceError, ValueError)


def test_stats_many_names_the_bad_item():
    with pytest.raises(InputError, match="item 1"):
        nnprobe.stats_many([np.zeros(2), "nope"])


def test_float8_is_refused_not_misread():
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("no float8 in this torch")
    with pytest.raises((DtypeError, InputError)):
        nnprobe.stats(torch.zeros(4).to(torch.float8_e4m3fn))


def test_unaligned_numpy_view_is_read_correctly():
    raw = np.zeros(4 * 100 + 1, dtype=np.uint8)
    a = raw[1:].view(np.float32)  # misaligned by one byte
    a[:] = np.arange(100, dtype=np.float32)
    assert nnprobe.stats(a).mean == pytest.approx(49.5)


def test_layout_errors():
    with pytest.raises(LayoutError, match="only one dimension"):
        nnprobe.layout(torch.zeros(2, 3)).can_view((-1, -1))
    with pytest.raises(LayoutError):
        nnprobe.reshape_groups((2, 3), (5,))
    with pytest.raises(LayoutError, match="to_dense"):
        nnprobe.layout(torch.zeros(2, 2).to_sparse())
    with pytest.raises(InputError):
        nnprobe.layout([1, 2])
    with pytest.raises(LayoutError):
        nnprobe.Layout((2, 3), (1,), 4)


def test_huge_nan_filled_and_readonly_inputs():
    a = np.full(3_000_000, np.nan, dtype=np.float32)
    a.flags.writeable = False
    s = nnprobe.stats(a)
    assert s.nan == a.size and s.l2 == 0.0


# --------------------------------------------------------------- the rest of issue 11's unclean errors
def test_inspect_data_refuses_clearly_and_reads_an_iterable_dataset(tmp_path):
    import torch

    with pytest.raises(InputError, match="no samples"):
        nnprobe.inspect_data(np.zeros((0, 4)))
    with pytest.raises(InputError, match="not a file name"):
        nnprobe.inspect_data(str(tmp_path / "train.csv"))

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([torch.full((3,), float(i)) for i in range(40)])

    rep = nnprobe.inspect_data(Stream())
    assert rep.n_samples == 40


def test_dependency_mask_of_a_meta_tensor_says_what_to_pass():
    import torch

    with pytest.raises(DeviceError, match="meta tensor"):
        nnprobe.dependency_mask(torch.nn.Linear(3, 2), torch.zeros(4, 3, device="meta"))


def test_watch_into_an_unwritable_log_dir_is_a_clean_error(tmp_path):
    import torch

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    model = torch.nn.Linear(2, 2)
    with pytest.raises(nnprobe.OutputError, match="cannot write there") as err:
        nnprobe.watch(model, log_dir=str(blocker / "logs"), console=False)
    assert isinstance(err.value, OSError)
    assert not model._forward_pre_hooks  # nothing left behind


def test_console_shows_a_module_name_with_brackets_once(capsys):
    from nnprobe.findings import Finding
    from nnprobe.sinks import ConsoleSink

    ConsoleSink().finding(Finding("dead-units", "warning", "50% [bold]dead[/bold]", module="layers[0]"))
    err = capsys.readouterr().err
    assert "[layers[0]]" in err and "\\" not in err and "[bold]dead[/bold]" in err
