"""Top-down frames of an aligner simulation, drawn with Pillow, and their way into TensorBoard.

``render_frame(sim)`` reads the simulation's full state (``sim.grid_objects()``), like the scripted team, so
it shows what the agents cannot see: the whole map, every junction's alignment and the team territory.

TensorBoard's ``add_video`` encodes its GIF with moviepy, which is not a dependency here (without it,
``add_video`` prints a warning and logs an empty image). So ``log_episode_media`` encodes the GIF with Pillow
and writes it as an image summary; TensorBoard's Images tab plays animated GIFs.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from mettagrid.simulator import Simulation
from PIL import Image, ImageDraw, ImageFont
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter

TARGET_PX = 480  # the map's longer side; a 60 x 60 arena gets 8 px cells
MIN_CELL_PX = 8
HEADER_PX = 34
TEAM_PREFIX = "team:"

BACKGROUND = (22, 24, 30)
TERRITORY = (30, 58, 84)  # cells where the team heals
WALL = (84, 88, 98)
JUNCTION_NEUTRAL = (150, 150, 150)
JUNCTION_ALIGNED = (41, 151, 255)
AGENT = (245, 245, 245)
HEART = (255, 64, 96)
DEAD = (110, 40, 40)
TEXT = (230, 230, 230)
# Fixed objects, drawn as filled cells. Gear stations and the gear an agent carries share a colour.
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "hub": (255, 193, 7),
    "aligner_station": (0, 229, 255),
    "miner_station": (205, 133, 63),
    "scout_station": (124, 220, 90),
    "scrambler_station": (200, 110, 230),
    "carbon_extractor": (70, 70, 62),
    "oxygen_extractor": (60, 84, 92),
    "germanium_extractor": (92, 74, 60),
    "silicon_extractor": (82, 70, 96),
}
GEAR_COLOURS = {gear: OBJECT_COLOURS[f"{gear}_station"] for gear in ("aligner", "miner", "scout", "scrambler")}
LEGEND = (
    ("hub", OBJECT_COLOURS["hub"]),
    ("aligner stn", OBJECT_COLOURS["aligner_station"]),
    ("junction", JUNCTION_NEUTRAL),
    ("aligned", JUNCTION_ALIGNED),
    ("territory", TERRITORY),
    ("agent (fill=gear, dots=hearts)", AGENT),
)


def cell_size(sim: Simulation) -> int:
    return max(MIN_CELL_PX, TARGET_PX // max(sim.map_height, sim.map_width))


def render_frame(sim: Simulation, cell: int | None = None) -> np.ndarray:
    """The current state as an RGB ``uint8`` array ``[HEADER_PX + rows * cell, cols * cell, 3]``."""
    cell = cell or cell_size(sim)
    objects = list(sim.grid_objects().values())
    tag_names = sim.config.game.id_map().tag_names()
    team = {o["id"] for o in objects if any(tag_names[t].startswith(TEAM_PREFIX) for t in o["tag_ids"])}

    # The static layer as one small image, scaled up: no per-cell drawing calls for ~1200 walls.
    grid = np.empty((sim.map_height, sim.map_width, 3), dtype=np.uint8)
    grid[:] = BACKGROUND
    grid[_territory_mask(sim, objects, team)] = TERRITORY
    for o in objects:
        colour = WALL if o["type_name"] == "wall" else OBJECT_COLOURS.get(o["type_name"])
        if colour is not None:
            grid[o["r"], o["c"]] = colour
    world = Image.fromarray(grid).resize((sim.map_width * cell, sim.map_height * cell), Image.Resampling.NEAREST)

    draw = ImageDraw.Draw(world)
    junctions = [o for o in objects if o["type_name"] == "junction"]
    for j in junctions:
        _diamond(draw, j["r"], j["c"], cell, JUNCTION_ALIGNED if j["id"] in team else JUNCTION_NEUTRAL)
    resources = {name: i for i, name in enumerate(sim.resource_names)}
    for agent in (o for o in objects if o.get("agent_id") is not None):
        _agent(draw, agent, cell, resources)

    aligned = sum(j["id"] in team for j in junctions)
    frame = Image.new("RGB", (world.width, world.height + HEADER_PX), BACKGROUND)
    frame.paste(world, (0, HEADER_PX))
    _header(ImageDraw.Draw(frame), f"step {sim.current_step}/{sim.config.game.max_steps}   "
            f"aligned {aligned}/{len(junctions)} junctions")
    return np.asarray(frame)


def _territory_mask(sim: Simulation, objects: list[dict[str, Any]], team: set[int]) -> np.ndarray:
    """Cells with positive team influence: ``strength - decay * distance > 0`` from a team object (the
    mettagrid rule for a territory with a single team; hub and aligned junctions project it)."""
    controls = {name: cfg.territory_controls for name, cfg in sim.config.game.objects.items()}
    rows, cols = np.mgrid[: sim.map_height, : sim.map_width]
    mask = np.zeros((sim.map_height, sim.map_width), dtype=bool)
    for o in objects:
        if o["id"] not in team:
            continue
        for tc in controls.get(o["type_name"], ()):
            mask |= np.hypot(rows - o["r"], cols - o["c"]) * tc.decay < tc.strength
    return mask


def _diamond(draw: ImageDraw.ImageDraw, r: int, c: int, cell: int, colour: tuple[int, int, int]) -> None:
    x, y, h = c * cell, r * cell, cell / 2
    draw.polygon([(x + h, y), (x + cell - 1, y + h), (x + h, y + cell - 1), (x, y + h)], fill=colour)


def _agent(draw: ImageDraw.ImageDraw, agent: dict[str, Any], cell: int, resources: dict[str, int]) -> None:
    """A white-rimmed circle filled with the colour of the gear it carries (white: none; dark red: hp 0), with
    one red dot per heart along the top edge."""
    inventory = agent["inventory"]
    fill = next((colour for gear, colour in GEAR_COLOURS.items() if inventory.get(resources.get(gear), 0)), AGENT)
    if not inventory.get(resources.get("hp"), 0):
        fill = DEAD
    x, y = agent["c"] * cell, agent["r"] * cell
    draw.ellipse([x, y, x + cell - 1, y + cell - 1], fill=fill, outline=AGENT)
    dot = max(2, cell // 5)
    for k in range(inventory.get(resources.get("heart"), 0)):
        dx = x + k * (dot + 1)
        draw.rectangle([dx, y, dx + dot - 1, y + dot - 1], fill=HEART)


def _header(draw: ImageDraw.ImageDraw, status: str) -> None:
    font = ImageFont.load_default(size=11)
    draw.text((4, 2), status, fill=TEXT, font=font)
    x = 4
    for label, colour in LEGEND:
        draw.rectangle([x, 20, x + 8, 28], fill=colour, outline=TEXT if colour == TERRITORY else None)
        draw.text((x + 11, 18), label, fill=TEXT, font=font)
        x += 11 + int(draw.textlength(label, font=font)) + 8


def to_video_tensor(frames: Sequence[np.ndarray]) -> torch.Tensor:
    """``[1, T, 3, H, W]`` uint8, the layout of ``SummaryWriter.add_video`` (which needs moviepy)."""
    if not frames:
        raise ValueError("to_video_tensor: no frames")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).unsqueeze(0).contiguous()


def gif_bytes(frames: Sequence[np.ndarray], fps: float = 10.0) -> bytes:
    """An animated GIF (looping) of RGB ``uint8`` frames, encoded by Pillow."""
    if not frames:
        raise ValueError("gif_bytes: no frames")
    if fps <= 0:
        raise ValueError(f"gif_bytes: fps must be > 0, got {fps}")
    images = [Image.fromarray(f) for f in frames]
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(20, round(1000 / fps)), loop=0)
    return out.getvalue()


def write_gif(frames: Sequence[np.ndarray], path: str | Path, fps: float = 10.0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gif_bytes(frames, fps))
    return path


def log_episode_media(tb_writer: SummaryWriter, tag: str, frames: Sequence[np.ndarray], step: int,
                      fps: float = 10.0) -> None:
    """Log the frames as one animated GIF under ``tag`` (TensorBoard: Images tab)."""
    encoded = gif_bytes(frames, fps)
    height, width = frames[0].shape[:2]
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=encoded)
    # What add_video does once moviepy has made the GIF.
    tb_writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
