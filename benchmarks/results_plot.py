"""The README's headline figure: junctions aligned per episode against agent steps, for the seed config and the
shipped overlays, drawn from the committed results (no training, no evaluation).

    python benchmarks/results_plot.py            # writes benchmarks/results/headline.png

- the seed config (``configs/aligner.yaml``): this trainer's four-seed parity runs (``results/ours_s4*.csv``),
  the team's alignments in its *training* episodes, averaged over each 250k agent steps (it was never judged on
  held-out maps: it aligns almost nothing before 2.5M);
- ``configs/aligner_fast.yaml`` and the kickstart runs: the sweeps' held-out evaluations (32 maps per mark,
  sampled actions; the kickstarted student plays alone, teacher off).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SWEEPS = RESULTS / "sweeps"

# label -> the (sweep CSV, variant, state_reset[, seeds]) rows that make up its seeds (all the variant's seeds unless
# a tuple of seeds follows: a run stopped short would cut the mean short); for a seed found in several sources the
# first source's marks win.
HELD_OUT = {
    "configs/aligner_fast.yaml (seeds 1-3, LSTM state zeroed every 64 steps)": [
        ("fast_refill", "epochs4_refill_lr8m", "64")],
    "... with its cosine LR over the run's 5M instead of 8M (seeds 1-3)": [
        ("fast_refill", "epochs4_refill", "64"), ("fast_screen", "fast_epochs4_refill", "64")],
    "configs/aligner_kickstart.yaml, the student alone (seeds 1-3)": [
        ("kickstart_anchor", "anchor1_to2m_lr5m", ""), ("kickstart_seeds", "shipped", "", (3,))],
    "... the same without its anchor (seeds 1-2)": [("kickstart_epochs", "local_epochs4", "")],
    "... with one pass, the full-knowledge teacher and no anchor (seeds 1-2)": [("kickstart", "kickstart", "")],
}
SEED_RUNS = sorted(RESULTS.glob("ours_s4*.csv"))
BIN = 250_000


def held_out_curves(sources: list[tuple]) -> dict[int, dict[int, float]]:
    """seed -> {agent steps: junctions aligned per episode} from the sweeps' CSVs."""
    seeds: dict[int, dict[int, float]] = {}
    for sweep, variant, reset, *only in sources:
        with (SWEEPS / f"{sweep}.csv").open() as f:
            for r in csv.DictReader(f):
                if (r["variant"] == variant and (r.get("state_reset") or "") == reset
                        and (not only or int(r["seed"]) in only[0])):
                    seeds.setdefault(int(r["seed"]), {}).setdefault(int(r["agent_steps"]), float(r["aligned_mean"]))
    return seeds


def training_curve(path: Path) -> dict[int, float]:
    """{bin centre: mean aligned per episode over the bin's epochs that finished episodes} for one parity run."""
    from learning_curve import read_csv  # benchmarks/ is on the path when run as a script

    d = read_csv(path)  # an epoch whose episodes aligned nothing counts 0 (mettagrid omits zero stats)
    keep = ~np.isnan(d["aligned_per_episode"])
    steps, aligned = d["agent_steps"][keep], d["aligned_per_episode"][keep]
    bins = (steps // BIN).astype(int)
    return {b * BIN + BIN // 2: float(aligned[bins == b].mean()) for b in np.unique(bins)}


def mean_curve(seeds: dict[int, dict[int, float]]) -> list[tuple[int, float]]:
    """The mean over seeds at each mark that every seed reached."""
    marks = set.intersection(*(set(c) for c in seeds.values()))
    return [(m, float(np.mean([c[m] for c in seeds.values()]))) for m in sorted(marks)]


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    curves = {f"configs/aligner.yaml, the seed config (seeds 42-45, training episodes)":
              {i: training_curve(p) for i, p in enumerate(SEED_RUNS)}}
    curves.update({label: held_out_curves(sources) for label, sources in HELD_OUT.items()})
    for (label, seeds), color in zip(curves.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        for curve in seeds.values():
            ax.plot(*zip(*sorted(curve.items())), color=color, alpha=0.25, lw=1)
        ax.plot(*zip(*mean_curve(seeds)), color=color, lw=2.2, marker="o", ms=3, label=label)
    ax.set_xlabel("agent steps")
    ax.set_ylabel("junctions aligned per episode\n(held-out maps, 32 per mark; the seed config: training episodes)")
    ax.set_title("mean over seeds (thick), each seed (thin); a scripted team aligns ~58")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    out = RESULTS / "headline.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
