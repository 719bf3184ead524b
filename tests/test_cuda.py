"""CUDA checks (skipped without a GPU): the advantage on the device, and one update equal to the CPU's."""

from __future__ import annotations

import pytest
import torch
from helpers import random_observations

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
