"""Why one epoch of our trainer and of PuffeRL's train() can end apart with cogames' network, and not with ours.

The setting of tests/test_algorithm_parity.py (smoke world, 512-step buffer, minibatches of 128, two update
epochs): one epoch of our trainer, then PuffeRL's train() on the same buffer, weights and RNG state, once with
cogames' TutorialPolicyNet and once with our network (puffer_reference.PufferNet). For each, per minibatch: the
segments both trainers sampled and how far apart their sampling probabilities were; per optimizer step: how far
apart the first convolution's gradients were, in how many elements their signs differ, and the weights after it.

    python benchmarks/epoch_parity_diagnosis.py --seed 1 [--max_minibatch_size 32768]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cogames.policy.tutorial_policy import TutorialPolicyNet  # noqa: E402
from puffer_reference import PufferNet, make_pufferl  # noqa: E402

from aligner_lightning.datamodule import RolloutDataModule  # noqa: E402
from aligner_lightning.envs import make_vecenv  # noqa: E402
from aligner_lightning.module import AlignerPPO  # noqa: E402
from aligner_lightning.policy import AlignerPolicy  # noqa: E402
from aligner_lightning.rollout import Rollout  # noqa: E402

CONV1 = "_cnn.0.weight"


class Recorder:
    """Every 1-D torch.multinomial call (a minibatch's segments) and every optimizer step of one trainer."""

    def __init__(self):
        self.draws: list[tuple[torch.Tensor, torch.Tensor]] = []  # (probabilities, segments)
        self.steps: list[dict[str, torch.Tensor]] = []  # conv1 gradient, then conv1 after the step

    def watch(self, optimizer: torch.optim.Optimizer, conv1: torch.nn.Parameter) -> None:
        optimizer.register_step_pre_hook(lambda *_: self.steps.append({"grad": conv1.grad.detach().clone()}))
        optimizer.register_step_post_hook(lambda *_: self.steps[-1].update(after=conv1.detach().clone()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="torch seed of the initial weights")
    parser.add_argument("--max_minibatch_size", type=int, default=32768)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    dm = RolloutDataModule(mission="smoke", num_envs=2, seed=42, bptt_horizon=16, batch_size=512, minibatch_size=128,
                           update_epochs=2, max_minibatch_size=args.max_minibatch_size)
    module = AlignerPPO(total_timesteps=512)
    snapshot: dict = {}
    recording: list[Recorder] = []
    real_collect, real_multinomial = Rollout.collect, torch.multinomial

    def collect(self, policy, epoch, **options):
        experience = real_collect(self, policy, epoch, **options)
        snapshot["buffer"] = {k: getattr(self.buffer, k).clone() for k in ("obs", "actions", "logprobs", "values",
                                                                            "rewards", "terminals")}
        snapshot["weights"] = {k: v.clone() for k, v in policy.state_dict().items()}
        torch.manual_seed(1234)
        snapshot["rng"] = torch.get_rng_state()
        recording.append(ours)
        return experience

    def multinomial(probs, *a, **k):
        out = real_multinomial(probs, *a, **k)
        if probs.dim() == 1 and recording:
            recording[-1].draws.append((probs.detach().clone(), out))
        return out

    class Watch(L.Callback):
        def on_train_start(self, trainer, pl_module):
            ours.watch(trainer.optimizers[0], pl_module.policy._cnn[0].weight)

    ours = Recorder()
    Rollout.collect, torch.multinomial = collect, multinomial
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu", limit_val_batches=0, callbacks=[Watch()]).fit(module, dm)
    Rollout.collect = real_collect

    for name, net, conv1 in _reference_nets(dm, snapshot["weights"]):
        theirs = Recorder()
        recording.append(theirs)
        env = make_vecenv(dm.factory, dm.num_envs)
        puffer = make_pufferl(env, net, batch_size=512, bptt_horizon=16, minibatch_size=128, update_epochs=2,
                              max_minibatch_size=args.max_minibatch_size, total_timesteps=512)
        theirs.watch(puffer.optimizer, conv1)
        for k, v in snapshot["buffer"].items():
            getattr(puffer, {"obs": "observations"}.get(k, k)).copy_(v)
        torch.set_rng_state(snapshot["rng"])
        puffer.train()
        env.close()
        _report(name, args, ours, theirs, module.hparams.learning_rate)
    torch.multinomial = real_multinomial


def _reference_nets(dm: RolloutDataModule, weights: dict):
    cogames = TutorialPolicyNet(dm.env_info)
    cogames.load_state_dict(weights)
    yield "cogames' TutorialPolicyNet", cogames, cogames._cnn[0].weight
    policy = AlignerPolicy.from_env_interface(dm.env_info)
    policy.load_state_dict(weights)
    yield "our AlignerPolicy", PufferNet(policy), policy._cnn[0].weight


def _report(name: str, args, ours: Recorder, theirs: Recorder, lr: float) -> None:
    print(f"\nseed {args.seed}, max_minibatch_size {args.max_minibatch_size}, PuffeRL training {name} "
          f"({torch.get_num_threads()} torch threads)")
    for k, ((p_ours, idx_ours), (p_theirs, idx_theirs)) in enumerate(zip(ours.draws, theirs.draws)):
        same = "same segments" if torch.equal(idx_ours, idx_theirs) else "OTHER SEGMENTS"
        print(f"  minibatch {k:2d}: {same}; sampling probabilities max |diff| {(p_ours - p_theirs).abs().max():.1e}")
    for k, (a, b) in enumerate(zip(ours.steps, theirs.steps)):
        flips = (torch.sign(a["grad"]) != torch.sign(b["grad"])) & ((a["grad"] != 0) | (b["grad"] != 0))
        flip_size = torch.maximum(a["grad"].abs(), b["grad"].abs())[flips].max().item() if flips.any() else 0.0
        apart = (a["after"] - b["after"]).abs()
        print(f"  step {k:2d}: conv1 gradient max |diff| {(a['grad'] - b['grad']).abs().max():.1e} "
              f"(largest gradient {a['grad'].abs().max():.1e}); opposite signs in {int(flips.sum())} elements "
              f"(|g| <= {flip_size:.1e}); after the step max |diff| {apart.max():.2e} = {apart.max() / lr:.2f} lr, "
              f"{(apart > 1e-5).float().mean() * 100:.1f}% of conv1 > 1e-5")


if __name__ == "__main__":
    main()
