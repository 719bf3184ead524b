"""Experience: one whole rollout, the batch the DataModule hands the LightningModule once per epoch.

Layout (PuffeRL's): ``[segments, horizon]`` tensors. The agents of one env batch write in lockstep at column t;
row k*N + a holds agent a's k-th run of ``horizon`` steps in this rollout. Column t holds obs_t, a_t,
log pi(a_t) under the policy that acted, V(obs_t), and the reward and terminal returned together with obs_t.

The update writes its new importance ratios and values back into ``ratio`` and ``values`` (V-trace reads them
for the next minibatch's advantages), so the tensors belong to the update until the next rollout.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable

import torch

from aligner_lightning.policy_spec import State
from aligner_lightning.teacher import NO_LABEL


@dataclass
class Experience:
    obs: torch.Tensor  # [S, H, T, 3] uint8 tokens
    actions: torch.Tensor  # [S, H] long, the executed actions
    logprobs: torch.Tensor  # [S, H] log-prob of the executed action under the collecting policy
    values: torch.Tensor  # [S, H] V(obs_t) at collection; the update overwrites sampled rows
    rewards: torch.Tensor  # [S, H] after the optional scale and the clip
    terminals: torch.Tensor  # [S, H] float
    ratio: torch.Tensor  # [S, H] importance ratios of the update so far (1 at its start)
    # Option (store_initial_state): each row's policy state at its first step, shaped like the policy's state.
    initial_state: State | None = None
    # With a teacher: its label at every step (NO_LABEL: none) and whether its action was the one executed.
    teacher_actions: torch.Tensor | None = None  # [S, H] long
    teacher_led: torch.Tensor | None = None  # [S, H] bool
    # data.teacher_labels shortest: the bitmask of the moves as good as the teacher's (``ScriptedTeam.moves``).
    teacher_moves: torch.Tensor | None = None  # [S, H] long
    # What the rollout was, beyond its tensors (not moved between devices).
    agent_steps: int = 0  # env steps this rollout took on this rank (async backends may exceed S * H)
    policy_version: int = 0  # updates the acting weights had seen (the learner's epoch when it published them)
    teacher_led_fraction: float = 0.0  # the probability an episode was teacher-led in this rollout
    episode_sums: dict[str, float] = field(default_factory=dict)  # summed infos of the episodes that finished
    episodes: int = 0
    timing: dict[str, float] = field(default_factory=dict)  # seconds: rollout_time, env_time, policy_time, ...
    teacher_stats: dict[str, float] | None = None  # counts: steps, led, labelled, agree (when the teacher ran)

    @classmethod
    def allocate(cls, segments: int, horizon: int, obs_shape: tuple[int, ...], device: torch.device,
                 teacher: bool = False, teacher_moves: bool = False) -> "Experience":
        shape = (segments, horizon)
        return cls(
            obs=torch.zeros(*shape, *obs_shape, dtype=torch.uint8, device=device),
            actions=torch.zeros(shape, dtype=torch.long, device=device),
            logprobs=torch.zeros(shape, device=device),
            values=torch.zeros(shape, device=device),
            rewards=torch.zeros(shape, device=device),
            terminals=torch.zeros(shape, device=device),
            ratio=torch.ones(shape, device=device),
            teacher_actions=torch.full(shape, NO_LABEL, dtype=torch.long, device=device) if teacher else None,
            teacher_led=torch.zeros(shape, dtype=torch.bool, device=device) if teacher else None,
            teacher_moves=torch.zeros(shape, dtype=torch.long, device=device) if teacher_moves else None,
        )

    @property
    def segments(self) -> int:
        return self.obs.shape[0]

    @property
    def horizon(self) -> int:
        return self.obs.shape[1]

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Experience":
        """A new experience with ``fn`` applied to every tensor (the stored states' too); the rest is shared."""
        def apply(value):
            if isinstance(value, torch.Tensor):
                return fn(value)
            if isinstance(value, tuple):
                return tuple(fn(v) for v in value)
            return value

        return Experience(**{f.name: apply(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device) -> "Experience":
        """The same experience with its tensors on ``device`` (itself when they are there already)."""
        if self.obs.device == torch.device(device):
            return self
        return self.map_tensors(lambda t: t.to(device, non_blocking=True))
