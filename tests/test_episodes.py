"""The episode runner and what is made of its episodes (metrics, summaries, replays, frames), on the real
simulator: the smoke world, and short aligner episodes."""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import factory, random_observations
from mettagrid.simulator import SimulatorEventHandler
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from aligner_lightning.envs import METRICS, env_interface
from aligner_lightning.episodes import (
    EvalSettings,
    PolicyActor,
    RandomActor,
    ScriptedActor,
    format_table,
    play_episode,
    play_episodes,
    summarize,
)
from aligner_lightning.errors import ConfigError
from aligner_lightning.module import AlignerPPO
from aligner_lightning.policy import AlignerPolicy
from aligner_lightning.render import HEADER_PX, log_episode_media, to_video_tensor, write_gif
from aligner_lightning.scripted import ScriptedTeam

REPLAY_KEYS = {"version", "action_names", "item_names", "type_names", "map_size", "num_agents", "max_steps",
               "objects", "infos", "policy_env_interface", "mg_config", "tags", "capacity_names", "animation_names"}


def settings(**changes) -> EvalSettings:
    """The model's default evaluation settings, with ``changes``."""
    return replace(AlignerPPO().eval_settings, **changes)


@pytest.fixture(scope="module")
def untrained_policy() -> AlignerPolicy:
    torch.manual_seed(0)
    return AlignerPolicy.from_env_interface(env_interface(factory("smoke")))


def test_untrained_policy_actor_on_smoke_with_replay_and_frames(untrained_policy, tmp_path):
    actor = PolicyActor(untrained_policy, "cpu", generator=torch.Generator().manual_seed(0))
    result = play_episodes(actor, "smoke", {}, settings(episodes=2, seed_base=2_000_000, replays=1, frame_stride=8,
                                                         max_steps=40), tmp_path / "replays")

    assert len(result.episodes) == 2 and result.episodes[0] != result.episodes[1]  # two seeds, two episodes
    for episode in result.episodes:
        assert set(episode) == set(METRICS) and all(math.isfinite(v) for v in episode.values())
        assert episode["episode_length"] == 40

    (replay,) = result.replay_paths
    assert replay.name == "smoke_seed2000000.json.z"
    data = json.loads(zlib.decompress(replay.read_bytes()))
    assert REPLAY_KEYS <= set(data)
    assert data["map_size"] == [11, 11] and data["num_agents"] == 4 and data["max_steps"] == 40

    # Frames at steps 0, 8, ..., 40 of episode 0: an 11 x 11 map at 43 px a cell, under the header.
    assert len(result.frames) == 6
    height, width, _ = result.frames[0].shape
    assert {f.shape for f in result.frames} == {(height, width, 3)} and height == HEADER_PX + 11 * 43
    assert result.frames[0].dtype == np.uint8
    assert to_video_tensor(result.frames).shape == (1, 6, 3, height, width)
    gif = write_gif(result.frames, tmp_path / "episode.gif", fps=5)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 6 and im.size == (width, height)


def test_metrics_are_the_simulation_stats():
    """Every metric of an episode's info, recomputed from the simulation's own final stats (a scripted smoke
    episode, which aligns all 5 junctions)."""

    class Snapshot(SimulatorEventHandler):
        def on_episode_end(self):
            self.stats, self.rewards = self._sim.episode_stats, np.array(self._sim.episode_rewards, dtype=np.float64)

    snapshot = Snapshot()
    env = factory("smoke").make_env(0, handlers=[snapshot])
    env.reset()
    team, done = ScriptedTeam(env), False
    while not done:
        _, _, terminals, _, info = env.step(team.actions())
        done = terminals.all()
    env.close()
    game, agents = snapshot.stats["game"], snapshot.stats["agent"]
    total = lambda stat: sum(a.get(stat, 0.0) for a in agents)  # noqa: E731
    assert {k: info[k] for k in METRICS} == pytest.approx({
        "episode_return": snapshot.rewards.mean(), "return_std_agents": snapshot.rewards.std(), "episode_length": 96,
        "junctions_aligned": 5, "aligned_held_avg": game["cogs/aligned.junction.held"] / 96,
        "first_alignment_step": info["first_alignment_step"], "heart_gained": total("heart.gained"),
        "heart_lost": total("heart.lost"), "aligner_gained": total("aligner.gained"),
        "aligner_lost": total("aligner.lost"),
        "other_gear_gained": total("miner.gained") + total("scout.gained") + total("scrambler.gained"),
        "deaths": total("death")})
    assert info["heart_lost"] >= 5 and info["aligner_gained"] >= 1
    # ... and every raw stat, as game/<stat> and the per-agent mean agent/<stat>.
    assert {k: info[f"game/{k}"] for k in game} == pytest.approx(dict(game))
    assert info["agent/heart.gained"] == pytest.approx(total("heart.gained") / len(agents))


