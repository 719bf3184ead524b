"""Rollout bookkeeping that the parity tests do not reach."""

from __future__ import annotations

from aligner_lightning.rollout import EpisodeStats


def test_episode_stats_count_a_missing_stat_as_zero():
    """mettagrid omits a stat that is 0, so the mean must be over all episodes, not over those that have it."""
    stats = EpisodeStats()
    stats.add({})  # a reset's empty info is not an episode
    stats.add({"episode_return": 3.0, "game/cogs/aligned.junction.gained": 4.0})
    stats.add({"episode_return": 1.0})
    sums, episodes = stats.pop()
    assert episodes == 2
    assert sums["game/cogs/aligned.junction.gained"] / episodes == 2.0
    assert sums["episode_return"] / episodes == 2.0
    assert stats.pop() == ({}, 0)
