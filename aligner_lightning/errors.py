"""User-facing errors. ``train.py`` prints these as one clean message (no traceback) and exits non-zero."""

from __future__ import annotations


class ConfigError(ValueError):
    """One or more bad settings. The message names each field, its value and the fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration ({len(problems)} problem{'s' * (len(problems) > 1)}):\n{lines}")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or incompatible with the current config."""


class TrainingDiverged(RuntimeError):
    """A parameter or gradient became NaN/Inf; the run stops without saving the bad state."""


def raise_if(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)


class CollectorError(RuntimeError):
    """The rollout collector failed (in the async mode: its process died or raised; the message carries why)."""
