"""Faithful resume and fault tolerance, through the real entry point (in subprocesses where signals, exit codes
and worker processes are under test; in this process otherwise)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import EPOCH_STEPS, TRAINED_EPOCHS, finish, launch, load, run_main, tb_points, train, write_config

from aligner_lightning.envs import EnvFactory


def test_sigterm_split_run_equals_unbroken_run(trained_run, tmp_path):
    split = write_config(tmp_path, TRAINED_EPOCHS,
                         [{"class_path": "fault_injection.SignalAtEpoch", "init_args": {"epoch": 1}}])
    code, out, err = train(split, tmp_path, "--run_name", "split")
    assert code == 0, err[-2000:]
    assert "stopped by SIGTERM after epoch 2" in out + err
    first = load(tmp_path / "lightning_logs/split/checkpoints/last.ckpt")
    assert first["aligner"]["agent_steps"] == 2 * EPOCH_STEPS
    code, _, err = train(split, tmp_path, "--run_name", "split", "--ckpt_path", "last")  # the same command + resume
    assert code == 0, err[-2000:]

    a = load(trained_run / "lightning_logs/full/checkpoints/last.ckpt")
    b = load(tmp_path / "lightning_logs/split/checkpoints/last.ckpt")
    assert a["aligner"]["agent_steps"] == b["aligner"]["agent_steps"] == TRAINED_EPOCHS * EPOCH_STEPS
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"] == TRAINED_EPOCHS * 4
    opt_a, opt_b = a["optimizer_states"][0], b["optimizer_states"][0]
    assert opt_a["param_groups"][0]["lr"] == opt_b["param_groups"][0]["lr"]
    assert float(opt_a["state"][0]["step"]) == float(opt_b["state"][0]["step"]) == TRAINED_EPOCHS * 4
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=1e-6, msg=k)
    head = "policy._value_head.weight"
    assert not torch.equal(first["state_dict"][head], b["state_dict"][head])

    # One continuous TensorBoard curve, in the same directory, equal to the unbroken run's.
    curve = tb_points(tmp_path / "lightning_logs/split", "losses/value_loss")
    assert [s for s, _ in curve] == [EPOCH_STEPS * (i + 1) for i in range(TRAINED_EPOCHS)]
    ref = tb_points(trained_run / "lightning_logs/full", "losses/value_loss")
    assert [v for _, v in curve] == pytest.approx([v for _, v in ref], rel=1e-4)
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["split"]  # no stray version_N


def test_sigkill_loses_at_most_one_epoch_and_resumes(monkeypatch, tmp_path):
    cfg = write_config(tmp_path, 60, evaluation=False)
    proc = launch(cfg, tmp_path, "--run_name", "killed")
    last = tmp_path / "lightning_logs/killed/checkpoints/last.ckpt"
    deadline = time.time() + 180
    while time.time() < deadline and not (last.exists() and load(last)["aligner"]["agent_steps"] >= EPOCH_STEPS):
        assert proc.poll() is None, "the run ended before it was killed"
        time.sleep(0.5)
    assert last.exists(), "no checkpoint within the deadline: the run never reached the end of an epoch"
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
    saved = load(last)["aligner"]["agent_steps"]  # readable: saves are atomic
    assert EPOCH_STEPS <= saved < 60 * EPOCH_STEPS
    logged = max(s for s, _ in tb_points(last.parent.parent, "agent_steps"))
    assert saved <= logged <= saved + EPOCH_STEPS

    short = write_config(tmp_path, saved // EPOCH_STEPS + 1, evaluation=False)
    assert run_main(monkeypatch, tmp_path, "fit", "--config", short, "--run_name", "killed", "--ckpt_path", "last") == 0
    steps = [s for s, _ in tb_points(last.parent.parent, "agent_steps")]
    assert steps == sorted(set(steps)) and steps[-1] == saved + EPOCH_STEPS  # no repeated step range


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(monkeypatch, capsys, tmp_path):
    """On the debug config's own data settings (episodes run across epochs, early reset), two good epochs first."""
    cfg = write_config(tmp_path, 10, [{"class_path": "fault_injection.NanLossAtEpoch", "init_args": {"epoch": 2}}],
                       evaluation=False, deterministic=False)
    assert run_main(monkeypatch, tmp_path, "fit", "--config", cfg, "--run_name", "nan") == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "epoch 2" in err and "agent step" in err and "Traceback" not in err
    ckpt = load(tmp_path / "lightning_logs/nan/checkpoints/last.ckpt")
    assert ckpt["aligner"]["agent_steps"] == 2 * EPOCH_STEPS
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.fixture(scope="module")
def crashed_multiprocessing_run(tmp_path_factory) -> tuple[int, str, Path]:
    """A run on the Multiprocessing backend (2 worker processes, async batches of one env) that an ordinary bug
    ends after 2 epochs."""
    tmp = tmp_path_factory.mktemp("crash")
    cfg = write_config(tmp, 10, [{"class_path": "fault_injection.RaiseAtEpoch", "init_args": {"epoch": 2}}],
                       evaluation=False, backend="multiprocessing", num_workers=2, env_batch_size=1,
                       reset_envs_each_epoch=False)
    code, _, err = train(cfg, tmp, "--run_name", "crash", "--model.torch_threads", "1")  # finish(): no leftovers
    return code, err, tmp / "lightning_logs/crash/checkpoints/last.ckpt"


