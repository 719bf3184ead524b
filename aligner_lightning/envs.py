"""Env factory and PufferLib vector env, seeded per (seed, rank, env index).

Seeding follows the tutorial: env i is reset with ``seed + i`` and its map generator starts at the same
number; mettagrid then adds one per episode, so with ``seed_stride=1`` env i+1 replays env i's maps one
episode later (exactly what PuffeRL + the notebook did). ``seed_stride`` > 1 spaces the streams apart.
Ranks continue the numbering: global env index = rank * num_envs + i, so no two ranks share a stream start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pufferlib.vector as pvector
from mettagrid.config.mettagrid_config import MettaGridConfig
from mettagrid.envs.early_reset_handler import EarlyResetHandler
from mettagrid.envs.mettagrid_puffer_env import MettaGridPufferEnv
from mettagrid.mapgen.mapgen import MapGen
from mettagrid.policy.policy_env_interface import PolicyEnvInterface
from mettagrid.simulator import Simulator, SimulatorEventHandler
from pufferlib.pufferlib import set_buffers

from aligner_lightning import stats
from aligner_lightning.log import rank_zero_info
from aligner_lightning.missions import make_mission
from aligner_lightning.missions.aligner import GEAR

BACKENDS = ("serial", "multiprocessing", "auto")
EPOCH_SEED_STRIDE = 100_003  # reset_envs_each_epoch: epoch e's seeds are the env's seed + e * this


# Per-episode metrics: training logs their means as ``environment/<key>``, evaluation as ``eval/<key>``.
METRICS: dict[str, str] = {
    "episode_return": "mean over agents of the episode return",
    "return_std_agents": "standard deviation over agents of the episode return",
    "episode_length": "steps played",
    "junctions_aligned": f"alignments the team made (game stat {stats.ALIGNED_GAINED})",
    "aligned_held_avg": f"junctions in the team's network on an average step ({stats.ALIGNED_HELD} / steps)",
    "first_alignment_step": "step of the team's first alignment; the episode length if there was none",
    "heart_gained": "hearts the agents took from the hub, summed over agents",
    "heart_lost": "hearts that left the agents (spent on an alignment, or dropped at hp 0), summed over agents",
    "aligner_gained": "aligner gear picked up, summed over agents",
    "aligner_lost": "aligner gear given up for other gear or dropped at hp 0, summed over agents",
    "other_gear_gained": "gear other than aligner picked up (each one penalised), summed over agents",
    "deaths": "times an agent's hp reached 0, summed over agents",
}


# Info keys that are constants of the map or of the observation encoder, not of play: never logged.
CONSTANT_STATS = ("game/objects.", "game/tokens_")


def tensorboard_tag(info_key: str) -> str | None:
    """Where training logs the per-episode mean of an episode-info value: the METRICS as ``environment/<key>``,
    the rest of mettagrid's stats as ``env_stats/<key>``, and the CONSTANT_STATS nowhere (None)."""
    if info_key in METRICS:
        return f"environment/{info_key}"
    if info_key.startswith(CONSTANT_STATS):
        return None
    return f"env_stats/{info_key}"


class EpisodeSummary(SimulatorEventHandler):
    """Puts a flat summary of each finished episode into the env's info dict; training and evaluation read it.

    The info holds the METRICS, every game stat as ``game/<stat>`` and the per-agent mean of every agent stat
    as ``agent/<stat>`` (mettagrid's StatsTracker would also dump the whole config and the timers).
    """

    def on_episode_start(self) -> None:
        self._first_alignment: int | None = None
        self._sim._context["infos"] = {}

    def on_step(self) -> None:
        # get_game_stat reads one stat (under a microsecond); sim.episode_stats would build every dict (~35 us).
        if self._first_alignment is None and self._sim._c_sim.get_game_stat(stats.ALIGNED_GAINED):
            self._first_alignment = self._sim.current_step

    def on_episode_end(self) -> None:
        sim = self._sim
        episode = sim.episode_stats
        game, agents = episode["game"], episode["agent"]
        totals: dict[str, float] = {}
        for agent_stats in agents:
            for k, v in agent_stats.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        returns = np.asarray(sim.episode_rewards, dtype=np.float64)
        steps = float(sim.current_step)
        info = {
            "episode_return": float(returns.mean()),
            "return_std_agents": float(returns.std()),
            "episode_length": steps,
            "junctions_aligned": float(game.get(stats.ALIGNED_GAINED, 0.0)),
            "aligned_held_avg": float(game.get(stats.ALIGNED_HELD, 0.0)) / max(steps, 1.0),
            "first_alignment_step": float(steps if self._first_alignment is None else self._first_alignment),
            "heart_gained": totals.get(stats.gained("heart"), 0.0),
            "heart_lost": totals.get(stats.lost("heart"), 0.0),
            "aligner_gained": totals.get(stats.gained("aligner"), 0.0),
            "aligner_lost": totals.get(stats.lost("aligner"), 0.0),
            "other_gear_gained": sum(totals.get(stats.gained(g), 0.0) for g in GEAR if g != "aligner"),
            "deaths": totals.get(stats.DEATH, 0.0),
        }
        info.update({f"game/{k}": float(v) for k, v in game.items()})
        info.update({f"agent/{k}": v / len(agents) for k, v in totals.items()})
        sim._context["infos"] = info


