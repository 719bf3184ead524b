"""Lightning checkpoint of ``AlignerPPO`` -> a cogames policy bundle.

    python -m aligner_lightning.export --ckpt lightning_logs/version_0/checkpoints/last.ckpt --out bundle
    cogames run -m <mission> -p ./bundle

The bundle has the layout cogames' own trainer writes (``cogames/train.py``): ``policy_spec.json``, mettagrid's
``SubmissionPolicySpec`` (a policy class, its weights file relative to the bundle and the ``PolicyEnvInterface``
the policy was trained on), and ``weights.pt``, a bare ``state_dict`` (``torch.save``).

- The default network (cogames' ``TutorialPolicyNet`` shapes) exports for cogames' own ``TutorialPolicy``, so
  the bundle needs nothing from this package.
- Any other network exports for ``aligner_lightning.mettagrid_policy.AlignerMettaPolicy``, with the network's
  class path and arguments in ``init_kwargs``; playing it needs this package installed.
- So does a checkpoint trained with ``model.eval_state_reset`` N (its evaluations zeroed the recurrent state
  every N steps): ``init_kwargs`` carry ``state_reset`` N, so that the bundle plays as the policy was judged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import torch
from cogames.policy.tutorial_policy import TutorialPolicyNet
from mettagrid.policy.policy_env_interface import PolicyEnvInterface
from mettagrid.policy.submission import POLICY_SPEC_FILENAME, SubmissionPolicySpec, write_submission_policy_spec

from aligner_lightning.checkpoints import (checkpoint_policy_spec, checkpoint_state_reset, interface_mismatch,
                                          read_checkpoint)
from aligner_lightning.errors import CheckpointError
from aligner_lightning.missions import MissionError, make_mission
from aligner_lightning.policy_spec import (PolicySpecError, build_policy, canonical, default_spec, describe,
                                          state_reset_problem)

CLASS_PATH = "cogames.policy.tutorial_policy.TutorialPolicy"
OWN_CLASS_PATH = "aligner_lightning.mettagrid_policy.AlignerMettaPolicy"
WEIGHTS_FILENAME = "weights.pt"
POLICY_PREFIX = "policy."  # AlignerPPO keeps the network in ``self.policy``


class PolicyCheckpoint(NamedTuple):
    weights: dict[str, torch.Tensor]  # the policy's bare state_dict
    info: PolicyEnvInterface
    spec: dict  # the network's class path and arguments
    state_reset: int | None  # the run's model.eval_state_reset


def load_policy_checkpoint(ckpt_path: str | Path) -> PolicyCheckpoint:
    """The policy's bare state_dict, env interface, spec (class path, arguments) and evaluation state reset from
    an AlignerPPO checkpoint, read once; CheckpointError if the file is missing, unreadable, not from AlignerPPO,
    or its weights do not fit the network its spec builds."""
    path = Path(ckpt_path)
    ckpt = read_checkpoint(path)
    try:
        info = PolicyEnvInterface.model_validate_json(ckpt["aligner"]["env_interface"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: missing or bad env interface ({_first_line(e)})") from e
    spec = checkpoint_policy_spec(ckpt)
    weights = {k.removeprefix(POLICY_PREFIX): v for k, v in ckpt["state_dict"].items() if k.startswith(POLICY_PREFIX)}
    try:
        net = TutorialPolicyNet(info) if is_tutorial_net(spec) else build_policy(spec, info)
    except PolicySpecError as e:
        raise CheckpointError(f"checkpoint {path}: its policy cannot be built ({e})") from e
    try:
        missing, unexpected = net.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"checkpoint {path}: policy weights do not fit {type(net).__name__} "
                              f"({_first_line(e)})") from e
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path}: policy weights do not fit {type(net).__name__} "
                              f"(missing {sorted(missing)}, unexpected {sorted(unexpected)})")
    return PolicyCheckpoint(weights, info, spec, checkpoint_state_reset(ckpt))


def is_tutorial_net(spec: dict) -> bool:
    """Whether the spec builds the default network, whose state_dict is cogames' ``TutorialPolicyNet``'s."""
    try:
        return canonical(spec) == canonical(default_spec())
    except PolicySpecError:
        return False


def export_bundle(ckpt_path: str | Path, out_dir: str | Path, force: bool = False,
                  mission: str | None = None, state_reset: int | None = None) -> Path:
    """Write the bundle for ``ckpt_path`` into ``out_dir`` and return ``out_dir``.

    An existing non-empty ``out_dir`` is refused (FileExistsError) unless ``force``, which replaces the
    bundle's two files and leaves anything else there. With ``mission``, the checkpoint's env interface must
    match that mission's (default overrides), or a CheckpointError lists what differs. ``state_reset`` (default:
    the checkpoint's ``model.eval_state_reset``) makes the bundle zero each agent's recurrent state every that
    many steps. Nothing is written unless every check passes.
    """
    if problem := state_reset_problem(state_reset, "--state-reset"):
        raise ValueError(problem)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"--out {out}: directory is not empty (use --force to overwrite the bundle there)")
    weights, info, policy_spec, saved_reset = load_policy_checkpoint(ckpt_path)
    if mission is not None:
        problems = interface_mismatch(info, PolicyEnvInterface.from_mg_cfg(make_mission(mission)),
                                      labels=("checkpoint", f"mission {mission!r}"))
        if problems:
            raise CheckpointError(f"checkpoint {ckpt_path} does not fit mission {mission!r}: " + "; ".join(problems))

    if state_reset is None:
        state_reset = saved_reset

    out.mkdir(parents=True, exist_ok=True)
    torch.save(weights, out / WEIGHTS_FILENAME)
    if is_tutorial_net(policy_spec) and state_reset is None:
        spec = SubmissionPolicySpec(class_path=CLASS_PATH, data_path=WEIGHTS_FILENAME, policy_env_interface=info)
    else:
        kwargs = {"network": canonical(policy_spec)}
        if state_reset is not None:
            kwargs["state_reset"] = state_reset
        spec = SubmissionPolicySpec(class_path=OWN_CLASS_PATH, data_path=WEIGHTS_FILENAME, policy_env_interface=info,
                                    init_kwargs=kwargs)
    write_submission_policy_spec(out / POLICY_SPEC_FILENAME, spec)
    return out


def read_bundle_network(bundle: Path) -> dict:
    """The network a bundle holds: its spec, or the tutorial network for a ``TutorialPolicy`` bundle."""
    spec = SubmissionPolicySpec.model_validate_json((Path(bundle) / POLICY_SPEC_FILENAME).read_text())
    return spec.init_kwargs.get("network") or canonical(default_spec())


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aligner_lightning.export", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="AlignerPPO Lightning checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, help="bundle directory to write (for `cogames run -p ./DIR`)")
    parser.add_argument("--force", action="store_true", help="write into an existing non-empty --out")
    parser.add_argument("--mission", help="check the checkpoint's observation/action interface against a mission")
    parser.add_argument("--state-reset", type=int, metavar="N",
                        help="zero each agent's recurrent state every N steps (default: as the checkpoint's run "
                             "evaluated, model.eval_state_reset)")
    args = parser.parse_args(argv)
    try:
        out = export_bundle(args.ckpt, args.out, force=args.force, mission=args.mission, state_reset=args.state_reset)
    except (CheckpointError, FileExistsError, MissionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # cogames reads -p as a bundle path only if it starts with '.', '/' or '~'.
    uri = str(out) if str(out).startswith((".", "/", "~")) else f"./{out}"
    print(f"wrote {out / POLICY_SPEC_FILENAME} and {out / WEIGHTS_FILENAME} ({describe(read_bundle_network(out))}); "
          f"run it with: cogames run -p {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
