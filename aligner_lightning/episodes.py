"""Whole episodes played by an actor: the one episode runner, and what is made of its episodes.

``play_episode`` plays one full episode (no early reset) in an env built by the trainer's ``EnvFactory``, so
observations, action indices and the per-episode metrics (``envs.METRICS``, from ``envs.EpisodeSummary``)
are exactly the trainer's. Evaluation on held-out maps (``play_episodes``), the scripted reference team and
the tests all play through it. ``summarize`` and ``format_table`` turn episodes into means and a table.

Held-out maps. Episode k of ``play_episodes`` is built with map seed ``seed_base + episode_offset + k``;
``episode_offset`` lets DDP ranks play disjoint seeds (rank r: ``r * episodes``). As for every env, the reset
plays the generator's map for that seed + 1 (docs/mission.md, "Map seeds and episodes"). Training env i starts
at map seed ``42 + i * seed_stride`` and advances by one per episode, so training plays seeds in the thousands
to millions; a ``seed_base`` of 10^9 (the default of ``model.eval_seed_base``) keeps evaluation maps out of that
range. Missions with a fixed map (``smoke``) replay their map; the seed then varies the simulation's randomness.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch
from mettagrid.envs.mettagrid_puffer_env import MettaGridPufferEnv
from mettagrid.simulator.replay_log_writer import ReplayLogWriter

from aligner_lightning.envs import METRICS, EnvFactory
from aligner_lightning.errors import raise_if
from aligner_lightning.missions.registry import MAX_SEED
from aligner_lightning.policy import AlignerPolicy
from aligner_lightning.policy_spec import state_reset_problem
from aligner_lightning.render import render_frame
from aligner_lightning.replay_log import NamedReplayWriter
from aligner_lightning.scripted import ScriptedTeam

HELD_OUT_MIN_SEED = 1_000_000  # below this, evaluation maps may be maps that training played


class Actor(Protocol):
    """Chooses every agent's action from the observations (and, for privileged actors, the env)."""

    def reset(self, num_agents: int) -> None: ...

    def act(self, obs: np.ndarray, env: MettaGridPufferEnv) -> np.ndarray:
        """``obs [agents, tokens, 3]`` uint8 -> int32 actions ``[agents]`` for ``env.step``."""
        ...


class PolicyActor:
    """The trained policy. Samples from its softmax like cogames' ``TutorialPolicy`` (argmax if ``greedy``).

    The recurrent state starts from zeros at ``reset`` and carries over the whole episode, or, with
    ``state_reset`` N, starts from zeros again every N steps (as a training rollout does at each epoch's start).
    ``generator`` (on the policy's device) makes the sampling reproducible, and keeps it off the global RNG that
    training draws from. ``last_logits`` holds the logits of the latest ``act`` (for analyses that compare them
    with a teacher).
    """

    def __init__(self, policy: AlignerPolicy, device: torch.device | str | None = None, greedy: bool = False,
                 generator: torch.Generator | None = None, state_reset: int | None = None):
        if problem := state_reset_problem(state_reset):
            raise ValueError(problem)
        self.policy = policy
        self.device = torch.device(device) if device is not None else next(policy.parameters()).device
        self.greedy = greedy
        self.generator = generator
        self.state_reset = state_reset
        self._state: tuple[torch.Tensor, torch.Tensor] | None = None
        self._steps = 0
        self.last_logits: torch.Tensor | None = None

    def reset(self, num_agents: int) -> None:
        self._state = self.policy.initial_state(num_agents, self.device)
        self._num_agents, self._steps = num_agents, 0

    @torch.inference_mode()
    def act(self, obs: np.ndarray, env: MettaGridPufferEnv) -> np.ndarray:
        if self._state is None:
            raise RuntimeError("PolicyActor.act before reset")
        if self.state_reset is not None and self._steps and self._steps % self.state_reset == 0:
            self._state = self.policy.initial_state(self._num_agents, self.device)
        self._steps += 1
        logits, _, self._state = self.policy.step(torch.from_numpy(obs).to(self.device), self._state)
        self.last_logits = logits
        if self.greedy:
            actions = logits.argmax(dim=-1)
        else:
            actions = torch.multinomial(logits.softmax(dim=-1), 1, generator=self.generator).squeeze(-1)
        return actions.to(torch.int32).cpu().numpy()


