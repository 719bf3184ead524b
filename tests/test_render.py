"""What users see of an episode: the frames and their legend, and the replay file's name in the log."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from mettagrid.envs.mettagrid_puffer_env import MettaGridPufferEnv
from mettagrid.simulator import Simulator
from PIL import Image

from aligner_lightning import render
from aligner_lightning.missions import make_mission
from aligner_lightning.replay_log import NamedReplayWriter

DRAWN_WITHOUT_TABLE = {"wall", "junction", "agent"}  # drawn with their own colours, not OBJECT_COLOURS


def arena(**initial: int):
    """The 60 x 60 aligner arena (map seed 0) after reset, with ``initial`` added to every agent's inventory."""
    cfg = make_mission("aligner_tutorial", map_seed=0)
    cfg.game.agent.inventory.initial = {**cfg.game.agent.inventory.initial, **initial}
    env = MettaGridPufferEnv(Simulator(), cfg, seed=0)
    env.reset()
    return env


def count(frame: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((frame[render.HEADER_PX:] == colour).all(axis=-1).sum())


def test_the_legend_names_everything_drawn():
    env = arena()
    try:
        types = {o["type_name"] for o in env.current_simulation.grid_objects().values()}
    finally:
        env.close()
    assert types <= DRAWN_WITHOUT_TABLE | set(render.OBJECT_COLOURS), types - set(render.OBJECT_COLOURS)
    assert set(render.OBJECT_COLOURS) - types == set(), "every coloured kind occurs on the arena"
    in_legend = {colour for _, _, colours in render.LEGEND for colour in colours}
    drawn = {*render.OBJECT_COLOURS.values(), render.WALL, render.JUNCTION_NEUTRAL, render.JUNCTION_ALIGNED,
             render.AGENT, render.DEAD, render.HEART, render.TERRITORY, render.BACKGROUND}
    assert drawn <= in_legend, drawn - in_legend
    assert any("black" in label for label, _, _ in render.LEGEND)


def test_arena_frames_trim_the_wall_frame_and_show_agents_and_hearts():
    env = arena(heart=3, aligner=1)
    try:
        sim = env.current_simulation
        frame = render.render_frame(sim)
        frames = [frame]
        for _ in range(3):
            env.step(np.zeros(sim.num_agents, dtype=np.int32))
            frames.append(render.render_frame(sim))
    finally:
        env.close()
    # 60 x 60 with a 5-cell wall frame: 52 x 52 cells remain (one wall ring), at MIN_CELL_PX each.
    side = 52 * render.MIN_CELL_PX
    assert frame.shape == (render.HEADER_PX + side, side, 3) and frame.dtype == np.uint8
    assert {f.shape for f in frames} == {frame.shape}
    dot = max(4, render.MIN_CELL_PX // 3 + 1)
    assert count(frame, render.HEART) >= 4 * 3 * dot * dot  # 4 agents x 3 hearts, none hidden
    station = render.MIN_CELL_PX ** 2
    assert count(frame, render.GEAR_COLOURS["aligner"]) >= station + 4 * render.MIN_CELL_PX ** 2 // 2  # 4 discs
    gif = Image.open(io.BytesIO(render.gif_bytes(frames)))
    assert gif.n_frames == 4 and gif.size == (side, render.HEADER_PX + side)


def test_the_legend_fits_the_narrowest_frame():
    assert render.legend_width() <= 11 * (render.TARGET_PX // 11)  # the 11 x 11 smoke map: 473 px
    env = MettaGridPufferEnv(Simulator(), make_mission("smoke"), seed=0)
    try:
        env.reset()
        frame = render.render_frame(env.current_simulation)
    finally:
        env.close()
    assert frame.shape == (render.HEADER_PX + 473, 473, 3)


def test_named_replay_writer_names_the_file_and_the_log_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ReplayLogWriter")
    simulator = Simulator()
    writer = NamedReplayWriter(str(tmp_path), "smoke_seed3")
    simulator.add_event_handler(writer)
    env = MettaGridPufferEnv(simulator, make_mission("smoke", max_steps=4), seed=3)
    try:
        env.reset()
        done = False
        while not done:
            _, _, terminals, truncations, _ = env.step(np.zeros(env.num_agents, dtype=np.int32))
            done = bool(terminals.all() or truncations.all())
    finally:
        env.close()
    path = tmp_path / "smoke_seed3.json.z"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert writer.get_written_replay_paths() == [str(path)]
    lines = [r.getMessage() for r in caplog.records if r.name == "ReplayLogWriter" and "Wrote replay" in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith(f"{path}"), lines
    with pytest.raises(ValueError, match="plain file stem"):
        NamedReplayWriter(str(tmp_path), "a/b")
