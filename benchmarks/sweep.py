"""A resumable learning sweep: configs x seeds trained to a step budget, judged on held-out maps.

A sweep file (``benchmarks/sweeps/*.yaml``) names the base configs, the overrides every run shares, the
variants (each a set of overrides), the seeds, the step budget and the evaluation marks. This script

- trains each (variant, seed) with ``train.py fit`` in the background, at most ``--parallel`` processes at a
  time, each with one torch thread (``model.torch_threads 1``), a numbered checkpoint every ``eval_every``
  agent steps and no in-training evaluation;
- evaluates every numbered checkpoint with ``train.py test`` on held-out maps (``eval_episodes`` episodes,
  sampled actions), in the same process pool, as soon as the checkpoint exists and a slot is free (while every
  slot trains, a second invocation with ``--eval-only`` evaluates beside them);
- appends one CSV row per evaluated checkpoint to ``benchmarks/results/sweeps/<sweep>.csv`` (junctions aligned
  and return, mean and std over the episodes; agent steps and training wall-clock from the checkpoint; the CPU)
  and redraws ``<sweep>.png``: aligned per episode against agent steps and against wall-clock seconds.

It is resumable: everything is derived from files. A run whose ``last.ckpt`` is short of the budget resumes
from it (``--ckpt_path``), a finished run is not started again, and a checkpoint already in the CSV is not
evaluated again. SIGINT/SIGTERM stops the children gracefully (they save ``last.ckpt``) and exits.

A variant may branch from another at one of its marks (``branches: {new: {variant: old, steps: 1500000}}``): its
run then starts from that run's numbered checkpoint at the mark (same seed) with its own overrides, and the
CSV takes the old run's rows up to the mark under the new name, so its curve is whole. Until the old run has
the checkpoint, the branch waits.

    nohup python benchmarks/sweep.py benchmarks/sweeps/screen.yaml > sweep.log 2>&1 &
    python benchmarks/sweep.py benchmarks/sweeps/screen.yaml --plot-only
    python benchmarks/sweep.py benchmarks/sweeps/screen.yaml --dry-run   # print the commands
    python benchmarks/sweep.py benchmarks/sweeps/screen.yaml --eval-only --parallel 1  # beside a busy sweep
    python benchmarks/sweep.py benchmarks/sweeps/screen.yaml --stop-steps 1500000   # short of stop_steps
    python benchmarks/sweep.py benchmarks/sweeps/screen.yaml --variants base --seeds 2 --rerun-from 1000000

``--rerun-from N`` trains the selected runs again from their checkpoint at the mark N: what they wrote after it
(checkpoints, evaluation logs, TensorBoard event files begun after the mark, CSV rows) moves to
``sweep_<name>/replaced/<run>_<time>/``, nothing is deleted.

A training holds its run through ``<run>.train.claim`` beside its log (the training's pid): a second invocation
leaves a held run to its holder, and ``--rerun-from`` refuses one before it moves anything.

Wall-clock is the trainer's own (``train_seconds`` in the checkpoint: training epochs only, summed over
resumes), measured under the sweep's conditions: ``--parallel`` runs side by side, one thread each.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "sweeps"
sys.path.insert(0, str(ROOT))
from aligner_lightning.machine import cpu_name  # noqa: E402
COLUMNS = ["variant", "seed", "checkpoint", "agent_steps", "train_seconds", "episodes", "state_reset",
           "aligned_mean", "aligned_std", "return_mean", "return_std", "hearts_used_mean", "gear_pickups_mean",
           "deaths_mean", "cpu"]
TABLE_ROW = re.compile(r"^(\w+)\s+\|\s+(-?[\d.]+|nan)\s+\|\s+(-?[\d.]+|nan)\s+\|\s+(\d+)\s*$")


_UNSET = object()


@dataclass
class Sweep:
    name: str
    configs: list[str]
    common: dict
    variants: dict[str, dict]
    seeds: list[int]
    stop_steps: int
    eval_every: int
    eval_episodes: int = 32
    branches: dict[str, dict] = field(default_factory=dict)  # variant -> {variant: source, steps: mark}
    log_root: Path = field(default=ROOT / "lightning_logs")

    def __post_init__(self) -> None:
        for new, b in self.branches.items():
            where = f"sweep {self.name!r}, branches.{new}"
            if new not in self.variants:
                sys.exit(f"error: {where}: {new!r} is not a variant; add it under variants with its overrides")
            if not isinstance(b, dict) or set(b) != {"variant", "steps"}:
                sys.exit(f"error: {where}: write {{variant: <the variant it starts from>, steps: <a mark>}}")
            if b["variant"] not in self.variants or b["variant"] == new:
                sys.exit(f"error: {where}.variant={b['variant']!r}: must be another variant of {list(self.variants)}")
            if not isinstance(b["steps"], int) or b["steps"] < 1 or b["steps"] % self.eval_every:
                sys.exit(f"error: {where}.steps={b['steps']!r}: must be a mark, a multiple of eval_every "
                         f"({self.eval_every}), since checkpoints exist only there")

    @classmethod
    def load(cls, path: Path) -> "Sweep":
        spec = yaml.safe_load(path.read_text())
        missing = {"configs", "variants", "seeds", "stop_steps", "eval_every"} - set(spec)
        if missing:
            sys.exit(f"error: {path}: missing keys {sorted(missing)}")
        return cls(name=spec.get("name", path.stem), configs=spec["configs"], common=spec.get("common") or {},
                   variants={k: v or {} for k, v in spec["variants"].items()}, seeds=list(spec["seeds"]),
                   stop_steps=int(spec["stop_steps"]), eval_every=int(spec["eval_every"]),
                   eval_episodes=int(spec.get("eval_episodes", 32)), branches=spec.get("branches") or {})

    def overrides(self, variant: str) -> dict:
        return {**self.common, **self.variants[variant]}

    def run_name(self, variant: str, seed: int) -> str:
        return f"{variant}_s{seed}"

    def run_dir(self, variant: str, seed: int) -> Path:
        return self.log_root / f"sweep_{self.name}" / self.run_name(variant, seed)

    def setting(self, variant: str, key: str):
        """The value a run of ``variant`` gets for a dotted ``key`` (``model.eval_state_reset``): the last of
        the configs that sets it, then the sweep's overrides; None where nothing sets it."""
        value = None
        for c in self.configs:
            node = yaml.safe_load((ROOT / c).read_text()) or {}
            for part in key.split("."):
                node = node.get(part, _UNSET) if isinstance(node, dict) else _UNSET
            if node is not _UNSET:
                value = node
        return self.overrides(variant).get(key, value)

    def state_reset(self, variant: str) -> str:
        """How the variant's evaluations treat the recurrent state, as the CSV's ``state_reset`` column writes
        it: the period in steps, or empty where it is carried over the whole episode."""
        value = self.setting(variant, "model.eval_state_reset")
        return "" if value is None else str(value)

    def global_batch(self, variant: str) -> int:
        """Agent steps per epoch over all ranks (the datamodule's batch is exactly ``data.batch_size``)."""
        batch, devices = self.setting(variant, "data.batch_size"), self.setting(variant, "trainer.devices")
        if not isinstance(devices, int):
            sys.exit(f"error: sweep {self.name!r}, variant {variant!r}: trainer.devices is {devices!r}; the sweep "
                     "counts agent steps per epoch, so set it to a number of devices in the configs or overrides")
        return int(batch if batch is not None else 4096) * devices

    def checkpoint_every(self, variant: str) -> int:
        """Epochs between a run's numbered checkpoints: the nearest to ``eval_every`` agent steps."""
        return max(1, round(self.eval_every / self.global_batch(variant)))


