"""The learning-rate schedule: PuffeRL's cosine over the run, or a shorter cosine that then holds its floor."""

from __future__ import annotations

import math

import pytest
from helpers import EPOCH_STEPS, run_main, tb_points, write_config

LR, FLOOR = 0.01, 0.1


def cosine(epoch: int, length: int) -> float:
    return LR * FLOOR + (LR - LR * FLOOR) * (1 + math.cos(math.pi * epoch / length)) / 2


def logged_lr(monkeypatch, tmp_path, epochs: int, *args: str) -> dict[int, float]:
    """Epoch k -> the LR the optimizer holds after it (logged at each epoch's end, once the scheduler stepped)."""
    cfg = write_config(tmp_path, epochs, evaluation=False)
    assert run_main(monkeypatch, tmp_path, "fit", "--config", cfg, "--model.learning_rate", str(LR),
                    "--model.min_lr_ratio", str(FLOOR), *args, "--run_name", "lr") == 0
    return {step // EPOCH_STEPS - 1: v for step, v in tb_points(tmp_path / "lightning_logs" / "lr", "learning_rate")}


def test_by_default_the_cosine_spans_the_whole_run(monkeypatch, tmp_path):
    lr = logged_lr(monkeypatch, tmp_path, 4)
    assert lr == pytest.approx({k: cosine(k + 1, 4) for k in range(4)}, rel=1e-5)


def test_a_shorter_schedule_reaches_its_floor_and_holds_it_over_a_resume(monkeypatch, tmp_path):
    """Annealed over 2 epochs of a 4-epoch run, then resumed to 6 epochs: the floor from epoch 2 on (a cosine
    stepped past its length would climb back towards the initial LR)."""
    short = ["--model.lr_anneal_steps", str(2 * EPOCH_STEPS)]
    lr = logged_lr(monkeypatch, tmp_path, 4, *short)
    expected = {0: cosine(1, 2), 1: LR * FLOOR, 2: LR * FLOOR, 3: LR * FLOOR}
    assert lr == pytest.approx(expected, rel=1e-5)
    run = tmp_path / "lightning_logs" / "lr"
    cfg = sorted(tmp_path.glob("cfg_*"))[0]
    assert run_main(monkeypatch, tmp_path, "fit", "--config", cfg, "--model.learning_rate", str(LR),
                    "--model.min_lr_ratio", str(FLOOR), *short, "--model.total_timesteps", str(6 * EPOCH_STEPS),
                    "--ckpt_path", run / "checkpoints/last.ckpt", "--run_name", "lr") == 0
    resumed = {step // EPOCH_STEPS - 1: v for step, v in tb_points(run, "learning_rate")}
    assert resumed[4] == pytest.approx(LR * FLOOR, rel=1e-5) and resumed[5] == pytest.approx(LR * FLOOR, rel=1e-5)


def test_a_resume_follows_the_schedule_it_is_given(monkeypatch, tmp_path):
    """Two epochs of a 4-epoch cosine, then resumed with the cosine stretched over 8 epochs and twice the LR: from
    its first epoch the resumed run is on the new schedule, not continuing from the checkpoint's LR."""
    lr = logged_lr(monkeypatch, tmp_path, 2, "--model.lr_anneal_steps", str(4 * EPOCH_STEPS))
    assert lr == pytest.approx({0: cosine(1, 4), 1: cosine(2, 4)}, rel=1e-5)
    run = tmp_path / "lightning_logs" / "lr"
    cfg = sorted(tmp_path.glob("cfg_*"))[0]
    assert run_main(monkeypatch, tmp_path, "fit", "--config", cfg, "--model.learning_rate", str(2 * LR),
                    "--model.min_lr_ratio", str(FLOOR), "--model.total_timesteps", str(4 * EPOCH_STEPS),
                    "--model.lr_anneal_steps", str(8 * EPOCH_STEPS),
                    "--ckpt_path", run / "checkpoints/last.ckpt", "--run_name", "lr") == 0
    resumed = {step // EPOCH_STEPS - 1: v for step, v in tb_points(run, "learning_rate")}
    assert resumed[2] == pytest.approx(2 * cosine(3, 8), rel=1e-5)
    assert resumed[3] == pytest.approx(2 * cosine(4, 8), rel=1e-5)
