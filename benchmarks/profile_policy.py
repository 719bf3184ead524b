"""Where the network's time goes, and what each speed change bought: cogames' TutorialPolicyNet (what PuffeRL
runs: dense 13x13 token grid, a length-1 nn.LSTM per rollout step) against our AlignerPolicy (tokens fed to
the first convolution directly, a step on pre-laid-out weights per rollout step), on real aligner observations.

    python benchmarks/profile_policy.py [--threads 2] [--ops] [--hidden-sizes 128 256 512]
    python benchmarks/profile_policy.py --threads 1 --hidden-sizes --widths 128:32,64:128 128:16,32:128

Prints the CPU model and milliseconds per call (median of repeats): our rollout step with each of its
matrix-product kernels at 16 and 64 agents and the one ``ALIGNER_STEP_KERNEL=auto`` chooses on this machine, the
network variants at the tutorial width, then our rollout step and training pass for each LSTM hidden size (the
other widths at their defaults) and for each ``--widths`` entry (``hidden:conv1,conv2:encoder``, all widths
given); with --ops, the top torch-profiler ops of our training pass.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cogames.policy.tutorial_policy import TutorialPolicyNet  # noqa: E402
from helpers import random_observations  # noqa: E402

from aligner_lightning.datamodule import RolloutDataModule  # noqa: E402
from aligner_lightning.envs import env_interface  # noqa: E402
from aligner_lightning.machine import cpu_name  # noqa: E402
from aligner_lightning.policy import AlignerPolicy  # noqa: E402


def timed(fn, repeats: int, inner: int) -> float:
    """Median milliseconds per call."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner * 1e3)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ops", action="store_true", help="print the top ops of our training pass")
    parser.add_argument("--hidden-sizes", type=int, nargs="*", default=[128, 256, 512],
                        help="LSTM hidden sizes to time (other widths at their defaults)")
    parser.add_argument("--widths", nargs="+", default=[], metavar="H:C1,C2:E",
                        help="whole networks to time: LSTM hidden size, the two convolutions' channels, encoder width "
                             "(configs/aligner_fast.yaml's: 128:32,64:128)")
    args = parser.parse_args()
    try:
        shapes = [dict(hidden_size=int(h), conv_channels=[int(c) for c in conv.split(",")], encoder_width=int(e))
                  for h, conv, e in (entry.split(":") for entry in args.widths)]
    except ValueError:
        parser.error(f"--widths {' '.join(args.widths)}: each entry is hidden:conv1,conv2:encoder, e.g. 128:32,64:128")
    torch.set_num_threads(args.threads)

    factory = RolloutDataModule(mission="aligner_tutorial").factory
    info = env_interface(factory)
    frames = random_observations(factory, 256)  # [256 steps, 4 agents, 200, 3]
    step_obs = frames[:4].reshape(16, 200, 3).contiguous()  # one rollout step: 4 envs x 4 agents
    train_obs = frames.transpose(0, 1).reshape(16, 64, 200, 3).repeat(4, 1, 1, 1).contiguous()  # [64, 64, ...]
    torch.manual_seed(0)
    ours = AlignerPolicy.from_env_interface(info)
    theirs = TutorialPolicyNet(info)
    theirs.load_state_dict(ours.state_dict())
    state = ours.initial_state(16)
    h, c = state
    rnn = ours._rnn

    def ours_step_with_nn_lstm():  # our encoder, cogames' length-1 nn.LSTM
        x = ours.encode(step_obs).unsqueeze(1)
        out, _ = rnn(x, (h.unsqueeze(0), c.unsqueeze(0)))
        return ours._action_head(out[:, 0]), ours._value_head(out[:, 0])

    def ours_step_with_lstm_cell():  # our encoder, torch.lstm_cell on the nn.LSTM's own weights, two heads
        x = ours.encode(step_obs)
        h1, _ = torch.lstm_cell(x, (h, c), rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
        return ours._action_head(h1), ours._value_head(h1)

    def train_pass(net):
        net.zero_grad(set_to_none=True)
        logits, values = net(train_obs)
        (logits.float().square().mean() + values.float().square().mean()).backward()

    print(f"{cpu_name()}; torch threads {args.threads}; rollout step = 16 agents, training pass = 64 segments x "
          "64 steps")
    os.environ["ALIGNER_STEP_KERNEL"] = "auto"  # what a run does by default, whatever the shell sets
    with torch.inference_mode():
        for batch in (16, 64):
            obs = frames[:batch // 4].reshape(batch, 200, 3).contiguous()  # batch / 4 envs x 4 agents
            batch_state = ours.initial_state(batch)
            for kernel in ours.step_kernels(obs.device):
                w = ours._step_weights(kernel, cache=False)
                ms = timed(lambda: ours._step(w, obs, batch_state), 7, 50)
                print(f"{f'rollout step, {batch} agents, kernel {kernel}':<58} {ms:9.2f} ms")
            print(f"{f'rollout step, {batch} agents: auto chooses':<58} {ours.step_kernel(obs, batch_state):>9}")
        rows = [
            ("rollout step: cogames net (grid + conv, nn.LSTM x1)",
             timed(lambda: theirs(step_obs, {"lstm_h": h, "lstm_c": c}), 7, 50)),
            ("rollout step: ours, but nn.LSTM x1", timed(ours_step_with_nn_lstm, 7, 50)),
            ("rollout step: ours, but lstm_cell on the nn.LSTM weights", timed(ours_step_with_lstm_cell, 7, 50)),
            ("rollout step: ours (token conv, auto's kernel)", timed(lambda: ours.step(step_obs, state), 7, 50)),
            ("  of which first conv: cogames grid + conv", timed(lambda: theirs._cnn[0](theirs._tokens_to_grid(step_obs)), 7, 50)),
            ("  of which first conv: ours from tokens", timed(lambda: ours._first_conv(*ours._decode(step_obs)), 7, 50)),
        ]
    rows += [
        ("training fwd+bwd: cogames net", timed(lambda: train_pass(theirs), 3, 1)),
        ("training fwd+bwd: ours", timed(lambda: train_pass(ours), 3, 1)),
    ]
    for label, widths in [(f"hidden {size}", dict(hidden_size=size)) for size in args.hidden_sizes] + [
            (f"{entry}", shape) for entry, shape in zip(args.widths, shapes)]:
        torch.manual_seed(0)
        net = AlignerPolicy(info, **widths)
        net_state = net.initial_state(16)
        with torch.inference_mode():
            rows.append((f"{label}: rollout step", timed(lambda: net.step(step_obs, net_state), 7, 50)))
        rows.append((f"{label}: training fwd+bwd", timed(lambda: train_pass(net), 3, 1)))
    for label, ms in rows:
        print(f"{label:<58} {ms:9.2f} ms")

    if args.ops:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train_pass(ours)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
