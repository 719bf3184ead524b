"""The names of the mission's stats: the one place where they are spelled.

mettagrid keeps stats by name. ``missions/aligner.py`` writes them (``logStatToGame``, ``logActorAgentStat``,
reward terms), and the episode summary (``envs.EpisodeSummary``) reads them for training and evaluation.
Game stats are one value per episode (``sim.episode_stats["game"]``); agent stats one value per agent
(``sim.episode_stats["agent"][i]``). Plain strings, no imports: the torch-free missions import this module.
"""

from __future__ import annotations

TEAM = "cogs"

# -- game stats ----------------------------------------------------------------------------------------------
ALIGNED = f"{TEAM}/aligned.junction"  # junctions in the team's network now (the hub not counted), set every tick
ALIGNED_GAINED = f"{ALIGNED}.gained"  # alignments made
ALIGNED_LOST = f"{ALIGNED}.lost"  # junctions scrambled away (needs a second team: 0 in this mission)
ALIGNED_HELD = f"{ALIGNED}.held"  # ALIGNED summed over the ticks
HEART_WITHDRAWN = f"{TEAM}/heart.withdrawn"  # hub bumps that asked for a heart (at the cap too)


def withdrawn(element: str) -> str:
    """Game stat: elements the hub spent crafting hearts."""
    return f"{TEAM}/{element}.withdrawn"


def hub_amount(resource: str) -> str:
    """Game stat: what the hub holds of ``resource``, set every tick."""
    return f"{TEAM}/{resource}.amount"


# -- agent stats ---------------------------------------------------------------------------------------------
ALIGNED_BY_AGENT = "junction.aligned_by_agent"  # alignments this agent made (rewarded)
SCRAMBLED_BY_AGENT = "junction.scrambled_by_agent"
NETWORK_HELD = "aligned_junction_held"  # network members (hub included) summed over ticks: the objective's stat
DEATH = "death"  # times this agent's hp reached 0


def gained(item: str) -> str:
    """Agent stat: units of ``item`` that entered the agent's inventory."""
    return f"{item}.gained"


def lost(item: str) -> str:
    """Agent stat: units of ``item`` that left the agent's inventory (spent, or dropped at hp 0)."""
    return f"{item}.lost"
