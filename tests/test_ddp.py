"""DDP on CPU (gloo, 2 processes), bf16 on CPU, and the Multiprocessing env backend."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import pytest
import torch
from test_resume import EPOCH_STEPS, load, tb_points, train, write_config

DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
       "--model.torch_threads", "1"]


def test_ddp_two_processes(tmp_path):
    probe = {"class_path": "fault_injection.DDPProbe", "init_args": {"out_dir": str(tmp_path)}}
    cfg = write_config(tmp_path, 4, [probe])  # 2 epochs: each collects 2 x 512 agent steps
    code, _, err = train(cfg, tmp_path, "--run_name", "ddp", *DDP)
    assert code == 0, err[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    assert ranks[0]["steps_checked"] == ranks[1]["steps_checked"] == 2 * 4  # identical weights after each step
    assert set(ranks[0]["env_seeds"]).isdisjoint(ranks[1]["env_seeds"])  # each rank its own envs
    assert ranks[0]["env_seeds"] == [42, 43] and ranks[1]["env_seeds"] == [44, 45]

    # environment/* is the mean over the episodes of *both* ranks, logged once, against global agent steps.
    pooled = defaultdict(list)
    for r in ranks:
        for epoch, value in r["episodes"]:
            pooled[epoch].append(value)
    logged = dict(tb_points(tmp_path / "lightning_logs/ddp", "environment/episode_return"))
    assert sorted(logged) == [2 * EPOCH_STEPS * (e + 1) for e in sorted(pooled)]
    for epoch, values in pooled.items():
        assert logged[2 * EPOCH_STEPS * (epoch + 1)] == pytest.approx(sum(values) / len(values), rel=1e-5)
    assert all(r["episodes"] for r in ranks)
    ckpt = load(tmp_path / "lightning_logs/ddp/checkpoints/last.ckpt")
    assert ckpt["aligner"]["agent_steps"] == 4 * EPOCH_STEPS and len(ckpt["aligner"]["ranks"]) == 2


def test_ddp_resume_restores_every_rank(tmp_path):
    full = write_config(tmp_path, 8)
    code, _, err = train(full, tmp_path, "--run_name", "full", *DDP)
    assert code == 0, err[-3000:]
    split = write_config(tmp_path, 8, [{"class_path": "fault_injection.SignalAtEpoch", "init_args": {"epoch": 1}}])
    code, _, err = train(split, tmp_path, "--run_name", "split", *DDP)
    assert code == 0, err[-3000:]
    half = load(tmp_path / "lightning_logs/split/checkpoints/last.ckpt")
    assert half["aligner"]["agent_steps"] == 4 * EPOCH_STEPS
    assert len(half["aligner"]["ranks"]) == 2  # both ranks' RNG and env state, restored to their own rank
    code, _, err = train(split, tmp_path, "--run_name", "split", "--ckpt_path", "last", *DDP)
    assert code == 0, err[-3000:]
    a = load(tmp_path / "lightning_logs/full/checkpoints/last.ckpt")
    b = load(tmp_path / "lightning_logs/split/checkpoints/last.ckpt")
    assert a["aligner"]["agent_steps"] == b["aligner"]["agent_steps"] == 8 * EPOCH_STEPS
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=1e-6, msg=k)


def test_bf16_mixed_on_cpu_trains_with_finite_losses(tmp_path):
    code, _, err = train(write_config(tmp_path, 2), tmp_path, "--run_name", "bf16", "--trainer.precision", "bf16-mixed")
    assert code == 0, err[-3000:]
    for tag in ("losses/policy_loss", "losses/value_loss", "losses/entropy"):
        assert all(math.isfinite(v) for _, v in tb_points(tmp_path / "lightning_logs/bf16", tag))
    ckpt = load(tmp_path / "lightning_logs/bf16/checkpoints/last.ckpt")
    assert all(v.dtype == torch.float32 for k, v in ckpt["state_dict"].items() if k.startswith("policy._"))


def test_multiprocessing_backend_with_async_batches(tmp_path):
    cfg = write_config(tmp_path, 2, backend="multiprocessing", num_workers=2, env_batch_size=1,
                       reset_envs_each_epoch=False)
    code, _, err = train(cfg, tmp_path, "--run_name", "mp", "--model.torch_threads", "1")
    assert code == 0, err[-3000:]
    assert load(tmp_path / "lightning_logs/mp/checkpoints/last.ckpt")["aligner"]["agent_steps"] >= 2 * EPOCH_STEPS


@pytest.mark.parametrize("cores, num_envs, expected", [(2, 4, ("serial", 1)), (8, 4, ("multiprocessing", 4)),
                                                       (8, 6, ("multiprocessing", 3)), (16, 1, ("serial", 1))])
def test_auto_backend_follows_the_core_count(monkeypatch, cores, num_envs, expected):
    from aligner_lightning import envs

    monkeypatch.setattr(envs.os, "sched_getaffinity", lambda _pid: set(range(cores)))
    assert envs.resolve_backend("auto", num_envs, None) == expected
