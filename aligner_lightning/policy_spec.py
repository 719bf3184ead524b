"""What a trainable policy must provide, and how one is named in a config and rebuilt from a checkpoint.

The trainer never names a network class. ``model.policy`` in the YAML picks one, LightningCLI style::

    model:
      policy:
        class_path: aligner_lightning.policy.AlignerPolicy   # or your own class
        init_args: {hidden_size: 128}

The class is constructed as ``cls(env_info, **init_args)``, where ``env_info`` is the env's mettagrid
``PolicyEnvInterface`` (observation features and window, action names). It must be an ``nn.Module`` with the
three methods of ``RecurrentPolicy``. A *spec*, ``{"class_path": ..., "init_args": {...}}``, names the class
and its arguments; checkpoints record it, so ``test``, ``validate``, export and resume rebuild the same network.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn

State = tuple[torch.Tensor, ...]  # each [batch, ...]; an empty tuple for a feed-forward policy


@runtime_checkable
class RecurrentPolicy(Protocol):
    """The contract between a network and the trainer (rollout, loss, evaluation and export)."""

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> State:
        """The state an episode starts from, each tensor ``[batch, ...]`` (zeros for an LSTM)."""
        ...

    def step(self, obs: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor, State]:
        """One inference step: ``obs [B, T, 3]`` uint8 tokens -> logits ``[B, A]``, value ``[B]``, next state.
        Called under ``torch.inference_mode`` by the rollout and evaluation."""
        ...

    def forward(self, obs: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The training pass over segments: ``obs [n, H, T, 3]`` -> logits ``[n, H, A]``, values ``[n, H]``,
        starting from ``state`` (each ``[n, ...]``), or from ``initial_state`` when it is None."""
        ...


# What ``model.policy`` holds after parsing: the class, with its init_args bound (jsonargparse's callable
# class type), called with the env interface.
PolicyFactory = Callable[[Any], nn.Module]

DEFAULT_CLASS_PATH = "aligner_lightning.policy.AlignerPolicy"


def state_reset_problem(value: Any, name: str = "state_reset") -> str | None:
    """What is wrong with a state-reset period (zero the recurrent state every ``value`` steps; None: never), or
    None if nothing is."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return None
    return f"{name}={value!r}: must be an int >= 1 or None"


class PolicySpecError(ValueError):
    """A policy spec that cannot be built; the message names model.policy and the fix."""


def spec_of(factory: PolicyFactory) -> dict[str, Any]:
    """The spec of a factory: a policy class, or a class with bound keyword arguments (what LightningCLI
    passes for ``class_path``/``init_args``)."""
    init_args: dict[str, Any] = {}
    cls = factory
    if isinstance(factory, functools.partial):
        classes = [a for a in (factory.func, *factory.args) if inspect.isclass(a)]
        if len(classes) != 1:
            raise PolicySpecError(f"model.policy={factory!r}: expected a class with init_args")
        cls, init_args = classes[0], dict(factory.keywords)
    if not inspect.isclass(cls) or not issubclass(cls, nn.Module):
        raise PolicySpecError(f"model.policy={factory!r}: must be an nn.Module class (class_path and init_args)")
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": _plain(init_args)}


def _plain(value: Any) -> Any:
    """Tuples -> lists, so that a spec equals itself after a round trip through YAML or JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def resolve_class(class_path: str) -> type:
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise PolicySpecError(f"model.policy.class_path={class_path!r}: cannot be imported ({e}); "
                              "give a module path and class name, e.g. " + DEFAULT_CLASS_PATH) from e
    if not inspect.isclass(cls) or not issubclass(cls, nn.Module):
        raise PolicySpecError(f"model.policy.class_path={class_path!r}: is not an nn.Module class")
    return cls


def build_policy(spec: dict[str, Any], env_info) -> nn.Module:
    """``cls(env_info, **init_args)``, checked against ``RecurrentPolicy``."""
    cls = resolve_class(spec["class_path"])
    try:
        policy = cls(env_info, **dict(spec.get("init_args") or {}))
    except TypeError as e:
        raise PolicySpecError(f"model.policy {describe(spec)}: {e}") from e
    missing = [m for m in ("initial_state", "step", "forward") if not callable(getattr(policy, m, None))]
    if missing:
        raise PolicySpecError(f"model.policy {describe(spec)}: lacks {', '.join(missing)} "
                              "(see aligner_lightning.policy_spec.RecurrentPolicy)")
    return policy


def default_spec() -> dict[str, Any]:
    """What a checkpoint written before policies were configurable holds: the tutorial network."""
    return {"class_path": DEFAULT_CLASS_PATH, "init_args": {}}


def canonical(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with the class's defaults filled in, so that ``{}`` and the explicit defaults compare equal."""
    cls = resolve_class(spec["class_path"])
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # after self and env_info
    args = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    args.update(spec.get("init_args") or {})
    return {"class_path": spec["class_path"], "init_args": _plain(args)}


def describe(spec: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in (spec.get("init_args") or {}).items())
    return f"{spec['class_path']}({args})"
