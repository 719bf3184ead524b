"""What the world is: mettagrid configs for the missions, built by name. Imports no torch."""

from aligner_lightning.missions.registry import MissionError, list_missions, make_mission

__all__ = ["MissionError", "list_missions", "make_mission"]
