"""The mission's reference figures: the privileged scripted team and the random baseline, played by the episode
runner (aligner_lightning.episodes) on the arena's maps, one full episode per map.

    python benchmarks/reference_figures.py [--maps 0 1 2] [--random_maps 10]

Map seed s is the ``map_seed`` override; the env's reset plays the generator's map for s + 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aligner_lightning import stats  # noqa: E402
from aligner_lightning.datamodule import RolloutDataModule  # noqa: E402
from aligner_lightning.envs import EnvFactory  # noqa: E402
from aligner_lightning.episodes import RandomActor, ScriptedActor, play_episode  # noqa: E402


def env_factory(map_seed: int) -> EnvFactory:
    """The trainer's env for one map, without its early reset (a full episode)."""
    dm = RolloutDataModule(mission="aligner_tutorial", mission_overrides={"map_seed": map_seed}, early_reset=False)
    return dm.factory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, nargs="+", default=[0, 1, 2], help="map seeds for the scripted team")
    parser.add_argument("--random_maps", type=int, default=10, help="random baseline: map seeds 0 .. n-1")
    args = parser.parse_args()

    print("scripted team\n| map_seed | aligned | first alignment | held (summed over ticks) | hearts withdrawn | "
          "return (mean +- std over agents) |\n|---|---|---|---|---|---|")
    for seed in args.maps:
        info = play_episode(ScriptedActor(), env_factory(seed)).info
        held = info["aligned_held_avg"] * info["episode_length"]
        print(f"| {seed} | {info['junctions_aligned']:.0f} | step {info['first_alignment_step']:.0f} | {held:,.0f} | "
              f"{info.get('game/' + stats.HEART_WITHDRAWN, 0):.0f} | "
              f"{info['episode_return']:.1f} +- {info['return_std_agents']:.1f} |")

    episodes = [play_episode(RandomActor(seed=s), env_factory(s)).info for s in range(args.random_maps)]
    returns = np.array([e["episode_return"] for e in episodes])
    print(f"\nrandom baseline (uniform over all action names), {len(episodes)} maps: "
          f"{sum(e['junctions_aligned'] for e in episodes):.0f} alignments, per-agent return "
          f"{returns.mean():.2f} +- {returns.std():.2f} (over episodes)")


if __name__ == "__main__":
    main()
