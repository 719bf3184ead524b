"""Shared fixtures: real observations from the real simulator, small and fast."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aligner_lightning.envs import EnvFactory, env_interface


@pytest.fixture(scope="session")
def smoke_factory() -> EnvFactory:
    return EnvFactory(mission="smoke", seed=7, early_reset=False)


@pytest.fixture(scope="session")
def aligner_factory() -> EnvFactory:
    return EnvFactory(mission="aligner_tutorial", seed=7, early_reset=False)


def random_observations(factory: EnvFactory, steps: int, seed: int = 0) -> torch.Tensor:
    """[steps, agents, tokens, 3] uint8 observations from random play."""
    env = factory(seed=0)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset()
    frames = [obs.copy()]
    for _ in range(steps - 1):
        obs, *_ = env.step(rng.integers(0, env.single_action_space.n, env.num_agents).astype(np.int32))
        frames.append(obs.copy())
    env.close()
    return torch.from_numpy(np.stack(frames))


@pytest.fixture(scope="session")
def aligner_obs(aligner_factory) -> torch.Tensor:
    return random_observations(aligner_factory, 32)


@pytest.fixture(scope="session")
def aligner_info(aligner_factory):
    return env_interface(aligner_factory)


# The PuffeRL reference harness lives with the benchmarks; tests import it from there.
import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1] / "benchmarks"))
