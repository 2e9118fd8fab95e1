"""A PyTorch Lightning callback that watches the LightningModule during `Trainer.fit`.

    from nnprobe.integrations.lightning import NnprobeCallback
    trainer = pl.Trainer(callbacks=[NnprobeCallback(log_dir="runs/nnprobe")])

It opens `nnprobe.watch` on the module and its first optimizer when fitting starts, hands each
training step's loss to the probe, and closes the probe (removing every hook) when fitting ends,
also when it ends with an exception. `callback.probe` keeps the findings and history afterwards.
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl  # the unified package
except ImportError:  # pragma: no cover - depends on what the user installed
    import pytorch_lightning as pl

import nnprobe


class NnprobeCallback(pl.Callback):
    def __init__(self, **watch_kwargs: Any) -> None:
        super().__init__()
        self.watch_kwargs = watch_kwargs
        self.probe: Any = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self.probe = nnprobe.watch(pl_module, optimizer=optimizer, **self.watch_kwargs)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.probe is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self.probe.step(loss=loss)

    def _close(self) -> None:
        if self.probe is not None:
            self.probe.close()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._close()
