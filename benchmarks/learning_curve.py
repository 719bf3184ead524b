"""Learning parity: PuffeRL 3.0.23 (the notebook's loop and net) vs our Lightning trainer on the aligner tutorial.

Per seed, both trainers run at the same time in their own subprocess (one torch thread each, so one core each on
a 2-core machine), with the same seed and the seed config's 10M-step cosine LR schedule, and stop at the step
budget. Each writes one CSV of per-epoch episode means; the script then plots return and aligned junctions held
against agent steps, with the 10M-step reference PuffeRL run (docs/learning.md), and prints a table per 1M-step
window and, over several seeds, the parity test. Results and how to read them: docs/learning.md.

    python benchmarks/learning_curve.py --steps 2500000 --seeds 42
    python benchmarks/learning_curve.py --plot-only
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

BATCH = 4096  # agent steps per epoch (the seed config)
TRAINERS = ("pufferl", "ours")
# CSV column -> episode-info key (PuffeRL's stats; ours logs it under envs.tensorboard_tag(key)). held_avg is derived.
# mettagrid leaves a stat out of an episode's info when it is 0; a missing stat counts as 0 here (per-episode
# means, as our trainer logs them). The seed-42 CSVs hold means over the episodes where the stat was nonzero,
# for both trainers alike (docs/learning.md).
METRICS = {
    "return": "episode_return",
    "aligned_per_episode": "game/cogs/aligned.junction.gained",
    "aligner_gained": "agent/aligner.gained",
    "heart_gained": "agent/heart.gained",
    "deaths": "agent/death",
}
HELD, LENGTH = "game/cogs/aligned.junction.held", "episode_length"
COLUMNS = ["agent_steps", "wall_s", *METRICS, "held_avg"]
# The reference PuffeRL run (seed config, seed 42, 10M cosine schedule): per-agent return per 1M-step window
# (docs/learning.md, "The seed recipe over 10M steps").
REFERENCE_RETURN = [0.6, 0.8, 3.1, 6.3, 10.6, 16.2, 18.2, 19.4, 20.9, 21.8]


def epoch_row(steps: int, wall: float, means: dict[str, float]) -> dict:
    """One CSV row from the means of the episodes that finished in an epoch (empty cells when none did).
    held_avg = mean time-summed held / mean episode length: the junctions held on an average step."""
    row = {"agent_steps": steps, "wall_s": round(wall, 2)}
    row.update({col: means.get(key, "") for col, key in METRICS.items()})
    row["held_avg"] = means[HELD] / means[LENGTH] if HELD in means and means.get(LENGTH) else ""
    return row


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def run_pufferl_worker(seed: int, steps: int, schedule_steps: int, out: Path, t0: float) -> None:
    """The notebook's loop: evaluate() then train(). Episode stats are taken (and cleared) after each rollout,
    before train() whose periodic log would otherwise swallow them, so each episode is counted once."""
    import torch
    from cogames.policy.tutorial_policy import TutorialPolicyNet
    from puffer_reference import make_pufferl

    from aligner_lightning.datamodule import RolloutDataModule
    from aligner_lightning.envs import env_interface, make_vecenv

    torch.set_num_threads(1)
    factory = RolloutDataModule(mission="aligner_tutorial", seed=seed).factory  # the seed config's envs
    vecenv = make_vecenv(factory, 4)
    torch.manual_seed(seed)
    trainer = make_pufferl(vecenv, TutorialPolicyNet(env_interface(factory)), seed=seed,
                           total_timesteps=schedule_steps)
    rows = []
    while trainer.global_step < steps:
        stats = trainer.evaluate()
        trainer.stats = defaultdict(list)
        trainer.train()
        episodes = len(stats.get("episode_return", []))
        means = {k: float(np.sum(v)) / episodes for k, v in stats.items() if v} if episodes else {}
        rows.append(epoch_row(trainer.global_step, time.time() - t0, means))
        if len(rows) % 25 == 0:  # keep a readable partial curve while it runs
            write_csv(out, rows)
    write_csv(out, rows)
    vecenv.close()


def ours_csv(run_dir: Path, out: Path, t0: float) -> None:
    """Our run's TensorBoard scalars (per-epoch episode means, step = agent steps) as the same CSV."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from aligner_lightning.envs import tensorboard_tag

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    wall = {e.step: e.wall_time - t0 for e in acc.Scalars("agent_steps")}
    means: dict[int, dict[str, float]] = defaultdict(dict)
    for key in [*METRICS.values(), HELD, LENGTH]:
        if tensorboard_tag(key) in acc.Tags()["scalars"]:
            for e in acc.Scalars(tensorboard_tag(key)):
                means[e.step][key] = e.value
    write_csv(out, [epoch_row(s, wall[s], means[s]) for s in sorted(wall)])


