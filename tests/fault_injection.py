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


class DDPProbe(L.Callback):
    """Records, per rank, what the DDP test checks: env seeds, the episodes this rank finished (per epoch), and
    that all ranks hold identical weights after every epoch's update."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_train_start(self, trainer, pl_module):
        rollout = trainer.datamodule.rollout
        self.record = {"rank": trainer.global_rank, "env_seeds": [e._current_seed for e in rollout.vecenv.envs],
                       "episodes": [], "steps_checked": 0}
        add = rollout.episodes.add

        def recording_add(info):
            if "episode_return" in info:  # (resets hand back empty infos)
                self.record["episodes"].append([trainer.current_epoch, info["episode_return"]])
            add(info)

        rollout.episodes.add = recording_add

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import torch

        flat = torch.cat([p.detach().reshape(-1) for p in pl_module.policy.parameters()])
        gathered = pl_module.all_gather(flat)
        if not all(torch.equal(gathered[0], g) for g in gathered):
            raise AssertionError("weights differ across ranks")
        self.record["steps_checked"] += 1

    def on_train_end(self, trainer, pl_module):
        import json
        from pathlib import Path

        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(self.record))
