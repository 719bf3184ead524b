"""Callbacks that break a run on purpose, for the fault-tolerance tests (loaded via PYTHONPATH=tests)."""

from __future__ import annotations

import os
import signal

import lightning as L


class SignalAtEpoch(L.Callback):
    """Sends this process a signal at the start of epoch ``epoch`` (0-based), i.e. in the middle of the run."""

    def __init__(self, epoch: int, signum: int = int(signal.SIGTERM)):
        self.epoch, self.signum = epoch, signum

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), self.signum)


class NanLossAtEpoch(L.Callback):
    """Makes the loss NaN from epoch ``epoch`` on, as a diverging run would."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            pl_module.loss_cfg.vf_coef = float("nan")


class RaiseAtEpoch(L.Callback):
    """An ordinary bug: raises inside training at epoch ``epoch``."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("injected failure")
