"""What the scripted teacher costs per env step, next to the env step itself.

One trainer env (``EnvFactory``: the aligner mission, 4 agents, auto-resets included) is stepped for
``--steps`` steps, and ``ScriptedTeam.actions()`` is called before every step, as the kickstart collector does.
Two drivers, because the team's work depends on what the agents do:

- ``teacher``: the team's own actions are executed (a teacher-led env: gear, hearts, alignments, new targets);
- ``random``: uniform random actions are executed (a student-led env early in training: the team still plans
  for every agent at every step).

and three versions of the team: ``reuse`` (the default: simulator reads and distance maps reused between
steps), ``local`` (``ScriptedTeam(local=True)``, the ``scripted_local`` teacher: each agent knows only what it
has seen and explores for the rest) and ``plain`` (``ScriptedTeam(reuse=False)``: every object read and a
Python BFS from the agent at each choice of junction; the same actions as ``reuse``). Prints, per row,
microseconds per env step for the team alone and for the env step alone (mean over the steps; median of ``--repeats`` runs with different seeds), their ratio, the
alignments per 1000 steps, and the CPU model. Asserts nothing.

    PYTHONPATH=. python benchmarks/teacher_cost.py [--mission aligner_tutorial] [--steps 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from aligner_lightning.envs import EnvFactory
from aligner_lightning.missions.aligner import TEAM
from aligner_lightning.scripted import ScriptedTeam
from aligner_lightning.machine import cpu_name  # noqa: E402


def measure(mission: str, steps: int, driver: str, version: str, seed: int) -> dict[str, float]:
    env = EnvFactory(mission, {}, seed=seed, seed_stride=1, early_reset=False).make_env(0)
    env.reset()
    team = ScriptedTeam(env, seed=seed, reuse=version != "plain", local=version == "local")
    rng = np.random.default_rng(seed)
    num_actions = int(env.single_action_space.n)
    team_s = env_s = 0.0
    aligned = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        actions = team.actions()
        t1 = time.perf_counter()
        if driver == "random":
            actions = rng.integers(0, num_actions, size=env.num_agents).astype(np.int32)
        t2 = time.perf_counter()
        _, _, _, _, info = env.step(actions)
        t3 = time.perf_counter()
        team_s += t1 - t0
        env_s += t3 - t2
        if "episode_return" in info:
            aligned += info.get(f"game/{TEAM}/aligned.junction.gained", 0.0)
    sim = env.current_simulation
    if not sim.is_done():  # the episode in progress
        aligned += sim.episode_stats["game"].get(f"{TEAM}/aligned.junction.gained", 0.0)
    env.close()
    return {"team_us": team_s / steps * 1e6, "env_us": env_s / steps * 1e6, "aligned_per_1000": aligned * 1000 / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mission", default="aligner_tutorial")
    parser.add_argument("--steps", type=int, default=2000, help="env steps per run (2 episodes of the aligner)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-plain", action="store_true", help="skip the plain team (~10 ms per step)")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}; mission {args.mission}, {args.steps} env steps per run, median of {args.repeats}")
    print(f"{'driver':8} | {'team':5} | {'team us/step':>12} | {'env us/step':>11} | {'team/env':>8} | "
          f"{'aligned/1000 steps':>18}")
    for driver in ("teacher", "random"):
        for version in ("reuse", "local", "plain")[:2 if args.no_plain else 3]:
            runs = [measure(args.mission, args.steps, driver, version, seed=7 + r) for r in range(args.repeats)]
            team = statistics.median(r["team_us"] for r in runs)
            env = statistics.median(r["env_us"] for r in runs)
            aligned = statistics.median(r["aligned_per_1000"] for r in runs)
            print(f"{driver:8} | {version:5} | {team:12.0f} | {env:11.0f} | {team / env:8.2f} | "
                  f"{aligned:18.1f}", flush=True)


if __name__ == "__main__":
    main()
