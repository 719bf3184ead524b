"""Training callbacks: checkpoints that survive a kill, and a graceful stop on SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint with the defaults an RL run needs.

    - ``last.ckpt`` is refreshed at the end of *every* epoch (stock Lightning only refreshes it when a numbered
      checkpoint is saved), so a kill loses at most one epoch.
    - Numbered checkpoints every ``every_n_epochs``; ``keep`` of them are kept (the newest; -1 keeps all).
    - Every file is written to a temporary name and renamed into place, so a kill during a save never leaves a
      truncated ``last.ckpt``.
    - Nothing is saved on an exception: a diverged or crashed state never overwrites the last good one.
    """

    def __init__(self, every_n_epochs: int = 100, keep: int = -1, dirpath: str | None = None, **kwargs: Any):
        """
        Args:
            every_n_epochs: save a numbered checkpoint every N epochs.
            keep: how many numbered checkpoints to keep (the newest); -1 keeps all, 0 keeps none.
            dirpath: where to save; default ``<log dir>/checkpoints``.
        """
        if kwargs.get("filename") is None:
            kwargs["filename"] = "epoch={epoch}-agent_steps={agent_steps:.0f}"
        super().__init__(
            dirpath=dirpath, every_n_epochs=every_n_epochs, save_top_k=keep, monitor="agent_steps", mode="max",
            save_last=True, save_on_train_epoch_end=True, enable_version_counter=False,
            auto_insert_metric_name=False, **kwargs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer) and trainer.state.fn == "fit":
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        tmp = f"{filepath}.tmp"
        super()._save_checkpoint(trainer, tmp)  # every rank takes part; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
        trainer.strategy.barrier("RunCheckpoint.rename")
        self._last_checkpoint_saved = filepath


class GracefulStop(L.Callback):
    """SIGINT / SIGTERM: finish the current epoch, save ``last.ckpt``, close the envs, exit 0.

    A second Ctrl-C interrupts immediately (the last completed epoch's ``last.ckpt`` is still on disk).
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning installs its own SIGTERM handler (which aborts mid-epoch); ours replaces it during training.
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        log.warning("%s received: stopping at the end of this epoch (Ctrl-C again to abort now)", self.requested)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stop = trainer.strategy.reduce_boolean_decision(self.requested is not None, all=False)
        if stop:
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        if self.requested and trainer.is_global_zero:
            ckpt = Path(log_dir or ".") / "checkpoints" / "last.ckpt"
            print(f"stopped by {self.requested} after epoch {trainer.current_epoch}; resume with "
                  f"--ckpt_path last (checkpoint: {ckpt})", flush=True)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
