"""The CNN+LSTM actor-critic. With its default widths it is, layer for layer, cogames' ``TutorialPolicyNet``.

The module names (``_cnn``, ``_cnn_fc``, ``_self_encoder``, ``_rnn``, ``_action_head``, ``_value_head``) and the
``_feature_scale`` buffer are those of cogames 0.27.3, so a ``state_dict`` of the default network loads there
unchanged (``cogames ... -p class=tutorial,data=W.pt``). Its widths are arguments (``hidden_size``,
``conv_channels``, ``encoder_width``); every shape follows from them. What differs from cogames is speed, not
maths:

- the first convolution reads the tokens directly (a sparse product) instead of a dense 13 x 13 grid;
- single-step inference (``step``) reads a copy of the weights laid out for its matrix-product kernel (one
  product for both LSTM gates' inputs, one for both heads), rebuilt whenever a parameter changes, instead of a
  length-1 ``nn.LSTM``. Which kernel is fastest depends on the CPU, so on CPU the first step at each batch size
  times them all and keeps the fastest; ``ALIGNER_STEP_KERNEL=packed|linear|mkldnn|auto`` (default ``auto``)
  forces one.

``AlignerPolicy`` follows the protocol every trainable policy follows (``aligner_lightning.policy_spec``).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from aligner_lightning.log import rank_zero_info
from aligner_lightning.machine import cpu_name

PAD_LOCATION = 0xFF

STEP_KERNEL_ENV = "ALIGNER_STEP_KERNEL"

# The step's matrix-product kernels, each x @ W^T + b: (lay out W [out, in] once, the product). At a rollout's
# small batch the product is bound by reading the weights, and which layout reads fastest differs between CPUs
# (on an Intel Xeon "packed", on an AMD EPYC "linear" and "mkldnn"). All three are float32 products.
_KERNELS: dict[str, tuple[Callable, Callable]] = {
    "packed": (lambda w: w.t().contiguous(), lambda x, w, b: torch.addmm(b, x, w)),  # [in, out]: x @ W
    "linear": (lambda w: w.contiguous(), F.linear),  # [out, in]
}
if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
    # oneDNN's inner product on weights reordered once into its blocked layout (what inductor's CPU backend
    # runs for float32 linear layers). CPU only.
    _KERNELS["mkldnn"] = (torch.ops.mkldnn._reorder_linear_weight,
                          lambda x, w, b: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""))
_chosen_kernel: dict[tuple, str] = {}  # (device, batch, dtype, autocast, widths) -> the fastest, timed once


class _StepWeights(NamedTuple):
    """The weights of ``step`` in one kernel's layout (``x @ W^T + b`` via ``product``)."""

    key: tuple
    product: Callable  # (x, weight, bias) -> x @ W^T + bias, for the weights below
    conv1: torch.Tensor  # [features * 9, 64], for the sparse first convolution whatever the kernel
    cnn_fc: torch.Tensor  # W [256, cnn_out]
    self_encoder: torch.Tensor  # W [256, features]
    lstm: torch.Tensor  # W [4 * hidden, in + hidden]: [W_ih | W_hh], so one product gives all four gates
    lstm_bias: torch.Tensor  # [4 * hidden]: b_ih + b_hh
    heads: torch.Tensor  # W [A + 1, hidden]: the action head's rows, then the value head's
    heads_bias: torch.Tensor


