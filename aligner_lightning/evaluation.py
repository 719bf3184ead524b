"""Evaluation during fit, validate and test: every rank plays its share of held-out episodes, rank 0 reports.

The LightningModule's validation and test hooks call ``Evaluation.play`` and ``Evaluation.report``; what an
episode is and how it is summarised lives in ``episodes.py``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.tensorboard import SummaryWriter

from aligner_lightning import distributed
from aligner_lightning.episodes import EvalSettings, EvalResult, PolicyActor, format_table, play_episodes, summarize
from aligner_lightning.render import log_episode_media


class Evaluation:
    def __init__(self, settings: EvalSettings):
        self.settings = settings
        self._result: EvalResult | None = None

    def play(self, policy: torch.nn.Module, device: torch.device, mission: str, overrides: dict,
             replay_dir: Path | None) -> None:
        """This rank's share of the episodes, on held-out maps disjoint from every other rank's."""
        world, rank = distributed.world_size(), distributed.rank()
        share = -(-self.settings.episodes // world)
        settings = replace(self.settings, episodes=share,
                           replays=min(self.settings.replays, share) if rank == 0 else 0,
                           gif=self.settings.gif and rank == 0)
        # Its own generator: evaluating draws nothing from the RNG that training samples with.
        generator = torch.Generator(device=device).manual_seed(settings.seed_base + rank * share)
        actor = PolicyActor(policy, device, greedy=settings.greedy, generator=generator,
                            state_reset=settings.state_reset)
        self._result = play_episodes(actor, mission, overrides, settings, replay_dir if rank == 0 else None,
                                     episode_offset=rank * share)

    def report(self, stage: str, agent_steps: int, logger) -> dict[str, float]:
        """Pool every rank's episodes; on rank 0 log each metric's mean (``eval/``) and standard deviation
        (``eval_std/``) over the episodes against agent steps, the GIF of one episode, and print the table.
        Returns the metrics (on every rank; empty if no episode was played)."""
        result, self._result = self._result, None
        episodes = [e for rank_episodes in distributed.gather_objects(result.episodes if result else [])
                    for e in rank_episodes]
        if not episodes:
            return {}
        summary = summarize(episodes)
        metrics = {f"eval/{k}": mean for k, (mean, _) in summary.items()}
        metrics.update({f"eval_std/{k}": std for k, (_, std) in summary.items()})
        if distributed.rank() != 0:
            return metrics
        if logger is not None:
            logger.log_metrics(metrics, step=agent_steps)
            experiment = getattr(logger, "experiment", None)
            if result.frames and isinstance(experiment, SummaryWriter):
                log_episode_media(experiment, "eval/episode", result.frames, step=agent_steps)
        replays = ", ".join(str(p) for p in result.replay_paths) or "none"
        actions = "greedy" if self.settings.greedy else "sampled"
        rank_zero_info(f"\n{stage} at {agent_steps} agent steps, {len(episodes)} episodes ({actions} actions, "
                       f"{_state_note(self.settings.state_reset)}, map seeds from {self.settings.seed_base}):\n"
                       f"{format_table(summary, len(episodes))}\nreplays: {replays}")
        return metrics


def _state_note(state_reset: int | None) -> str:
    return "state carried" if state_reset is None else f"state zeroed every {state_reset} steps"