def _flags(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += [f"--{k}", yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()
                if isinstance(v, (dict, list, bool)) or v is None else str(v)]
    return out


def _overlay(sweep: Sweep, variant: str) -> Path:
    """Checkpoints every eval_every steps, no in-training evaluation, no progress bar."""
    every = sweep.checkpoint_every(variant)
    path = sweep.log_root / f"sweep_{sweep.name}" / f"overlay_{variant}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "trainer": {
            "check_val_every_n_epoch": 1_000_000,
            "num_sanity_val_steps": 0,  # no evaluation of the initial policy either
            "enable_progress_bar": False,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(sweep.log_root), "name": f"sweep_{sweep.name}",
                                     "default_hp_metric": False}},
            "callbacks": [
                {"class_path": "aligner_lightning.callbacks.RunCheckpoint",
                 "init_args": {"every_n_epochs": every, "keep": -1}},
                {"class_path": "aligner_lightning.callbacks.GracefulStop"},
            ],
        },
    }))
    return path


def _config_flags(sweep: Sweep, variant: str, seed: int) -> list[str]:
    flags = []
    for c in sweep.configs:
        flags += ["--config", str(ROOT / c)]
    flags += ["--config", str(_overlay(sweep, variant))]
    flags += _flags(sweep.overrides(variant))
    # Independent env streams per seed (env i of seed s plays map seeds from s * 10^5 + i).
    flags += ["--seed_everything", str(seed), "--data.seed", str(seed * 100_000), "--model.torch_threads", "1"]
    return flags


