"""PuffeRL 3.0.23 as the tutorial ran it, for parity tests and side-by-side benchmarks. Never imported by the
product: importing ``pufferlib.pufferl`` turns RuntimeWarnings into errors and hijacks SIGINT, so
``load_pufferl`` undoes both."""

from __future__ import annotations

import signal
import tempfile
import warnings


def load_pufferl():
    """Import pufferlib.pufferl without keeping its process-wide side effects."""
    handler = signal.getsignal(signal.SIGINT)
    with warnings.catch_warnings():
        import pufferlib.pufferl as pufferl
    signal.signal(signal.SIGINT, handler)
    return pufferl


def seed_config(**overrides) -> dict:
    """The tutorial's PuffeRL config (cogames' train.py with the notebook's settings)."""
    cfg = dict(
        env="cogsguard", device="cpu", total_timesteps=10_000_000, batch_size=4096, minibatch_size=4096,
        max_minibatch_size=32768, bptt_horizon=64, data_dir=tempfile.mkdtemp(prefix="pufferl_"),
        checkpoint_interval=10**9, seed=42, use_rnn=True, torch_deterministic=True, cpu_offload=False,
        optimizer="adam", anneal_lr=True, precision="float32", learning_rate=0.00092, gamma=0.995,
        gae_lambda=0.90, update_epochs=1, clip_coef=0.2, vf_coef=2.0, vf_clip_coef=0.2, max_grad_norm=1.5,
        ent_coef=0.01, adam_beta1=0.95, adam_beta2=0.999, adam_eps=1e-8, compile=False, compile_mode=None,
        compile_fullgraph=False, vtrace_rho_clip=1.0, vtrace_c_clip=1.0, prio_alpha=0.8, prio_beta0=0.2,
        min_lr_ratio=0.0,
    )
    cfg.update(overrides)
    return cfg


def make_pufferl(vecenv, policy, **overrides):
    """A PuffeRL trainer with its dashboard silenced and its monitoring thread stopped."""
    pufferl = load_pufferl()
    pufferl.PuffeRL.print_dashboard = lambda *a, **k: None
    trainer = pufferl.PuffeRL(seed_config(**overrides), vecenv, policy)
    trainer.utilization.stop()
    return trainer
