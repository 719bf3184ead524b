"""The LightningCLI entry point: ``python train.py fit|validate|test --config configs/X.yaml``.

Adds ``--run_name`` (a predictable log directory ``lightning_logs/<run_name>``) and turns the project's own
input errors into one clear message instead of a traceback.
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from aligner_lightning.datamodule import RolloutDataModule
from aligner_lightning.errors import CheckpointError, ConfigError, TrainingDiverged
from aligner_lightning.missions import MissionError
from aligner_lightning.module import AlignerPPO


class AlignerCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="Log directory name under the logger's save_dir (default: version_N).")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        run_name = cfg.get("run_name")
        logger = cfg.trainer.get("logger")
        if run_name and logger is not None and hasattr(logger, "init_args"):
            logger.init_args.version = run_name


def cli_main(args: list[str] | None = None) -> AlignerCLI:
    return AlignerCLI(
        AlignerPPO,
        RolloutDataModule,
        save_config_kwargs={"overwrite": True},  # a resumed run rewrites its config.yaml instead of crashing
        args=args,
    )


def main() -> None:
    try:
        cli_main()
    except (ConfigError, MissionError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
