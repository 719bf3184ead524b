"""What a memory horizon costs the scripted team: the local team (each agent aims only at junctions it has had in
view) with each agent forgetting what it has not seen for N steps, on held-out maps.

A student trained on 64-step segments that start from a zeroed LSTM state (batch = agents x horizon, no
``data.carry_lstm_state``) has never been trained to remember further back than 64 steps. This plays the
local team with ``ScriptedTeam(local=True, memory=N)`` for several N, and without a limit, next to the full
team, and prints junctions aligned per episode; then the shortest horizon and the whole episode again with
the teammates' claims hidden (``claims=False``: nothing in a student's observation says which junction a
teammate is heading for). The forgetful team keeps everything else the local team reads from the simulator
(walls for its paths, the hub and aligner station, which junctions are alignable), so its figure is a ceiling
for a planner that knows no more, not for a student. Asserts nothing.

    PYTHONPATH=. python benchmarks/view_memory.py [--memory 1 16 64 256] [--episodes 16]
"""

from __future__ import annotations

import argparse
import time

from aligner_lightning.episodes import EvalSettings, ScriptedActor, play_episodes, summarize
from aligner_lightning.machine import cpu_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", type=int, nargs="+", default=[1, 16, 64, 256],
                        help="horizons in steps (the local team without a limit and the full team are added)")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--mission", default="aligner_tutorial")
    parser.add_argument("--seed-base", type=int, default=1_000_000_000,
                        help="map seed of episode 0 (held out, as model.eval_seed_base)")
    args = parser.parse_args()
    # The held-out maps of train.py test: episode k plays map seed seed_base + k.
    settings = EvalSettings(episodes=args.episodes, greedy=False, seed_base=args.seed_base, replays=0, gif=False,
                            max_steps=None, state_reset=None)
    print(f"CPU: {cpu_name()}; {args.episodes} episodes, map seeds {args.seed_base}..")
    shortest = min(args.memory)
    teams = [(f"local, memory {m}", dict(local=True, memory=m)) for m in sorted(args.memory)]
    teams += [("local, whole episode", dict(local=True)), ("full knowledge", dict(local=False)),
              (f"local, memory {shortest}, claims unknown", dict(local=True, memory=shortest, claims=False)),
              ("local, whole episode, claims unknown", dict(local=True, claims=False))]
    print("| team | aligned per episode (mean +- std) | first alignment (step) | hearts taken | seconds |\n"
          "|---|---|---|---|---|")
    for name, kwargs in teams:
        start = time.perf_counter()
        actor = ScriptedActor(seed=args.seed_base, **kwargs)
        summary = summarize(play_episodes(actor, args.mission, {}, settings).episodes)
        (aligned, std), (first, _), (hearts, _) = (summary[k] for k in ("junctions_aligned", "first_alignment_step",
                                                                          "heart_gained"))
        print(f"| {name} | {aligned:.1f} +- {std:.1f} | {first:.0f} | {hearts:.1f} | "
              f"{time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
