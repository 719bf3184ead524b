"""Evaluation, replays and rendering on the real simulator (smoke world; one full aligner episode)."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from aligner_lightning.envs import EnvFactory, env_interface
from aligner_lightning.errors import ConfigError
from aligner_lightning.evaluate import (
    METRICS,
    EvalSettings,
    PolicyActor,
    RandomActor,
    ScriptedActor,
    evaluate,
    format_table,
    summarize,
)
from aligner_lightning.policy import AlignerPolicy
from aligner_lightning.render import HEADER_PX, log_episode_media, to_video_tensor, write_gif

REPLAY_KEYS = {"version", "action_names", "item_names", "type_names", "map_size", "num_agents", "max_steps",
               "objects", "infos", "policy_env_interface", "mg_config", "tags", "capacity_names", "animation_names"}


@pytest.fixture(scope="module")
def smoke_policy() -> AlignerPolicy:
    torch.manual_seed(0)
    return AlignerPolicy.from_env_interface(env_interface(EnvFactory(mission="smoke")))


def test_random_policy_on_smoke(smoke_policy, tmp_path):
    settings = EvalSettings(episodes=2, seed_base=2_000_000, replays=1, frame_stride=8, max_steps=40)
    result = evaluate(PolicyActor(smoke_policy, "cpu", generator=torch.Generator().manual_seed(0)), "smoke", {},
                      settings, tmp_path / "replays")

    assert len(result.episodes) == 2
    for episode in result.episodes:
        assert set(episode) == set(METRICS)
        assert all(math.isfinite(v) for v in episode.values())
        assert episode["episode_length"] == 40
        assert 1 <= episode["first_alignment_step"] <= 40

    (replay,) = result.replay_paths
    assert replay.name == "smoke_seed2000000.json.z"
    data = json.loads(zlib.decompress(replay.read_bytes()))
    assert REPLAY_KEYS <= set(data)
    assert data["map_size"] == [11, 11] and data["num_agents"] == 4 and data["max_steps"] == 40

    # Frames at steps 0, 8, ..., 40 of episode 0: an 11 x 11 map at 43 px a cell, under the header.
    assert len(result.frames) == 6
    assert {f.shape for f in result.frames} == {(HEADER_PX + 11 * 43, 11 * 43, 3)}
    assert result.frames[0].dtype == np.uint8
    assert to_video_tensor(result.frames).shape == (1, 6, 3, HEADER_PX + 473, 473)

    gif = write_gif(result.frames, tmp_path / "episode.gif", fps=5)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 6 and im.size == (473, HEADER_PX + 473)

    table = format_table(summarize(result.episodes), n=len(result.episodes))
    assert table.splitlines()[0].split("|")[0].strip() == "metric"
    assert len(table.splitlines()) == 2 + len(METRICS)


def test_greedy_policy_is_deterministic(smoke_policy):
    settings = EvalSettings(episodes=1, seed_base=2_000_000, greedy=True, replays=0, frames=False, max_steps=20)
    runs = [evaluate(PolicyActor(smoke_policy, greedy=True), "smoke", {}, settings).episodes for _ in range(2)]
    assert runs[0] == runs[1]


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


def test_scripted_team_aligns_and_random_does_not():
    """The metrics measure the mission: the scripted team aligns nearly every junction, a random actor none.

    seed_base 0 plays MapGen seed 1 (the env's reset), whose row in the README's Mission section reads 59 aligned, first
    at step 29, 48,525 held.
    """
    with pytest.warns(UserWarning, match="below"):
        settings = EvalSettings(episodes=1, seed_base=0, replays=0, frames=False)
    (scripted,) = evaluate(ScriptedActor(), "aligner_tutorial", {"map_seed": 5}, settings).episodes
    assert scripted["junctions_aligned"] >= 50
    assert scripted["gear_pickups"] >= 4 and scripted["hearts_used"] >= scripted["junctions_aligned"]
    assert scripted["aligned_held_avg"] > 30 and scripted["first_alignment_step"] < 100
    assert scripted["return"] > 100

    (random,) = evaluate(RandomActor(seed=0), "aligner_tutorial", {}, settings).episodes
    assert random["junctions_aligned"] == 0
    assert random["first_alignment_step"] == random["episode_length"] == 1000


def test_settings_report_every_problem():
    with pytest.raises(ConfigError) as e:
        EvalSettings(episodes=0, seed_base=-1, replays=3, max_steps=0, frame_stride=0, greedy=1)
    assert len(e.value.problems) == 6


def test_bad_evaluate_arguments(smoke_policy):
    settings = EvalSettings(episodes=1, seed_base=2**31 - 1, replays=0, frames=False)
    with pytest.raises(ValueError, match="exceed"):
        evaluate(PolicyActor(smoke_policy), "smoke", {}, settings)
    with pytest.raises(ValueError, match="episode_offset"):
        evaluate(PolicyActor(smoke_policy), "smoke", {}, EvalSettings(episodes=1), episode_offset=-1)
