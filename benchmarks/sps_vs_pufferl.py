"""Side-by-side training speed: PuffeRL 3.0.23 (the notebook's loop and net) vs our Lightning trainer.

Same mission, same config (the seed's: 4 envs x 4 agents, batch 4096, CNN+LSTM), same machine. Each trainer
runs in its own subprocess per round, alternating, so neither inherits the other's caches and the peak RSS of
each is its own. Prints per-round numbers, the medians, the ratio, and our rollout-only and train-only
agent-steps/s next to the env-only ceiling.

    python benchmarks/sps_vs_pufferl.py --rounds 3 --epochs 12
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from env_throughput import time_serial  # noqa: E402  (the env-only ceiling: Serial x 4, random actions)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_pufferl(epochs: int, threads: int, mission: str) -> dict:
    import torch
    from cogames.policy.tutorial_policy import TutorialPolicyNet
    from puffer_reference import make_pufferl

    from aligner_lightning.datamodule import RolloutDataModule
    from aligner_lightning.envs import env_interface, make_vecenv

    torch.set_num_threads(threads)
    factory = RolloutDataModule(mission=mission).factory  # the seed config's envs
    vecenv = make_vecenv(factory, 4)
    torch.manual_seed(42)
    trainer = make_pufferl(vecenv, TutorialPolicyNet(env_interface(factory)))
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        trainer.evaluate()
        trainer.train()
        times.append(time.perf_counter() - t0)
    vecenv.close()
    steady = times[1:]  # the first epoch pays one-off warm-up
    return {"sps": 4096 * len(steady) / sum(steady), "peak_rss_mb": _peak_rss_mb()}


def run_ours(epochs: int, threads: int, mission: str) -> dict:
    import lightning as L

    from aligner_lightning.datamodule import RolloutDataModule
    from aligner_lightning.module import AlignerPPO

    L.seed_everything(42, verbose=False)
    module = AlignerPPO(total_timesteps=4096 * epochs, torch_threads=threads)
    dm = RolloutDataModule(mission=mission)
    epoch_times, rollout, train, env, policy = [], [], [], [], []

    class Timer(L.Callback):
        def on_train_epoch_start(self, *_):
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, *_):
            epoch_times.append(time.perf_counter() - self.t0)
            rollout.append(module._timing["rollout_time"])
            env.append(module._timing["env_time"])
            policy.append(module._timing["policy_time"])
            train.append(epoch_times[-1] - rollout[-1])

    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", callbacks=[Timer()], limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    n = len(epoch_times) - 1
    return {
        "sps": 4096 * n / sum(epoch_times[1:]),
        "rollout_sps": 4096 * n / sum(rollout[1:]),
        "train_sps": 4096 * n / sum(train[1:]),
        # per rollout step of all 16 agents: 4096 / 16 = 256 steps an epoch
        "env_us_per_step": 1e6 * sum(env[1:]) / (n * 256),
        "policy_us_per_step": 1e6 * sum(policy[1:]) / (n * 256),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _subprocess(kind: str, epochs: int, threads: int, mission: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--epochs", str(epochs), "--threads", str(threads),
           "--mission", mission]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12, help="epochs of 4096 agent steps per trainer per round")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both trainers")
    parser.add_argument("--mission", default="aligner_tutorial")
    parser.add_argument("--worker", choices=["pufferl", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        fn = run_pufferl if args.worker == "pufferl" else run_ours
        print(json.dumps(fn(args.epochs, args.threads, args.mission)))
        return

    results: dict[str, list[dict]] = {"pufferl": [], "ours": []}
    for r in range(args.rounds):
        for kind in ("pufferl", "ours"):
            res = _subprocess(kind, args.epochs, args.threads, args.mission)
            results[kind].append(res)
            print(f"round {r + 1} {kind:8s} " + " ".join(f"{k}={v:,.0f}" for k, v in res.items()), flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in results.items()}
    ceiling = time_serial(args.mission, 3000, 4)
    print(f"\nmission={args.mission} epochs/round={args.epochs} rounds={args.rounds} torch_threads={args.threads}")
    print(f"PuffeRL  median SPS {med['pufferl']['sps']:8,.0f}   peak RSS {med['pufferl']['peak_rss_mb']:6,.0f} MB")
    print(f"ours     median SPS {med['ours']['sps']:8,.0f}   peak RSS {med['ours']['peak_rss_mb']:6,.0f} MB")
    print(f"ratio ours / PuffeRL: {med['ours']['sps'] / med['pufferl']['sps']:.2f}x")
    print(f"ours rollout-only {med['ours']['rollout_sps']:,.0f} SPS, train-only {med['ours']['train_sps']:,.0f} SPS; "
          f"env-only ceiling (Serial, 4 envs, random actions) {ceiling:,.0f} SPS "
          f"-> rollout at {med['ours']['rollout_sps'] / ceiling:.0%} of it")
    print(f"ours per rollout step (16 agents): env {med['ours']['env_us_per_step']:,.0f} us, policy forward + "
          f"sampling {med['ours']['policy_us_per_step']:,.0f} us, "
          f"rest {1e6 * 16 / med['ours']['rollout_sps'] - med['ours']['env_us_per_step'] - med['ours']['policy_us_per_step']:,.0f} us")


if __name__ == "__main__":
    main()
