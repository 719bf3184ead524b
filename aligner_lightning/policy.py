"""The CNN+LSTM actor-critic, layer for layer cogames' ``TutorialPolicyNet``.

The module names (``_cnn``, ``_cnn_fc``, ``_self_encoder``, ``_rnn``, ``_action_head``, ``_value_head``) and the
``_feature_scale`` buffer are those of cogames 0.27.3, so a ``state_dict`` saved here loads there unchanged
(``cogames ... -p class=tutorial,data=W.pt``). What differs is speed, not maths:

- the token scatter uses two 256-entry lookup tables instead of per-token coordinate arithmetic;
- single-step inference runs ``torch.lstm_cell`` on the ``nn.LSTM`` weights instead of a length-1 ``nn.LSTM``.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

HIDDEN_SIZE = 512
PAD_LOCATION = 0xFF


class AlignerPolicy(nn.Module):
    """Token observations ``[..., num_tokens, 3]`` (uint8) -> action logits and a value."""

    _feature_scale: torch.Tensor
    _cell_of_location: torch.Tensor
    _feature_slot: torch.Tensor

    def __init__(self, feature_norms: Mapping[int, float], obs_height: int, obs_width: int, num_actions: int):
        super().__init__()
        self.hidden_size = HIDDEN_SIZE
        self.obs_height, self.obs_width, self.num_actions = obs_height, obs_width, num_actions
        self.num_features = max((int(fid) for fid in feature_norms), default=0) + 1

        # Same values as cogames: divide each token by max(normalization, 1); unknown ids divide by 1.
        scale = torch.ones(max(256, self.num_features), dtype=torch.float32)
        for fid, norm in feature_norms.items():
            scale[int(fid)] = max(float(norm), 1.0)
        self.register_buffer("_feature_scale", scale)

        # Lookup tables over the raw token bytes. Coordinates are clamped into the window, which sends the
        # 0xFE global tokens to the bottom-right cell and 0xFF padding somewhere harmless (its value is masked).
        loc = torch.arange(256)
        row = ((loc >> 4) & 0x0F).clamp(max=obs_height - 1)
        col = (loc & 0x0F).clamp(max=obs_width - 1)
        self.register_buffer("_cell_of_location", row * obs_width + col, persistent=False)
        self.register_buffer("_feature_slot", loc.clamp(max=self.num_features - 1) * (obs_height * obs_width), persistent=False)

        self._cnn = nn.Sequential(
            nn.Conv2d(self.num_features, 64, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 128, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            cnn_out = self._cnn(torch.zeros(1, self.num_features, obs_height, obs_width)).shape[1]
        self._cnn_fc = nn.Linear(cnn_out, 256)
        self._self_encoder = nn.Linear(self.num_features, 256)
        self._rnn = nn.LSTM(HIDDEN_SIZE, HIDDEN_SIZE, num_layers=1, batch_first=True)
        self._action_head = nn.Linear(HIDDEN_SIZE, num_actions)
        self._value_head = nn.Linear(HIDDEN_SIZE, 1)

    @classmethod
    def from_env_interface(cls, env_info) -> "AlignerPolicy":
        """Build from a mettagrid ``PolicyEnvInterface`` (what cogames' policy loader hands its nets)."""
        norms = {int(f.id): float(f.normalization) for f in env_info.obs_features}
        return cls(norms, env_info.obs_height, env_info.obs_width, len(env_info.action_names))

    # -- encoder -------------------------------------------------------------------------------------------
    def tokens_to_grid(self, obs: torch.Tensor) -> torch.Tensor:
        """``[M, T, 3]`` uint8 tokens -> ``[M, C, H, W]`` float grid, summing tokens that share a cell."""
        loc = obs[..., 0].long()
        feat = obs[..., 1].long()
        value = obs[..., 2].float()
        divisor = self._feature_scale[:256] + 1e-6
        value = (value / divisor[feat]) * (loc != PAD_LOCATION).float()
        index = self._feature_slot[feat] + self._cell_of_location[loc]
        hw = self.obs_height * self.obs_width
        grid = value.new_zeros(obs.shape[0], self.num_features * hw)
        grid.scatter_add_(1, index, value)
        return grid.view(obs.shape[0], self.num_features, self.obs_height, self.obs_width)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """``[M, T, 3]`` tokens -> ``[M, 512]`` LSTM input (CNN features and the agent's own cell)."""
        grid = self.tokens_to_grid(obs)
        cnn = F.relu(self._cnn_fc(self._cnn(grid)))
        center = grid[:, :, self.obs_height // 2, self.obs_width // 2]
        return torch.cat([cnn, F.relu(self._self_encoder(center))], dim=-1)

    # -- recurrent passes ----------------------------------------------------------------------------------
    def initial_state(self, batch: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        device = device or self._feature_scale.device
        zeros = torch.zeros(batch, HIDDEN_SIZE, device=device)
        return zeros, zeros.clone()

    def step(
        self, obs: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One time step for ``B`` agents: ``obs [B, T, 3]``, ``h, c [B, 512]`` -> logits, value ``[B]``, h, c."""
        x = self.encode(obs)
        rnn = self._rnn
        h, c = torch.lstm_cell(x, (h, c), rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
        return self._action_head(h), self._value_head(h).squeeze(-1), h, c

    def forward(
        self, obs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BPTT pass over segments: ``obs [n, H, T, 3]`` -> logits ``[n, H, A]``, values ``[n, H]``.

        ``state`` is the segments' initial ``(h, c)``, each ``[n, 512]``; ``None`` starts from zeros (PuffeRL).
        """
        n, horizon = obs.shape[:2]
        x = self.encode(obs.reshape(n * horizon, *obs.shape[2:])).view(n, horizon, HIDDEN_SIZE)
        hx = None if state is None else (state[0].unsqueeze(0), state[1].unsqueeze(0))
        hidden, _ = self._rnn(x, hx)
        return self._action_head(hidden), self._value_head(hidden).squeeze(-1)


def sample_actions(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PuffeRL's discrete sampling: multinomial over softmax (NaN -> 1e-8), log-prob from log_softmax."""
    logp_all = logits - logits.logsumexp(dim=-1, keepdim=True)
    probs = torch.nan_to_num(logits.softmax(dim=-1), 1e-8, 1e-8, 1e-8)
    action = torch.multinomial(probs, 1, replacement=True)
    return action.squeeze(-1), logp_all.gather(-1, action).squeeze(-1)


def evaluate_actions(logits: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of the taken ``actions`` and the policy entropy, PuffeRL's formulas."""
    logp_all = logits - logits.logsumexp(dim=-1, keepdim=True)
    logprob = logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    clamped = logp_all.clamp(min=torch.finfo(logp_all.dtype).min)
    entropy = -(clamped * clamped.softmax(dim=-1)).sum(-1)
    return logprob, entropy
