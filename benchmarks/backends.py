"""Training agent-steps/s of the real entry point across env backends and DDP process counts.

Each setting runs `train.py fit` on the seed config (aligner_tutorial, 4 envs x 4 agents, batch 4096 per rank)
for a few epochs in a subprocess, and reports the median SPS (TensorBoard `SPS`, a global figure) of the epochs
after the first. Prints a table; asserts nothing.

    python benchmarks/backends.py [--epochs 5] [--settings serial mp1 mp2 ddp1 ddp2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
THREADS = str(max(1, (os.cpu_count() or 2) // 2))

SETTINGS: dict[str, tuple[str, list[str]]] = {
    "serial": ("Serial, 1 process", []),
    "bf16": ("Serial, 1 process, bf16-mixed autocast (AMX on this CPU)", ["--trainer.precision", "bf16-mixed"]),
    "mp1": ("Multiprocessing, 1 worker (batch 4 envs)", ["--data.backend", "multiprocessing",
                                                         "--data.num_workers", "1"]),
    "mp2": ("Multiprocessing, 2 workers (batch 2 of 4 envs: overlap)",
            ["--data.backend", "multiprocessing", "--data.num_workers", "2", "--data.env_batch_size", "2"]),
    "mp4": ("Multiprocessing, 4 workers (batch 2 of 4 envs: overlap)",
            ["--data.backend", "multiprocessing", "--data.num_workers", "4", "--data.env_batch_size", "2"]),
    "ddp1": ("DDP, 1 process", ["--trainer.strategy", "ddp", "--trainer.devices", "1",
                                "--model.torch_threads", THREADS]),
    "ddp2": ("DDP, 2 processes (global batch 8192)", ["--trainer.strategy", "ddp", "--trainer.devices", "2",
                                                      "--model.torch_threads", THREADS]),
    "ddp2_split": ("DDP, 2 processes x 2 envs (global batch 4096, as the seed)",
                   ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--model.torch_threads", THREADS,
                    "--data.num_envs", "2", "--data.batch_size", "2048", "--data.minibatch_size", "2048"]),
}


def fit_sps(name: str, configs: list[Path], extra: list[str]) -> list[float]:
    """``train.py fit`` with these configs and flags, in a temporary directory, no evaluation: the per-epoch
    agent-steps/s it logs (TensorBoard ``SPS``) after the first epoch, which pays one-off warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "train.py"), "fit"]
        for c in configs:
            cmd += ["--config", str(c)]
        cmd += ["--run_name", name, "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
                "--trainer.limit_val_batches", "0", *extra]
        out = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
        acc = EventAccumulator(str(Path(tmp) / "lightning_logs" / name), size_guidance={"scalars": 0})
        acc.Reload()
        return [e.value for e in acc.Scalars("SPS")][1:]


def run(name: str, epochs: int, extra: list[str]) -> list[float]:
    world = 2 if name == "ddp2" else 1
    return fit_sps(name, [ROOT / "configs/aligner.yaml"],
                   ["--model.total_timesteps", str(epochs * 4096 * world), *extra])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; seed config (aligner_tutorial, 4 envs x 4 agents, batch 4096 per rank)")
    print(f"{'setting':<58} {'median SPS':>10}")
    for name in args.settings:
        label, extra = SETTINGS[name]
        workers = int(extra[extra.index("--data.num_workers") + 1]) if "--data.num_workers" in extra else 1
        if workers > (os.cpu_count() or 1):
            print(f"{label:<58} {'n/a':>10}  (needs {workers} cores)")
            continue
        sps = run(name, args.epochs, extra)
        print(f"{label:<58} {statistics.median(sps):>10,.0f}", flush=True)


if __name__ == "__main__":
    main()
