"""Helpers shared by the test files (fixtures live in conftest.py): configs, runs of the real entry point (in a
subprocess, or in this process where no process-level behaviour is under test), and readers of their output."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aligner_lightning import cli
from aligner_lightning.envs import EnvFactory

ROOT = Path(__file__).resolve().parents[1]
DEBUG = ROOT / "configs" / "debug.yaml"
EPOCH_STEPS = 512  # write_config's epoch: 8 agents x 64 steps
TRAINED_EPOCHS = 4  # the shared trained run (conftest.trained_run)
# Two DDP ranks on CPU (gloo), one torch thread each: the flags that turn a write_config run into a DDP run.
DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
       "--model.torch_threads", "1"]


def factory(mission: str, seed: int = 7, **overrides) -> EnvFactory:
    """Envs for tests: no early reset, seeds seed, seed + 1, ..."""
    return EnvFactory(mission, overrides, seed=seed, seed_stride=1, early_reset=False)


def random_observations(env_factory: EnvFactory, steps: int, seed: int = 0) -> torch.Tensor:
    """[steps, agents, tokens, 3] uint8 observations of env 0 under uniformly random primary actions."""
    env = env_factory.make_env(0)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset()
    frames = [obs.copy()]
    for _ in range(steps - 1):
        obs, *_ = env.step(rng.integers(0, env.single_action_space.n, env.num_agents).astype(np.int32))
        frames.append(obs.copy())
    env.close()
    return torch.from_numpy(np.stack(frames))


def write_config(tmp_path: Path, epochs: int, extra_callbacks: list[dict] | None = None, evaluation: bool = True,
                 deterministic: bool = True, **data) -> Path:
    """The debug config in its deterministic mode: envs reset at every epoch start with seeds from the epoch,
    and 63-step episodes fit in the 64-step rollout, so a resumed run replays exactly what the unbroken run saw.
    ``deterministic=False`` keeps the debug config's own data section (96-step episodes run across epochs);
    ``evaluation=False`` turns evaluation off (no step-0 and no periodic evaluation)."""
    cfg = yaml.safe_load(DEBUG.read_text())
    cfg["trainer"]["enable_progress_bar"] = False
    cfg["trainer"]["callbacks"] = [
        {"class_path": "aligner_lightning.callbacks.RunCheckpoint", "init_args": {"every_n_epochs": 2, "keep": 2}},
        {"class_path": "aligner_lightning.callbacks.GracefulStop"},
        *(extra_callbacks or []),
    ]
    if not evaluation:
        cfg["trainer"].update(num_sanity_val_steps=0, limit_val_batches=0)
    cfg["model"].update(total_timesteps=epochs * EPOCH_STEPS, torch_threads=1)  # small: one thread is as fast
    if deterministic:
        cfg["data"].update({"mission_overrides": {"max_steps": 63}, "reset_envs_each_epoch": True, "bptt_horizon": 16,
                            "batch_size": EPOCH_STEPS, "minibatch_size": 256, "update_epochs": 2})
    cfg["data"].update(data)
    assert cfg["data"]["batch_size"] == EPOCH_STEPS or "batch_size" in data
    path = tmp_path / f"cfg_{len(list(tmp_path.glob('cfg_*')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- the entry point in a subprocess -------------------------------------------------------------------------
def launch(cfg: Path, cwd: Path, *args: str, subcommand: str = "fit") -> subprocess.Popen:
    """``train.py <subcommand> --config cfg ...`` leading a new process group (so that its workers are findable)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), subcommand, "--config", str(cfg), *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: int = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert not leftovers(proc.pid), "processes of the run outlived it"
    return proc.returncode, out, err


def leftovers(group: int, grace: float = 10.0) -> list[int]:
    """Processes of the run's process group (env workers, DDP ranks) still alive ``grace`` seconds after it ended."""
    deadline = time.time() + grace
    while True:
        alive = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.getpgid(int(pid)) == group and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
                    alive.append(int(pid))
            except (OSError, IndexError):
                pass
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.2)


def train(cfg: Path, cwd: Path, *args: str) -> tuple[int, str, str]:
    return finish(launch(cfg, cwd, *args))


# -- the entry point in this process -------------------------------------------------------------------------
def run_main(monkeypatch: pytest.MonkeyPatch, cwd: Path, *argv: str) -> int:
    """``cli.main()`` as ``python train.py *argv`` from ``cwd``, in this process; returns its exit code (0 when
    it returns). What it prints is left to the caller's capsys/capfd; an exception it does not handle propagates.
    ``fault_injection`` callbacks are importable, as in the subprocess runs."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["train.py", *map(str, argv)])
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    environ = dict(os.environ)  # Lightning's seed_everything exports PL_GLOBAL_SEED; keep it out of later tests
    try:
        cli.main()
        return 0
    except SystemExit as exc:
        return 0 if exc.code is None else int(exc.code)
    finally:
        os.environ.clear()
        os.environ.update(environ)


# -- reading what a run wrote --------------------------------------------------------------------------------
def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run directory: [(step, value), ...]."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tb_points(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    return scalars(run_dir)[tag]