class AlignerPolicy(nn.Module):
    """Token observations ``[..., num_tokens, 3]`` (uint8) -> action logits and a value.

    Built from the env's ``PolicyEnvInterface`` (observation features, window, actions) and its widths; the
    defaults are cogames' ``TutorialPolicyNet``.
    """

    _feature_scale: torch.Tensor

    def __init__(self, env_info, hidden_size: int = 512, conv_channels: tuple[int, int] = (64, 128),
                 encoder_width: int = 256):
        """
        Args:
            env_info: the env's mettagrid ``PolicyEnvInterface`` (filled in by the trainer, not the config).
            hidden_size: LSTM hidden size (cogames' tutorial net: 512; cogames' ``lstm`` policy and PufferLib: 128).
            conv_channels: output channels of the two 3x3 stride-2 convolutions.
            encoder_width: width of each encoder (the CNN's and the agent's own cell's); the LSTM reads both,
                ``2 * encoder_width`` inputs.
        """
        super().__init__()
        problems = [f"{name}={value!r}: must be a positive integer" for name, value in
                    (("hidden_size", hidden_size), ("encoder_width", encoder_width),
                     *((f"conv_channels[{i}]", c) for i, c in enumerate(conv_channels)))
                    if not isinstance(value, int) or isinstance(value, bool) or value < 1]
        if len(conv_channels) != 2:
            problems.append(f"conv_channels={tuple(conv_channels)!r}: must be two channel counts")
        if problems:
            raise ValueError("AlignerPolicy: " + "; ".join(problems))
        feature_norms = {int(f.id): float(f.normalization) for f in env_info.obs_features}
        obs_height, obs_width = env_info.obs_height, env_info.obs_width
        self.hidden_size = hidden_size
        self.obs_height, self.obs_width = obs_height, obs_width
        self.num_actions = len(env_info.action_names)
        self.num_features = max(feature_norms, default=0) + 1

        # Same values as cogames: divide each token by max(normalization, 1); unknown ids divide by 1.
        scale = torch.ones(max(256, self.num_features), dtype=torch.float32)
        for fid, norm in feature_norms.items():
            scale[fid] = max(norm, 1.0)
        self.register_buffer("_feature_scale", scale)

        self._build_token_tables(obs_height, obs_width)
        c1, c2 = conv_channels
        self._cnn = nn.Sequential(
            nn.Conv2d(self.num_features, c1, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            cnn_out = self._cnn(torch.zeros(1, self.num_features, obs_height, obs_width)).shape[1]
        self._cnn_fc = nn.Linear(cnn_out, encoder_width)
        self._self_encoder = nn.Linear(self.num_features, encoder_width)
        self._rnn = nn.LSTM(2 * encoder_width, hidden_size, num_layers=1, batch_first=True)
        self._action_head = nn.Linear(hidden_size, self.num_actions)
        self._value_head = nn.Linear(hidden_size, 1)

    @classmethod
    def from_env_interface(cls, env_info, **widths) -> "AlignerPolicy":
        """The same as ``AlignerPolicy(env_info, **widths)``."""
        return cls(env_info, **widths)

    # -- encoder -------------------------------------------------------------------------------------------
    def _build_token_tables(self, obs_height: int, obs_width: int) -> None:
        """Lookup tables over the location byte, so that the first convolution reads tokens directly.

        cogames scatters the tokens into a dense [C, 13, 13] grid (coordinates clamped into the window, so the
        0xFE global tokens land in the bottom-right cell) and convolves it. At most ~80 of 200 tokens are
        real, so we skip the grid: a 3x3 stride-2 kernel sends each cell to at most 4 output pixels, each
        through one kernel tap. Token -> (pixel, tap) pairs make conv1 a sparse x dense product with the
        same weights, and the same result up to float summation order.
        """
        conv_h, conv_w = (obs_height - 1) // 2 + 1, (obs_width - 1) // 2 + 1
        pixel = torch.full((256, 4), conv_h * conv_w, dtype=torch.long)
        tap = torch.zeros(256, 4, dtype=torch.long)
        live = torch.zeros(256, 4)
        for loc in range(256):
            if loc == PAD_LOCATION:
                continue
            row, col = min(loc >> 4, obs_height - 1), min(loc & 0x0F, obs_width - 1)
            slot = 0
            for out_r in range(conv_h):
                for out_c in range(conv_w):
                    k_r, k_c = row + 1 - 2 * out_r, col + 1 - 2 * out_c  # padding 1, stride 2
                    if 0 <= k_r < 3 and 0 <= k_c < 3:
                        pixel[loc, slot], tap[loc, slot], live[loc, slot] = out_r * conv_w + out_c, k_r * 3 + k_c, 1
                        slot += 1
        self.conv_shape = (conv_h, conv_w)
        self.center_location = (obs_height // 2) << 4 | (obs_width // 2)
        self.register_buffer("_tap_pixel", pixel, persistent=False)
        self.register_buffer("_tap_index", tap, persistent=False)
        self.register_buffer("_tap_live", live, persistent=False)

    def _decode(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Location byte, clamped feature id and scaled value (0 for padding), as cogames computes them."""
        loc = obs[..., 0].long()
        feat = obs[..., 1].long()
        value = obs[..., 2].float() / (self._feature_scale[:256] + 1e-6)[feat] * (loc != PAD_LOCATION).float()
        return loc, feat.clamp(max=self.num_features - 1), value

    def _conv1_kernel(self) -> torch.Tensor:
        """``_cnn[0].weight`` as ``[features * 9, 64]``: row ``feature * 9 + tap``."""
        conv = self._cnn[0]
        return conv.weight.permute(1, 2, 3, 0).reshape(self.num_features * 9, conv.out_channels)

    def _first_conv(self, loc: torch.Tensor, feat: torch.Tensor, value: torch.Tensor,
                    kernel: torch.Tensor | None = None) -> torch.Tensor:
        """``_cnn[0]`` applied to the token grid, computed from the tokens: ``[M, 64, 7, 7]``."""
        conv = self._cnn[0]
        m, num_tokens = loc.shape
        pixels = self.conv_shape[0] * self.conv_shape[1]
        # Padding and zero-valued tokens contribute nothing; the rest is ~25% of a training batch's tokens.
        token = value.detach().view(-1).nonzero().squeeze(1)
        token_loc = loc.reshape(-1)[token]
        pair = self._tap_live[token_loc].view(-1).nonzero().squeeze(1)  # (token, slot) pairs the kernel covers
        slot = pair % 4
        src, pair_loc = token[pair // 4], token_loc[pair // 4]
        rows = torch.div(src, num_tokens, rounding_mode="floor") * pixels + self._tap_pixel[pair_loc, slot]
        cols = feat.reshape(-1)[src] * 9 + self._tap_index[pair_loc, slot]
        taps = torch.sparse_coo_tensor(torch.stack([rows, cols]), value.reshape(-1)[src],
                                       (m * pixels, self.num_features * 9))
        kernel = self._conv1_kernel() if kernel is None else kernel
        out = torch.sparse.mm(taps, kernel.to(value.dtype)).view(m, *self.conv_shape, conv.out_channels)
        return out.permute(0, 3, 1, 2) + conv.bias.view(1, -1, 1, 1)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """``[M, T, 3]`` tokens -> ``[M, 2 * encoder_width]`` LSTM input (CNN features and the agent's own cell)."""
        loc, feat, value = self._decode(obs)
        x = self._cnn[1:](self._first_conv(loc, feat, value))  # ReLU, conv2, ReLU, flatten
        cnn = F.relu(self._cnn_fc(x))
        # The agent's own cell: the grid's centre column, i.e. the summed tokens at the centre location.
        center = value.new_zeros(loc.shape[0], self.num_features)
        center.scatter_add_(1, feat, value * (loc == self.center_location))
        return torch.cat([cnn, F.relu(self._self_encoder(center))], dim=-1)

    # -- recurrent passes ----------------------------------------------------------------------------------
    def initial_state(self, batch: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The LSTM's zero state ``(h, c)``, each ``[batch, hidden_size]``."""
        device = device or self._feature_scale.device
        zeros = torch.zeros(batch, self.hidden_size, device=device)
        return zeros, zeros.clone()

    def _step_weights(self, kernel: str, cache: bool = True) -> _StepWeights:
        """The weights in ``kernel``'s layout, rebuilt when the kernel changed or any parameter was replaced or
        written in place since the last call (an optimizer step, ``load_state_dict``, a device move)."""
        params = (self._cnn[0].weight, self._cnn_fc.weight, self._self_encoder.weight, self._rnn.weight_ih_l0,
                  self._rnn.weight_hh_l0, self._rnn.bias_ih_l0, self._rnn.bias_hh_l0, self._action_head.weight,
                  self._action_head.bias, self._value_head.weight, self._value_head.bias)
        key = (kernel, *((p.data_ptr(), p._version, p.dtype) for p in params))
        packed = self.__dict__.get("_packed")
        if packed is not None and packed.key == key:
            return packed
        layout, product = _KERNELS[kernel]
        rnn, action, value = self._rnn, self._action_head, self._value_head
        with torch.no_grad():
            packed = _StepWeights(
                key=key,
                product=product,
                conv1=self._conv1_kernel().contiguous(),
                cnn_fc=layout(self._cnn_fc.weight),
                self_encoder=layout(self._self_encoder.weight),
                lstm=layout(torch.cat([rnn.weight_ih_l0, rnn.weight_hh_l0], 1)),
                lstm_bias=rnn.bias_ih_l0 + rnn.bias_hh_l0,
                heads=layout(torch.cat([action.weight, value.weight])),
                heads_bias=torch.cat([action.bias, value.bias]),
            )
        if cache:
            self.__dict__["_packed"] = packed  # not a buffer: never saved, rebuilt on demand
        return packed

    def __getstate__(self):
        # The step's weights are derived (and oneDNN's blocked copies can be neither pickled nor deep-copied).
        state = super().__getstate__()
        state.pop("_packed", None)
        state.pop("_kernel_memo", None)
        return state

    def step_kernels(self, device: torch.device) -> list[str]:
        """The kernels ``step`` can use on ``device`` with this dtype and autocast state."""
        # oneDNN's kernel here is a float32 CPU product that autocast does not know: offered only where it is used.
        fp32 = self._rnn.weight_ih_l0.dtype == torch.float32 and not torch.is_autocast_enabled(device.type)
        return [k for k in _KERNELS if k != "mkldnn" or (device.type == "cpu" and fp32)]

    def step_kernel(self, obs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> str:
        """The matrix-product kernel ``step`` uses for this batch: ``$ALIGNER_STEP_KERNEL`` if set (not ``auto``);
        ``linear`` off the CPU; on CPU the fastest on this batch, timed at the first step of each batch size."""
        # Every rollout step asks: answer from the last decision while nothing it depends on has changed.
        device, forced = obs.device, os.environ.get(STEP_KERNEL_ENV)
        memo_key = (obs.shape[0], device, forced, self._rnn.weight_ih_l0.dtype, torch.is_autocast_enabled(device.type))
        memo = self.__dict__.get("_kernel_memo")
        if memo is not None and memo[0] == memo_key:
            return memo[1]
        kernel = self._choose_step_kernel(obs, state, forced)
        self.__dict__["_kernel_memo"] = (memo_key, kernel)
        return kernel

    def _choose_step_kernel(self, obs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
                            forced: str | None) -> str:
        device, kernels = obs.device, self.step_kernels(obs.device)
        forced = forced or "auto"
        if forced != "auto":
            if forced not in kernels:
                raise ValueError(f"{STEP_KERNEL_ENV}={forced!r}: must be auto or one of {', '.join(kernels)} here")
            return forced
        if device.type != "cpu":
            return "linear"  # kernel launches, not weight reads, dominate: no timing needed
        where = (str(device), obs.shape[0], self._rnn.weight_ih_l0.dtype, torch.is_autocast_enabled("cpu"),
                 self._cnn_fc.weight.shape, self._rnn.weight_ih_l0.shape, self._action_head.weight.shape)
        if where not in _chosen_kernel:
            _chosen_kernel[where] = self._time_step_kernels(kernels, obs, state)
        return _chosen_kernel[where]

    def _time_step_kernels(self, kernels: list[str], obs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
                           repeats: int = 7, budget_s: float = 0.3) -> str:
        """Times the whole step with each kernel on this batch (after one warm-up call each) and returns the
        fastest. The kernels take turns, so each call finds its weights out of the L2 cache, as a rollout step
        does after the env's step, and a busy machine's slow moments fall on all of them alike. Stops after
        ``repeats`` rounds, or after 3 once ``budget_s`` is spent (a large batch, an overloaded machine)."""
        weights = {name: self._step_weights(name, cache=False) for name in kernels}
        times: dict[str, list[float]] = {name: [] for name in kernels}
        begin = time.perf_counter()
        for i in range(repeats + 1):
            for name, w in weights.items():
                start = time.perf_counter()
                self._step(w, obs, state)
                if i:  # the first round warms up
                    times[name].append(time.perf_counter() - start)
            if i >= 3 and time.perf_counter() - begin > budget_s:
                break
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        best = min(ms, key=ms.get)
        timings = ", ".join(f"{name} {t:.2f} ms" for name, t in sorted(ms.items(), key=lambda kv: kv[1]))
        rank_zero_info(f"rollout step kernel: {best} ({timings}) at batch {obs.shape[0]} on {cpu_name()}")
        return best

    @torch.no_grad()
    def step(
        self, obs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One inference step for ``B`` agents: ``obs [B, T, 3]``, ``state (h, c)`` -> logits ``[B, A]``, value
        ``[B]``, the next state.

        The same function as ``forward`` over one step (to float rounding), with fewer, larger operations: at a
        rollout's batch of 16 the cost is per-operation overhead and reading the LSTM's weights (8 MB at 512).
        """
        return self._step(self._step_weights(self.step_kernel(obs, state)), obs, state)

    def _step(self, w: _StepWeights, obs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        h, c = state
        hs = self.hidden_size
        loc, feat, value = self._decode(obs)
        x = self._cnn[1:](self._first_conv(loc, feat, value, w.conv1))
        center = value.new_zeros(loc.shape[0], self.num_features)
        center.scatter_add_(1, feat, value * (loc == self.center_location))
        xh = torch.cat([w.product(x, w.cnn_fc, self._cnn_fc.bias).relu_(),
                        w.product(center, w.self_encoder, self._self_encoder.bias).relu_(), h], dim=1)
        gates = w.product(xh, w.lstm, w.lstm_bias)  # PyTorch's gate order: input, forget, cell, output
        sig = gates.sigmoid()
        c = sig[:, hs:2 * hs] * c + sig[:, :hs] * gates[:, 2 * hs:3 * hs].tanh()
        h = sig[:, 3 * hs:] * c.tanh()
        heads = w.product(h, w.heads, w.heads_bias)
        return heads[:, :self.num_actions], heads[:, self.num_actions], (h, c)

    def forward(
        self, obs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BPTT pass over segments: ``obs [n, H, T, 3]`` -> logits ``[n, H, A]``, values ``[n, H]``.

        ``state`` is the segments' initial ``(h, c)``, each ``[n, hidden_size]``; ``None`` starts from zeros (PuffeRL).
        """
        n, horizon = obs.shape[:2]
        x = self.encode(obs.reshape(n * horizon, *obs.shape[2:])).view(n, horizon, -1)
        hx = None if state is None else (state[0].unsqueeze(0), state[1].unsqueeze(0))
        hidden, _ = self._rnn(x, hx)
        return self._action_head(hidden), self._value_head(hidden).squeeze(-1)


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits - logits.logsumexp(dim=-1, keepdim=True)  # PuffeRL's form (not F.log_softmax)


def action_logprob(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Log-probability of ``actions`` under ``logits``, PuffeRL's formula."""
    return _log_softmax(logits).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def sample_actions(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PuffeRL's discrete sampling: multinomial over softmax (NaN -> 1e-8), log-prob from log_softmax."""
    probs = torch.nan_to_num(logits.softmax(dim=-1), 1e-8, 1e-8, 1e-8)
    action = torch.multinomial(probs, 1, replacement=True).squeeze(-1)
    return action, action_logprob(logits, action)


def logprob_and_entropy(logits: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of the taken ``actions`` and the policy entropy, PuffeRL's formulas."""
    logp_all = _log_softmax(logits)
    logprob = logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    clamped = logp_all.clamp(min=torch.finfo(logp_all.dtype).min)
    entropy = -(clamped * clamped.softmax(dim=-1)).sum(-1)
    return logprob, entropy
