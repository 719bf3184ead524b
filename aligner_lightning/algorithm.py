"""PuffeRL 3.0.23's learning rule as pure tensor functions (described in docs/algorithm.md).

Nothing here knows about environments or Lightning: tensors in, tensors out. Every function is checked
against pufferlib's own code on identical inputs (tests/test_algorithm_parity.py).

Shapes: S segments x H steps (the rollout buffer), n sampled segments per minibatch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def puff_advantage(
    values: torch.Tensor,
    rewards: torch.Tensor,
    terminals: torch.Tensor,
    ratio: torch.Tensor,
    gamma: float,
    gae_lambda: float,
    rho_clip: float,
    c_clip: float,
) -> torch.Tensor:
    """V-trace-corrected GAE per segment row, bit for bit ``torch.ops.pufferlib.compute_puff_advantage``.

    Backwards over t = H-2 .. 0 with m = 1 - terminal:
        delta_t = min(r_t, rho) * (reward_{t+1} + gamma * V_{t+1} * m_{t+1} - V_t)
        A_t     = delta_t + gamma * lambda * min(r_t, c) * A_{t+1} * m_{t+1}
    A_{H-1} stays 0 and reward[:, 0] is unused, as in PuffeRL. The kernel works in float32 throughout
    (gamma and lambda are cast to float first), so we do the same, in the same operation order.
    """
    f32 = dict(dtype=torch.float32, device=values.device)
    gamma_t = torch.tensor(gamma, **f32)
    gamma_lambda = gamma_t * torch.tensor(gae_lambda, **f32)
    rho = ratio.clamp(max=rho_clip)
    c = ratio.clamp(max=c_clip)
    not_done = 1.0 - terminals
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in range(values.shape[1] - 2, -1, -1):
        m = not_done[:, t + 1]
        delta = rho[:, t] * (rewards[:, t + 1] + gamma_t * values[:, t + 1] * m - values[:, t])
        last = delta + gamma_lambda * c[:, t] * last * m
        advantages[:, t] = last
    return advantages


@dataclass
class AlgoConfig:
    """What the advantage and the segment sampling need (their defaults: ``AlignerPPO``'s arguments)."""

    gamma: float
    gae_lambda: float
    vtrace_rho_clip: float
    vtrace_c_clip: float
    prio_alpha: float
    prio_beta0: float
    sampling: str  # "prioritized" (PuffeRL) or "sequential"


def anneal_beta(prio_beta0: float, prio_alpha: float, epoch: int, total_epochs: int) -> float:
    """Importance-sampling exponent for this epoch. PuffeRL scales the ramp by alpha, so beta ends at
    beta0 + (1 - beta0) * alpha (0.84 for the seed config), not 1. Reproduced on purpose."""
    return prio_beta0 + (1 - prio_beta0) * prio_alpha * epoch / total_epochs


def segment_probabilities(advantages: torch.Tensor, prio_alpha: float) -> torch.Tensor:
    """Sampling probability of each segment: (sum_t |A|)^alpha, NaN -> 0, smoothed by 1e-6."""
    weights = torch.nan_to_num(advantages.abs().sum(dim=1) ** prio_alpha, 0, 0, 0)
    return (weights + 1e-6) / (weights.sum() + 1e-6)


def sample_segments(probs: torch.Tensor, num_segments: int, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num_segments`` rows without replacement; return them and their importance weights [n, 1]
    ``(S * p_i)^-beta`` (not normalised by the max weight, as in PuffeRL)."""
    idx = torch.multinomial(probs, num_segments)
    weights = (probs.shape[0] * probs[idx, None]) ** -beta
    return idx, weights


class SegmentSampler:
    """Draws each minibatch's segments for one update.

    ``prioritized`` (PuffeRL): every draw is ``sample_segments`` from the current advantages. ``sequential``
    (option): passes over the buffer in random order, each segment once per pass, unit weights; a pass may end
    inside a minibatch, and the next pass's permutation continues it.
    """

    def __init__(self, algo: AlgoConfig, segments: int, num_segments: int, beta: float, device: torch.device):
        self.algo, self.segments, self.num_segments, self.beta = algo, segments, num_segments, beta
        self._order = torch.empty(0, dtype=torch.long, device=device)  # segments still to visit, in pass order

    def draw(self, advantages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``[n]`` and importance weights ``[n, 1]``."""
        if self.algo.sampling == "prioritized":
            probs = segment_probabilities(advantages, self.algo.prio_alpha)
            return sample_segments(probs, self.num_segments, self.beta)
        while len(self._order) < self.num_segments:
            self._order = torch.cat([self._order, torch.randperm(self.segments, device=self._order.device)])
        idx, self._order = self._order[:self.num_segments], self._order[self.num_segments:]
        return idx, torch.ones(len(idx), 1, device=advantages.device)


@dataclass
class LossConfig:
    """The loss coefficients (their defaults: ``AlignerPPO``'s arguments of the same names)."""

    clip_coef: float
    vf_clip_coef: float
    vf_coef: float
    ent_coef: float


def ppo_loss(
    new_logprobs: torch.Tensor,
    entropy: torch.Tensor,
    new_values: torch.Tensor,
    old_logprobs: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    prio_weights: torch.Tensor,
    cfg: LossConfig,
    step_mask: torch.Tensor | None = None,
    policy_terms: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped PPO + clipped value loss on one minibatch, all inputs ``[n, H]`` (weights ``[n, 1]``).

    Returns the scalar loss and detached statistics; ``ratio`` in the statistics is the new importance
    ratio the caller writes back into the buffer. ``step_mask`` (not PuffeRL; kickstarting) keeps only the
    steps where it is true in the loss: each of its terms, and the advantage normalisation, is over those
    steps alone (0 where there are none); the statistics other than the two losses stay over every step.
    ``policy_terms=False`` (not PuffeRL; kickstarting's critic warm-up) weights the surrogate and the entropy
    bonus 0, leaving the value loss alone.
    """
    logratio = new_logprobs - old_logprobs
    ratio = logratio.exp()
    returns = advantages + old_values
    if step_mask is None:
        mean = torch.mean
        adv_mean, adv_std = advantages.mean(), advantages.std()
    else:
        keep = step_mask.to(advantages.dtype)
        count = keep.sum().clamp(min=1.0)

        def mean(x: torch.Tensor) -> torch.Tensor:
            return (x * keep).sum() / count

        adv_mean = mean(advantages)
        adv_std = ((((advantages - adv_mean) ** 2) * keep).sum() / (count - 1).clamp(min=1.0)).sqrt()

    adv = prio_weights * (advantages - adv_mean) / (adv_std + 1e-8)
    pg_loss = mean(torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)))

    v_clipped = old_values + (new_values - old_values).clamp(-cfg.vf_clip_coef, cfg.vf_clip_coef)
    v_loss = 0.5 * mean(torch.max((new_values - returns) ** 2, (v_clipped - returns) ** 2))

    entropy_mean = mean(entropy)
    # Without the policy terms they are weighted 0, not dropped: under DDP every parameter must take part.
    policy_weight = 1.0 if policy_terms else 0.0
    loss = policy_weight * pg_loss + cfg.vf_coef * v_loss - policy_weight * cfg.ent_coef * entropy_mean

    with torch.no_grad():
        stats = {
            "policy_loss": pg_loss.detach(),
            "value_loss": v_loss.detach(),
            "entropy": entropy.mean(),
            "old_approx_kl": (-logratio).mean(),
            "approx_kl": ((ratio - 1) - logratio).mean(),
            "clipfrac": ((ratio - 1.0).abs() > cfg.clip_coef).float().mean(),
            "importance": ratio.mean(),
            "ratio": ratio.detach(),
        }
    return loss, stats


def cloning_loss(logits: torch.Tensor, teacher_actions: torch.Tensor,
                 moves: torch.Tensor | None = None) -> torch.Tensor:
    """Behaviour cloning (kickstarting, not PuffeRL): cross-entropy of the student's ``logits [n, H, A]`` on the
    teacher's actions ``[n, H]``, the mean over the steps that have a label (a label < 0 means none; 0 if none).
    With ``moves [n, H]`` (bitmasks: bit a for action a, each holding its step's label) each labelled step's
    term is ``-log`` of the student's probability of the whole set; a single bit gives the cross-entropy."""
    labels = teacher_actions.reshape(-1)
    has_label = (labels >= 0).to(logits.dtype)
    flat = logits.reshape(-1, logits.shape[-1])
    if moves is None:
        nll = torch.nn.functional.cross_entropy(flat, labels.clamp(min=0).long(), reduction="none")
    else:
        bits = torch.arange(flat.shape[-1], device=flat.device)
        accepted = ((moves.reshape(-1, 1) >> bits) & 1).bool() | (labels < 0).unsqueeze(-1)  # unlabelled: all
        log_p = flat.log_softmax(dim=-1)
        nll = -log_p.masked_fill(~accepted, float("-inf")).logsumexp(dim=-1)
    return (nll * has_label).sum() / has_label.sum().clamp(min=1.0)


def distillation_loss(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """KL(target || student) of the action distributions, the mean over every step of ``logits [n, H, A]``
    (kickstarting's anchor, not PuffeRL): the cross-entropy to a frozen policy's soft labels, less its entropy,
    so 0 where the two agree."""
    target_log_p = target_logits.reshape(-1, target_logits.shape[-1]).log_softmax(dim=-1)
    log_p = logits.reshape(-1, logits.shape[-1]).log_softmax(dim=-1)
    return (target_log_p.exp() * (target_log_p - log_p)).sum(dim=-1).mean()


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """1 - Var(R - V) / Var(R); NaN when the returns are constant."""
    var_r = returns.var()
    if var_r == 0:
        return torch.full((), float("nan"), device=returns.device)
    return 1 - (returns - values).var() / var_r
