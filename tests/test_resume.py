"""Faithful resume and fault tolerance, through the real entry point in subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aligner_lightning import cli

ROOT = Path(__file__).resolve().parents[1]
EPOCH_STEPS = 512  # 8 agents x 64 steps


def write_config(tmp_path: Path, epochs: int, extra_callbacks: list[dict] | None = None, **data) -> Path:
    """The debug config in its deterministic mode: envs reset at every epoch start with seeds from the epoch,
    and 63-step episodes fit in the 64-step rollout, so a resumed run replays exactly what the unbroken run saw."""
    cfg = yaml.safe_load((ROOT / "configs" / "debug.yaml").read_text())
    cfg["trainer"]["enable_progress_bar"] = False
    cfg["trainer"]["callbacks"] = [
        {"class_path": "aligner_lightning.callbacks.RunCheckpoint", "init_args": {"every_n_epochs": 2, "keep": 2}},
        {"class_path": "aligner_lightning.callbacks.GracefulStop"},
        *(extra_callbacks or []),
    ]
    cfg["model"]["total_timesteps"] = epochs * EPOCH_STEPS
    cfg["data"].update({"mission_overrides": {"max_steps": 63}, "reset_envs_each_epoch": True, "bptt_horizon": 16,
                        "batch_size": EPOCH_STEPS, "minibatch_size": 256, "update_epochs": 2, **data})
    path = tmp_path / f"cfg_{len(list(tmp_path.glob('cfg_*')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(cfg: Path, tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), "fit", "--config", str(cfg), *args],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: int = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert not leftovers(proc.pid), "processes of the run outlived it"
    return proc.returncode, out, err


def leftovers(session: int, grace: float = 10.0) -> list[int]:
    """Processes of the run's session (env workers, DDP ranks) still alive ``grace`` seconds after it ended."""
    deadline = time.time() + grace
    while True:
        alive = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.getsid(int(pid)) == session and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
                    alive.append(int(pid))
            except (OSError, IndexError):
                pass
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.2)


