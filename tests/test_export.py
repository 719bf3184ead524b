"""Export: an AlignerPPO checkpoint becomes a bundle that cogames' own loader runs with the same outputs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from cogames.cli.policy import parse_policy_spec
from mettagrid.policy.loader import initialize_or_load_policy
from mettagrid.policy.policy_env_interface import PolicyEnvInterface
from mettagrid.simulator.rollout import Rollout

from aligner_lightning.envs import env_interface
from aligner_lightning.errors import CheckpointError
from aligner_lightning.export import (CLASS_PATH, OWN_CLASS_PATH, WEIGHTS_FILENAME, export_bundle, interface_mismatch,
                                     main)
from aligner_lightning.missions import make_mission
from aligner_lightning.module import AlignerPPO
from aligner_lightning.policy import AlignerPolicy
from aligner_lightning.policy_spec import canonical, default_spec
from helpers import factory, random_observations


@pytest.fixture(scope="module")
def smoke_info() -> PolicyEnvInterface:
    return env_interface(factory("smoke"))


def write_checkpoint(path, info: PolicyEnvInterface, **hparams) -> AlignerPolicy:
    """What a Lightning checkpoint of AlignerPPO holds, without a Trainer."""
    torch.manual_seed(0)
    module = AlignerPPO(**hparams)
    module.policy = AlignerPolicy.from_env_interface(info)
    torch.save({"state_dict": module.state_dict(), "aligner": {"env_interface": info.model_dump_json()},
                "hyper_parameters": dict(module.hparams)}, path)
    return module.policy


def test_bundle_loads_in_cogames_and_matches(tmp_path, smoke_info, smoke_factory):
    policy = write_checkpoint(tmp_path / "last.ckpt", smoke_info)
    bundle = export_bundle(tmp_path / "last.ckpt", tmp_path / "bundle")

    spec_json = json.loads((bundle / "policy_spec.json").read_text())
    assert spec_json["class_path"] == CLASS_PATH and spec_json["data_path"] == WEIGHTS_FILENAME
    assert PolicyEnvInterface.model_validate(spec_json["policy_env_interface"]) == smoke_info

    # The path `cogames run -p /abs/bundle` takes: parse the -p argument, then mettagrid's loader.
    spec = parse_policy_spec(str(bundle)).to_policy_spec()
    loaded = initialize_or_load_policy(smoke_info, spec)
    net = loaded.network()
    for key, value in policy.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key

    obs = random_observations(smoke_factory, 12)  # [T, agents, tokens, 3]
    ours_state = policy.initial_state(obs.shape[1])
    state = {"lstm_h": ours_state[0].clone(), "lstm_c": ours_state[1].clone()}
    with torch.no_grad():
        for t in range(obs.shape[0]):
            logits, _, ours_state = policy.step(obs[t], ours_state)
            ref_logits, _ = net(obs[t], state)
            # Same weights; the sparse first convolution only changes the float summation order.
            torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)

    # cogames' per-agent inference (AgentObservation -> Action) plays a short smoke episode.
    rollout = Rollout(make_mission("smoke", max_steps=8), [loaded.agent_policy(i) for i in range(4)])
    rollout.run_until_done()
    assert rollout.is_done() and rollout.timeout_counts == [0, 0, 0, 0]


def test_a_run_evaluated_with_state_reset_exports_a_bundle_that_resets(tmp_path, smoke_info, smoke_factory, capsys,
                                                                       monkeypatch):
    """``model.eval_state_reset`` travels into the bundle: cogames' loader builds our policy class, whose agents
    zero their recurrent state every that many steps, as the run's evaluations did."""
    write_checkpoint(tmp_path / "last.ckpt", smoke_info, eval_state_reset=2)
    bundle = export_bundle(tmp_path / "last.ckpt", tmp_path / "bundle")
    spec_json = json.loads((bundle / "policy_spec.json").read_text())
    assert spec_json["class_path"] == OWN_CLASS_PATH
    assert spec_json["init_kwargs"] == {"network": canonical(default_spec()), "state_reset": 2}

    loaded = initialize_or_load_policy(smoke_info, parse_policy_spec(str(bundle)).to_policy_spec())
    tokens = random_observations(smoke_factory, 1)[0, 0].numpy()  # agent 0's [tokens, 3]
    obs = SimpleNamespace(tokens=[SimpleNamespace(raw_token=t) for t in tokens if t[0] != 255])
    net, states = loaded.network(), []  # the recurrent state each of an agent's steps starts from
    step = net.step
    monkeypatch.setattr(net, "step", lambda tokens, state: states.append(state) or step(tokens, state))
    agent = loaded.agent_policy(0)
    for _ in range(5):
        agent.step(obs)
    assert not any(s.abs().sum() for s in states[0])  # step 0 starts from zeros,
    assert all(s.abs().sum() > 0 for t in (1, 3) for s in states[t])  # the state builds up ...
    for t in (2, 4):  # ... and steps 2 and 4 start from zeros again
        assert all(torch.equal(a, b) for a, b in zip(states[t], states[0]))

    # Overridden on the command line, or refused with the flag named.
    assert main(["--ckpt", str(tmp_path / "last.ckpt"), "--out", str(tmp_path / "b3"), "--state-reset", "3"]) == 0
    assert json.loads((tmp_path / "b3" / "policy_spec.json").read_text())["init_kwargs"]["state_reset"] == 3
    assert main(["--ckpt", str(tmp_path / "last.ckpt"), "--out", str(tmp_path / "b0"), "--state-reset", "0"]) == 2
    assert "--state-reset=0" in capsys.readouterr().err and not (tmp_path / "b0").exists()


def test_cli_refuses_non_empty_out_without_force(tmp_path, smoke_info, capsys):
    write_checkpoint(tmp_path / "last.ckpt", smoke_info)
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")

    assert main(["--ckpt", str(tmp_path / "last.ckpt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]

    assert main(["--ckpt", str(tmp_path / "last.ckpt"), "--out", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "policy_spec.json", WEIGHTS_FILENAME]


def test_missing_and_truncated_checkpoints(tmp_path, smoke_info, capsys):
    ckpt = tmp_path / "last.ckpt"
    write_checkpoint(ckpt, smoke_info)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])

    for path, message in ((tmp_path / "nope.ckpt", "does not exist"), (truncated, "corrupt or truncated")):
        assert main(["--ckpt", str(path), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert str(path) in err and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()

    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="not an aligner-lightning checkpoint"):
        export_bundle(tmp_path / "foreign.ckpt", tmp_path / "out")


def test_interface_mismatch_is_named(tmp_path, smoke_info):
    assert interface_mismatch(smoke_info, PolicyEnvInterface.from_mg_cfg(make_mission("aligner_tutorial"))) == []

    fewer = PolicyEnvInterface.from_mg_cfg(make_mission("smoke", num_tokens=64, territory_obs=False))
    problems = interface_mismatch(smoke_info, fewer)
    assert any(p.startswith("observation features only in checkpoint: territory") for p in problems)
    assert any("observation shape" in p and "(200, 3)" in p and "(64, 3)" in p for p in problems)

    write_checkpoint(tmp_path / "last.ckpt", fewer)
    with pytest.raises(CheckpointError, match="does not fit mission 'smoke'.*observation shape"):
        export_bundle(tmp_path / "last.ckpt", tmp_path / "out", mission="smoke")
    assert not (tmp_path / "out").exists()
