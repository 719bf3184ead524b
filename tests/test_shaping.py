"""Refill shaping (``data.refill_shaping``): what it reads from the observations, what it pays, and that the
rollout adds it to the stored rewards and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aligner_lightning.datamodule import RolloutDataModule
from aligner_lightning.envs import EnvFactory
from aligner_lightning.errors import ConfigError
from aligner_lightning.policy import AlignerPolicy
from aligner_lightning.scripted import ScriptedTeam
from aligner_lightning.shaping import GLOBAL_LOCATION, RefillShaping

IDS = {"lp:east": 7, "lp:west": 8, "lp:north": 9, "lp:south": 10, "inv:heart": 14, "inv:aligner": 28}
SELF_LOCATION = 0x66  # the centre of a 13 x 13 window


def test_it_reads_each_agents_offset_from_its_spawn_and_whether_it_holds_gear_and_no_heart():
    """Driven by the scripted team on the smoke map, at every step: the distance read from the observation is
    the Manhattan distance of the agent from where it started, and 'empty' is the simulator's gear > 0 and
    hearts == 0."""
    factory = EnvFactory("smoke", {}, seed=5, seed_stride=1, early_reset=False)
    env = factory.make_env(0)
    obs, _ = env.reset()
    shaping = RefillShaping.for_mission(0.1, factory.config())
    sim = env.current_simulation
    agents = lambda: {o["agent_id"]: o for o in sim.grid_objects().values() if o.get("agent_id") is not None}  # noqa: E731
    spawn = {i: (o["r"], o["c"]) for i, o in agents().items()}
    team = ScriptedTeam(env, seed=5)
    seen_empty = seen_away = 0
    for _ in range(60):
        obs, _, terminals, truncations, _ = env.step(team.actions())
        assert not (terminals.any() or truncations.any())
        distance, empty = shaping.read(torch.from_numpy(obs))
        for i, o in agents().items():
            assert int(distance[i]) == abs(o["r"] - spawn[i][0]) + abs(o["c"] - spawn[i][1])
            assert bool(empty[i]) == (o.get("inv:aligner", 0) > 0 and o.get("inv:heart", 0) == 0)
        seen_empty += int(empty.sum())
        seen_away += int((distance > 0).sum())
    env.close()
    assert seen_empty > 0 and seen_away > 0  # both states occurred, so the comparisons above meant something


def agent_obs(distance_east: int, hearts: int, gear: int) -> torch.Tensor:
    """One agent's tokens: the east offset (global), its hearts and gear (its own cell), padding after."""
    obs = torch.full((1, 10, 3), 0xFF, dtype=torch.uint8)
    obs[0, 0] = torch.tensor([GLOBAL_LOCATION, IDS["lp:east"], distance_east])
    obs[0, 1] = torch.tensor([SELF_LOCATION, IDS["inv:heart"], hearts])
    obs[0, 2] = torch.tensor([SELF_LOCATION, IDS["inv:aligner"], gear])
    return obs


def test_it_pays_each_step_closer_to_the_spawn_while_empty_and_nothing_else():
    shaping = RefillShaping(0.5, IDS, SELF_LOCATION)
    no, yes = torch.tensor([False]), torch.tensor([True])
    steps = [  # (east offset, hearts, gear, episode ended at this step, expected bonus)
        (10, 0, 1, no, 0.0),    # first sight of this batch: nothing to compare with
        (9, 0, 1, no, 0.5),     # one step closer, empty before and after
        (10, 0, 1, no, -0.5),   # one step away
        (8, 0, 0, no, 0.0),     # no gear now (lost it)
        (7, 0, 1, no, 0.0),     # no gear before
        (6, 2, 1, no, 0.0),     # took hearts: loaded now
        (5, 2, 1, no, 0.0),     # loaded
        (5, 0, 1, no, 0.0),     # spent the last heart without moving
        (3, 0, 1, yes, 0.0),    # the episode ended: this observation is the next episode's
        (2, 0, 1, no, 0.5),
    ]
    for east, hearts, gear, done, expected in steps:
        assert float(shaping.bonus(0, agent_obs(east, hearts, gear), done)) == expected
    shaping.reset()
    assert float(shaping.bonus(0, agent_obs(1, 0, 1), no)) == 0.0  # after a reset it starts over


def test_a_mission_without_the_features_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"data.refill_shaping=0.1: .*lack lp:north, lp:south.*set it to 0"):
        RefillShaping(0.1, {k: v for k, v in IDS.items() if k not in ("lp:north", "lp:south")}, SELF_LOCATION)


def test_a_negative_coefficient_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"data.refill_shaping=-1.0: must be >= 0"):
        shaped_datamodule(-1.0)


def shaped_datamodule(coef: float, **options) -> RolloutDataModule:
    """Two smoke envs, one rollout of 64 steps per agent (no episode ends), every agent teacher-led (so the
    agents fetch gear and hearts early), no clamp."""
    return RolloutDataModule(mission="smoke", num_envs=2, seed=3, early_reset=False, bptt_horizon=16,
                             batch_size=512, minibatch_size=512, teacher="scripted", reward_clip=1e9,
                             refill_shaping=coef, **options)


def collect(coef: float):
    dm = shaped_datamodule(coef)
    rollout = dm.make_rollout(torch.device("cpu"))
    torch.manual_seed(0)
    policy = AlignerPolicy.from_env_interface(dm.env_info)
    torch.manual_seed(1)
    buf = rollout.collect(policy, teacher_led=1.0, use_teacher=True)
    rollout.close()
    return buf, dm


def test_the_rollout_adds_the_bonus_to_the_env_reward_and_changes_nothing_else():
    plain, _ = collect(0.0)
    plain = {k: getattr(plain, k).clone() for k in ("obs", "actions", "rewards", "terminals")}
    shaped, dm = collect(0.25)
    for key in ("obs", "actions", "terminals"):
        assert torch.equal(getattr(shaped, key), plain[key]), key
    reader = RefillShaping.for_mission(0.25, dm.factory.config())
    agents = 8
    for a in range(agents):  # agent a's steps in order: rows a, a + 8, a + 16, a + 24 (one env batch)
        obs = shaped.obs[a::agents].reshape(-1, *shaped.obs.shape[2:])
        distance, empty = reader.read(obs)
        expected = torch.zeros(len(obs))
        expected[1:] = 0.25 * (distance[:-1] - distance[1:]).float() * (empty[:-1] & empty[1:])
        got = (shaped.rewards[a::agents] - plain["rewards"][a::agents]).reshape(-1)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert (shaped.rewards != plain["rewards"]).any()  # the teacher's agents walked home empty at some point
    assert np.isclose(float((shaped.rewards - plain["rewards"]).abs().max()), 0.25)
