"""Fixtures: real observations from the real simulator, and the runs that several test files read."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TRAINED_EPOCHS, factory, random_observations, run_main, train, write_config

from aligner_lightning.envs import EnvFactory, env_interface

# The PuffeRL reference harness lives with the benchmarks; the parity tests import it from there.
sys.path.insert(0, str(ROOT / "benchmarks"))
# The tests' networks and batches are small: one torch thread is as fast, and cannot oversubscribe a busy machine.
torch.set_num_threads(1)
# One rollout-step kernel for every run the suite compares across processes: "auto" times the kernels at start-up
# and may choose differently from one process to the next, which changes the float rounding. test_policy.py runs
# each kernel, and auto, itself.
os.environ.setdefault("ALIGNER_STEP_KERNEL", "packed")


@pytest.fixture(scope="session")
def smoke_factory() -> EnvFactory:
    return factory("smoke")


@pytest.fixture(scope="session")
def aligner_factory() -> EnvFactory:
    return factory("aligner_tutorial")


@pytest.fixture(scope="session")
def aligner_obs(aligner_factory) -> torch.Tensor:
    return random_observations(aligner_factory, 32)


@pytest.fixture(scope="session")
def aligner_info(aligner_factory):
    return env_interface(aligner_factory)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """The one trained checkpoint of the suite: ``train.py fit`` run as a user runs it, in a subprocess, from the
    config that ``--print_config`` printed for write_config's deterministic debug config (so the printed config
    is valid input): 4 epochs, evaluated at step 0 and every 2 epochs. Run directory: lightning_logs/full.
    Tests that read it must not change it (test subcommands write to its own test/ directory)."""
    tmp = tmp_path_factory.mktemp("trained")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        code = run_main(mp, tmp, "fit", "--config", write_config(tmp, TRAINED_EPOCHS), "--print_config")
    assert code == 0
    (tmp / "printed.yaml").write_text(printed.getvalue())
    code, _, err = train(tmp / "printed.yaml", tmp, "--run_name", "full")
    assert code == 0, err[-3000:]
    return tmp


@pytest.fixture(scope="session")
def fresh_imports() -> dict[str, bool]:
    """What a fresh interpreter has imported after the torch-free modules, and after the product's entry points."""
    code = (
        "import json, sys\n"
        "import aligner_lightning.missions, aligner_lightning.scripted, aligner_lightning.stats\n"
        "torch_free = 'torch' not in sys.modules\n"
        "import aligner_lightning.cli, aligner_lightning.episodes, aligner_lightning.export\n"
        "print(json.dumps({'torch_free': torch_free, 'pufferl': 'pufferlib.pufferl' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