def test_multiprocessing_backend_with_async_batches(crashed_multiprocessing_run):
    _, err, last = crashed_multiprocessing_run
    assert "injected failure" in err, err[-2000:]  # it got as far as the injected failure
    ckpt = load(last)
    assert ckpt["aligner"]["agent_steps"] >= 2 * EPOCH_STEPS and ckpt["global_step"] == 2 * 4


def test_exception_leaves_checkpoint_and_no_live_processes(crashed_multiprocessing_run):
    code, err, last = crashed_multiprocessing_run  # the fixture's finish() found no process of the run alive
    assert code != 0 and "injected failure" in err
    ckpt = load(last)
    assert ckpt["aligner"]["agent_steps"] >= 2 * EPOCH_STEPS and ckpt["global_step"] == 2 * 4  # epochs 0 and 1


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"batch_size": 1024}, "data geometry batch_size=1024 but the checkpoint was trained with 512"),
        ({"mission_overrides": {"max_steps": 63, "num_tokens": 100}}, "observation shape (tokens, token size): checkpoint (200, 3) vs config (100, 3)"),
        ({"mission_overrides": {"max_steps": 63, "territory_obs": False}}, "observation features only in checkpoint: territory"),
    ],
)
def test_incompatible_checkpoint_is_refused_before_anything_is_written(monkeypatch, capsys, trained_run, tmp_path,
                                                                       data, expected):
    run_dir = trained_run / "lightning_logs/full"
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    cfg = write_config(tmp_path, 8, **data)
    code = run_main(monkeypatch, trained_run, "fit", "--config", cfg, "--run_name", "full", "--ckpt_path", "last")
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_truncated_and_missing_checkpoints_are_refused(monkeypatch, capsys, trained_run, tmp_path):
    good = trained_run / "lightning_logs/full/checkpoints/last.ckpt"
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cfg = write_config(tmp_path, 4)
    refusals = ((bad, "truncated.ckpt is corrupt or truncated"), (tmp_path / "no.ckpt", "no.ckpt does not exist"),
                ("last", "no run under"))
    for ckpt, expected in refusals:
        assert run_main(monkeypatch, tmp_path, "fit", "--config", cfg, "--ckpt_path", ckpt) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err


def _steps_to_episode_end(env, limit: int = 1000) -> int:
    """Steps (all agents noop) until env's episode in progress ends."""
    actions = np.zeros(env.num_agents, dtype=np.int32)
    for n in range(1, limit + 1):
        _, _, terminals, truncations, _ = env.step(actions)
        if terminals.all() or truncations.all():
            return n
    raise AssertionError(f"no episode end in {limit} steps")


@pytest.mark.parametrize("early_reset, taken", [(True, 5), (True, 45), (False, 20)])
def test_a_resumed_env_ends_the_replayed_episode_where_the_interrupted_one_would_have(early_reset, taken):
    """A resumed env replays the episode in progress from its start; it must end after the steps that episode had
    left, so that the envs keep the phases the early reset gave them (not all restart at step 0 together)."""
    factory = EnvFactory("smoke", {"max_steps": 60}, seed=11, seed_stride=1, early_reset=early_reset)
    unbroken = factory.make_env(0)
    unbroken.reset()
    actions = np.zeros(unbroken.num_agents, dtype=np.int32)
    for _ in range(taken):
        unbroken.step(actions)
    state = unbroken.seed_state()
    left = _steps_to_episode_end(unbroken)
    assert state["steps_left"] == left and 0 < left < 60
    resumed = factory.make_env(0)
    resumed.restore_seed_state(state)
    resumed.reset()
    assert _steps_to_episode_end(resumed) == left
    # The deterministic mode resets every env at each epoch's start, so it does not cut.
    full = factory.make_env(0)
    full.restore_seed_state({**state, "early_reset": [False, None]}, keep_phase=False)
    full.reset()
    assert _steps_to_episode_end(full) == 60


def test_a_checkpoint_without_steps_left_gets_a_fresh_early_reset():
    """Checkpoints written before ``steps_left`` was saved: the replayed episode ends at a random step, as an env's
    first episode does, instead of every env restarting a full episode at once."""
    factory = EnvFactory("smoke", {"max_steps": 60}, seed=11, seed_stride=1, early_reset=True)
    env = factory.make_env(0)
    env.reset()
    drawn = env.early_reset_handler._early_reset_step  # what this env's seed draws for a first episode
    old = {k: v for k, v in env.seed_state().items() if k != "steps_left"}
    resumed = factory.make_env(0)
    resumed.restore_seed_state({**old, "early_reset": [False, None]})
    resumed.reset()
    assert _steps_to_episode_end(resumed) == drawn < 60
