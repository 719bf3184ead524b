"""Two nodes of one process each, started as ``torchrun --nnodes 2`` starts them on a cluster (here on the
loopback interface): they train, checkpoint and resume, with the sync and the async collector."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import EPOCH_STEPS, ROOT, leftovers, load, tb_points, write_config

NODES = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_nodes(cfg: Path, cwd: Path, *args: str, timeout: int = 600) -> list[tuple[int, str]]:
    """One ``torchrun`` per node, each with its ``--node_rank``, meeting at a static rendezvous on 127.0.0.1.
    Returns each node's exit code and stderr; asserts that no process of either node outlived it."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(NODES), "--nproc_per_node", "1",
         "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", str(port),
         str(ROOT / "train.py"), "fit", "--config", str(cfg), "--trainer.num_nodes", str(NODES),
         "--trainer.devices", "1", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", *args],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        for node in range(NODES)]
    results = []
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=timeout)
            results.append((proc.returncode, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        assert not leftovers(proc.pid), "a process of the run outlived it"
    return results


@pytest.mark.parametrize("collector", ["sync", "async"])
def test_two_nodes_train_checkpoint_and_resume(tmp_path, collector):
    stop = {"class_path": "fault_injection.SignalAtEpoch", "init_args": {"epoch": 1}}  # SIGTERM on both nodes
    args = ["--run_name", "nodes", "--data.collector", collector]
    deterministic = collector == "sync"  # async has no reset-every-epoch mode
    cfg = write_config(tmp_path, 2 * 3, [stop], evaluation=False, deterministic=deterministic)
    for code, err in run_nodes(cfg, tmp_path, *args):
        assert code == 0, err[-3000:]
    last = tmp_path / "lightning_logs/nodes/checkpoints/last.ckpt"
    half = load(last)
    assert half["aligner"]["agent_steps"] == 2 * NODES * EPOCH_STEPS and half["aligner"]["world_size"] == NODES
    ranks = half["RolloutDataModule"]["ranks"]
    assert [r["agent_steps"] for r in ranks] == [2 * EPOCH_STEPS] * NODES

    resume = write_config(tmp_path, 2 * 3, evaluation=False, deterministic=deterministic)
    for code, err in run_nodes(resume, tmp_path, *args, "--ckpt_path", "last"):
        assert code == 0, err[-3000:]
    full = load(last)
    assert full["aligner"]["agent_steps"] == 3 * NODES * EPOCH_STEPS
    assert [r["agent_steps"] for r in full["RolloutDataModule"]["ranks"]] == [3 * EPOCH_STEPS] * NODES
    assert [s for s, _ in tb_points(last.parent.parent, "agent_steps")] == [NODES * EPOCH_STEPS * e for e in (1, 2, 3)]
    assert any(not torch.equal(full["state_dict"][k], v) for k, v in half["state_dict"].items())
