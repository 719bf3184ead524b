"""Mission name -> builder, with validated overrides.

Each mission declares its overridable fields and their allowed values. ``make_mission`` checks every
override against that declaration, collects all problems, and raises one ``MissionError`` naming the
mission, each bad field and what it allows. Nothing is coerced or silently dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral
from typing import Any

from mettagrid.config.mettagrid_config import MettaGridConfig

from aligner_lightning.missions.aligner import AlignerParams, make_aligner_tutorial
from aligner_lightning.missions.smoke import SMOKE_DEFAULTS, make_smoke

MAX_SEED = 2**31 - 1


class MissionError(ValueError):
    """An unknown mission, or overrides a mission does not accept."""


@dataclass(frozen=True)
class IntField:
    low: int
    high: int
    optional: bool = False  # None allowed

    def check(self, value: Any) -> str | None:
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, Integral) or not self.low <= value <= self.high:
            allowed = f"an int in [{self.low}, {self.high}]" + (" or None" if self.optional else "")
            return f"must be {allowed}, got {value!r}"
        return None


@dataclass(frozen=True)
class BoolField:
    def check(self, value: Any) -> str | None:
        return None if isinstance(value, bool) else f"must be a bool (True or False), got {value!r}"


Field = IntField | BoolField


@dataclass(frozen=True)
class Mission:
    name: str
    description: str
    defaults: AlignerParams  # the mission's parameters before overrides
    build: Callable[[Any], MettaGridConfig]
    fields: dict[str, Field]

    def make(self, overrides: dict[str, Any]) -> MettaGridConfig:
        errors = [f"unknown override {key!r}" for key in overrides if key not in self.fields]
        errors += [
            f"{key} {problem}"
            for key, value in overrides.items()
            if key in self.fields and (problem := self.fields[key].check(value)) is not None
        ]
        if errors:
            allowed = ", ".join(self.fields)
            raise MissionError(
                f"mission {self.name!r}: " + "; ".join(errors) + f". Allowed overrides: {allowed}."
            )
        params = dataclasses.replace(self.defaults, **overrides)
        return self.build(params)


_COMMON_FIELDS: dict[str, Field] = {
    "max_steps": IntField(1, 100_000),
    "heart_limit": IntField(1, 255),
    "hub_hearts": IntField(0, 65_535),
    "num_tokens": IntField(32, 4096),
    "territory_obs": BoolField(),
}

_MISSIONS: dict[str, Mission] = {
    m.name: m
    for m in (
        Mission(
            name="aligner_tutorial",
            description="CoGames aligner tutorial, seed era (cogsguard_arena ... easy.aligner_rewards.braveheart)",
            defaults=AlignerParams(),
            build=make_aligner_tutorial,
            # The arena places 20 spawn pads, so at most 20 agents.
            fields={"num_agents": IntField(1, 20), "map_seed": IntField(0, MAX_SEED, optional=True), **_COMMON_FIELDS},
        ),
        Mission(
            name="smoke",
            description="aligner rules on a fixed 11 x 11 map with 4 agents and short episodes, for fast tests",
            defaults=SMOKE_DEFAULTS,
            build=make_smoke,
            fields=dict(_COMMON_FIELDS),
        ),
    )
}


def list_missions() -> list[str]:
    return list(_MISSIONS)


def make_mission(name: str, **overrides: Any) -> MettaGridConfig:
    """Build the named mission's config; raises MissionError (a ValueError) on any bad input."""
    mission = _MISSIONS.get(name)
    if mission is None:
        raise MissionError(f"unknown mission {name!r}; registered missions: {', '.join(_MISSIONS)}")
    return mission.make(overrides)
