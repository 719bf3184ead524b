"""Random-action env throughput: one MettaGridPufferEnv, and pufferlib's Serial vector env of 4.

Prints agent-steps/s (median of --repeats runs, auto-resets included) and the mean reset time; asserts
nothing. Reference on an idle 2-core Intel Xeon: ~36k agent-steps/s for one aligner env, ~39k for Serial x 4
(docs/performance.md).

    python benchmarks/env_throughput.py [--mission aligner_tutorial] [--steps 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pufferlib.vector
from mettagrid.envs.mettagrid_puffer_env import MettaGridPufferEnv
from mettagrid.simulator import Simulator

from aligner_lightning.missions import make_mission


def make_env_creator(mission: str):
    cfg = make_mission(mission)

    def create(buf=None, seed: int = 0) -> MettaGridPufferEnv:
        return MettaGridPufferEnv(Simulator(), cfg, buf=buf, seed=seed)

    return create


def _time_steps(env, steps: int) -> float:
    """Random-action agent-steps/s of anything with ``step``, ``num_agents`` and ``single_action_space``."""
    rng = np.random.default_rng(0)
    actions = rng.integers(0, int(env.single_action_space.n), size=(steps, env.num_agents), dtype=np.int32)
    start = time.perf_counter()
    for t in range(steps):
        env.step(actions[t])
    elapsed = time.perf_counter() - start
    env.close()
    return steps * env.num_agents / elapsed


def time_single(mission: str, steps: int) -> float:
    env = make_env_creator(mission)()
    env.reset()
    return _time_steps(env, steps)


def time_serial(mission: str, steps: int, num_envs: int) -> float:
    creator = make_env_creator(mission)
    vecenv = pufferlib.vector.Serial([creator] * num_envs, [()] * num_envs, [{}] * num_envs, num_envs)
    vecenv.reset(seed=0)
    return _time_steps(vecenv, steps)


def time_reset(mission: str, resets: int = 20) -> float:
    env = make_env_creator(mission)()
    start = time.perf_counter()
    for _ in range(resets):
        env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed / resets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mission", default="aligner_tutorial")
    parser.add_argument("--steps", type=int, default=10_000, help="env steps per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-envs", type=int, default=4)
    args = parser.parse_args()

    single = statistics.median(time_single(args.mission, args.steps) for _ in range(args.repeats))
    serial = statistics.median(time_serial(args.mission, args.steps, args.num_envs) for _ in range(args.repeats))
    reset_ms = 1000 * time_reset(args.mission)
    print(f"mission={args.mission} steps={args.steps} repeats={args.repeats}")
    print(f"single env:             {single:10,.0f} agent-steps/s")
    print(f"pufferlib Serial x {args.num_envs}:   {serial:10,.0f} agent-steps/s")
    print(f"reset:                  {reset_ms:10.1f} ms")


if __name__ == "__main__":
    main()
