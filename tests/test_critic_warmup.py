"""Kickstarting's critic warm-up: PPO's policy terms left out for a window of agent steps (model.critic_warmup_*)."""

from __future__ import annotations

import pytest
import torch
from helpers import DEBUG, load, run_main, scalars, write_config

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


def test_a_warmup_from_the_start_leaves_the_action_head_untouched(monkeypatch, tmp_path):
    """Warm-up over the whole run: the action head never gets a gradient (and Adam no momentum), so its weights are
    the same after epochs 2 and 4, while the value head, trained by the value loss, moves."""
    cfg = write_config(tmp_path, 4, evaluation=False, deterministic=False)
    assert run_main(monkeypatch, tmp_path, "fit", "--config", cfg, "--model.critic_warmup_steps", "1000000",
                    "--run_name", "warm") == 0
    ckpts = tmp_path / "lightning_logs" / "warm" / "checkpoints"
    (early,), (late,) = ([load(p)["state_dict"] for p in ckpts.glob(f"epoch={e}-*.ckpt")] for e in (1, 3))
    for key in ("policy._action_head.weight", "policy._action_head.bias"):
        assert torch.equal(early[key], late[key]), key
    assert not torch.equal(early["policy._value_head.weight"], late["policy._value_head.weight"])


@pytest.mark.parametrize("args, expected", [
    (["--model.critic_warmup_at", "-1"], "model.critic_warmup_at=-1: must be an int >= 0"),
    (["--model.critic_warmup_steps", "-5"], "model.critic_warmup_steps=-5: must be an int >= 0"),
])
def test_bad_warmup_settings_get_one_clear_error(monkeypatch, capsys, tmp_path, args, expected):
    assert run_main(monkeypatch, tmp_path, "fit", "--config", DEBUG, *args) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