class ScriptedActor:
    """The privileged scripted team (reads the full simulator state): the mission's upper reference.
    ``local``: the team's local mode (each agent knows only the junctions it has seen; with ``memory``, only
    within its last ``memory`` steps); ``claims=False``: teammates' claims on junctions unknown."""

    def __init__(self, seed: int = 0, local: bool = False, memory: int | None = None, claims: bool = True):
        self.seed, self.local, self.memory, self.claims = seed, local, memory, claims
        self._team: ScriptedTeam | None = None

    def reset(self, num_agents: int) -> None:
        self._team = None  # built on the first act, when the env is known

    def act(self, obs: np.ndarray, env: MettaGridPufferEnv) -> np.ndarray:
        if self._team is None:
            self._team = ScriptedTeam(env, seed=self.seed, local=self.local, memory=self.memory,
                                      claims=self.claims)
        return self._team.actions()


class RandomActor:
    """Uniform over all action names (noop, 4 moves and the vibe changes, which leave the body still): the
    random baseline. The env decodes index ``i >= 5`` as noop + vibe ``i - 5``."""

    def __init__(self, seed: int = 0):
        self._rng = np.random.default_rng(seed)

    def reset(self, num_agents: int) -> None:
        pass

    def act(self, obs: np.ndarray, env: MettaGridPufferEnv) -> np.ndarray:
        names = env.current_simulation.action_names
        return self._rng.integers(0, len(names), size=obs.shape[0]).astype(np.int32)


@dataclass
class Episode:
    info: dict[str, float]  # the episode's summary (envs.EpisodeSummary): the METRICS and every raw stat
    frames: list[np.ndarray] = field(default_factory=list)  # RGB uint8 [H, W, 3], if recorded

    @property
    def metrics(self) -> dict[str, float]:
        """One value per key of envs.METRICS."""
        return {k: self.info[k] for k in METRICS}


def play_episode(actor: Actor, factory: EnvFactory, replay_writer: ReplayLogWriter | None = None,
                 frame_stride: int = 0) -> Episode:
    """One full episode in env 0 of ``factory`` (whose ``early_reset`` should be off).

    ``replay_writer`` records a MettaScope replay; ``frame_stride`` > 0 renders the start, every
    ``frame_stride``-th step and the last step.
    """
    env = factory.make_env(0, handlers=[replay_writer] if replay_writer is not None else [])
    try:
        obs, _ = env.reset()
        sim = env.current_simulation
        actor.reset(sim.num_agents)
        frames = [render_frame(sim)] if frame_stride else []
        done = False
        while not done:
            obs, _, terminals, truncations, info = env.step(actor.act(obs, env))
            done = bool(terminals.all() or truncations.all())
            if frame_stride and (done or sim.current_step % frame_stride == 0):
                frames.append(render_frame(sim))
        return Episode(dict(info), frames)
    finally:
        env.close()


@dataclass
class EvalSettings:
    """How to evaluate (the model's ``eval_*`` arguments). Validated on construction; all problems at once."""

    episodes: int
    greedy: bool  # argmax instead of sampling (PolicyActor)
    seed_base: int  # episode k: map seed seed_base + episode_offset + k (held out)
    replays: int  # the first `replays` episodes are saved as MettaScope replays
    gif: bool  # record frames of episode 0 for an animated GIF
    max_steps: int | None  # episode length override (None: the mission's)
    state_reset: int | None  # zero the policy's recurrent state every n steps (None: carry it over)
    frame_stride: int = 10  # record every n-th step (1000 full 480 px frames would take ~700 MB)

    def __post_init__(self) -> None:
        p = []
        if not _is_int(self.episodes) or self.episodes < 1:
            p.append(f"episodes={self.episodes!r}: must be an int >= 1")
        if not _is_int(self.seed_base) or not 0 <= self.seed_base <= MAX_SEED:
            p.append(f"seed_base={self.seed_base!r}: must be an int in [0, {MAX_SEED}]")
        if not _is_int(self.replays) or not 0 <= self.replays <= (self.episodes if _is_int(self.episodes) else 0):
            p.append(f"replays={self.replays!r}: must be an int in [0, episodes]")
        if self.max_steps is not None and (not _is_int(self.max_steps) or self.max_steps < 1):
            p.append(f"max_steps={self.max_steps!r}: must be an int >= 1 or None")
        if problem := state_reset_problem(self.state_reset):
            p.append(problem)
        if not _is_int(self.frame_stride) or self.frame_stride < 1:
            p.append(f"frame_stride={self.frame_stride!r}: must be an int >= 1")
        for name in ("greedy", "gif"):
            if not isinstance(getattr(self, name), bool):
                p.append(f"{name}={getattr(self, name)!r}: must be a bool")
        raise_if(p)
        if self.seed_base < HELD_OUT_MIN_SEED:
            warnings.warn(f"seed_base={self.seed_base} is below {HELD_OUT_MIN_SEED}: evaluation maps may be maps "
                          "that training played", stacklevel=2)


