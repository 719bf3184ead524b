"""The rollout's options (off by default, so the parity tests do not reach them), the segment sampler's options,
and the episode bookkeeping."""

from __future__ import annotations

import pytest
import torch

from aligner_lightning.algorithm import SegmentSampler
from aligner_lightning.datamodule import RolloutDataModule
from aligner_lightning.module import AlignerPPO
from aligner_lightning.policy import AlignerPolicy
from aligner_lightning.rollout import EpisodeStats, Rollout

CPU = torch.device("cpu")


def datamodule(**options) -> RolloutDataModule:
    """Two smoke envs (8 agents), 32 segments of 16 steps, minibatches of 8 segments."""
    base = dict(mission="smoke", num_envs=2, seed=42, early_reset=False, bptt_horizon=16, batch_size=512,
                minibatch_size=128)
    return RolloutDataModule(**{**base, **options})


def collect(dm: RolloutDataModule, epochs: int, after_each=None) -> Rollout:
    """``epochs`` rollouts of one untrained policy, with fixed seeds."""
    torch.manual_seed(0)
    policy = AlignerPolicy.from_env_interface(dm.env_info)
    rollout = dm.make_rollout(CPU)
    torch.manual_seed(99)
    for epoch in range(epochs):
        rollout.collect(policy, epoch)
        if after_each is not None:
            after_each(rollout)
    rollout.close()
    return rollout


def test_reward_scale_and_clip_are_applied_to_the_stored_rewards():
    raw = collect(datamodule(reward_clip=1e9), 1).buffer.rewards  # the env's rewards (same seeds, same actions)
    stored = collect(datamodule(reward_scale=0.2, reward_clip=0.3), 1).buffer.rewards
    assert (raw.abs() > 1.5).any() and (raw != 0).float().mean() > 0.5  # some clipped, most nonzero
    torch.testing.assert_close(stored, (0.2 * raw).clamp(-0.3, 0.3), rtol=0, atol=1e-7)
    # PuffeRL's default: clamp to [-1, 1], unscaled.
    torch.testing.assert_close(collect(datamodule(), 1).buffer.rewards, raw.clamp(-1, 1), rtol=0, atol=0)


def draws(sampling: str, segments: int, per_minibatch: int, minibatches: int,
          advantages: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``minibatches`` draws of ``per_minibatch`` of ``segments`` rows (advantages: zeros, 16 steps)."""
    adv = torch.zeros(segments, 16) if advantages is None else advantages
    sampler = SegmentSampler(AlignerPPO(sampling=sampling).algo, segments, per_minibatch, beta=0.5, device=CPU)
    return [sampler.draw(adv) for _ in range(minibatches)]


def test_sequential_sampling_visits_every_segment_once_per_pass():
    dm = datamodule(update_epochs=3)
    batches = draws("sequential", dm.segments, dm.minibatch_segments, dm.num_minibatches)
    per_pass = dm.segments // dm.minibatch_segments
    assert len(batches) == 3 * per_pass == 12
    orders = [torch.cat([idx for idx, _ in batches[p * per_pass:(p + 1) * per_pass]]) for p in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(dm.segments))
    assert not torch.equal(orders[0], orders[1])  # a fresh random order each pass
    assert all(torch.equal(w, torch.ones(dm.minibatch_segments, 1)) for _, w in batches)


def test_prioritized_sampling_draws_distinct_segments_with_importance_weights():
    adv = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))  # nonuniform priorities
    ((idx, weights),) = draws("prioritized", 32, 8, 1, adv)
    assert len(set(idx.tolist())) == 8
    assert weights.shape == (8, 1) and not torch.allclose(weights, weights[0])


@pytest.mark.parametrize("carry", [False, True])
def test_carry_lstm_state_starts_the_next_rollout_from_the_last_state(carry):
    """PuffeRL zeroes the LSTM state at every rollout's start; with carry_lstm_state the next rollout starts from
    the state the last one ended with (stored per segment with store_initial_state)."""
    ends = []
    rollout = collect(datamodule(store_initial_state=True, carry_lstm_state=carry), 2,
                      lambda r: ends.append(r._state[0][0].clone()))  # the (one) env batch's h after each rollout
    agents = rollout.total_agents
    initial_h = rollout.buffer.initial_state[0]
    start = initial_h[:agents]  # rows 0..agents-1 begin at the second rollout's first step
    assert ends[0].abs().sum() > 0
    torch.testing.assert_close(start, ends[0] if carry else torch.zeros_like(start), rtol=0, atol=0)
    assert initial_h[agents:].abs().sum() > 0  # later segments start mid-rollout in both modes


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


def test_sequential_sampling_when_a_pass_ends_inside_a_minibatch():
    """32 segments in minibatches of 12: the draws run through one random pass after another, so every 32
    consecutive draws are each segment once (the old slicing restarted mid-pass and repeated segments)."""
    batches = draws("sequential", 32, 12, 8)  # 96 draws = 3 passes
    assert all(len(idx) == 12 for idx, _ in batches)
    drawn = torch.cat([idx for idx, _ in batches])
    for p in range(3):
        assert sorted(drawn[p * 32:(p + 1) * 32].tolist()) == list(range(32))


def test_a_resumed_rollout_keeps_every_envs_episode_boundaries():
    """Restored from a rollout's seed state, every env's episodes end at the same steps as in the unbroken
    rollout (the early reset left them out of step; a resume must not put them back in step)."""
    dm = datamodule(early_reset=True, mission_overrides={"max_steps": 100}, num_envs=4, batch_size=1024)
    policy = AlignerPolicy.from_env_interface(dm.env_info)

    def steps_left(rollout: Rollout) -> list[int]:
        return [env.steps_left() for env in rollout.vecenv.envs]

    unbroken = dm.make_rollout(CPU)
    for epoch in range(3):
        unbroken.collect(policy, epoch)
    state = unbroken.seed_state()
    after = []
    for epoch in range(3, 7):
        unbroken.collect(policy, epoch)
        after.append(steps_left(unbroken))
    unbroken.close()
    assert len({tuple(s) for s in after}) > 1 and len(set(after[-1])) > 1  # the envs are out of step
    resumed = dm.make_rollout(CPU)
    resumed.restore_seed_state(state)
    again = []
    for epoch in range(3, 7):
        resumed.collect(policy, epoch)
        again.append(steps_left(resumed))
    resumed.close()
    assert again == after
