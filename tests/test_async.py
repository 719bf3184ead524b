"""The async collector: which weights each rollout acts with, resume, and no collector process left behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import EPOCH_STEPS, TRAINED_EPOCHS, finish, launch, leftovers, load, tb_points, train, write_config

from aligner_lightning.collector import START_METHOD_ENV, PolicyUpdate, ProcessCollector, start_method
from aligner_lightning.datamodule import RolloutDataModule
from aligner_lightning.errors import CollectorError, ConfigError
from aligner_lightning.policy import AlignerPolicy, logprob_and_entropy
from aligner_lightning.policy_spec import canonical, default_spec

ASYNC = ["--data.collector", "async"]


def async_config(tmp_path: Path, epochs: int, callbacks: list[dict] | None = None) -> Path:
    # The debug config's own data settings: async mode has no deterministic (reset-every-epoch) mode.
    return write_config(tmp_path, epochs, callbacks, evaluation=False, deterministic=False)


def collect_three(dm: RolloutDataModule, nets: list[torch.nn.Module]) -> list:
    """Three rollouts from a fresh collector, publishing ``nets[k]`` before asking for rollout k."""
    spec = canonical(default_spec())
    collector = ProcessCollector(dm.recipe(), dm.env_info, threads=1, seed=3)
    try:
        experiences = []
        for version, net in enumerate(nets):
            collector.publish(PolicyUpdate(version, net.state_dict(), spec, agent_steps=0, teacher_labels=False))
            experiences.append(collector.next_rollout())
    finally:
        collector.close()
    return experiences


def test_rollout_k_acts_with_the_weights_after_update_k_minus_1(monkeypatch):
    """Driven by hand: rollouts 0 and 1 act with the initial weights, rollout 2 with those published after the
    first update. Checked on the logged log-probs themselves: each agent's first segment starts from the zero
    state, so the network that acted reproduces them exactly, and the other one does not. A forked and a
    spawned collector with the same seed collect the same rollouts."""
    dm = RolloutDataModule(mission="smoke", num_envs=2, bptt_horizon=16, batch_size=512, minibatch_size=256)
    torch.manual_seed(0)
    nets = [AlignerPolicy(dm.env_info) for _ in range(3)]
    monkeypatch.setenv(START_METHOD_ENV, "fork")
    experiences = collect_three(dm, nets)
    monkeypatch.setenv(START_METHOD_ENV, "spawn")
    spawned = collect_three(dm, nets)
    for a, b in zip(experiences, spawned):
        for name in ("obs", "actions", "logprobs", "values", "rewards"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    agents = dm.total_agents

    def first_segment_logprobs(net, exp):
        with torch.no_grad():
            logits, _ = net(exp.obs[:agents])
            return logprob_and_entropy(logits.float(), exp.actions[:agents])[0]

    for k, acting in enumerate([0, 0, 1]):
        exp = experiences[k]
        assert exp.policy_version == acting and exp.agent_steps == 512
        for v, net in enumerate(nets):
            close = torch.allclose(first_segment_logprobs(net, exp), exp.logprobs[:agents], rtol=0, atol=1e-4)
            assert close == (v == acting), f"rollout {k}: weights {v}"
    assert not torch.equal(experiences[0].obs, experiences[1].obs)  # a new rollout each time, not a resend


def test_async_fit_logs_the_lag_and_sync_has_none(trained_run, tmp_path):
    code, _, err = train(async_config(tmp_path, 4), tmp_path, "--run_name", "async", *ASYNC)
    assert code == 0, err[-3000:]
    run = tmp_path / "lightning_logs/async"
    assert [v for _, v in tb_points(run, "performance/policy_lag")] == [0, 1, 1, 1]
    assert [s for s, _ in tb_points(run, "agent_steps")] == [EPOCH_STEPS * (e + 1) for e in range(4)]
    assert all(v >= 0 for _, v in tb_points(run, "performance/wait_time"))
    assert load(run / "checkpoints/last.ckpt")["aligner"]["agent_steps"] == 4 * EPOCH_STEPS
    sync_lag = tb_points(trained_run / "lightning_logs/full", "performance/policy_lag")
    assert [v for _, v in sync_lag] == [0] * TRAINED_EPOCHS


def test_async_resume_continues_the_collectors_streams(tmp_path):
    """Stopped by SIGINT after epoch 1 (the collector ignores it and is stopped by the trainer), then resumed."""
    stop = {"class_path": "fault_injection.SignalAtEpoch", "init_args": {"epoch": 1, "signum": int(signal.SIGINT)}}
    code, _, err = train(async_config(tmp_path, 4, [stop]), tmp_path, "--run_name", "split", *ASYNC)
    assert code == 0, err[-3000:]
    last = tmp_path / "lightning_logs/split/checkpoints/last.ckpt"
    half = load(last)
    assert half["aligner"]["agent_steps"] == 2 * EPOCH_STEPS
    (rank,) = half["RolloutDataModule"]["ranks"]
    assert rank["agent_steps"] == 2 * EPOCH_STEPS and rank["envs"] and rank["collector_rng"]["torch"] is not None
    code, _, err = train(async_config(tmp_path, 4), tmp_path, "--run_name", "split", "--ckpt_path", "last", *ASYNC)
    assert code == 0, err[-3000:]
    full = load(last)
    assert full["aligner"]["agent_steps"] == 4 * EPOCH_STEPS
    (rank,) = full["RolloutDataModule"]["ranks"]
    assert rank["agent_steps"] == 4 * EPOCH_STEPS  # the collector's own count went on from the checkpoint
    steps = [s for s, _ in tb_points(last.parent.parent, "agent_steps")]
    assert steps == [EPOCH_STEPS * (e + 1) for e in range(4)]
    # The first rollout after resume acts with the saved weights (lag 0), then the lag is one update again.
    assert [v for _, v in tb_points(last.parent.parent, "performance/policy_lag")] == [0, 1, 0, 1]


def test_sigkill_of_the_trainer_takes_the_collector_down(tmp_path):
    proc = launch(async_config(tmp_path, 200), tmp_path, "--run_name", "killed", *ASYNC)
    last = tmp_path / "lightning_logs/killed/checkpoints/last.ckpt"
    deadline = time.time() + 180
    while time.time() < deadline and not last.exists():
        assert proc.poll() is None, "the run ended before it was killed"
        time.sleep(0.5)
    assert last.exists(), "no checkpoint within the deadline"
    collectors = [pid for pid in leftovers(proc.pid, grace=0) if pid != proc.pid]
    assert collectors, "no collector process was running"
    os.kill(proc.pid, signal.SIGKILL)  # the trainer alone: nothing tells the collector
    finish(proc)  # asserts that no process of the run outlived it
    assert proc.returncode == -signal.SIGKILL


def test_async_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="data.collector=async needs data.backend=serial"):
        RolloutDataModule(mission="smoke", num_envs=2, bptt_horizon=16, batch_size=512, minibatch_size=256,
                          collector="async", backend="multiprocessing", num_workers=2)
    with pytest.raises(ValueError, match="data.collector='later': must be one of sync, async"):
        RolloutDataModule(mission="smoke", num_envs=2, bptt_horizon=16, batch_size=512, minibatch_size=256,
                          collector="later")


def test_the_collector_forks_only_where_a_fork_is_safe(monkeypatch):
    monkeypatch.delenv(START_METHOD_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert start_method(1) == "fork"  # shares the trainer's pages
    assert start_method(2) == "spawn"  # a forked child hangs in OpenMP on more than one thread
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert start_method(1) == "spawn"  # a CUDA context does not survive a fork
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setenv(START_METHOD_ENV, "spawn")
    assert start_method(1) == "spawn"
    monkeypatch.setenv(START_METHOD_ENV, "fork")
    with pytest.raises(ConfigError, match="needs data.collector_threads=1"):
        start_method(2)
    monkeypatch.setenv(START_METHOD_ENV, "thread")
    with pytest.raises(ConfigError, match="use auto, fork or spawn"):
        start_method(1)


def test_an_exception_in_the_collector_is_raised_in_the_trainer_with_its_traceback():
    dm = RolloutDataModule(mission="smoke", num_envs=2, bptt_horizon=16, batch_size=512, minibatch_size=256)
    collector = ProcessCollector(dm.recipe(), dm.env_info, threads=1, seed=3)
    broken = {"class_path": "aligner_lightning.policy.NoSuchPolicy", "init_args": {}}  # fails in the collector
    collector.publish(PolicyUpdate(0, {}, broken, agent_steps=0, teacher_labels=False))
    with pytest.raises(CollectorError, match="(?s)collector process failed.*Traceback.*NoSuchPolicy"):
        collector.next_rollout()
    process = collector._proc
    collector.close()
    assert not process.is_alive()
