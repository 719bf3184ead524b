"""DDP on CPU (gloo, 2 processes), bf16 on CPU, and the choice of env backend."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from helpers import DDP, EPOCH_STEPS, load, run_main, scalars, train, write_config

DDP_EPOCHS = 2  # each collects 2 ranks x 512 agent steps


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """An unbroken 2-epoch DDP run with the probe recording each rank, evaluated at step 0 and after epoch 2."""
    tmp = tmp_path_factory.mktemp("ddp")
    probe = {"class_path": "fault_injection.DDPProbe", "init_args": {"out_dir": str(tmp)}}
    code, _, err = train(write_config(tmp, 2 * DDP_EPOCHS, [probe]), tmp, "--run_name", "full", *DDP)
    assert code == 0, err[-3000:]
    return tmp


def test_ddp_two_processes(ddp_run):
    ranks = [json.loads((ddp_run / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["steps_checked"] == ranks[1]["steps_checked"] == DDP_EPOCHS  # identical weights, every epoch
    assert set(ranks[0]["env_seeds"]).isdisjoint(ranks[1]["env_seeds"])  # each rank its own envs
    assert ranks[0]["env_seeds"] == [42, 43] and ranks[1]["env_seeds"] == [44, 45]

    # environment/* is the mean over the episodes of *both* ranks, logged once, against global agent steps.
    pooled = defaultdict(list)
    for r in ranks:
        for epoch, value in r["episodes"]:
            pooled[epoch].append(value)
    logged = scalars(ddp_run / "lightning_logs/full")
    returns = dict(logged["environment/episode_return"])
    assert sorted(returns) == [2 * EPOCH_STEPS * (e + 1) for e in sorted(pooled)]
    for epoch, values in pooled.items():
        assert returns[2 * EPOCH_STEPS * (epoch + 1)] == pytest.approx(sum(values) / len(values), rel=1e-5)
    assert all(r["episodes"] for r in ranks)
    ckpt = load(ddp_run / "lightning_logs/full/checkpoints/last.ckpt")
    assert ckpt["aligner"]["agent_steps"] == 2 * DDP_EPOCHS * EPOCH_STEPS
    assert len(ckpt["RolloutDataModule"]["ranks"]) == 2

    # Evaluation splits the episodes over the ranks (one each) and logs their pooled summary once per evaluation.
    assert [s for s, _ in logged["eval/episode_return"]] == [0, 2 * DDP_EPOCHS * EPOCH_STEPS]
    assert all(std > 0 for _, std in logged["eval_std/episode_return"])  # two different episodes, not one twice


def test_ddp_resume_restores_every_rank(ddp_run, tmp_path):
    split = write_config(tmp_path, 2 * DDP_EPOCHS, [{"class_path": "fault_injection.SignalAtEpoch",
                                                      "init_args": {"epoch": 0}}])
    code, _, err = train(split, tmp_path, "--run_name", "split", *DDP)
    assert code == 0, err[-3000:]
    half = load(tmp_path / "lightning_logs/split/checkpoints/last.ckpt")
    assert half["aligner"]["agent_steps"] == 2 * EPOCH_STEPS  # one DDP epoch
    assert len(half["RolloutDataModule"]["ranks"]) == 2  # both ranks' RNG and env state, restored to their own rank
    code, _, err = train(split, tmp_path, "--run_name", "split", "--ckpt_path", "last", *DDP)
    assert code == 0, err[-3000:]
    a = load(ddp_run / "lightning_logs/full/checkpoints/last.ckpt")
    b = load(tmp_path / "lightning_logs/split/checkpoints/last.ckpt")
    assert a["aligner"]["agent_steps"] == b["aligner"]["agent_steps"] == 2 * DDP_EPOCHS * EPOCH_STEPS
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=1e-6, msg=k)


def test_bf16_mixed_on_cpu_trains_with_finite_losses(monkeypatch, tmp_path):
    cfg = write_config(tmp_path, 1, evaluation=False)
    assert run_main(monkeypatch, tmp_path, "fit", "--config", cfg, "--run_name", "bf16",
                    "--trainer.precision", "bf16-mixed") == 0
    logged = scalars(tmp_path / "lightning_logs/bf16")
    for tag in ("losses/policy_loss", "losses/value_loss", "losses/entropy"):
        assert logged[tag] and all(math.isfinite(v) for _, v in logged[tag])
    ckpt = load(tmp_path / "lightning_logs/bf16/checkpoints/last.ckpt")
    assert all(v.dtype == torch.float32 for k, v in ckpt["state_dict"].items() if k.startswith("policy._"))


@pytest.mark.parametrize("cores, num_envs, expected", [(2, 4, ("serial", 1)), (8, 4, ("multiprocessing", 4)),
                                                       (8, 6, ("multiprocessing", 3)), (16, 1, ("serial", 1))])
def test_auto_backend_follows_the_core_count(monkeypatch, cores, num_envs, expected):
    from aligner_lightning import envs

    monkeypatch.setattr(envs.os, "sched_getaffinity", lambda _pid: set(range(cores)))
    assert envs.resolve_backend("auto", num_envs, None) == expected


@pytest.mark.parametrize("fails", [False, True])
def test_main_destroys_the_process_group_on_every_exit(monkeypatch, tmp_path, fails):
    """A gloo group must not outlive ``main()``: freed during interpreter finalization it can abort the process
    after a run that succeeded (Lightning destroys only NCCL groups at exit). Also when the run ends in an error."""
    import torch.distributed as dist

    from aligner_lightning import cli
    from aligner_lightning.errors import ConfigError

    def run_in_a_group(args=None):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        if fails:
            raise ConfigError("data.num_envs=0: must be >= 1")

    monkeypatch.setattr(cli, "cli_main", run_in_a_group)
    try:
        assert run_main(monkeypatch, tmp_path, "fit") == (2 if fails else 0)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
