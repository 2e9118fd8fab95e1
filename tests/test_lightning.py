"""The Lightning callback in a real `pytorch_lightning.Trainer` run on CPU."""

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("pytorch_lightning")

from nnprobe.integrations.lightning import NnprobeCallback  # noqa: E402
from nnprobe.report.logfile import log_files  # noqa: E402


class Classifier(pl.LightningModule):
    def __init__(self, forget_train_mode: bool = False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3))
        self.forget_train_mode = forget_train_mode

    def training_step(self, batch, _):
        if self.forget_train_mode:
            self.eval()  # the planted mistake: Dropout off while training
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def fit(module, tmp_path, **kwargs):
    torch.manual_seed(0)
    x, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    cb = NnprobeCallback(console=False, log_dir=str(tmp_path / "log"), **kwargs)
    trainer = pl.Trainer(max_epochs=2, callbacks=[cb], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         default_root_dir=str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's own advice (num_workers, ...) is not ours to judge
        trainer.fit(module, loader)
    return cb


def test_callback_watches_a_clean_run_silently_and_removes_its_hooks(tmp_path):
    module = Classifier()
    cb = fit(module, tmp_path)
    assert cb.probe is not None
    assert len(cb.probe.losses()[0]) == 16  # 2 epochs x 8 batches, every loss seen
    assert not [f for f in cb.probe.findings if f.severity in ("error", "warning")], cb.probe.findings
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())
    assert len(log_files(tmp_path / "log")) == 1


def test_callback_catches_a_planted_mistake(tmp_path):
    cb = fit(Classifier(forget_train_mode=True), tmp_path)
    assert "eval-mode-training" in cb.probe.codes()
