"""Finding and vetting the checkpoint a command resumes from, before anything is written.

``--ckpt_path last`` resolves to ``<save_dir>/<name>/<run>/checkpoints/last.ckpt`` of the named run (``--run_name``)
or, without a name, of the newest run that has one, and the run continues in that directory (stock Lightning
opens a new ``version_N`` and silently starts from scratch, Lightning issue #18524). Every problem is reported
as a one-line ``CheckpointError`` while the run directory is still untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aligner_lightning.errors import CheckpointError


def run_root(save_dir: str | Path, name: str | None) -> Path:
    return Path(save_dir) / (name or "")


def resolve_last(root: Path, run_name: str | None) -> tuple[Path, str]:
    """The ``last.ckpt`` to resume and the run (log directory name) it belongs to."""
    if run_name:
        ckpt = root / run_name / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise CheckpointError(f"--ckpt_path last: run {run_name!r} has no checkpoint at {ckpt}; "
                                  "drop --ckpt_path to start it fresh")
        return ckpt, run_name
    candidates = sorted(root.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(f"--ckpt_path last: no run under {root} has a last.ckpt; "
                              "drop --ckpt_path to start a new run")
    ckpt = candidates[-1]
    return ckpt, ckpt.parent.parent.name


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on CPU, turning a missing, truncated or foreign file into a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for a damaged zip/pickle
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err}); "
                              f"use an earlier one from {path.parent}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "aligner" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not an aligner-lightning checkpoint (no 'aligner' section)")
    return ckpt


def interface_mismatch(a, b,
                       labels: tuple[str, str] = ("checkpoint", "env")) -> list[str]:
    """What differs between two env interfaces in ways a trained policy depends on: the observation features
    (id, name, normalization), the token shape, the observation window, the tag names (tag ids are observed
    values) and the primary action names. Empty if the policy can run in ``b``. The agent count is ignored."""
    la, lb = labels
    problems = []
    fa = {f.id: (f.name, f.normalization) for f in a.obs_features}
    fb = {f.id: (f.name, f.normalization) for f in b.obs_features}
    for side, mine, other in ((la, fa, fb), (lb, fb, fa)):
        only = [f"{mine[i][0]}({i})" for i in sorted(mine.keys() - other.keys())]
        if only:
            problems.append(f"observation features only in {side}: {', '.join(only)}")
    changed = [f"{i}: {fa[i][0]}/{fa[i][1]:g} vs {fb[i][0]}/{fb[i][1]:g}"
               for i in sorted(fa.keys() & fb.keys()) if fa[i] != fb[i]]
    if changed:
        problems.append(f"observation features differ (id: name/normalization, {la} vs {lb}): {'; '.join(changed)}")
    for what, va, vb in (
        ("observation shape (tokens, token size)", tuple(a.observation_shape), tuple(b.observation_shape)),
        ("observation window (height, width)", tuple(a.egocentric_shape), tuple(b.egocentric_shape)),
        ("tags", a.tags, b.tags),
        ("action names", a.action_names, b.action_names),
    ):
        if va != vb:
            problems.append(f"{what}: {la} {va} vs {lb} {vb}")
    return problems


def checkpoint_policy_spec(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The policy class and arguments a checkpoint was trained with (the tutorial network if it predates them)."""
    from aligner_lightning.policy_spec import default_spec

    return ckpt["aligner"].get("policy") or default_spec()


def checkpoint_state_reset(ckpt: dict[str, Any]) -> int | None:
    """The period at which the run's evaluations zeroed the policy's recurrent state (``model.eval_state_reset``;
    None: carried over the episode, also for checkpoints that predate the option)."""
    return (ckpt.get("hyper_parameters") or {}).get("eval_state_reset")


def check_resumable(ckpt: dict[str, Any], path: Path, env_info, geometry: dict[str, int] | None = None,
                    world_size: int | None = None, policy_spec: dict[str, Any] | None = None) -> None:
    """Refuse a checkpoint whose env interface, batch geometry or (if given) policy disagrees with the config."""
    from mettagrid.policy.policy_env_interface import PolicyEnvInterface

    from aligner_lightning.policy_spec import PolicySpecError, canonical, describe

    meta = ckpt["aligner"]
    problems = interface_mismatch(PolicyEnvInterface.model_validate_json(meta["env_interface"]), env_info,
                                  labels=("checkpoint", "config"))
    saved_geometry = meta.get("geometry", {})
    for key, value in (geometry or {}).items():
        if key in saved_geometry and saved_geometry[key] != value:
            problems.append(f"data geometry {key}={value} but the checkpoint was trained with {saved_geometry[key]}")
    if policy_spec is not None:
        saved = checkpoint_policy_spec(ckpt)
        try:
            differs = canonical(saved) != canonical(policy_spec)
        except PolicySpecError as err:
            differs, saved = True, {**saved, "class_path": f"{saved['class_path']} (unavailable: {err})"}
        if differs:
            problems.append(f"model.policy is {describe(canonical(policy_spec))} but the checkpoint was trained "
                            f"with {describe(saved)}; resume with the checkpoint's model.policy, or start a new run")
    if world_size is not None and meta.get("world_size", world_size) != world_size:
        problems.append(f"{world_size} process(es) but the checkpoint was written by {meta['world_size']}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not match this config: " + "; ".join(problems))