def _claim_path(ckpt: Path) -> Path:
    return ckpt.parent.parent / f"eval_{ckpt.stem}.claim"


def _holder(path: Path) -> int | None:
    """The live process whose pid the claim file ``path`` holds, if any."""
    try:
        pid = int(path.read_text())
        if pid <= 0:
            raise ValueError(pid)
        os.kill(pid, 0)
        return pid
    except (ProcessLookupError, ValueError, FileNotFoundError):
        return None  # no claim, or a stale one: its process is gone
    except PermissionError:
        return pid  # alive, another user's


def _claim(path: Path) -> bool:
    """Claims a piece of work for this invocation: a file holding a pid, created exclusively. Evaluations claim
    their checkpoint, so that a sweep and an ``--eval-only`` beside it never judge it twice (one log, one CSV
    row); trainings claim their run, so that two invocations never train it at once (the training's own pid
    replaces this one's once it starts). A claim whose process is gone is taken over; this invocation's own
    claim is its already."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _holder(path)
            if holder is not None:
                return holder == os.getpid()
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def _epoch(name: str) -> int:
    """The epoch in a numbered checkpoint's (or its evaluation log's) name, ``epoch=E-agent_steps=N...``."""
    return int(name.split("=")[1].split("-")[0])


def _copy_atomic(source: Path, dest: Path) -> None:
    """Copy through a temporary file and rename, so that an interrupted copy never leaves a truncated ``dest``
    (a ``last.ckpt`` to resume from)."""
    partial = dest.with_suffix(".copy.tmp")
    shutil.copyfile(source, partial)
    os.replace(partial, dest)


def _read_ckpt_meta(path: Path) -> dict:
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt.get("aligner", {})


@dataclass
class Job:
    kind: str  # "train" | "eval"
    variant: str
    seed: int
    cmd: list[str]
    log: Path
    checkpoint: Path | None = None
    proc: subprocess.Popen | None = None


class Runner:
    def __init__(self, sweep: Sweep, parallel: int, dry_run: bool, variants: list[str] | None = None,
                 seeds: list[int] | None = None, eval_only: bool = False):
        self.sweep, self.parallel, self.dry_run, self.eval_only = sweep, parallel, dry_run, eval_only
        unknown = set(variants or []) - set(sweep.variants)
        if unknown:
            raise SystemExit(f"--variants: {sorted(unknown)} not in {sweep.name}'s variants {list(sweep.variants)}")
        if set(seeds or []) - set(sweep.seeds):
            raise SystemExit(f"--seeds: {sorted(set(seeds) - set(sweep.seeds))} not in {sweep.name}'s seeds "
                             f"{sweep.seeds}; add them to the sweep file first")
        # The subset this invocation works on; the CSV and plot still cover the whole sweep.
        self.variants = variants or list(sweep.variants)
        self.seeds = seeds or sweep.seeds
        self.csv_path = RESULTS / f"{sweep.name}.csv"
        self.running: list[Job] = []
        self.stopping = False
        self.failed: set[tuple] = set()  # jobs that failed in this invocation: not started again
        self.left_to_others: set[tuple[str, int]] = set()  # runs another live process trains
        self.cpu = cpu_name()

    # -- state from files ----------------------------------------------------------------------------------
    def evaluated(self) -> set[tuple[str, int, str]]:
        """The checkpoints judged as the sweep judges them now (rows of another ``state_reset`` do not count)."""
        if not self.csv_path.exists():
            return set()
        return {(r["variant"], int(r["seed"]), r["checkpoint"]) for r in current_rows(self.sweep, self.csv_path)}

    def stop_epochs(self, variant: str) -> int:
        return math.ceil(self.sweep.stop_steps / self.sweep.global_batch(variant))

    def train_done(self, variant: str, seed: int) -> bool:
        """Trained to the budget here, or already judged at its last mark (the CSV, committed, travels to other
        checkouts where the run's checkpoints do not)."""
        last = self.sweep.run_dir(variant, seed) / "checkpoints" / "last.ckpt"
        if last.exists() and _read_ckpt_meta(last).get("epoch", 0) >= self.stop_epochs(variant):
            return True
        every = self.sweep.checkpoint_every(variant)
        final_epoch = self.stop_epochs(variant) // every * every
        return any(r["variant"] == variant and int(r["seed"]) == seed
                   and r["checkpoint"].startswith(f"epoch={final_epoch - 1}-")
                   for r in (load_rows(self.csv_path) if self.csv_path.exists() else []))

    def busy(self, variant: str, seed: int, kind: str, checkpoint: Path | None = None) -> bool:
        return any(j.variant == variant and j.seed == seed and j.kind == kind and j.checkpoint == checkpoint
                   for j in self.running)

    def next_job(self) -> Job | None:
        s = self.sweep
        done = self.evaluated()
        order = [(v, seed) for seed in self.seeds for v in self.variants]
        for v, seed in order:  # evaluations first: they are short and make results appear early
            ckpt_dir = s.run_dir(v, seed) / "checkpoints"
            for ckpt in sorted(ckpt_dir.glob("epoch=*.ckpt"), key=lambda p: _epoch(p.name)):
                if ((v, seed, ckpt.name) not in done and not self.busy(v, seed, "eval", ckpt)
                        and ("eval", v, seed, ckpt) not in self.failed  # not retried, and not claimed again
                        and (self.dry_run or _claim(_claim_path(ckpt)))):
                    return self.eval_job(v, seed, ckpt)
        if self.eval_only:
            return None
        for v, seed in order:
            if self.busy(v, seed, "train") or self.train_done(v, seed):
                continue
            if not self.claim_training(v, seed):
                if (v, seed) not in self.left_to_others:  # said once
                    self.left_to_others.add((v, seed))
                    print(f"  {s.run_name(v, seed)}: trained by process {_holder(self.training_claim(v, seed))}; "
                          "left to it", flush=True)
                continue
            job = self.train_job(v, seed)
            if job is not None:
                return job
            self.training_claim(v, seed).unlink(missing_ok=True)  # a branch still waiting for its source
        return None

    def training_claim(self, variant: str, seed: int) -> Path:
        run = self.sweep.run_dir(variant, seed)
        return run.parent / f"{run.name}.train.claim"

    def claim_training(self, variant: str, seed: int) -> bool:
        """Takes the run's training claim for this invocation; False while another live process holds it (another
        sweep invocation, or the training it started). A dry run only looks."""
        claim = self.training_claim(variant, seed)
        if self.dry_run:
            return _holder(claim) in (None, os.getpid())
        claim.parent.mkdir(parents=True, exist_ok=True)
        return _claim(claim)

    def mark_epoch(self, variant: str, steps: int) -> int:
        """The epoch of a run's numbered checkpoint at the mark ``steps``."""
        return steps // self.sweep.eval_every * self.sweep.checkpoint_every(variant) - 1

    def mark_checkpoint(self, variant: str, seed: int, steps: int) -> Path | None:
        found = sorted((self.sweep.run_dir(variant, seed) / "checkpoints").glob(
            f"epoch={self.mark_epoch(variant, steps)}-*.ckpt"))
        return found[0] if found else None

    def branch_point(self, variant: str, seed: int) -> Path | None:
        """The source run's numbered checkpoint a branch starts from; None while this invocation still trains
        that run towards it; otherwise its absence stops the sweep with the command that trains it."""
        b = self.sweep.branches[variant]
        found = self.mark_checkpoint(b["variant"], seed, b["steps"])
        if found:
            return found
        if b["variant"] in self.variants and seed in self.seeds and not self.train_done(b["variant"], seed):
            return None
        raise SystemExit(f"branch {variant} s{seed}: {self.sweep.run_dir(b['variant'], seed)} has no checkpoint at "
                         f"{b['steps']} agent steps (epoch={self.mark_epoch(b['variant'], b['steps'])}-*.ckpt); train "
                         f"it first: --variants {b['variant']} --seeds {seed}")

    def rewind(self, steps: int) -> None:
        """Set every selected run back to its mark at ``steps``, so that the sweep trains it on from there again:
        its later numbered checkpoints, ``last.ckpt``, evaluation logs and TensorBoard event files begun after
        the mark move to ``sweep_<name>/replaced/<run>_<time>/``, with its later CSV rows (``rows.csv``); the
        mark's checkpoint becomes ``last.ckpt``. Checks every run before it moves anything."""
        if steps < 1 or steps % self.sweep.eval_every:
            raise SystemExit(f"--rerun-from={steps}: must be a mark, a multiple of eval_every "
                             f"({self.sweep.eval_every}), since checkpoints exist only there")
        marks = {}
        for v, seed in ((v, seed) for seed in self.seeds for v in self.variants):
            if not self.claim_training(v, seed):  # held from here on, so no training starts while files move
                holder = _holder(self.training_claim(v, seed))
                raise SystemExit(f"--rerun-from={steps}: {self.sweep.run_name(v, seed)} is being trained by process "
                                 f"{holder}; stop it first (kill -TERM {holder}, or the sweep that started it)")
            mark = self.mark_checkpoint(v, seed, steps)
            if mark is None:
                raise SystemExit(f"--rerun-from={steps}: {self.sweep.run_dir(v, seed)} has no checkpoint at that mark "
                                 f"(epoch={self.mark_epoch(v, steps)}-*.ckpt); pick its runs with --variants "
                                 "and --seeds, or an earlier mark")
            marks[v, seed] = mark
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for (v, seed), mark in marks.items():
            run = self.sweep.run_dir(v, seed)
            later = [p for p in (run / "checkpoints").glob("epoch=*.ckpt") if _epoch(p.name) > _epoch(mark.name)]
            later += [p for p in run.glob("eval_epoch=*") if _epoch(p.name.removeprefix("eval_")) > _epoch(mark.name)]
            later += [p for p in run.glob("events.out.tfevents.*") if int(p.name.split(".")[3]) > mark.stat().st_mtime]
            later += [run / "checkpoints" / "last.ckpt"]
            rows = [r for r in (load_rows(self.csv_path) if self.csv_path.exists() else [])
                    if r["variant"] == v and int(r["seed"]) == seed and int(r["agent_steps"]) > steps]
            print(f"{run.name}: back to {mark.name}; moving {len([p for p in later if p.exists()])} files and "
                  f"{len(rows)} CSV rows aside", flush=True)
            if self.dry_run:
                continue
            aside = run.parent / "replaced" / f"{run.name}_{stamp}"
            aside.mkdir(parents=True)
            write_rows(aside / "rows.csv", rows)
            drop_rows(self.csv_path, rows)
            for p in later:
                if p.exists():
                    shutil.move(str(p), aside / p.name)
            _copy_atomic(mark, run / "checkpoints" / "last.ckpt")

    def start_branch(self, variant: str, seed: int, source: Path) -> None:
        """The branch's ``last.ckpt``: a copy of ``source``; the source run's rows up to it join the CSV under
        the branch's name (a branch judged before keeps its rows)."""
        last = self.sweep.run_dir(variant, seed) / "checkpoints" / "last.ckpt"
        if self.dry_run:
            return
        steps = int(_read_ckpt_meta(source).get("agent_steps", 0))
        rows = load_rows(self.csv_path) if self.csv_path.exists() else []
        have = {(r["variant"], r["seed"], r["checkpoint"]) for r in rows}
        for r in rows:  # first the rows, then the checkpoint: an interrupted start is simply started again
            if (r["variant"] == self.sweep.branches[variant]["variant"] and int(r["seed"]) == seed
                    and int(r["agent_steps"]) <= steps and (variant, r["seed"], r["checkpoint"]) not in have):
                append_row(self.csv_path, {**{k: r.get(k, "") for k in COLUMNS}, "variant": variant})
        last.parent.mkdir(parents=True, exist_ok=True)
        _copy_atomic(source, last)

    def train_job(self, variant: str, seed: int) -> Job | None:
        s = self.sweep
        run = s.run_dir(variant, seed)
        cmd = [sys.executable, str(ROOT / "train.py"), "fit", *_config_flags(s, variant, seed),
               "--run_name", s.run_name(variant, seed), "--trainer.max_epochs", str(self.stop_epochs(variant))]
        last = run / "checkpoints" / "last.ckpt"
        resume = last.exists()
        if not resume and variant in s.branches:
            source = self.branch_point(variant, seed)
            if source is None:
                return None  # its source run has not reached the mark yet
            print(f"  {run.name} branches from {source}", flush=True)
            self.start_branch(variant, seed, source)
            resume = True
        if resume:
            cmd += ["--ckpt_path", str(last)]
        return Job("train", variant, seed, cmd, run.parent / f"{run.name}.train.log")

    def eval_job(self, variant: str, seed: int, ckpt: Path) -> Job:
        s = self.sweep
        cmd = [sys.executable, str(ROOT / "train.py"), "test", *_config_flags(s, variant, seed),
               "--trainer.logger", "false", "--ckpt_path", str(ckpt),
               "--trainer.default_root_dir", str(ckpt.parent.parent / "eval"),  # its config.yaml goes there
               "--model.eval_episodes", str(s.eval_episodes), "--model.eval_replays", "0",
               "--model.eval_gif", "false", "--model.eval_greedy", "false"]
        log = ckpt.parent.parent / f"eval_{ckpt.stem}.log"
        return Job("eval", variant, seed, cmd, log, checkpoint=ckpt)

    # -- the loop ------------------------------------------------------------------------------------------
    def start(self, job: Job) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] start {job.kind} {job.variant} s{job.seed}"
              f"{' ' + job.checkpoint.name if job.checkpoint else ''}", flush=True)
        if self.dry_run:
            print("  " + " ".join(job.cmd), flush=True)
            return
        job.log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        with job.log.open("ab") as log:
            job.proc = subprocess.Popen(job.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        if job.kind == "train":  # the training itself holds the run, even if this invocation dies first
            self.training_claim(job.variant, job.seed).write_text(str(job.proc.pid))
        self.running.append(job)

    def finish(self, job: Job) -> None:
        rc = job.proc.returncode
        print(f"[{time.strftime('%H:%M:%S')}] end   {job.kind} {job.variant} s{job.seed} rc={rc}", flush=True)
        if job.kind == "eval" and rc == 0:
            self.record(job)
        if job.kind == "eval":
            _claim_path(job.checkpoint).unlink(missing_ok=True)  # after the row is written
        else:
            self.training_claim(job.variant, job.seed).unlink(missing_ok=True)
        if rc != 0 and not self.stopping:
            print(f"  failed: see {job.log}", flush=True)
            self.failed.add((job.kind, job.variant, job.seed, job.checkpoint))

    def record(self, job: Job) -> None:
        table = result_table(job.log.read_text())
        if "junctions_aligned" not in table:
            print(f"  no result table in {job.log}", flush=True)
            return
        meta = _read_ckpt_meta(job.checkpoint)
        row = {"variant": job.variant, "seed": job.seed, "checkpoint": job.checkpoint.name,
               "agent_steps": int(meta.get("agent_steps", 0)),
               "train_seconds": round(float(meta.get("train_seconds", float("nan"))), 1),
               "episodes": table["junctions_aligned"][2], "state_reset": self.sweep.state_reset(job.variant),
               "aligned_mean": table["junctions_aligned"][0], "aligned_std": table["junctions_aligned"][1],
               "return_mean": table["episode_return"][0], "return_std": table["episode_return"][1],
               "hearts_used_mean": table["heart_lost"][0], "gear_pickups_mean": table["aligner_gained"][0],
               "deaths_mean": table["deaths"][0], "cpu": self.cpu}
        append_row(self.csv_path, row)
        print(f"  {job.variant} s{job.seed} @ {row['agent_steps']}: aligned {row['aligned_mean']:.2f} "
              f"+- {row['aligned_std']:.2f}, return {row['return_mean']:.2f}", flush=True)
        plot(self.sweep, self.csv_path)

    def run(self) -> None:
        def stop(signum, frame):
            self.stopping = True
            for j in self.running:
                if j.proc and j.proc.poll() is None:
                    j.proc.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while True:
            for j in list(self.running):
                if j.proc.poll() is not None:
                    self.running.remove(j)
                    self.finish(j)
            if self.stopping:
                if not self.running:
                    return
                time.sleep(1)
                continue
            while len(self.running) < self.parallel:
                job = self.next_job()
                if job is None or (job.kind, job.variant, job.seed, job.checkpoint) in self.failed:
                    break
                self.start(job)
                if self.dry_run:
                    self.running.append(job)  # so that next_job moves on
            if self.dry_run or not self.running:
                return
            time.sleep(5)


def result_table(log: str) -> dict[str, tuple[float, float, int]]:
    """The last ``train.py test`` result table in a log: metric -> (mean, std, episodes)."""
    table: dict[str, tuple[float, float, int]] = {}
    for line in log.splitlines()[::-1]:
        m = TABLE_ROW.match(line.strip())
        if m and m.group(1) not in table:
            table[m.group(1)] = (float(m.group(2)), float(m.group(3)), int(m.group(4)))
        if "junctions_aligned" in table and line.startswith("test at"):
            break
    return table


def load_rows(csv_path: Path) -> list[dict]:
    with csv_path.open() as f:
        return [{**r, "state_reset": r.get("state_reset") or ""} for r in csv.DictReader(f)]


def current_rows(sweep: Sweep, csv_path: Path) -> list[dict]:
    """The rows evaluated as each variant is evaluated now (the same ``state_reset``)."""
    now = {v: sweep.state_reset(v) for v in sweep.variants}  # reads the configs once, not once per row
    return [r for r in load_rows(csv_path) if now.get(r["variant"]) == r["state_reset"]]


def write_rows(csv_path: Path, rows: list[dict]) -> None:
    """Write ``rows`` under the full header (a column a row lacks stays empty), through a temporary file."""
    partial = csv_path.with_suffix(".csv.tmp")
    with partial.open("w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, restval="", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(partial, csv_path)


def drop_rows(csv_path: Path, rows: list[dict]) -> None:
    """Rewrite the CSV without ``rows`` (matched by variant, seed and checkpoint)."""
    if rows:
        gone = {(r["variant"], r["seed"], r["checkpoint"]) for r in rows}
        keep = [r for r in load_rows(csv_path) if (r["variant"], r["seed"], r["checkpoint"]) not in gone]
        write_rows(csv_path, keep)


def append_row(csv_path: Path, row: dict) -> None:
    """Append ``row``; a CSV written before a column existed is first rewritten with the full header (its rows
    keep their values, the new column empty)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    if csv_path.exists():
        with csv_path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != COLUMNS:
            write_rows(csv_path, load_rows(csv_path))
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        if new:
            w.writeheader()
        w.writerow(row)


def plot(sweep: Sweep, csv_path: Path) -> None:
    """Aligned per episode (held-out maps) against agent steps and training seconds: each seed thin, the mean
    over seeds at each checkpoint thick (dashed past the last checkpoint every seed has)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (matplotlib missing: pip install -e '.[bench]' to plot)", flush=True)
        return
    rows = load_rows(csv_path)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # One curve per variant and way of treating the recurrent state (a CSV may hold both for a checkpoint).
    groups = [(v, reset) for v in sweep.variants for reset in sorted({r["state_reset"] for r in rows})
              if any(r["variant"] == v and r["state_reset"] == reset for r in rows)]
    for i, (variant, reset) in enumerate(groups):
        mine = [r for r in rows if r["variant"] == variant and r["state_reset"] == reset]
        color = colors[i % len(colors)]
        for ax, x in zip(axes, ("agent_steps", "train_seconds")):
            by_seed: dict[str, list] = {}
            for r in mine:
                by_seed.setdefault(r["seed"], []).append((float(r[x]), float(r["aligned_mean"])))
            for pts in by_seed.values():
                pts.sort()
                ax.plot(*zip(*pts), color=color, alpha=0.3, lw=1)
            by_ckpt: dict[str, list] = {}
            for r in mine:
                by_ckpt.setdefault(r["checkpoint"], []).append((float(r[x]), float(r["aligned_mean"])))
            # The mean is solid where every seed has the checkpoint, dashed where only some do.
            mean = sorted((sum(p[0] for p in v) / len(v), sum(p[1] for p in v) / len(v), len(v) == len(by_seed))
                          for v in by_ckpt.values())
            full = [m[:2] for m in mean if m[2]]
            part = [m[:2] for m in mean if not m[2] and (not full or m[0] > full[-1][0])]
            label = (f"{variant}{f', state zeroed every {reset} steps' if reset else ''} "
                     f"({len(by_seed)} seed{'s' * (len(by_seed) > 1)})")
            if full:
                ax.plot(*zip(*full), color=color, lw=2, marker="o", ms=3, label=label)
            if part:
                ax.plot(*zip(*(full[-1:] + part)), color=color, lw=2, ls="--", marker="o", ms=3,
                        label=None if full else label)
    axes[0].set_xlabel("agent steps")
    axes[1].set_xlabel(f"training seconds ({rows[0]['cpu'] if rows else ''}, runs side by side)")
    for ax in axes:
        ax.set_ylabel(f"junctions aligned per episode (held-out maps, {sweep.eval_episodes} episodes)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"sweep {sweep.name}: mean over seeds (thick; dashed where only some seeds ran), each seed (thin)")
    fig.tight_layout()
    fig.savefig(csv_path.with_suffix(".png"), dpi=110)
    plt.close(fig)


def compare(sweep: Sweep, csv_path: Path, a: str, b: str) -> None:
    """Two variants at each mark both reached: junctions aligned per episode, mean +- std over seeds, each
    seed's value, and the exact permutation p of the difference of the means (over every relabelling of the
    pooled seeds; with 4 + 4 seeds the smallest possible p is 1/35)."""
    from learning_curve import permutation_p  # benchmarks/ is on the path when run as a script

    for name in (a, b):
        if name not in sweep.variants:
            raise SystemExit(f"--compare: {name!r} is not a variant of {sweep.name}: {list(sweep.variants)}")
    values: dict[tuple[str, int], dict[int, float]] = {}
    for r in current_rows(sweep, csv_path):
        if r["variant"] in (a, b):
            values.setdefault((r["variant"], int(r["agent_steps"])), {})[int(r["seed"])] = float(r["aligned_mean"])
    marks = sorted({steps for v, steps in values if v == a} & {steps for v, steps in values if v == b})
    print(f"junctions aligned per episode, {sweep.name}: {a} against {b} (mean +- std over seeds; per seed)")
    for steps in marks:
        x, y = values[(a, steps)], values[(b, steps)]
        xs, ys = list(x.values()), list(y.values())
        cells = [f"{np.mean(list(v.values())):5.2f} +- {np.std(list(v.values()), ddof=1) if len(v) > 1 else 0:4.2f} "
                 f"({', '.join(f's{k} {v[k]:.2f}' for k in sorted(v))})" for v in (x, y)]
        print(f"{steps / 1e6:5.2f}M  {a}: {cells[0]}  {b}: {cells[1]}  "
              f"difference {np.mean(xs) - np.mean(ys):+.2f}, p = {permutation_p(xs, ys):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path, help="sweep file (benchmarks/sweeps/*.yaml)")
    parser.add_argument("--parallel", type=int, default=2, help="processes at a time (default 2)")
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from the CSV and exit")
    parser.add_argument("--dry-run", action="store_true", help="print the next commands and exit")
    parser.add_argument("--variants", nargs="+", metavar="NAME", help="work on these variants only")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="work on these seeds only")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate the checkpoints not yet in the CSV, start no training, exit when done (beside "
                             "a sweep whose slots are all training)")
    parser.add_argument("--compare", nargs=2, metavar="VARIANT", help="compare two variants over seeds and exit")
    parser.add_argument("--stop-steps", type=int, metavar="N",
                        help="train to N agent steps instead of the file's stop_steps (screen short, then confirm "
                             "long with the same file: a later call with a larger N resumes the runs)")
    parser.add_argument("--rerun-from", type=int, metavar="N",
                        help="set the selected runs back to their checkpoint at the mark N (later checkpoints, logs "
                             "and CSV rows move to sweep_<name>/replaced/), then train them on from there; refused "
                             "while a sweep's training of one of them is alive")
    args = parser.parse_args()
    sweep = Sweep.load(args.sweep)
    if args.stop_steps is not None:
        if args.stop_steps < 1:
            parser.error(f"--stop-steps={args.stop_steps}: must be >= 1 (agent steps)")
        sweep.stop_steps = args.stop_steps
    if args.compare:
        compare(sweep, RESULTS / f"{sweep.name}.csv", *args.compare)
        return
    runner = Runner(sweep, args.parallel, args.dry_run, args.variants, args.seeds, args.eval_only)
    if args.plot_only:
        plot(sweep, runner.csv_path)
        return
    if args.rerun_from is not None:
        runner.rewind(args.rerun_from)
    runner.run()


if __name__ == "__main__":
    main()
