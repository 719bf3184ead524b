"""What one training epoch logs beyond the losses: episode means and teacher counts, pooled over ranks."""

from __future__ import annotations

import torch

from aligner_lightning import distributed
from aligner_lightning.envs import tensorboard_tag
from aligner_lightning.experience import Experience


class EpisodeMeans:
    """Per-episode means over the episodes finished in an epoch on all ranks (pooled sums and counts), under
    the tags of ``envs.tensorboard_tag``. An ``env_stats/`` tag is logged from the first epoch in which its stat
    is nonzero: a stat that has only ever been 0 (a resource the mission never uses) stays out."""

    def __init__(self):
        self._logged_env_stats: set[str] = set()

    def __call__(self, rollout: Experience) -> dict[str, float]:
        sums, episodes = {}, 0
        for rank_sums, rank_episodes in distributed.gather_objects((rollout.episode_sums, rollout.episodes)):
            episodes += rank_episodes
            for k, v in rank_sums.items():
                sums[k] = sums.get(k, 0.0) + v
        if not episodes:
            return {}
        means = {}
        for key, total in sorted(sums.items()):
            tag = tensorboard_tag(key)
            if tag is None or (tag.startswith("env_stats/") and tag not in self._logged_env_stats and total == 0):
                continue
            if tag.startswith("env_stats/"):
                self._logged_env_stats.add(tag)
            means[tag] = total / episodes
        return means


def teacher_metrics(rollout: Experience, bc_coef: float, device: torch.device) -> dict[str, float]:
    """With a teacher: this epoch's BC weight, and over all ranks' rollout steps the fraction the teacher led,
    the fraction with a teacher label, and over those the fraction where the student's argmax (at collection)
    was the teacher's action."""
    stats = rollout.teacher_stats  # None where the teacher did not run
    keys = ("steps", "led", "labelled", "agree")
    counts = torch.tensor([stats[k] if stats else 0.0 for k in keys], dtype=torch.float64)
    steps, led, labelled, agree = (float(x) for x in distributed.all_reduce_sum(counts, device))
    metrics = {"teacher/bc_coef": bc_coef, "teacher/led_fraction": led / steps if steps else 0.0}
    if steps:
        metrics["teacher/labelled_fraction"] = labelled / steps
    if labelled:
        metrics["teacher/agreement"] = agree / labelled
    return metrics