def run_seed(seed: int, steps: int, schedule_steps: int, out: Path) -> None:
    """Both trainers at once, one core each; returns when both have reached the budget."""
    run_name = f"learning_curve_ours_s{seed}"
    run_dir = ROOT / "lightning_logs" / run_name
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun must not append to an old event file
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    t0 = time.time()
    commands = {
        "pufferl": [sys.executable, __file__, "--worker", "pufferl", "--seeds", str(seed), "--steps", str(steps),
                    "--schedule_steps", str(schedule_steps), "--out", str(out), "--t0", str(t0)],
        "ours": [sys.executable, "train.py", "fit", "--config", "configs/aligner.yaml", "--run_name", run_name,
                 "--seed_everything", str(seed), "--data.seed", str(seed),
                 "--model.total_timesteps", str(schedule_steps), "--model.torch_threads", "1",
                 "--trainer.max_epochs", str(math.ceil(steps / BATCH)),
                 "--trainer.limit_val_batches", "0"],  # no periodic evaluation: PuffeRL has none
    }
    procs = {}
    for name, cmd in commands.items():
        print(f"[seed {seed}] {name}: {' '.join(cmd)}", flush=True)
        log = (out / f"{name}_s{seed}.log").open("w")
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    for name, proc in procs.items():
        if proc.wait() != 0:
            raise RuntimeError(f"{name} (seed {seed}) failed: see {out / f'{name}_s{seed}.log'}")
        print(f"[seed {seed}] {name} done after {time.time() - t0:,.0f} s", flush=True)
    ours_csv(run_dir, out / f"ours_s{seed}.csv", t0)


def read_csv(path: Path) -> dict[str, np.ndarray]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    data = {c: np.array([float(r[c]) if r[c] else np.nan for r in rows]) for c in COLUMNS}
    # An epoch whose episodes all lack a count stat (mettagrid omits zeros) counted 0 of it; an epoch in which no
    # episode finished stays empty.
    finished = ~np.isnan(data["return"])
    for col in ("aligned_per_episode", "aligner_gained", "heart_gained", "deaths", "held_avg"):
        data[col][finished & np.isnan(data[col])] = 0.0
    return data


def load_runs(out: Path) -> dict[tuple[str, int], dict[str, np.ndarray]]:
    return {(t, int(p.stem.split("_s")[-1])): read_csv(p)
            for t in TRAINERS for p in sorted(out.glob(f"{t}_s*.csv"))}


def smooth(steps: np.ndarray, values: np.ndarray, end: float, bin_=100_000, window=250_000):
    """Mean of the epochs with episodes within +-window/2 of each bin centre."""
    centres = np.arange(bin_ / 2, end, bin_)
    ok = ~np.isnan(values)
    means = [values[ok & (np.abs(steps - c) <= window / 2)] for c in centres]
    return centres, np.array([m.mean() if m.size else np.nan for m in means])


def plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = max(d["agent_steps"].max() for d in runs.values())
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    # PuffeRL wide and pale, ours thin on top: with one seed the two curves can coincide.
    look = {"pufferl": dict(color="tab:blue", lw=5, alpha=0.45, label="PuffeRL 3.0.23"),
            "ours": dict(color="tab:red", lw=1.6, label="ours (Lightning)")}
    styles = ["-", "--", ":", "-."]
    seeds = sorted({s for _, s in runs})
    for trainer in TRAINERS:
        for seed in seeds:
            if (trainer, seed) not in runs:
                continue
            d = runs[trainer, seed]
            kw = {**look[trainer], "label": f"{look[trainer]['label']}, seed {seed}"}
            for ax, col in zip(axes, ("return", "held_avg")):
                x, y = smooth(d["agent_steps"], d[col], end)
                ax.plot(x / 1e6, y, styles[seeds.index(seed) % 4], **kw)
    windows = range(math.ceil(end / 1e6))
    axes[0].errorbar([w + 0.5 for w in windows], [REFERENCE_RETURN[w] for w in windows], xerr=0.5, fmt="kD",
                     ms=6, capsize=3, label="PuffeRL 10M reference run, seed 42 (1M-step window means)")
    axes[0].set(ylabel="episode return per agent", title="Return")
    axes[1].set(ylabel="aligned junctions held, time average\n(seed 42: over episodes that held any; others: all)",
                title="Aligned junctions held")
    for ax in axes:
        ax.set(xlabel="agent steps (millions)", xlim=(0, max(windows) + 1))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()  # one legend below both panels: it hides no curve
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"aligner_tutorial, seed config (batch 4096, cosine LR over the 10M schedule); "
                 f"{100_000 // 1000}k-step bins, {250_000 // 1000}k-step moving window", fontsize=10)
    fig.tight_layout(rect=(0, 0.05 + 0.035 * math.ceil(len(handles) / 3), 1, 1))
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def one_million_windows(end: float) -> list[tuple[float, float]]:
    """1M-step windows up to ``end`` (the last one cut at the budget)."""
    return [(a, min(a + 1_000_000, end)) for a in range(0, int(end), 1_000_000)]