def test_first_alignment_step_is_the_step_of_the_first_alignment():
    """The same scripted episode cut one step before its first alignment aligns nothing (and reports its length),
    and cut at that step aligns."""
    first = play_episode(ScriptedActor(), factory("smoke")).metrics["first_alignment_step"]
    assert 1 < first < 96
    before = play_episode(ScriptedActor(), factory("smoke", max_steps=int(first) - 1)).metrics
    assert before["junctions_aligned"] == 0 and before["first_alignment_step"] == first - 1
    at = play_episode(ScriptedActor(), factory("smoke", max_steps=int(first))).metrics
    assert at["junctions_aligned"] >= 1 and at["first_alignment_step"] == first


def test_greedy_policy_is_deterministic(untrained_policy):
    runs = [play_episodes(PolicyActor(untrained_policy, greedy=True), "smoke", {},
                          settings(episodes=1, seed_base=2_000_000, greedy=True, replays=0, gif=False,
                                   max_steps=20)).episodes for _ in range(2)]
    assert runs[0] == runs[1]


def test_scripted_team_aligns_early_and_random_does_not():
    """Within 150 steps of map seed 1 (seed_base 0), the scripted team has its gear, aligned its first junction
    by step 29 and keeps aligning; the random baseline aligns nothing."""
    with pytest.warns(UserWarning, match="below"):
        short = settings(episodes=1, seed_base=0, replays=0, gif=False, max_steps=150)
    # A map_seed override is replaced by the held-out seeds.
    (scripted,) = play_episodes(ScriptedActor(), "aligner_tutorial", {"map_seed": 5}, short).episodes
    assert scripted["first_alignment_step"] == 29 and scripted["junctions_aligned"] >= 10
    assert scripted["aligner_gained"] == 4 and scripted["heart_lost"] >= scripted["junctions_aligned"]
    assert scripted["episode_return"] > 20 and scripted["aligned_held_avg"] > 2

    (random,) = play_episodes(RandomActor(seed=0), "aligner_tutorial", {}, short).episodes
    assert random["junctions_aligned"] == 0
    assert random["first_alignment_step"] == random["episode_length"] == 150


def test_summarize_and_table():
    episodes = [{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 2.0}, {"a": 5.0}]
    summary = summarize(episodes)
    assert summary == {"a": (3.0, pytest.approx(np.std([1, 3, 5])))}  # population std; keys all episodes have
    table = format_table(summarize(episodes[:2]), n=2).splitlines()
    assert [row.split("|")[0].strip() for row in table if "|" in row] == ["metric", "a", "b"]
    assert [cell.strip() for cell in table[2].split("|")] == ["a", "2.000", "1.000", "2"]
    with pytest.raises(ValueError, match="no episodes"):
        summarize([])


def test_media_logged_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    frames = [np.full((20, 30, 3), v, dtype=np.uint8) for v in (0, 120, 240)]
    with SummaryWriter(str(tmp_path)) as writer:
        log_episode_media(writer, "eval/episode", frames, step=7)
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    (image,) = events.Images("eval/episode")
    assert image.step == 7 and (image.width, image.height) == (30, 20)
    assert image.encoded_image_string[:6] == b"GIF89a"


def test_settings_report_every_problem():
    with pytest.raises(ConfigError) as e:
        EvalSettings(episodes=0, seed_base=-1, replays=3, max_steps=0, frame_stride=0, greedy=1, gif=True,
                     state_reset=0)
    assert len(e.value.problems) == 7


def test_state_reset_zeroes_the_recurrent_state_every_n_steps(untrained_policy, smoke_factory):
    """On a repeated observation the logits change from step to step while the LSTM state builds up, and are
    those of step 0 again after every ``state_reset`` steps."""
    obs = random_observations(smoke_factory, 1)[0].numpy()  # [agents, tokens, 3]

    def logits(state_reset, steps=7):
        actor = PolicyActor(untrained_policy, "cpu", greedy=True, state_reset=state_reset)
        actor.reset(obs.shape[0])
        out = []
        for _ in range(steps):
            actor.act(obs, None)
            out.append(actor.last_logits.clone())
        return out

    carried, reset = logits(None), logits(3)
    assert not torch.equal(carried[0], carried[1]) and not torch.equal(carried[0], carried[3])
    for t in range(7):  # steps 3 and 6 start from zeros again, as step 0 did
        torch.testing.assert_close(reset[t], carried[t % 3], rtol=0, atol=0)
    with pytest.raises(ValueError, match="state_reset=0"):
        PolicyActor(untrained_policy, state_reset=0)


def test_bad_play_episodes_arguments(untrained_policy):
    with pytest.raises(ValueError, match="exceed"):
        play_episodes(PolicyActor(untrained_policy), "smoke", {}, settings(episodes=1, seed_base=2**31 - 1))
    with pytest.raises(ValueError, match="episode_offset"):
        play_episodes(PolicyActor(untrained_policy), "smoke", {}, settings(episodes=1), episode_offset=-1)
