"""Our policy is cogames' TutorialPolicyNet: same state_dict keys, same outputs on real observations."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from cogames.policy.tutorial_policy import TutorialPolicyNet

from aligner_lightning import algorithm, policy as policy_module
from aligner_lightning.module import AlignerPPO
from aligner_lightning.policy import STEP_KERNEL_ENV, AlignerPolicy, logprob_and_entropy, sample_actions

KERNELS = list(policy_module._KERNELS)  # packed, linear and, where torch has oneDNN, mkldnn


@pytest.fixture(params=KERNELS)
def step_kernel(request, monkeypatch) -> str:
    """Runs the test once with each of ``step``'s matrix-product kernels, forced as a user forces one."""
    monkeypatch.setenv(STEP_KERNEL_ENV, request.param)
    return request.param


def _pair(info):
    torch.manual_seed(0)
    ours = AlignerPolicy.from_env_interface(info)
    theirs = TutorialPolicyNet(info)
    theirs.load_state_dict(ours.state_dict())  # strict: same keys and shapes
    return ours.eval(), theirs.eval()


def test_state_dict_keys_match_cogames(aligner_info):
    ours = AlignerPolicy.from_env_interface(aligner_info)
    theirs = TutorialPolicyNet(aligner_info)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for k, v in theirs.state_dict().items():
        assert ours.state_dict()[k].shape == v.shape, k
    assert torch.equal(ours._feature_scale, theirs._feature_scale)


def test_token_conv_equals_dense_conv_on_cogames_grid(aligner_info, aligner_obs):
    """The sparse first convolution equals conv1 over cogames' dense grid, with gradients."""
    ours, theirs = _pair(aligner_info)
    obs = aligner_obs.reshape(-1, *aligner_obs.shape[2:])
    # The observations contain padding (0xFF), global (0xFE) and centre-cell tokens.
    assert (obs[..., 0] == 0xFF).any() and (obs[..., 0] == 0xFE).any() and (obs[..., 0] == 0x66).any()
    grid = theirs._tokens_to_grid(obs)
    dense = theirs._cnn[0](grid)
    sparse = ours._first_conv(*ours._decode(obs))
    torch.testing.assert_close(sparse, dense, rtol=0, atol=1e-5)
    dense.square().sum().backward()
    sparse.square().sum().backward()
    torch.testing.assert_close(ours._cnn[0].weight.grad, theirs._cnn[0].weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours._cnn[0].bias.grad, theirs._cnn[0].bias.grad, rtol=1e-4, atol=1e-4)