def window_mean(d: dict[str, np.ndarray], col: str, a: float, b: float) -> float:
    """Mean over the epochs with episodes in (a, b]."""
    sel = (d["agent_steps"] > a) & (d["agent_steps"] <= b)
    return float(np.nanmean(d[col][sel]))


def summary(runs: dict) -> None:
    """Per run: the return and aligned junctions per episode in each 1M-step window, wall time and SPS."""
    edges = one_million_windows(max(d["agent_steps"].max() for d in runs.values()))
    head = "  ".join(f"{a / 1e6:g}-{b / 1e6:g}M ret/aligned".rjust(22) for a, b in edges)
    print(f"\n{'trainer':8s} {'seed':>4s}  {head}  {'wall s':>7s} {'SPS':>6s}")
    for (trainer, seed), d in sorted(runs.items()):
        cells = "  ".join(f"{window_mean(d, 'return', a, b):6.2f} / {window_mean(d, 'aligned_per_episode', a, b):5.2f}"
                          .rjust(22) for a, b in edges)
        wall = d["wall_s"][-1]
        print(f"{trainer:8s} {seed:4d}  {cells}  {wall:7.0f} {d['agent_steps'][-1] / wall:6.0f}")
    ref = "  ".join(f"{REFERENCE_RETURN[int(a // 1e6)]:6.2f}".ljust(6).rjust(22) for a, _ in edges)
    print(f"{'ref':8s} {42:4d}  {ref}  (PuffeRL 10M reference run, full 1M windows)")


def permutation_p(x: list[float], y: list[float]) -> float:
    """Exact two-sided permutation p-value of mean(x) - mean(y) over all relabellings of the pooled values."""
    pooled, k = np.array(x + y), len(x)
    observed = abs(np.mean(x) - np.mean(y))
    diffs = [abs(pooled[list(c)].mean() - np.delete(pooled, list(c)).mean())
             for c in itertools.combinations(range(len(pooled)), k)]
    return float(np.mean(np.array(diffs) >= observed - 1e-12))


def parity(runs: dict) -> None:
    """Across seeds: each trainer's mean and spread of the per-agent return per window and over the whole run,
    and whether the difference stands out from the seed-to-seed spread (exact permutation test)."""
    seeds = sorted({s for t, s in runs if (("pufferl", s) in runs and ("ours", s) in runs)})
    if len(seeds) < 2:
        return
    end = min(runs[t, s]["agent_steps"].max() for t in TRAINERS for s in seeds)
    windows = one_million_windows(end) + [(0, end)]
    print(f"\nparity over seeds {seeds} (per-agent return; mean +- std over seeds; exact permutation p)")
    for a, b in windows:
        vals = {t: [window_mean(runs[t, s], "return", a, b) for s in seeds] for t in TRAINERS}
        label = "whole run" if (a, b) == (0, end) else f"{a / 1e6:g}-{b / 1e6:g}M"
        cells = "  ".join(f"{t} {np.mean(v):5.2f} +- {np.std(v, ddof=1):4.2f}" for t, v in vals.items())
        print(f"  {label:>10s}  {cells}  diff {np.mean(vals['ours']) - np.mean(vals['pufferl']):+5.2f}  "
              f"p = {permutation_p(vals['ours'], vals['pufferl']):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2_500_000, help="agent-step budget per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--schedule_steps", type=int, default=10_000_000, help="cosine LR schedule length")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--plot-only", action="store_true", help="re-plot and summarise the existing CSVs")
    parser.add_argument("--worker", choices=["pufferl"], help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    if args.worker:
        run_pufferl_worker(args.seeds[0], args.steps, args.schedule_steps, args.out / f"pufferl_s{args.seeds[0]}.csv",
                           args.t0)
        return
    if not args.plot_only:
        for seed in args.seeds:
            run_seed(seed, args.steps, args.schedule_steps, args.out)
    runs = load_runs(args.out)
    plot(runs, args.out / "learning_curve.png")
    summary(runs)
    parity(runs)


if __name__ == "__main__":
    main()
