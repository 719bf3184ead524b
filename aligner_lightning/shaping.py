"""Refill shaping: a training-only reward for walking home while holding aligner gear and no heart.

Learned aligners level off near one fill-up of hearts: having spent the three they carry, the agents stay out,
far from the hub, for the rest of the episode (``benchmarks/behaviour.py``; docs/learning.md). The way back is
in their own observation (the global ``lp:east/west/north/south`` tokens: the offset from the spawn pad, next to
the hub), but the reward for going back (+0.5 per heart, then the alignments) comes only at the end of a walk
that PPO rarely stumbles on.

``RefillShaping`` adds ``coef x (d_before - d_after)`` to an agent's step reward, where d is the Manhattan
length of its ``lp`` offset, for every step it starts and ends holding gear and no heart (and not across an
episode's end). Over such a stretch the bonus sums to ``coef x`` (distance at its start - distance at its end):
no loop pays, walking away costs what walking back earns, and nothing is paid while loaded or without gear.
It reads only the agent's own observation tokens, so it runs on every backend and costs one pass over the
observations per step. Logged episode returns stay the env's own. Each env batch remembers its previous step
in memory only: after a resume, its first step pays nothing.
"""

from __future__ import annotations

import torch

from aligner_lightning.errors import ConfigError

GLOBAL_LOCATION = 0xFE
LP_FEATURES = ("lp:east", "lp:west", "lp:north", "lp:south")
HEART, GEAR = "inv:heart", "inv:aligner"


class RefillShaping:
    """``bonus(key, obs, done)`` for one env batch; ``key`` names the batch (its previous step is remembered)."""

    @classmethod
    def for_mission(cls, coef: float, config) -> "RefillShaping":
        """From the mission's ``MettaGridConfig`` (its observation feature ids and window)."""
        obs = config.game.obs
        return cls(coef, {f.name: f.id for f in config.game.id_map().features()},
                   self_location=(obs.height // 2) << 4 | (obs.width // 2))

    def __init__(self, coef: float, feature_ids: dict[str, int], self_location: int):
        """``self_location``: the location byte of the agent's own cell (the centre of its window)."""
        missing = [name for name in (*LP_FEATURES, HEART, GEAR) if name not in feature_ids]
        if missing:
            raise ConfigError([f"data.refill_shaping={coef}: the mission's observations lack {', '.join(missing)} "
                               "(it needs the aligner's gear, hearts and local position); set it to 0"])
        self.coef = coef
        self._self_location = self_location
        self._lp = torch.tensor([feature_ids[name] for name in LP_FEATURES], dtype=torch.uint8)
        self._heart, self._gear = feature_ids[HEART], feature_ids[GEAR]
        self._previous: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def reset(self) -> None:
        """Forget every batch's previous step (the envs were reset)."""
        self._previous.clear()

    def read(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``obs [agents, tokens, 3]`` uint8 -> (distance from the spawn pad, holding gear and no heart)."""
        if self._lp.device != obs.device:  # moved once, not at every step
            self._lp = self._lp.to(obs.device)
        location, feature, value = obs[..., 0], obs[..., 1], obs[..., 2].to(torch.int32)
        on_self = location == self._self_location
        lp = (location == GLOBAL_LOCATION) & torch.isin(feature, self._lp)
        distance = (value * lp).sum(-1)
        hearts = (value * (on_self & (feature == self._heart))).sum(-1)
        gear = (value * (on_self & (feature == self._gear))).sum(-1)
        return distance, (gear > 0) & (hearts == 0)

    def bonus(self, key: int, obs: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """The shaping reward of the step that produced ``obs`` (0 where ``done``: obs is a new episode's)."""
        distance, empty = self.read(obs)
        previous = self._previous.get(key)
        self._previous[key] = (distance, empty)
        if previous is None:
            return torch.zeros(len(obs), device=obs.device)
        before, was_empty = previous
        paid = was_empty & empty & ~done
        return self.coef * (before - distance).float() * paid
