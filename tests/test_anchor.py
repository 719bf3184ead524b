"""Kickstarting's anchor: a frozen copy of the policy that a KL term holds the policy near (model.anchor_*)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import DEBUG, load, run_main, scalars, write_config

from aligner_lightning import algorithm

EPOCH = 512  # agent steps per epoch of the debug config


def test_distillation_loss_is_the_kl_from_the_target():
    torch.manual_seed(0)
    target, student = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    expected = torch.nn.functional.kl_div(student.reshape(-1, 5).log_softmax(-1),
                                          target.reshape(-1, 5).log_softmax(-1), log_target=True,
                                          reduction="batchmean")
    assert algorithm.distillation_loss(student, target) == pytest.approx(float(expected), rel=1e-5)
    assert algorithm.distillation_loss(target, target) == pytest.approx(0.0, abs=1e-6)
    assert algorithm.distillation_loss(student, target) > 0.05


def fit(monkeypatch, tmp: Path, epochs: int, *args: str) -> Path:
    """``train.py fit`` on the debug config (its own 96-step episodes, no evaluation); returns the run dir."""
    tmp.mkdir(exist_ok=True)
    cfg = write_config(tmp, epochs, evaluation=False, deterministic=False)
    assert run_main(monkeypatch, tmp, "fit", "--config", cfg, "--model.learning_rate", "0.005", *args,
                    "--run_name", "anchor") == 0
    return tmp / "lightning_logs" / "anchor"


def test_the_anchor_is_frozen_at_its_step_saved_and_kept_over_a_resume(monkeypatch, tmp_path):
    """Frozen before epoch 2 (1024 agent steps), its weight falling to 0 over 2048 more: logged every epoch; the
    checkpoint keeps it apart from the trained policy, and a resumed run goes on with the same anchor."""
    anchor = ["--model.anchor_coef", "1.0", "--model.anchor_at", "1024", "--model.anchor_steps", "2048"]
    run = fit(monkeypatch, tmp_path, 5, *anchor)
    logged = scalars(run)
    coef = {s // EPOCH - 1: v for s, v in logged["losses/anchor_coef"]}
    assert coef == pytest.approx({0: 0.0, 1: 0.0, 2: 1.0, 3: 0.75, 4: 0.5})
    assert [s // EPOCH - 1 for s, _ in logged["losses/anchor_kl"]] == [2, 3, 4]
    first = load(run / "checkpoints/last.ckpt")
    frozen = first["aligner"]["anchor"]
    policy = {k[len("policy."):]: v for k, v in first["state_dict"].items() if k.startswith("policy.")}
    assert set(frozen) == set(policy)  # the policy's own keys, and none of them in the module's state_dict
    assert not any(k.startswith("_anchor") for k in first["state_dict"])
    assert any(not torch.equal(frozen[k], policy[k]) for k in policy)  # trained on for three epochs since

    assert run_main(monkeypatch, tmp_path, "fit", "--config", sorted(tmp_path.glob("cfg_*"))[0],
                    "--model.learning_rate", "0.005", *anchor, "--model.total_timesteps", str(7 * EPOCH),
                    "--ckpt_path", run / "checkpoints/last.ckpt", "--run_name", "anchor") == 0
    resumed = load(run / "checkpoints/last.ckpt")
    assert resumed["aligner"]["agent_steps"] == 7 * EPOCH
    assert all(torch.equal(resumed["aligner"]["anchor"][k], frozen[k]) for k in frozen)


def test_a_heavy_anchor_holds_the_policy_near_it(monkeypatch, tmp_path):
    """Anchored from step 0 to the initial policy: with weight 10 the policy ends nearer it than with a weight
    too small to matter (1e-6, which still logs the KL)."""
    final = {}
    for coef in ("10", "1e-6"):
        run = fit(monkeypatch, tmp_path / coef, 6, "--model.anchor_coef", coef, "--model.anchor_steps", "1000000")
        final[coef] = scalars(run)["losses/anchor_kl"][-1][1]
    assert final["10"] < 0.5 * final["1e-6"], final


@pytest.mark.parametrize("args, expected", [
    (["--model.anchor_coef", "1.0"], "model.anchor_steps=0: must be >= 1 when model.anchor_coef > 0"),
    (["--model.anchor_coef", "-0.5"], "model.anchor_coef=-0.5: must be >= 0"),
    (["--model.anchor_at", "-1"], "model.anchor_at=-1: must be an int >= 0"),
])
def test_bad_anchor_settings_get_one_clear_error(monkeypatch, capsys, tmp_path, args, expected):
    assert run_main(monkeypatch, tmp_path, "fit", "--config", DEBUG, *args) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
