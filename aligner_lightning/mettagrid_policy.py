"""Any trained network as a mettagrid policy, for the cogames tools and mettagrid's episode runner.

An exported bundle whose network is not cogames' ``TutorialPolicyNet`` names this class in its
``policy_spec.json``, with the network's spec (class path and arguments) in ``init_kwargs`` and its weights in
``data_path``. mettagrid's loader then builds it as it builds any policy::

    initialize_or_load_policy(env_info, spec)   # AlignerMettaPolicy(env_info, network={...}); load_policy_data(...)

Each agent keeps its own recurrent state for the episode (or, with ``state_reset`` N in ``init_kwargs``, zeroes
it every N steps, as the policy was evaluated in training) and samples from the softmax, as cogames'
``TutorialPolicy`` does. The package must be importable wherever the bundle is played.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from mettagrid.policy.policy import AgentPolicy, MultiAgentPolicy, StatefulAgentPolicy, StatefulPolicyImpl
from mettagrid.policy.policy_env_interface import PolicyEnvInterface
from mettagrid.simulator import Action, AgentObservation

from aligner_lightning.policy_spec import State, build_policy, default_spec, state_reset_problem


class _AgentStep(StatefulPolicyImpl[tuple[State, int]]):
    """One agent's step: its observation tokens -> an action, carrying the network's state and the steps taken
    (the state is zeroed every ``state_reset`` steps, if set)."""

    def __init__(self, net: torch.nn.Module, device: torch.device, env_info: PolicyEnvInterface,
                 state_reset: int | None = None):
        self._net, self._device, self._env_info = net, device, env_info
        self._state_reset = state_reset
        self._num_tokens, self._token_dim = env_info.observation_space.shape

    def initial_agent_state(self) -> tuple[State, int]:
        return self._net.initial_state(1, self._device), 0

    def step_with_state(self, obs: AgentObservation, state: tuple[State, int]) -> tuple[Action, tuple[State, int]]:
        net_state, steps = state
        if self._state_reset is not None and steps and steps % self._state_reset == 0:
            net_state = self._net.initial_state(1, self._device)
        tokens = np.full((self._num_tokens, self._token_dim), 255, dtype=np.uint8)  # 255: padding
        for i, token in enumerate(obs.tokens[:self._num_tokens]):
            tokens[i, :len(token.raw_token)] = token.raw_token
        with torch.inference_mode():
            logits, _, net_state = self._net.step(torch.from_numpy(tokens).unsqueeze(0).to(self._device), net_state)
            action = int(torch.multinomial(logits.float().softmax(-1), 1).item())
        return Action(name=self._env_info.action_names[action]), (net_state, steps + 1)


class AlignerMettaPolicy(MultiAgentPolicy):
    """A network trained here, built from its spec (``network``) and loaded from a bare ``state_dict``."""

    def __init__(self, policy_env_info: PolicyEnvInterface, device: str = "cpu",
                 network: dict[str, Any] | None = None, state_reset: int | None = None, **kwargs: Any):
        super().__init__(policy_env_info, device=device, **kwargs)
        if problem := state_reset_problem(state_reset):
            raise ValueError(problem)
        self._device = torch.device(device)
        self._net = build_policy(network or default_spec(), policy_env_info).to(self._device).eval()
        self._step = _AgentStep(self._net, self._device, policy_env_info, state_reset)

    def network(self) -> torch.nn.Module:
        return self._net

    def agent_policy(self, agent_id: int) -> AgentPolicy:
        return StatefulAgentPolicy(self._step, self._policy_env_info, agent_id=agent_id)

    def is_recurrent(self) -> bool:
        return True

    def load_policy_data(self, path: str) -> None:
        self._net.load_state_dict(torch.load(path, map_location=self._device, weights_only=True))

    def save_policy_data(self, path: str) -> None:
        torch.save(self._net.state_dict(), path)