@dataclass
class EnvFactory:
    """Picklable env constructor (Multiprocessing workers call it in their own process). The fields are
    ``RolloutDataModule``'s arguments of the same names (``data.seed``, ``data.early_reset``, ...)."""

    mission: str
    overrides: dict[str, Any]
    seed: int
    seed_stride: int
    early_reset: bool  # end each env's first episode at a random step, as the tutorial did
    first_env: int = 0  # global index of this rank's env 0 (rank * num_envs; the datamodule sets it per rank)

    def config(self) -> MettaGridConfig:
        return make_mission(self.mission, **self.overrides)

    def env_seed(self, env_index: int) -> int:
        return self.seed + (self.first_env + env_index) * self.seed_stride

    def make_env(self, env_index: int = 0, buf: Any = None,
                 handlers: Sequence[SimulatorEventHandler] = ()) -> "SeededPufferEnv":
        """Env ``env_index`` of this rank, seeded with ``env_seed(env_index)`` (its map generator too, unless the
        overrides fix ``map_seed``). ``handlers`` are added to its simulator after the episode summary."""
        cfg = self.config()
        env_seed = self.env_seed(env_index)
        builder = cfg.game.map_builder
        if isinstance(builder, MapGen.Config) and "map_seed" not in self.overrides:
            builder.seed = env_seed
        # Always installed: it also cuts a resumed env's replayed episode (restore_seed_state). Without
        # data.early_reset it never draws a step of its own.
        early = EarlyResetHandler()
        early._should_early_reset = self.early_reset
        simulator = Simulator()
        for handler in [EpisodeSummary(), early, *handlers]:
            simulator.add_event_handler(handler)
        env = SeededPufferEnv(simulator, cfg, buf=buf, seed=env_seed)
        env.early_reset_handler = early
        set_buffers(env, buf)
        return env

    def __call__(self, buf: Any = None, seed: int | None = 0) -> "SeededPufferEnv":
        """PufferLib's vector backends build env i as ``creator(buf=..., seed=i)`` (``pufferlib.vector.make``'s
        seed 0 plus the env's index): the keyword is theirs, the value is an env index."""
        return self.make_env(seed or 0, buf)


