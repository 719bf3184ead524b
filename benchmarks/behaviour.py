"""Where a team's time goes: what the agents of a checkpoint (or the scripted team) are doing, step by step.

Plays held-out episodes, as ``train.py test`` does (sampled actions, or ``--greedy``; map seeds from
``--seed-base``), and reads the simulator after every step. Each agent-step falls in one phase:

- ``no gear``: the agent has no aligner gear (fetching it, or lost it at hp 0);
- ``loaded, junction in view``: gear and at least one heart, and an alignable neutral junction within its
  observation window (the 121 cells it sees);
- ``loaded, none in view``: gear and hearts, no alignable junction in view (searching);
- ``empty, hub in view`` / ``empty, hub out of view``: gear and no heart (to refill, it must go back to the hub).

Per actor it prints the share of agent-steps in each phase, the hearts taken and alignments per episode, the
trips to the hub per agent (a trip: hearts taken after the agent had spent all it carried), the mean walking
distance to the hub while empty, how many of the steps taken empty-handed end nearer the agent's spawn pad and
how many farther (the walk home that ``data.refill_shaping`` pays), the step of the team's last alignment, and
the alignable junctions still neutral at the end. Asserts nothing.

``--teacher scripted|scripted_local`` also runs that scripted team in the shadow of a checkpoint's agents, as
the kickstart teacher labels the student's own states: at every step it reads the simulator and chooses its
action for each agent, and the script prints, per phase of the state the agent was in, how often the policy's
most likely action is the teacher's, and how often it is one of the moves as short as the teacher's
(``ScriptedTeam.moves``), over the steps where the teacher was not idle. It shows which part of the
teacher's behaviour a student copies and which it cannot.

    PYTHONPATH=. python benchmarks/behaviour.py CKPT [CKPT ...] [--scripted] [--episodes 8]
    PYTHONPATH=. python benchmarks/behaviour.py CKPT --teacher scripted_local
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from aligner_lightning.envs import EnvFactory
from aligner_lightning.episodes import PolicyActor, ScriptedActor
from aligner_lightning.export import load_policy_checkpoint
from aligner_lightning.machine import cpu_name
from aligner_lightning.missions.aligner import NET_TAG, TEAM_TAG
from aligner_lightning.policy_spec import build_policy
from aligner_lightning.scripted import VIEW_RADIUS2, ScriptedTeam, alignable, blocked_cells, walking_distances

PHASES = ("no gear", "loaded, junction in view", "loaded, none in view", "empty, hub in view",
          "empty, hub out of view")


def policy_actor(ckpt: str, seed: int, greedy: bool = False, state_reset: int | None = None) -> PolicyActor:
    """The checkpoint's policy; its recurrent state zeroed every ``state_reset`` steps (default: as its run
    evaluated, ``model.eval_state_reset``)."""
    weights, info, spec, saved_reset = load_policy_checkpoint(ckpt)
    policy = build_policy(spec, info)
    policy.load_state_dict(weights)
    policy.eval()
    return PolicyActor(policy, "cpu", greedy=greedy, generator=torch.Generator().manual_seed(seed),
                       state_reset=saved_reset if state_reset is None else state_reset)


def label(ckpt: str) -> str:
    """``<run>/<file>`` for a checkpoint under ``<run>/checkpoints/``, else the path as given."""
    path = Path(ckpt)
    return f"{path.parent.parent.name}/{path.name}" if path.parent.name == "checkpoints" else ckpt


def in_view(a: tuple[int, int], b: tuple[int, int]) -> bool:
    dr, dc = a[0] - b[0], a[1] - b[1]
    return abs(dr) <= 6 and abs(dc) <= 6 and dr * dr + dc * dc <= VIEW_RADIUS2


def trace_episode(actor, mission: str, seed: int, teacher: str | None = None) -> dict:
    """One episode: phase counts over agent-steps, and per-episode totals. With ``teacher`` (a PolicyActor
    only), also the teacher's labels against the policy's argmax, counted by phase."""
    env = EnvFactory(mission, {}, seed=seed, seed_stride=1, early_reset=False).make_env(0)
    try:
        obs, _ = env.reset()
        sim = env.current_simulation
        actor.reset(sim.num_agents)
        tags = {name: i for i, name in enumerate(sim.config.game.id_map().tag_names())}
        objects = sim.grid_objects()
        hub_obj = next(o for o in objects.values() if o["type_name"] == "hub")
        hub = (hub_obj["r"], hub_obj["c"])
        hub_dist = walking_distances(blocked_cells(sim), hub)
        phases: Counter = Counter()
        hearts_prev = np.zeros(sim.num_agents, dtype=int)
        spent_out = np.zeros(sim.num_agents, dtype=bool)  # carried hearts once and has none now
        trips = np.zeros(sim.num_agents, dtype=int)
        geared = np.zeros(sim.num_agents, dtype=bool)
        spawn = {o["agent_id"]: (o["r"], o["c"]) for o in objects.values() if o.get("agent_id") is not None}
        last: dict[int, tuple[int, bool]] = {}  # agent -> (distance from its spawn, empty) at the previous step
        toward = away = 0
        taken = 0
        empty_dist: list[float] = []
        last_align, aligned_prev = 0, 0
        shadow = ScriptedTeam(env, seed=seed, local=teacher == "scripted_local") if teacher else None
        phase_now = ["no gear"] * sim.num_agents  # every agent spawns without gear
        labelled, agreed, shortest = Counter(), Counter(), Counter()
        done = False
        while not done:
            label_actions = shadow.actions() if shadow else None
            actions = actor.act(obs, env)
            if shadow:
                greedy = actor.last_logits.argmax(dim=-1).cpu().numpy()
                for i in np.flatnonzero(~shadow.idle):
                    labelled[phase_now[i]] += 1
                    agreed[phase_now[i]] += int(greedy[i] == label_actions[i])
                    shortest[phase_now[i]] += int(shadow.moves[i] >> int(greedy[i]) & 1)
            obs, _, terminals, truncations, _ = env.step(actions)
            done = bool(terminals.all() or truncations.all())
            objects = sim.grid_objects(ignore_types=["wall"])
            net = [(o["r"], o["c"]) for o in objects.values() if tags[NET_TAG] in o["tag_ids"]]
            junctions = [o for o in objects.values() if o["type_name"] == "junction"]
            neutral = [(o["r"], o["c"]) for o in junctions if tags[TEAM_TAG] not in o["tag_ids"]
                       and alignable((o["r"], o["c"]), hub, net)]
            aligned = sum(tags[TEAM_TAG] in o["tag_ids"] for o in junctions)
            if aligned > aligned_prev:
                last_align = sim.current_step
            aligned_prev = aligned
            for o in objects.values():
                i = o.get("agent_id")
                if i is None:
                    continue
                pos, hearts = (o["r"], o["c"]), o.get("inv:heart", 0)
                if hearts > hearts_prev[i]:
                    taken += hearts - hearts_prev[i]
                    trips[i] += spent_out[i]
                    spent_out[i] = False
                if hearts == 0 and hearts_prev[i] > 0:
                    spent_out[i] = True
                hearts_prev[i] = hearts
                gear = o.get("inv:aligner", 0) > 0
                geared[i] |= gear
                empty = gear and hearts == 0
                home = abs(pos[0] - spawn[i][0]) + abs(pos[1] - spawn[i][1])
                if empty and i in last and last[i][1]:
                    toward += home < last[i][0]
                    away += home > last[i][0]
                last[i] = (home, empty)
                if not gear:
                    phase_now[i] = "no gear"
                elif hearts > 0:
                    seen = any(in_view(pos, j) for j in neutral)
                    phase_now[i] = "loaded, junction in view" if seen else "loaded, none in view"
                else:
                    phase_now[i] = "empty, hub in view" if in_view(pos, hub) else "empty, hub out of view"
                    empty_dist.append(float(hub_dist[pos]))
                phases[phase_now[i]] += 1
        return {"phases": phases, "labelled": labelled, "agreed": agreed, "shortest": shortest,
                "aligned": aligned_prev, "taken": taken, "trips": trips.mean(), "never_geared": int((~geared).sum()),
                "agents": sim.num_agents, "toward": toward, "away": away,
                "empty_dist": empty_dist, "last_align": last_align, "neutral_left": len(neutral)}
    finally:
        env.close()


def summarise(name: str, episodes: list[dict]) -> None:
    phases = sum((e["phases"] for e in episodes), Counter())
    total = sum(phases.values())
    dist = [d for e in episodes for d in e["empty_dist"] if np.isfinite(d)]
    mean = lambda key: np.mean([e[key] for e in episodes])  # noqa: E731
    print(f"\n{name}: {len(episodes)} episodes")
    for p in PHASES:
        print(f"  {p:<26} {100 * phases[p] / total:5.1f}% of agent-steps")
    print(f"  junctions aligned per episode  {mean('aligned'):6.2f}   hearts taken {mean('taken'):6.2f}")
    print(f"  trips back to the hub per agent {mean('trips'):5.2f}   walking distance to the hub while empty "
          f"{np.mean(dist) if dist else float('nan'):5.1f}")
    print(f"  steps with gear and no heart that end nearer the spawn / farther: {mean('toward'):.0f} / "
          f"{mean('away'):.0f} per episode")
    print(f"  agents per episode that never held gear {mean('never_geared'):4.2f} of {episodes[0]['agents']}")
    print(f"  last alignment at step {mean('last_align'):6.0f}   alignable junctions left neutral at the end "
          f"{mean('neutral_left'):5.1f}")
    labelled = sum((e["labelled"] for e in episodes), Counter())
    if labelled:
        agreed = sum((e["agreed"] for e in episodes), Counter())
        shortest = sum((e["shortest"] for e in episodes), Counter())
        n = sum(labelled.values())
        print(f"  over {n // len(episodes)} labelled agent-steps per episode, the policy's argmax is the teacher's "
              f"action on {sum(agreed.values()) / n:.2f}, one of its equally short moves on "
              f"{sum(shortest.values()) / n:.2f}; by phase:")
        for p in PHASES:
            if labelled[p]:
                print(f"    {p:<26} {agreed[p] / labelled[p]:5.2f} {shortest[p] / labelled[p]:5.2f} "
                      f"of {labelled[p] // len(episodes):5d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="*", help="AlignerPPO checkpoints (.ckpt)")
    parser.add_argument("--scripted", action="store_true", help="also the privileged scripted team")
    parser.add_argument("--mission", default="aligner_tutorial")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--greedy", action="store_true", help="checkpoints act by argmax instead of sampling")
    parser.add_argument("--teacher", choices=("scripted", "scripted_local"),
                        help="label each checkpoint's states with this scripted team; print agreement by phase")
    parser.add_argument("--state-reset", type=int, metavar="N",
                        help="zero the policy's recurrent state every N steps (default: as the checkpoint's run "
                             "evaluated, model.eval_state_reset)")
    parser.add_argument("--seed-base", type=int, default=1_000_000_000,
                        help="map seed of episode 0 (held out, as model.eval_seed_base)")
    args = parser.parse_args()
    if not args.checkpoints and not args.scripted:
        parser.error("give at least one checkpoint, or --scripted")
    torch.set_num_threads(1)
    print(f"CPU: {cpu_name()}")
    actors = [(label(c) + " (argmax)" * args.greedy, lambda c=c: policy_actor(c, args.seed_base, args.greedy, args.state_reset))
              for c in args.checkpoints]
    if args.scripted:
        actors.append(("scripted team", lambda: ScriptedActor(seed=args.seed_base)))
    for name, make in actors:
        actor = make()
        teacher = args.teacher if isinstance(actor, PolicyActor) else None
        summarise(name, [trace_episode(actor, args.mission, args.seed_base + k, teacher)
                         for k in range(args.episodes)])


if __name__ == "__main__":
    main()
