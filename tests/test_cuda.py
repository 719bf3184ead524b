"""CUDA checks (skipped without a GPU): the advantage on the device, one update equal to the CPU's, and whole
fits on the GPU with the sync collector (rollout on the GPU) and the async one (collector on CPU)."""

from __future__ import annotations

import pytest
import torch
from helpers import EPOCH_STEPS, load, random_observations, tb_points, train, write_config

from aligner_lightning import algorithm
from aligner_lightning.module import AlignerPPO
from aligner_lightning.policy import AlignerPolicy, logprob_and_entropy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_advantage_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(0)
    v, r = torch.randn(64, 64, generator=g), torch.randn(64, 64, generator=g)
    d, ratio = (torch.rand(64, 64, generator=g) < 0.05).float(), torch.rand(64, 64, generator=g) * 2
    cpu = algorithm.puff_advantage(v, r, d, ratio, 0.995, 0.9, 1.0, 1.0)
    gpu = algorithm.puff_advantage(v.cuda(), r.cuda(), d.cuda(), ratio.cuda(), 0.995, 0.9, 1.0, 1.0)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


def test_loss_and_gradients_on_cuda_match_cpu(smoke_factory):
    from aligner_lightning.envs import env_interface

    obs = random_observations(smoke_factory, 32).transpose(0, 1).contiguous()  # [4 agents, 32 steps, 200, 3]
    torch.manual_seed(0)
    cpu_policy = AlignerPolicy.from_env_interface(env_interface(smoke_factory))
    gpu_policy = AlignerPolicy.from_env_interface(env_interface(smoke_factory)).cuda()
    gpu_policy.load_state_dict(cpu_policy.state_dict())
    g = torch.Generator().manual_seed(1)
    actions = torch.randint(0, 5, obs.shape[:2], generator=g)
    old_logp, old_v = -torch.rand(obs.shape[:2], generator=g), torch.randn(obs.shape[:2], generator=g)
    adv, w = torch.randn(obs.shape[:2], generator=g), torch.rand(obs.shape[0], 1, generator=g)

    def loss_of(policy, device):
        logits, values = policy(obs.to(device))
        logp, ent = logprob_and_entropy(logits, actions.to(device))
        loss, _ = algorithm.ppo_loss(logp, ent, values, old_logp.to(device), old_v.to(device), adv.to(device),
                                     w.to(device), AlignerPPO().loss_cfg)
        loss.backward()
        return loss

    torch.testing.assert_close(loss_of(gpu_policy, "cuda").cpu(), loss_of(cpu_policy, "cpu"), rtol=1e-4, atol=1e-5)
    for (name, p_cpu), p_gpu in zip(cpu_policy.named_parameters(), gpu_policy.parameters()):
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("collector", ["sync", "async"])
def test_fit_on_cuda(tmp_path, collector):
    cfg = write_config(tmp_path, 3, evaluation=False, deterministic=False)
    for precision in ("32-true", "bf16-mixed"):
        run = f"{collector}_{precision}"
        code, _, err = train(cfg, tmp_path, "--run_name", run, "--trainer.accelerator", "gpu", "--trainer.precision",
                             precision, "--data.collector", collector)
        assert code == 0, err[-3000:]
        ckpt = load(tmp_path / "lightning_logs" / run / "checkpoints/last.ckpt")
        assert ckpt["aligner"]["agent_steps"] == 3 * EPOCH_STEPS
        assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
        lag = [v for _, v in tb_points(tmp_path / "lightning_logs" / run, "performance/policy_lag")]
        assert lag == ([0, 0, 0] if collector == "sync" else [0, 1, 1])