@dataclass
class EvalResult:
    episodes: list[dict[str, float]] = field(default_factory=list)  # the metrics of each episode
    replay_paths: list[Path] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)  # RGB uint8 [H, W, 3] of episode 0


def play_episodes(actor: Actor, mission: str, overrides: dict[str, Any], settings: EvalSettings,
                  replay_dir: Path | None = None, episode_offset: int = 0) -> EvalResult:
    """Play ``settings.episodes`` episodes of ``mission`` on held-out maps and measure each one.

    ``overrides`` are the mission overrides of the run; a ``map_seed`` in them is replaced by the held-out
    seeds. Replays of the first ``settings.replays`` episodes go to ``replay_dir`` (none if it is None), and
    frames are taken of episode 0 if ``settings.gif`` (under DDP, ranks other than 0 can turn both off).
    """
    if not _is_int(episode_offset) or episode_offset < 0:
        raise ValueError(f"episode_offset={episode_offset!r}: must be an int >= 0")
    last_seed = settings.seed_base + episode_offset + settings.episodes  # the env's reset plays seed + 1
    if last_seed > MAX_SEED:
        raise ValueError(f"map seeds up to {last_seed} exceed {MAX_SEED}: lower seed_base or episode_offset")
    overrides = {k: v for k, v in overrides.items() if k != "map_seed"}
    if settings.max_steps is not None:
        overrides["max_steps"] = settings.max_steps
    if replay_dir is not None and settings.replays:
        replay_dir = Path(replay_dir)
        replay_dir.mkdir(parents=True, exist_ok=True)

    result = EvalResult()
    for k in range(settings.episodes):
        seed = settings.seed_base + episode_offset + k
        name = f"{mission}_seed{seed}"
        writer = NamedReplayWriter(str(replay_dir), name) if replay_dir is not None and k < settings.replays else None
        stride = settings.frame_stride if settings.gif and k == 0 else 0
        factory = EnvFactory(mission, overrides, seed=seed, seed_stride=1, early_reset=False)
        episode = play_episode(actor, factory, writer, stride)
        result.episodes.append(episode.metrics)
        result.frames.extend(episode.frames)
        if writer is not None:
            (written,) = writer.get_written_replay_paths()  # <replay_dir>/<name>.json.z
            result.replay_paths.append(Path(written))
    return result


def summarize(episodes: Sequence[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and population standard deviation of each metric over the episodes (the keys all of them have)."""
    if not episodes:
        raise ValueError("summarize: no episodes")
    keys = [k for k in episodes[0] if all(k in e for e in episodes)]
    values = {k: np.array([e[k] for e in episodes], dtype=np.float64) for k in keys}
    return {k: (float(v.mean()), float(v.std())) for k, v in values.items()}


def format_table(summary: Mapping[str, tuple[float, float]], n: int) -> str:
    """A fixed-width table: metric | mean | std | n (``n`` episodes)."""
    width = max([len("metric"), *map(len, summary)])
    lines = [f"{'metric':<{width}} | {'mean':>10} | {'std':>10} | {'n':>4}",
             f"{'-' * width}-+-{'-' * 10}-+-{'-' * 10}-+-{'-' * 4}"]
    lines += [f"{k:<{width}} | {m:>10.3f} | {s:>10.3f} | {n:>4}" for k, (m, s) in summary.items()]
    return "\n".join(lines)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
