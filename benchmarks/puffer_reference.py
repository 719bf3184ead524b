"""PuffeRL 3.0.23 as the tutorial ran it, for parity tests and side-by-side benchmarks. Never imported by the
product: importing ``pufferlib.pufferl`` turns RuntimeWarnings into errors and hijacks SIGINT, so
``load_pufferl`` undoes both."""

from __future__ import annotations

import ast
import inspect
import signal
import tempfile
import warnings
from pathlib import Path

import torch


def load_pufferl():
    """Import pufferlib.pufferl without keeping its process-wide side effects."""
    handler = signal.getsignal(signal.SIGINT)
    with warnings.catch_warnings():
        import pufferlib.pufferl as pufferl
    signal.signal(signal.SIGINT, handler)
    return pufferl


# PuffeRL's names for our defaults (AlignerPPO's and RolloutDataModule's arguments; ``seed`` is data.seed).
HYPERPARAMETERS = (
    "total_timesteps", "batch_size", "minibatch_size", "max_minibatch_size", "bptt_horizon", "update_epochs", "seed",
    "anneal_lr", "learning_rate", "min_lr_ratio", "adam_beta1", "adam_beta2", "adam_eps", "gamma", "gae_lambda",
    "clip_coef", "vf_coef", "vf_clip_coef", "max_grad_norm", "ent_coef", "vtrace_rho_clip", "vtrace_c_clip",
    "prio_alpha", "prio_beta0",
)


def our_defaults() -> dict:
    """The defaults of AlignerPPO's and RolloutDataModule's arguments (their signatures: the one source)."""
    from aligner_lightning.datamodule import RolloutDataModule
    from aligner_lightning.module import AlignerPPO

    return {name: p.default for cls in (AlignerPPO, RolloutDataModule)
            for name, p in inspect.signature(cls).parameters.items()}


def seed_config(**overrides) -> dict:
    """The tutorial's PuffeRL config: our defaults (tests/test_defaults.py holds them to cogames' train.py and
    the notebook) under PuffeRL's names, plus PuffeRL's own run settings."""
    defaults = our_defaults()
    cfg = {key: defaults[key] for key in HYPERPARAMETERS}
    cfg.update(
        env="cogsguard", device="cpu", data_dir=tempfile.mkdtemp(prefix="pufferl_"), checkpoint_interval=10**9,
        use_rnn=True, torch_deterministic=True, cpu_offload=False, optimizer="adam", precision="float32",
        compile=False, compile_mode=None, compile_fullgraph=False,
    )
    cfg.update(overrides)
    return cfg


def cogames_train_args() -> dict:
    """The literal keyword arguments of cogames' ``train_args = dict(...)`` in ``cogames/train.py`` (the seed's
    PuffeRL config), with names bound to literals in the same function resolved; the rest (computed at run
    time: batch size, step budget, seed, device, paths) are left out."""
    import cogames.train

    tree = ast.parse(Path(cogames.train.__file__).read_text())
    train = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train")
    literals = {}
    for node in ast.walk(train):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                literals[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    call = next(n.value for n in ast.walk(train) if isinstance(n, ast.Assign)
                and getattr(n.targets[0], "id", None) == "train_args")
    args = {}
    for kw in call.keywords:
        try:
            args[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            if isinstance(kw.value, ast.Name) and kw.value.id in literals:
                args[kw.arg] = literals[kw.value.id]
    return args


class PufferNet(torch.nn.Module):
    """Our policy in the shape PuffeRL's train() calls a network: ``(obs [n, H, T, 3], state) -> (logits, values)``,
    so that PuffeRL can train the very network our trainer trains."""

    def __init__(self, policy: torch.nn.Module):
        super().__init__()
        self.policy, self.hidden_size = policy, policy.hidden_size

    def forward(self, obs: torch.Tensor, state: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logits, values = self.policy(obs)
        return logits.reshape(-1, logits.shape[-1]), values.reshape(-1, 1)


def make_pufferl(vecenv, policy, **overrides):
    """A PuffeRL trainer with its dashboard silenced and its monitoring thread stopped."""
    pufferl = load_pufferl()
    pufferl.PuffeRL.print_dashboard = lambda *a, **k: None
    trainer = pufferl.PuffeRL(seed_config(**overrides), vecenv, policy)
    trainer.utilization.stop()
    return trainer
