"""A tiny world for fast trainer tests: the aligner rules on a fixed 11 x 11 map.

It keeps the aligner's observation format (same features and ids, uint8 [num_tokens, 3]) and its
Discrete(5) primary action space, so a policy built for one runs on the other. The map is ASCII, so a
reset costs no procedural generation, and every object is in view from the hub.
"""

from __future__ import annotations

from mettagrid.config.mettagrid_config import MettaGridConfig
from mettagrid.map_builder.ascii import AsciiMapBuilder

from aligner_lightning.missions.aligner import HUB_MAP_NAME, AlignerParams, game_config

NUM_AGENTS = 4
SMOKE_MAP = (
    "###########",
    "#J.......J#",
    "#.........#",
    "#....@....#",
    "#...@H@...#",
    "#....@....#",
    "#.........#",
    "#..A...J..#",
    "#.........#",
    "#J.......J#",
    "###########",
)
SMOKE_LEGEND = {"H": HUB_MAP_NAME, "A": "c:aligner", "J": "junction"}


# The aligner's rules with short episodes; num_agents and map_seed are not overridable (4 pads, a fixed map).
SMOKE_DEFAULTS = AlignerParams(num_agents=NUM_AGENTS, max_steps=96)


def make_smoke(params: AlignerParams) -> MettaGridConfig:
    map_builder = AsciiMapBuilder.Config(map_data=list(SMOKE_MAP), char_to_map_name=SMOKE_LEGEND)
    return MettaGridConfig(label="smoke", game=game_config(params, map_builder))
