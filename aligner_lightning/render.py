"""Top-down frames of an aligner simulation, drawn with Pillow, and their way into TensorBoard.

``render_frame(sim)`` reads the simulation's full state (``sim.grid_objects()``), like the scripted team, so
it shows what the agents cannot see: the whole map, every junction's alignment and the team territory. A
header above the map holds the step, the aligned count and a legend of every kind of thing drawn (see
``LEGEND``). Outer rings made only of walls are trimmed to one, so the 60 x 60 arena is drawn as 52 x 52
cells of 11 px (572 x 687 px with the header); agents are discs a little larger than a cell, with one red
square per heart above them.

TensorBoard's ``add_video`` encodes its GIF with moviepy, which is not a dependency here (without it,
``add_video`` prints a warning and logs an empty image). So ``log_episode_media`` encodes the GIF with Pillow
and writes it as an image summary; TensorBoard's Images tab plays animated GIFs. Its cards fit images into
about 250 px of height: the card's "Toggle actual image size" button (or "Show actual image size" in the
settings pane) shows the frames at full resolution.
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

TARGET_PX = 480  # the map's longer side, unless that gives cells under MIN_CELL_PX
MIN_CELL_PX = 11  # the 60 x 60 arena (52 x 52 once its wall frame is trimmed) gets 11 px cells: 572 px
FRAME_RING = 1  # outer rings made only of walls are trimmed down to this many
TEAM_PREFIX = "team:"

BACKGROUND = (12, 13, 17)  # black: empty floor outside the team's territory (hp drains there)
TERRITORY = (30, 58, 84)  # empty floor inside the territory (hp and energy refill there)
WALL = (96, 100, 110)
JUNCTION_NEUTRAL = (165, 165, 165)
JUNCTION_ALIGNED = (41, 151, 255)
AGENT = (245, 245, 245)  # the rim of every agent, and the fill of one without gear
HEART = (255, 64, 96)
DEAD = (120, 36, 36)  # the fill of an agent at hp 0 (it has dropped its gear and hearts)
TEXT = (230, 230, 230)
# Fixed objects. Stations are full cells; extractors smaller squares. A station and its gear share a colour.
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "hub": (255, 193, 7),
    "aligner_station": (0, 229, 255),
    "miner_station": (205, 133, 63),
    "scout_station": (124, 220, 90),
    "scrambler_station": (200, 110, 230),
    "carbon_extractor": (112, 104, 80),
    "oxygen_extractor": (78, 128, 140),
    "germanium_extractor": (140, 100, 72),
    "silicon_extractor": (112, 94, 140),
}
EXTRACTORS = ("carbon_extractor", "oxygen_extractor", "germanium_extractor", "silicon_extractor")
GEAR_COLOURS = {gear: OBJECT_COLOURS[f"{gear}_station"] for gear in ("aligner", "miner", "scout", "scrambler")}

STATUS_FONT_PX = 15
LEGEND_FONT_PX = 12
LEGEND_COLUMNS = 3
LEGEND_ROW_PX = 17
SWATCH_PX = 11
MARGIN_PX = 6
MIN_GAP_PX = 6  # between legend columns
# (label, shape, colours): every kind of thing a frame draws. Shapes: cell, small (extractor), diamond
# (junction), agent, heart, outlined (a floor colour, rimmed so that black shows).
LEGEND: tuple[tuple[str, str, tuple[tuple[int, int, int], ...]], ...] = (
    ("hub (hearts)", "cell", (OBJECT_COLOURS["hub"],)),
    ("aligner station", "cell", (OBJECT_COLOURS["aligner_station"],)),
    ("miner station", "cell", (OBJECT_COLOURS["miner_station"],)),
    ("scout station", "cell", (OBJECT_COLOURS["scout_station"],)),
    ("scrambler station", "cell", (OBJECT_COLOURS["scrambler_station"],)),
    ("extractors C O Ge Si", "small", tuple(OBJECT_COLOURS[e] for e in EXTRACTORS)),
    ("junction, neutral", "diamond", (JUNCTION_NEUTRAL,)),
    ("junction, aligned", "diamond", (JUNCTION_ALIGNED,)),
    ("wall", "cell", (WALL,)),
    ("territory (heals)", "outlined", (TERRITORY,)),
    ("black: outside territory", "outlined", (BACKGROUND,)),
    ("agent, no gear", "agent", (AGENT,)),
    ("agent: fill = gear", "agent", tuple(GEAR_COLOURS.values())),
    ("agent at hp 0", "agent", (DEAD,)),
    ("heart carried", "heart", (HEART,)),
)
_LEGEND_ROWS = -(-len(LEGEND) // LEGEND_COLUMNS)
STATUS_PX = STATUS_FONT_PX + 9
HEADER_PX = STATUS_PX + _LEGEND_ROWS * LEGEND_ROW_PX + 6  # rows above the map: the status line, the legend


def cell_size(sim: Simulation) -> int:
    """Pixels per cell for the trimmed map of ``sim``."""
    r0, r1, c0, c1 = _view(sim, list(sim.grid_objects().values()))
    return _cell(r1 - r0, c1 - c0)


def _cell(rows: int, cols: int) -> int:
    return max(MIN_CELL_PX, TARGET_PX // max(rows, cols))


def render_frame(sim: Simulation, cell: int | None = None) -> np.ndarray:
    """The current state as an RGB ``uint8`` array ``[HEADER_PX + rows * cell, max(cols * cell, legend_width()), 3]``.

    ``rows`` and ``cols`` count the map without the outer wall rings beyond ``FRAME_RING`` (walls never move,
    so every frame of an episode has the same size).
    """
    objects = list(sim.grid_objects().values())
    r0, r1, c0, c1 = _view(sim, objects)
    rows, cols = r1 - r0, c1 - c0
    cell = cell or _cell(rows, cols)
    tag_names = sim.config.game.id_map().tag_names()
    team = {o["id"] for o in objects if any(tag_names[t].startswith(TEAM_PREFIX) for t in o["tag_ids"])}

    # The static layer as one small image, scaled up: no per-cell drawing calls for ~1200 walls.
    grid = np.empty((sim.map_height, sim.map_width, 3), dtype=np.uint8)
    grid[:] = BACKGROUND
    grid[_territory_mask(sim, objects, team)] = TERRITORY
    for o in objects:
        if o["type_name"] == "wall":
            grid[o["r"], o["c"]] = WALL
        elif o["type_name"] in OBJECT_COLOURS and o["type_name"] not in EXTRACTORS:
            grid[o["r"], o["c"]] = OBJECT_COLOURS[o["type_name"]]
    world = Image.fromarray(np.ascontiguousarray(grid[r0:r1, c0:c1]))
    world = world.resize((cols * cell, rows * cell), Image.Resampling.NEAREST)

    draw = ImageDraw.Draw(world)
    inset = max(1, cell // 5)
    for o in objects:
        if o["type_name"] in EXTRACTORS:
            x, y = (o["c"] - c0) * cell, (o["r"] - r0) * cell
            draw.rectangle([x + inset, y + inset, x + cell - 1 - inset, y + cell - 1 - inset],
                           fill=OBJECT_COLOURS[o["type_name"]])
    junctions = [o for o in objects if o["type_name"] == "junction"]
    for j in junctions:
        _diamond(draw, (j["c"] - c0) * cell, (j["r"] - r0) * cell, cell,
                 JUNCTION_ALIGNED if j["id"] in team else JUNCTION_NEUTRAL)
    resources = {name: i for i, name in enumerate(sim.resource_names)}
    agents = [o for o in objects if o.get("agent_id") is not None]
    for agent in agents:  # all bodies first, then all hearts, so that no body hides a neighbour's hearts
        _agent(draw, (agent["c"] - c0) * cell, (agent["r"] - r0) * cell, cell, _agent_fill(agent, resources))
    for agent in agents:
        _hearts(draw, (agent["c"] - c0) * cell, (agent["r"] - r0) * cell, cell,
                agent["inventory"].get(resources.get("heart"), 0))

    aligned = sum(j["id"] in team for j in junctions)
    frame = Image.new("RGB", (max(world.width, legend_width()), world.height + HEADER_PX), BACKGROUND)
    frame.paste(world, ((frame.width - world.width) // 2, HEADER_PX))
    _header(ImageDraw.Draw(frame), frame.width, f"step {sim.current_step}/{sim.config.game.max_steps}    "
            f"aligned {aligned}/{len(junctions)} junctions")
    return np.asarray(frame)


def _view(sim: Simulation, objects: list[dict[str, Any]]) -> tuple[int, int, int, int]:
    """Row and column bounds ``(r0, r1, c0, c1)`` of the map without its outer all-wall rings beyond
    ``FRAME_RING`` (the arena's 5-cell wall frame keeps 1: more of the image shows the playable area)."""
    walls = np.zeros((sim.map_height, sim.map_width), dtype=bool)
    for o in objects:
        if o["type_name"] == "wall":
            walls[o["r"], o["c"]] = True
    r0, r1, c0, c1 = 0, sim.map_height, 0, sim.map_width
    while r1 - r0 > 2 * FRAME_RING + 1 and walls[r0 + FRAME_RING, c0:c1].all() and walls[r0, c0:c1].all():
        r0 += 1
    while r1 - r0 > 2 * FRAME_RING + 1 and walls[r1 - 1 - FRAME_RING, c0:c1].all() and walls[r1 - 1, c0:c1].all():
        r1 -= 1
    while c1 - c0 > 2 * FRAME_RING + 1 and walls[r0:r1, c0 + FRAME_RING].all() and walls[r0:r1, c0].all():
        c0 += 1
    while c1 - c0 > 2 * FRAME_RING + 1 and walls[r0:r1, c1 - 1 - FRAME_RING].all() and walls[r0:r1, c1 - 1].all():
        c1 -= 1
    return r0, r1, c0, c1


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


def _diamond(draw: ImageDraw.ImageDraw, x: int, y: int, cell: int, colour: tuple[int, int, int]) -> None:
    h = cell / 2
    draw.polygon([(x + h, y), (x + cell - 1, y + h), (x + h, y + cell - 1), (x, y + h)], fill=colour)


def _agent_fill(agent: dict[str, Any], resources: dict[str, int]) -> tuple[int, int, int]:
    """The colour of the gear it carries (white: none; dark red: hp 0)."""
    inventory = agent["inventory"]
    if not inventory.get(resources.get("hp"), 0):
        return DEAD
    return next((colour for gear, colour in GEAR_COLOURS.items() if inventory.get(resources.get(gear), 0)), AGENT)


def _agent(draw: ImageDraw.ImageDraw, x: int, y: int, cell: int, fill: tuple[int, int, int]) -> None:
    """A white-rimmed disc a little larger than its cell, so that it stands out from the walls it touches."""
    grow = max(1, cell // 6)
    draw.ellipse([x - grow, y - grow, x + cell - 1 + grow, y + cell - 1 + grow], fill=fill, outline=AGENT,
                 width=max(1, cell // 6))


def _hearts(draw: ImageDraw.ImageDraw, x: int, y: int, cell: int, hearts: int) -> None:
    """One red square per heart, in a row centred just above the agent's disc."""
    if hearts <= 0:
        return
    dot = max(4, cell // 3 + 1)
    width = hearts * dot + (hearts - 1)
    left, top = x + (cell - width) // 2, y - max(1, cell // 6) - dot
    for k in range(hearts):
        dx = left + k * (dot + 1)
        draw.rectangle([dx - 1, top - 1, dx + dot, top + dot], fill=BACKGROUND)
        draw.rectangle([dx, top, dx + dot - 1, top + dot - 1], fill=HEART)


def _legend_columns() -> list[float]:
    """The natural width of each legend column: its widest entry (swatches, gap, label)."""
    font = ImageFont.load_default(size=LEGEND_FONT_PX)
    widths = [(SWATCH_PX + 1) * len(colours) + 4 + font.getlength(label) for label, _, colours in LEGEND]
    return [max(widths[k::LEGEND_COLUMNS]) for k in range(LEGEND_COLUMNS)]


def legend_width() -> int:
    """The narrowest frame the legend fits; a narrower map is centred on a frame this wide (the 11 x 11
    smoke map at 43 px a cell, 473 px, is wider)."""
    return MARGIN_PX + int(sum(_legend_columns())) + (LEGEND_COLUMNS - 1) * MIN_GAP_PX + MARGIN_PX


def _header(draw: ImageDraw.ImageDraw, width: int, status: str) -> None:
    """The status line, then the legend in ``LEGEND_COLUMNS`` columns, every swatch drawn as on the map."""
    draw.text((MARGIN_PX, 4), status, fill=TEXT, font=ImageFont.load_default(size=STATUS_FONT_PX))
    font = ImageFont.load_default(size=LEGEND_FONT_PX)
    columns = _legend_columns()
    gap = (width - 2 * MARGIN_PX - sum(columns)) / (LEGEND_COLUMNS - 1)
    left = [MARGIN_PX + sum(columns[:k]) + k * gap for k in range(LEGEND_COLUMNS)]
    for i, (label, shape, colours) in enumerate(LEGEND):
        x = round(left[i % LEGEND_COLUMNS])
        y = STATUS_PX + (i // LEGEND_COLUMNS) * LEGEND_ROW_PX
        for colour in colours:
            _swatch(draw, x, y + (LEGEND_ROW_PX - SWATCH_PX) // 2, shape, colour)
            x += SWATCH_PX + 1
        draw.text((x + 3, y + 1), label, fill=TEXT, font=font)


def _swatch(draw: ImageDraw.ImageDraw, x: int, y: int, shape: str, colour: tuple[int, int, int]) -> None:
    s = SWATCH_PX
    if shape == "cell":
        draw.rectangle([x, y, x + s - 1, y + s - 1], fill=colour)
    elif shape == "small":
        draw.rectangle([x + 2, y + 2, x + s - 3, y + s - 3], fill=colour)
    elif shape == "outlined":
        draw.rectangle([x, y, x + s - 1, y + s - 1], fill=colour, outline=TEXT)
    elif shape == "diamond":
        _diamond(draw, x, y, s, colour)
    elif shape == "agent":
        draw.ellipse([x, y, x + s - 1, y + s - 1], fill=colour, outline=AGENT, width=2)
    elif shape == "heart":
        draw.rectangle([x + 2, y + 2, x + s - 3, y + s - 3], fill=colour)


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