def test_sequence_forward_matches_cogames(aligner_info, aligner_obs):
    ours, theirs = _pair(aligner_info)
    seq = aligner_obs.transpose(0, 1).contiguous()  # [agents, T, tokens, 3]
    with torch.no_grad():
        logits, values = ours(seq)
        ref_logits, ref_values = theirs(seq)
    torch.testing.assert_close(logits.reshape(-1, logits.shape[-1]), ref_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(values.reshape(-1), ref_values.reshape(-1), rtol=0, atol=1e-6)


def test_single_step_matches_cogames_recurrence(aligner_info, aligner_obs, step_kernel):
    """The rollout's step, with each kernel, stepped through time, equals cogames' nn.LSTM with carried state."""
    ours, theirs = _pair(aligner_info)
    n = aligner_obs.shape[1]
    ours_state = ours.initial_state(n)
    state = {"lstm_h": torch.zeros(n, 512), "lstm_c": torch.zeros(n, 512)}
    with torch.no_grad():
        for t in range(aligner_obs.shape[0]):
            logits, value, ours_state = ours.step(aligner_obs[t], ours_state)
            h = ours_state[0]
            ref_logits, ref_value = theirs(aligner_obs[t], state)
            torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
            torch.testing.assert_close(value, ref_value.squeeze(-1), rtol=0, atol=1e-5)
            torch.testing.assert_close(h, state["lstm_h"].reshape(n, 512), rtol=0, atol=1e-5)


def test_training_gradients_match_cogames(aligner_info, aligner_obs):
    """The PPO loss's gradients through our network and through cogames' agree for every parameter: the only
    difference is the first convolution's float summation order (see test_algorithm_parity.py for what Adam makes
    of the gradients that are zero up to that rounding)."""
    ours, theirs = _pair(aligner_info)
    seq = aligner_obs.transpose(0, 1).contiguous()  # [agents, T, tokens, 3]
    g = torch.Generator().manual_seed(3)
    shape = seq.shape[:2]
    actions = torch.randint(0, 5, shape, generator=g)
    old_logprobs, old_values = -torch.rand(shape, generator=g) - 1, torch.randn(shape, generator=g)
    advantages, weights = torch.randn(shape, generator=g), torch.rand(shape[0], 1, generator=g) + 0.5
    loss_cfg = AlignerPPO().loss_cfg
    grads = []
    for net in (ours, theirs):
        logits, values = net(seq)
        logprobs, entropy = logprob_and_entropy(logits.reshape(*shape, -1), actions)
        loss, _ = algorithm.ppo_loss(logprobs, entropy, values.reshape(shape), old_logprobs, old_values, advantages,
                                     weights, loss_cfg)
        loss.backward()
        grads.append({name: p.grad for name, p in net.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[1].items():
        scale = grad.abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(grads[0][name], grad, rtol=0, atol=1e-4 * scale, msg=name)


def _one_step_via_forward(policy, obs, h, c):
    logits, values = policy(obs.unsqueeze(1), (h, c))
    return logits[:, 0], values[:, 0]


def test_step_follows_every_weight_change(aligner_info, aligner_obs, step_kernel):
    """``step`` reads a packed copy of the weights; it must see optimizer steps, load_state_dict and in-place
    edits, or the rollout would act with stale weights."""
    policy, _ = _pair(aligner_info)
    obs, n = aligner_obs[3], aligner_obs.shape[1]
    h, c = torch.randn(n, 512) * 0.1, torch.randn(n, 512) * 0.1

    def check():
        with torch.no_grad():
            ref_logits, ref_value = _one_step_via_forward(policy, obs, h, c)
        with torch.inference_mode():
            logits, value, _ = policy.step(obs, (h, c))
        torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(value, ref_value, rtol=0, atol=1e-5)
        return logits

    before = check()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    logits, values = policy(aligner_obs[:4].transpose(0, 1))
    (logits.square().mean() + values.square().mean()).backward()
    opt.step()
    after_step = check()
    assert not torch.allclose(before, after_step)

    other = AlignerPolicy.from_env_interface(aligner_info)
    policy.load_state_dict(other.state_dict())
    after_load = check()
    assert not torch.allclose(after_step, after_load)

    with torch.no_grad():
        policy._value_head.bias.add_(1.0)
        policy._rnn.weight_hh_l0.mul_(0.5)
    check()
    assert policy._packed.key[0] == step_kernel


def test_auto_kernel_is_timed_once_per_batch_size_and_logged(aligner_info, aligner_obs, monkeypatch):
    """``auto`` times every kernel at the first step of a batch size, logs the choice in one line and keeps it."""
    monkeypatch.setenv(STEP_KERNEL_ENV, "auto")
    monkeypatch.setattr(policy_module, "_chosen_kernel", {})
    lines = []
    monkeypatch.setattr(policy_module, "rank_zero_info", lines.append)
    policy, _ = _pair(aligner_info)
    obs, n = aligner_obs[3], aligner_obs.shape[1]
    state = (torch.randn(n, 512) * 0.1, torch.randn(n, 512) * 0.1)
    with torch.no_grad():
        ref_logits, ref_value = _one_step_via_forward(policy, obs, *state)
    with torch.inference_mode():
        for _ in range(3):
            logits, value, _ = policy.step(obs, state)
        policy.step(obs[:2], (state[0][:2], state[1][:2]))
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(value, ref_value, rtol=0, atol=1e-5)
    assert len(lines) == 2, lines  # batch n, then batch 2
    chosen = policy_module._chosen_kernel[next(iter(policy_module._chosen_kernel))]
    assert lines[0].startswith(f"rollout step kernel: {chosen} (") and f"at batch {n} on " in lines[0]
    assert all(f"{k} " in lines[0] and " ms" in lines[0] for k in KERNELS)


def test_bad_kernel_name_is_refused(aligner_info, aligner_obs, monkeypatch):
    monkeypatch.setenv(STEP_KERNEL_ENV, "fastest")
    policy, _ = _pair(aligner_info)
    with pytest.raises(ValueError, match="ALIGNER_STEP_KERNEL='fastest': must be auto or one of packed, linear"):
        policy.step(aligner_obs[0], policy.initial_state(aligner_obs.shape[1]))


def test_policy_copies_and_pickles_after_steps(aligner_info, aligner_obs, step_kernel):
    """The step's weights (oneDNN's cannot be copied) stay out of deep copies and pickles."""
    policy, _ = _pair(aligner_info)
    state = policy.initial_state(aligner_obs.shape[1])
    logits, _, _ = policy.step(aligner_obs[0], state)
    for clone in (copy.deepcopy(policy), pickle.loads(pickle.dumps(policy))):
        assert "_packed" not in clone.__dict__
        torch.testing.assert_close(clone.step(aligner_obs[0], state)[0], logits, rtol=0, atol=0)


def test_sampling_and_evaluation_agree():
    torch.manual_seed(0)
    logits = torch.randn(64, 5)
    actions, logprob = sample_actions(logits)
    assert actions.shape == (64,) and ((actions >= 0) & (actions < 5)).all()
    logprob2, entropy = logprob_and_entropy(logits, actions)
    torch.testing.assert_close(logprob, logprob2)
    ref = torch.distributions.Categorical(logits=logits)
    torch.testing.assert_close(entropy, ref.entropy())
    torch.testing.assert_close(logprob, ref.log_prob(actions))


@pytest.mark.parametrize("widths", [dict(hidden_size=128), dict(hidden_size=96, conv_channels=(16, 32), encoder_width=48)])
def test_widths_shape_every_layer_and_step_equals_forward(aligner_info, aligner_obs, widths, step_kernel):
    """Every shape follows from the widths, and the packed step still equals the sequence forward."""
    torch.manual_seed(0)
    policy = AlignerPolicy(aligner_info, **widths).eval()
    hidden = widths["hidden_size"]
    c1, c2 = widths.get("conv_channels", (64, 128))
    enc = widths.get("encoder_width", 256)
    assert policy._rnn.hidden_size == hidden and policy._rnn.input_size == 2 * enc
    assert policy._cnn[0].out_channels == c1 and policy._cnn[2].out_channels == c2
    assert policy._action_head.in_features == hidden and policy._cnn_fc.out_features == enc
    seq = aligner_obs[:6].transpose(0, 1).contiguous()  # [agents, 6, tokens, 3]
    with torch.no_grad():
        ref_logits, ref_values = policy(seq)
    state = policy.initial_state(seq.shape[0])
    assert [s.shape for s in state] == [(seq.shape[0], hidden)] * 2
    with torch.inference_mode():
        for t in range(seq.shape[1]):
            logits, value, state = policy.step(seq[:, t], state)
            torch.testing.assert_close(logits, ref_logits[:, t], rtol=0, atol=1e-5)
            torch.testing.assert_close(value, ref_values[:, t], rtol=0, atol=1e-5)


def test_bad_widths_are_named(aligner_info):
    with pytest.raises(ValueError, match=r"hidden_size=0: must be a positive integer.*conv_channels\[1\]=-2"):
        AlignerPolicy(aligner_info, hidden_size=0, conv_channels=(8, -2))
