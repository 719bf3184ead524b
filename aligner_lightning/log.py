"""Rank-zero logging without importing Lightning, for the modules the async collector process imports (a
spawned one stays lean: no Lightning in that process). Lightning itself logs through ``lightning.pytorch``'s logger."""

from __future__ import annotations

import logging
import os

_logger = logging.getLogger("aligner_lightning")
if not _logger.handlers:  # print INFO like Lightning's own messages, whatever the root logger's setup
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    _logger.addHandler(_handler)
    _logger.setLevel(logging.INFO)
    _logger.propagate = False


def global_rank() -> int:
    """The rank the launcher gave this process (the variables Lightning reads too); 0 without one."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def rank_zero_info(message: str) -> None:
    if global_rank() == 0:
        _logger.info(message)