def train(cfg: Path, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    return finish(launch(cfg, tmp_path, *args))


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def tb_points(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_sigterm_split_run_equals_unbroken_run(tmp_path):
    epochs = 6
    full = write_config(tmp_path, epochs)
    code, _, err = train(full, tmp_path, "--run_name", "full")
    assert code == 0, err[-2000:]

    split = write_config(tmp_path, epochs, [{"class_path": "fault_injection.SignalAtEpoch", "init_args": {"epoch": 2}}])
    code, out, err = train(split, tmp_path, "--run_name", "split")
    assert code == 0, err[-2000:]
    assert "stopped by SIGTERM after epoch 3" in out + err
    first = load(tmp_path / "lightning_logs/split/checkpoints/last.ckpt")
    assert first["aligner"]["agent_steps"] == 3 * EPOCH_STEPS
    code, _, err = train(split, tmp_path, "--run_name", "split", "--ckpt_path", "last")  # the same command + resume
    assert code == 0, err[-2000:]

    a = load(tmp_path / "lightning_logs/full/checkpoints/last.ckpt")
    b = load(tmp_path / "lightning_logs/split/checkpoints/last.ckpt")
    assert a["aligner"]["agent_steps"] == b["aligner"]["agent_steps"] == epochs * EPOCH_STEPS
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"] == epochs * 4
    opt_a, opt_b = a["optimizer_states"][0], b["optimizer_states"][0]
    assert opt_a["param_groups"][0]["lr"] == b["optimizer_states"][0]["param_groups"][0]["lr"]
    assert float(opt_a["state"][0]["step"]) == float(opt_b["state"][0]["step"]) == epochs * 4
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=1e-6, msg=k)
    assert not torch.equal(first["state_dict"]["policy._value_head.weight"], b["state_dict"]["policy._value_head.weight"])

    # One continuous TensorBoard curve, in the same directory, equal to the unbroken run's.
    curve = tb_points(tmp_path / "lightning_logs/split", "losses/value_loss")
    assert [s for s, _ in curve] == [EPOCH_STEPS * (i + 1) for i in range(epochs)]
    ref = tb_points(tmp_path / "lightning_logs/full", "losses/value_loss")
    assert [v for _, v in curve] == pytest.approx([v for _, v in ref], rel=1e-4)
    assert len(list((tmp_path / "lightning_logs").iterdir())) == 2  # no stray version_N


def test_sigkill_loses_at_most_one_epoch_and_resumes(tmp_path):
    cfg = write_config(tmp_path, 60)
    proc = launch(cfg, tmp_path, "--run_name", "killed")
    last = tmp_path / "lightning_logs/killed/checkpoints/last.ckpt"
    deadline = time.time() + 120
    while time.time() < deadline and not (last.exists() and load(last)["aligner"]["agent_steps"] >= 3 * EPOCH_STEPS):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    saved = load(last)["aligner"]["agent_steps"]  # readable: saves are atomic
    logged = max(s for s, _ in tb_points(last.parent.parent, "agent_steps"))
    assert logged - saved <= EPOCH_STEPS

    short = write_config(tmp_path, saved // EPOCH_STEPS + 2)
    code, _, err = train(short, tmp_path, "--run_name", "killed", "--ckpt_path", "last")
    assert code == 0, err[-2000:]
    steps = [s for s, _ in tb_points(last.parent.parent, "agent_steps")]
    assert steps == sorted(set(steps)) and steps[-1] == saved + 2 * EPOCH_STEPS  # no repeated step range


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    cfg = write_config(tmp_path, 10, [{"class_path": "fault_injection.NanLossAtEpoch", "init_args": {"epoch": 3}}])
    code, _, err = train(cfg, tmp_path, "--run_name", "nan")
    assert code == 1
    assert "training diverged" in err and "epoch 3" in err and "agent step" in err and "Traceback" not in err
    ckpt = load(tmp_path / "lightning_logs/nan/checkpoints/last.ckpt")
    assert ckpt["aligner"]["agent_steps"] == 3 * EPOCH_STEPS
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_exception_leaves_checkpoint_and_no_live_processes(tmp_path):
    cfg = write_config(tmp_path, 10, [{"class_path": "fault_injection.RaiseAtEpoch", "init_args": {"epoch": 2}}])
    code, _, err = train(cfg, tmp_path, "--run_name", "crash")
    assert code != 0 and "injected failure" in err
    assert load(tmp_path / "lightning_logs/crash/checkpoints/last.ckpt")["aligner"]["agent_steps"] == 2 * EPOCH_STEPS


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    code, _, err = train(write_config(tmp, 2), tmp, "--run_name", "done")
    assert code == 0, err[-2000:]
    return tmp


def _main(monkeypatch, capsys, cwd: Path, argv: list[str]) -> str:
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"batch_size": 1024}, "data geometry batch_size=1024 but the checkpoint was trained with 512"),
        ({"mission_overrides": {"max_steps": 63, "num_tokens": 100}}, "observation shape (tokens, token size): checkpoint (200, 3) vs config (100, 3)"),
        ({"mission_overrides": {"max_steps": 63, "territory_obs": False}}, "observation features only in checkpoint: territory"),
    ],
)
def test_incompatible_checkpoint_is_refused_before_anything_is_written(monkeypatch, capsys, finished_run, data,
                                                                       expected):
    run_dir = finished_run / "lightning_logs/done"
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    cfg = write_config(finished_run, 4, **data)
    err = _main(monkeypatch, capsys, finished_run, ["fit", "--config", str(cfg), "--run_name", "done",
                                                    "--ckpt_path", "last"])
    assert expected in err
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_truncated_and_missing_checkpoints_are_refused(monkeypatch, capsys, finished_run, tmp_path):
    good = finished_run / "lightning_logs/done/checkpoints/last.ckpt"
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cfg = write_config(tmp_path, 4)
    err = _main(monkeypatch, capsys, tmp_path, ["fit", "--config", str(cfg), "--ckpt_path", str(bad)])
    assert "truncated.ckpt is corrupt or truncated" in err
    err = _main(monkeypatch, capsys, tmp_path, ["fit", "--config", str(cfg), "--ckpt_path", str(tmp_path / "no.ckpt")])
    assert "no.ckpt does not exist" in err
    err = _main(monkeypatch, capsys, tmp_path, ["fit", "--config", str(cfg), "--ckpt_path", "last"])
    assert "no run under" in err
