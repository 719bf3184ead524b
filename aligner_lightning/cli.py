"""The LightningCLI entry point: ``python train.py fit|validate|test --config configs/X.yaml``.

On top of LightningCLI:
- ``--run_name`` names the log directory (``lightning_logs/<run_name>``);
- ``fit --ckpt_path last`` resumes the named (or newest) run *in its own directory*, after checking that the
  checkpoint is readable and matches the config, and TensorBoard drops any points logged after that checkpoint;
- the project's own input errors print as one clear message instead of a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from aligner_lightning import distributed
from aligner_lightning.allocator import keep_freed_memory
from aligner_lightning.checkpoints import (check_resumable, checkpoint_policy_spec, read_checkpoint, resolve_last,
                                           run_root)
from aligner_lightning.datamodule import RolloutDataModule
from aligner_lightning.errors import CheckpointError, ConfigError, TrainingDiverged
from aligner_lightning.missions import MissionError
from aligner_lightning.module import AlignerPPO
from aligner_lightning.policy_spec import canonical, describe


class AlignerCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="Log directory name under the logger's save_dir (default: version_N).")

    def _parse_ckpt_path(self) -> None:
        """Replaces Lightning's, which loads the checkpoint unchecked and overrides the model config with its
        hyperparameters. Here the command line wins, and the checkpoint must agree with it (checked later)."""
        self._checkpoint = None
        sub = self.config.get("subcommand")
        if not sub:
            return
        cfg = self.config[sub]
        init = self._logger_args(cfg)
        root = run_root(init.save_dir, init.get("name")) if init is not None else Path("lightning_logs")
        ckpt_path = cfg.get("ckpt_path")
        if sub == "fit" and ckpt_path == "last":
            path, cfg.run_name = resolve_last(root, cfg.run_name)
            cfg.ckpt_path = ckpt_path = str(path)
        if not ckpt_path:
            return
        self._checkpoint = read_checkpoint(ckpt_path)
        path = Path(ckpt_path).resolve()
        in_run = path.parent.name == "checkpoints" and path.parent.parent.parent == root.resolve()
        if in_run and not cfg.run_name:
            cfg.run_name = path.parent.parent.name  # continue in the run the checkpoint belongs to
            if sub != "fit" and init is not None:
                init.sub_dir = sub  # evaluation output (config, replays, scalars) in <run>/<sub>/, beside training's
        if sub == "fit" and init is not None and "purge_step" in init:
            # Points logged after this checkpoint (before a kill) are dropped, so the curve has no repeats.
            init.purge_step = int(self._checkpoint["aligner"]["agent_steps"]) + 1

    @staticmethod
    def _logger_args(cfg):
        logger = cfg.trainer.get("logger")
        return logger.init_args if logger is not None and hasattr(logger, "init_args") else None

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        init = self._logger_args(cfg)
        if cfg.run_name and init is not None:
            init.version = cfg.run_name
        if cfg.trainer.get("enable_progress_bar") is False and cfg.trainer.get("callbacks"):
            # --trainer.enable_progress_bar false should just work with the configs' RichProgressBar.
            cfg.trainer.callbacks = [c for c in cfg.trainer.callbacks if "ProgressBar" not in str(c.class_path)]

    def _vet_checkpoint(self) -> None:
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if self._checkpoint is None:
            return
        dm = self.datamodule
        if self.subcommand == "fit":
            check_resumable(self._checkpoint, Path(ckpt_path), dm.env_info, dm.geometry(), self.trainer.world_size,
                            policy_spec=self.model.policy_spec)
        else:
            check_resumable(self._checkpoint, Path(ckpt_path), dm.env_info)
            # Evaluation plays the network the checkpoint holds, whatever model.policy says.
            saved = checkpoint_policy_spec(self._checkpoint)
            if canonical(saved) != canonical(self.model.policy_spec):
                rank_zero_info(f"{self.subcommand}: the checkpoint's policy {describe(saved)} replaces the "
                               f"config's model.policy {describe(canonical(self.model.policy_spec))}")
            self.model.use_policy_spec(saved)
        self._checkpoint = None  # Lightning loads it again itself; do not hold two copies

    def before_fit(self) -> None:
        self._vet_checkpoint()
        self.model.check_teacher(self.datamodule)  # before anything is written

    def before_validate(self) -> None:
        self._vet_checkpoint()

    def before_test(self) -> None:
        self._vet_checkpoint()


def cli_main(args: list[str] | None = None) -> AlignerCLI:
    return AlignerCLI(
        AlignerPPO,
        RolloutDataModule,
        save_config_kwargs={"overwrite": True},  # a resumed run rewrites its config.yaml instead of crashing
        args=args,
    )


def main() -> None:
    keep_freed_memory()  # before the first large allocation; ALIGNER_MALLOPT=0 skips it
    try:
        cli_main()
    except (ConfigError, MissionError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    finally:
        distributed.shut_down()