class SeededPufferEnv(MettaGridPufferEnv):
    """Keeps the seed it was built with: PufferLib's ``async_reset(seed)`` hands every env ``seed + i`` (and
    Multiprocessing workers overlapping ranges), which would override the (seed, rank, env index) scheme."""

    early_reset_handler: EarlyResetHandler | None = None

    def reset(self, seed: int | None = None):
        return super().reset(None)

    def seed_state(self) -> dict[str, Any]:
        """What a resumed env needs to continue this env's map stream: the map-seed offset of the episode in
        progress, the state of the one-off early reset, and how many steps that episode has left."""
        early = self.early_reset_handler
        return {
            "map_seed_offset": max(self._simulator._map_seed_offset - 1, 0),
            "early_reset": None if early is None else [early._should_early_reset, early._early_reset_step],
            "steps_left": self.steps_left(),
        }

    def steps_left(self) -> int:
        """Steps until the episode in progress ends: at the pending early reset, else at max_steps (0: it has
        ended, and the next step starts a new one)."""
        sim = self._sim
        if sim is None or sim._c_sim.terminals().all() or sim._c_sim.truncations().all():
            return 0
        early = self.early_reset_handler
        end = sim.config.game.max_steps
        if early is not None and early._early_reset_step is not None:
            end = min(end, early._early_reset_step)
        return max(end - sim.current_step, 0)

    def reseed(self, epoch: int) -> None:
        """Seeds for the next reset derived from (env seed, epoch): the deterministic-resume mode."""
        self._epoch_base_seed = getattr(self, "_epoch_base_seed", self._current_seed)
        self._current_seed = self._epoch_base_seed + epoch * EPOCH_SEED_STRIDE
        self._simulator._map_seed_offset = epoch * EPOCH_SEED_STRIDE

    def restore_seed_state(self, state: dict[str, Any], keep_phase: bool = True) -> None:
        """Takes effect at the next reset, which replays the interrupted episode's map from its start.

        With ``keep_phase`` that replayed episode is cut after the steps the interrupted one had left, so every
        env's episodes end where they would have: the envs stay out of step with each other, as the early reset
        left them. (Restarting them all at step 0 would put every env in the same phase of its episode for the
        rest of the run, each rollout covering one stretch of the episode.) A checkpoint that does not record
        ``steps_left`` (written by an earlier version) gets a fresh early reset instead, at a random step."""
        self._simulator._map_seed_offset = int(state["map_seed_offset"])
        early = self.early_reset_handler
        if early is None:
            return
        left = state.get("steps_left")
        if keep_phase and left:
            early._should_early_reset, early._early_reset_step = False, int(left)
        elif keep_phase and "steps_left" not in state and state["early_reset"] is not None:
            early._should_early_reset, early._early_reset_step = True, None
        elif state["early_reset"] is not None:
            # Both fields: construction already drew a step for the first episode, which may not have come yet.
            early._should_early_reset, early._early_reset_step = state["early_reset"]


def vecenv_seed_state(vecenv) -> list[dict[str, Any]] | None:
    """Per-env seeding state of an in-process (Serial) vector env; None where envs live in worker processes."""
    envs = getattr(vecenv, "envs", None)
    if envs is None or not all(isinstance(e, SeededPufferEnv) for e in envs):
        return None
    return [env.seed_state() for env in envs]


def reseed_vecenv(vecenv, epoch: int) -> None:
    for env in vecenv.envs:
        env.reseed(epoch)


def restore_vecenv_seed_state(vecenv, states: list[dict[str, Any]], keep_phase: bool = True) -> bool:
    envs = getattr(vecenv, "envs", None)
    if envs is None or len(envs) != len(states):
        return False
    for env, state in zip(envs, states):
        env.restore_seed_state(state, keep_phase)
    return True


def env_interface(factory: EnvFactory) -> PolicyEnvInterface:
    return PolicyEnvInterface.from_mg_cfg(factory.config())


def resolve_backend(backend: str, num_envs: int, num_workers: int | None, quiet: bool = False) -> tuple[str, int]:
    """``auto``: Multiprocessing only with >= 4 cores (its workers busy-wait, which starves torch on fewer)."""
    if backend != "auto":
        return backend, num_workers or 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores < 4 or num_envs < 2:
        choice = ("serial", 1)
    else:
        workers = max(w for w in range(1, min(cores // 2, num_envs) + 1) if num_envs % w == 0)
        choice = ("multiprocessing", workers)
    if not quiet:
        rank_zero_info(f"data.backend=auto: {cores} cores, {num_envs} envs -> {choice[0]} with {choice[1]} worker(s)")
    return choice


def make_vecenv(
    factory: EnvFactory,
    num_envs: int,
    backend: str = "serial",
    num_workers: int | None = None,
    env_batch_size: int | None = None,
):
    """Serial: all envs stepped in this process. Multiprocessing: ``num_workers`` processes; an
    ``env_batch_size`` below ``num_envs`` lets env stepping overlap with inference."""
    auto = backend == "auto"
    backend, workers = resolve_backend(backend, num_envs, num_workers)
    if backend == "serial":
        return pvector.make(factory, num_envs=num_envs, backend=pvector.Serial)
    if auto and env_batch_size is None and (num_envs // 2) % (num_envs // workers) == 0:
        env_batch_size = num_envs // 2  # two batches in flight: one steps while the other is inferred
    return pvector.make(
        factory,
        num_envs=num_envs,
        backend=pvector.Multiprocessing,
        num_workers=workers,
        batch_size=env_batch_size or num_envs,
    )
