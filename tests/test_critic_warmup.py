"""Kickstarting's critic warm-up: PPO's policy terms left out for a window of agent steps (model.critic_warmup_*)."""

from __future__ import annotations

import pytest
import torch
from helpers import DEBUG, run_main, scalars, write_config

from aligner_lightning import algorithm

EPOCH = 512  # agent steps per epoch of the debug config


def test_without_the_policy_terms_only_the_value_loss_has_a_gradient():
    torch.manual_seed(0)
    n, h = 4, 8
    logprobs = torch.randn(n, h, requires_grad=True)
    entropy = torch.rand(n, h, requires_grad=True)
    values = torch.randn(n, h, requires_grad=True)
    args = (logprobs.detach() + 0.1 * torch.randn(n, h), torch.randn(n, h), torch.randn(n, h), torch.ones(n, 1))
    cfg = algorithm.LossConfig(clip_coef=0.2, vf_clip_coef=0.2, vf_coef=2.0, ent_coef=0.01)
    full, _ = algorithm.ppo_loss(logprobs, entropy, values, *args, cfg)
    full.backward()
    assert logprobs.grad.abs().sum() > 0 and entropy.grad.abs().sum() > 0
    for t in (logprobs, entropy, values):
        t.grad = None
    held, stats = algorithm.ppo_loss(logprobs, entropy, values, *args, cfg, policy_terms=False)
    held.backward()
    assert float(held.detach()) == pytest.approx(2.0 * float(stats["value_loss"]), rel=1e-6)
    assert logprobs.grad.abs().sum() == 0 and entropy.grad.abs().sum() == 0  # zero, not None: DDP needs both
    assert values.grad.abs().sum() > 0


def test_the_warmup_covers_its_window_of_epochs(monkeypatch, tmp_path):
    """Warm-up from agent step 1024 for 1024 steps: the epochs starting at 1024 and 1536, and no other."""
    cfg = write_config(tmp_path, 6, evaluation=False, deterministic=False)
    assert run_main(monkeypatch, tmp_path, "fit", "--config", cfg, "--model.critic_warmup_at", str(2 * EPOCH),
                    "--model.critic_warmup_steps", str(2 * EPOCH), "--run_name", "warm") == 0
    logged = scalars(tmp_path / "lightning_logs" / "warm")
    assert [v for _, v in logged["losses/critic_warmup"]] == [0, 0, 1, 1, 0, 0]
    assert len(logged["losses/value_loss"]) == 6


@pytest.mark.parametrize("args, expected", [
    (["--model.critic_warmup_at", "-1"], "model.critic_warmup_at=-1: must be an int >= 0"),
    (["--model.critic_warmup_steps", "-5"], "model.critic_warmup_steps=-5: must be an int >= 0"),
])
def test_bad_warmup_settings_get_one_clear_error(monkeypatch, capsys, tmp_path, args, expected):
    assert run_main(monkeypatch, tmp_path, "fit", "--config", DEBUG, *args) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
