"""Side-by-side training speed: PuffeRL 3.0.23 (the notebook's loop and net) vs our Lightning trainer, in sync
mode and in async mode (``data.collector async``).

Same mission, same config (the seed's: 4 envs x 4 agents, batch 4096, CNN+LSTM), same machine. Each trainer
runs in its own subprocess per round, alternating, so neither inherits the other's caches. Peak memory counts
every process of a run (the trainer and the async collector): the peak of their summed PSS, sampled every
second (reading a process's PSS costs CPU time, which the async run, using both cores, feels), and the sum of their peak RSS (an upper bound that counts shared libraries twice). Prints per-round
numbers, the medians, the ratios, and our rollout-only and train-only agent-steps/s next to the env-only
ceiling.

    python benchmarks/sps_vs_pufferl.py --rounds 3 --epochs 12
    python benchmarks/sps_vs_pufferl.py --kinds pufferl sync --rounds 3   # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from env_throughput import time_serial  # noqa: E402  (the env-only ceiling: Serial x 4, random actions)
from aligner_lightning.machine import cpu_name  # noqa: E402

KINDS = ("pufferl", "sync", "async")


def _peak_rss_mb() -> float:
    """This process's peak RSS plus its children's (the largest child's; the async collector is the only one).
    An upper bound: pages of shared libraries (torch's are ~0.5 GB) count once per process."""
    return sum(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024


class PssSampler(threading.Thread):
    """The peak, over the run, of the summed proportional set size of this process and its children: shared
    pages split between the processes that map them, so nothing counts twice (Linux /proc/*/smaps_rollup)."""

    def __init__(self, interval: float = 1.0):
        super().__init__(daemon=True)
        self.interval, self.peak_kb, self._stop_event = interval, 0, threading.Event()

    @staticmethod
    def _pss_kb(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _tree(self) -> list[int]:
        me, pids = os.getpid(), [os.getpid()]
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == me:
                    pids.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
        return pids

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.peak_kb = max(self.peak_kb, sum(self._pss_kb(pid) for pid in self._tree()))

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak_kb / 1024


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


def run_ours(epochs: int, threads: int, mission: str, collector: str = "sync") -> dict:
    """``collector="async"``: the learner and the collector process get one torch thread each (2 cores)."""
    import lightning as L

    from aligner_lightning.datamodule import RolloutDataModule
    from aligner_lightning.module import AlignerPPO

    L.seed_everything(42, verbose=False)
    learner_threads = threads if collector == "sync" else max(1, threads // 2)
    module = AlignerPPO(total_timesteps=4096 * epochs, torch_threads=learner_threads)
    dm = RolloutDataModule(mission=mission, collector=collector, collector_threads=max(1, threads // 2))
    epoch_times, rollout, train, env, policy = [], [], [], [], []

    class Timer(L.Callback):
        def on_train_epoch_start(self, *_):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            rollout.append(batch.timing["rollout_time"])
            env.append(batch.timing["env_time"])
            policy.append(batch.timing["policy_time"])

        def on_train_epoch_end(self, *_):
            epoch_times.append(time.perf_counter() - self.t0)
            train.append(epoch_times[-1] - rollout[-1] if collector == "sync" else epoch_times[-1])

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
    """Runs ``kind`` (pufferl, sync, async) in a fresh interpreter."""
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
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="trainers to time")
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        sampler = PssSampler()
        sampler.start()
        if args.worker == "pufferl":
            result = run_pufferl(args.epochs, args.threads, args.mission)
        else:
            result = run_ours(args.epochs, args.threads, args.mission, collector=args.worker)
        result["peak_pss_mb"] = sampler.stop()
        print(json.dumps(result))
        return

    results: dict[str, list[dict]] = {kind: [] for kind in args.kinds}
    for r in range(args.rounds):
        for kind in args.kinds:
            res = _subprocess(kind, args.epochs, args.threads, args.mission)
            results[kind].append(res)
            print(f"round {r + 1} {kind:8s} " + " ".join(f"{k}={v:,.0f}" for k, v in res.items()), flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in results.items()}
    ceiling = time_serial(args.mission, 3000, 4)
    print(f"\nCPU: {cpu_name()}")
    print(f"mission={args.mission} epochs/round={args.epochs} rounds={args.rounds} torch_threads={args.threads}")
    for kind, m in med.items():
        ratio = f"   {m['sps'] / med['pufferl']['sps']:.2f}x PuffeRL" if "pufferl" in med and kind != "pufferl" else ""
        print(f"{kind:8s} median SPS {m['sps']:8,.0f}   peak memory of all processes: PSS {m['peak_pss_mb']:6,.0f} MB, "
              f"RSS {m['peak_rss_mb']:6,.0f} MB{ratio}")
    if "sync" not in med:
        return
    sync = med["sync"]
    print(f"sync rollout-only {sync['rollout_sps']:,.0f} SPS, train-only {sync['train_sps']:,.0f} SPS; "
          f"env-only ceiling (Serial, 4 envs, random actions) {ceiling:,.0f} SPS "
          f"-> rollout at {sync['rollout_sps'] / ceiling:.0%} of it")
    rest = 1e6 * 16 / sync["rollout_sps"] - sync["env_us_per_step"] - sync["policy_us_per_step"]
    print(f"sync per rollout step (16 agents): env {sync['env_us_per_step']:,.0f} us, policy forward + "
          f"sampling {sync['policy_us_per_step']:,.0f} us, rest {rest:,.0f} us")

if __name__ == "__main__":
    main()
