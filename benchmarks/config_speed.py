"""Training speed of whole configurations, side by side: agent-steps/s of ``train.py fit`` as a user runs it.

Each configuration trains for ``--epochs`` epochs from scratch in its own ``train.py fit`` process (in a
temporary directory, no evaluation; ``backends.fit_sps``), one after another and alternating over ``--rounds``
rounds; run it on an otherwise idle machine. Speed is read from the run's own TensorBoard log: the agent steps
of epochs 2..N over their seconds (the first epoch pays one-off warm-up).
Multiply steps-to-a-result by the printed minutes per million agent steps to get wall-clock to that result.

A configuration is ``NAME:THREADS:CONFIG[,CONFIG...]``: its YAML files in order, and the learner's torch threads
(``model.torch_threads``; an async collector adds its own process with ``data.collector_threads``).

    python benchmarks/config_speed.py --rounds 2 --epochs 24
    python benchmarks/config_speed.py --config seed:2:configs/aligner.yaml \\
        --config fast:1:configs/aligner.yaml,configs/aligner_fast.yaml
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from backends import fit_sps  # noqa: E402  (train.py fit in a temporary directory, its per-epoch SPS)
from aligner_lightning.machine import cpu_name  # noqa: E402

DEFAULT = [
    "seed:2:configs/aligner.yaml",  # sync, the learner and the envs share the process: two threads
    "fast:1:configs/aligner.yaml,configs/aligner_fast.yaml",  # async: learner and collector, one thread each
]


def parse(spec: str) -> tuple[str, int, list[Path]]:
    try:
        name, threads, configs = spec.split(":", 2)
        paths = [ROOT / c for c in configs.split(",")]
        threads_n = int(threads)
    except ValueError:
        raise SystemExit(f"--config {spec!r}: expected NAME:THREADS:CONFIG[,CONFIG...], "
                         "e.g. seed:2:configs/aligner.yaml")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"--config {spec!r}: no such file {', '.join(missing)}")
    return name, threads_n, paths


def time_config(name: str, threads: int, configs: list[Path], epochs: int) -> float:
    """Agent-steps/s of one fresh run over epochs 2..N: the steps over the seconds (harmonic mean of the epochs')."""
    sps = fit_sps(name, configs, ["--trainer.max_epochs", str(epochs), "--model.torch_threads", str(threads)])
    if not sps:
        raise SystemExit(f"{name}: only one epoch logged; raise --epochs")
    return statistics.harmonic_mean(sps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", metavar="NAME:THREADS:CONFIGS",
                        help=f"a configuration to time (repeatable; default: {' and '.join(DEFAULT)})")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=24, help="epochs per run (the first is not timed)")
    args = parser.parse_args()
    specs = [parse(s) for s in (args.config or DEFAULT)]
    print(f"CPU: {cpu_name()}; {args.epochs} epochs per run, {args.rounds} rounds, alternating", flush=True)
    results: dict[str, list[float]] = {name: [] for name, _, _ in specs}
    for r in range(args.rounds):
        for name, threads, configs in specs:
            sps = time_config(name, threads, configs, args.epochs)
            results[name].append(sps)
            print(f"round {r + 1}  {name:<12} {sps:8.0f} agent-steps/s", flush=True)
    print("\nmedian over rounds:")
    for name, values in results.items():
        sps = statistics.median(values)
        print(f"  {name:<12} {sps:8.0f} agent-steps/s   {1e6 / sps / 60:6.1f} min per 1M agent steps")


if __name__ == "__main__":
    main()
