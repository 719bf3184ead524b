"""Bring your own network: a 128-wide policy chosen by a config overlay trains, evaluates, refuses a resume with
another architecture, exports, loads through mettagrid's loader and plays through mettagrid's episode runner;
a policy class written outside the package (a GRU) trains through the same rollout and loss."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cogames.cli.policy import parse_policy_spec
from mettagrid.policy.loader import initialize_or_load_policy
from mettagrid.runner.rollout import run_episode_local

from aligner_lightning.envs import env_interface
from aligner_lightning.export import OWN_CLASS_PATH, export_bundle
from aligner_lightning.missions import make_mission
from aligner_lightning.policy import AlignerPolicy
from aligner_lightning.policy_spec import PolicySpecError, build_policy, canonical, spec_of

ROOT = Path(__file__).resolve().parents[1]
DEBUG, SMALL = str(ROOT / "configs" / "debug.yaml"), str(ROOT / "configs" / "policy_small.yaml")
SMALL_SPEC = {"class_path": "aligner_lightning.policy.AlignerPolicy",
              "init_args": {"hidden_size": 128, "conv_channels": [32, 64], "encoder_width": 128}}
QUIET = ["--trainer.enable_progress_bar", "false", "--model.eval_gif", "false", "--model.eval_replays", "0"]


def train_py(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args, *QUIET], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("small")
    out = train_py(["fit", "--config", DEBUG, "--config", SMALL, "--run_name", "small",
                    "--model.total_timesteps", "1024", "--trainer.check_val_every_n_epoch", "1000"], tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp


def test_checkpoint_records_the_policy_and_test_rebuilds_it(small_run):
    ckpt_path = small_run / "lightning_logs" / "small" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert ckpt["aligner"]["policy"] == SMALL_SPEC
    assert ckpt["state_dict"]["policy._rnn.weight_hh_l0"].shape == (4 * 128, 128)

    # Evaluation without the overlay plays the checkpoint's network (the config's 512-wide one is replaced).
    out = train_py(["test", "--config", DEBUG, "--ckpt_path", str(ckpt_path)], small_run)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "hidden_size=128" in out.stdout + out.stderr and "junctions_aligned" in out.stdout + out.stderr


def test_resume_with_another_architecture_is_refused(small_run):
    out = train_py(["fit", "--config", DEBUG, "--run_name", "small", "--ckpt_path", "last"], small_run)
    assert out.returncode == 2
    (err,) = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert "hidden_size=512" in err and "hidden_size=128" in err and "model.policy" in err
    assert "Traceback" not in out.stderr


def test_export_loads_in_mettagrid_and_plays_through_its_runner(small_run, tmp_path, smoke_factory):
    ckpt_path = small_run / "lightning_logs" / "small" / "checkpoints" / "last.ckpt"
    bundle = export_bundle(ckpt_path, tmp_path / "bundle")
    spec_json = json.loads((bundle / "policy_spec.json").read_text())
    assert spec_json["class_path"] == OWN_CLASS_PATH and spec_json["init_kwargs"] == {"network": SMALL_SPEC}

    info = env_interface(smoke_factory)
    spec = parse_policy_spec(str(bundle)).to_policy_spec()  # what `cogames run -p /abs/bundle` does
    loaded = initialize_or_load_policy(info, spec)
    ours = build_policy(SMALL_SPEC, info)
    weights = torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"]
    ours.load_state_dict({k.removeprefix("policy."): v for k, v in weights.items() if k.startswith("policy.")})
    for key, value in ours.state_dict().items():
        assert torch.equal(loaded.network().state_dict()[key], value), key

    cfg = make_mission("smoke", max_steps=40)
    results, _ = run_episode_local(policy_specs=[spec], assignments=[0] * cfg.game.num_agents, env=cfg, seed=3)
    assert results.steps == 40 and results.action_timeouts == [0] * cfg.game.num_agents
    assert len(results.rewards) == cfg.game.num_agents


class GRUPolicy(torch.nn.Module):
    """A policy written against the protocol alone: a dense token encoder and a GRU (state of one tensor)."""

    def __init__(self, env_info, hidden_size: int = 32):
        super().__init__()
        tokens, dim = env_info.observation_space.shape
        self.hidden_size = hidden_size
        self.encoder = torch.nn.Linear(tokens * dim, hidden_size)
        self.gru = torch.nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.heads = torch.nn.Linear(hidden_size, len(env_info.action_names) + 1)

    def initial_state(self, batch, device=None):
        return (torch.zeros(batch, self.hidden_size, device=device),)

    def forward(self, obs, state=None):
        n, horizon = obs.shape[:2]
        x = torch.relu(self.encoder(obs.reshape(n, horizon, -1).float() / 255))
        out, _ = self.gru(x, None if state is None else state[0].unsqueeze(0))
        heads = self.heads(out)
        return heads[..., :-1], heads[..., -1]

    @torch.no_grad()
    def step(self, obs, state):
        logits, values = self(obs.unsqueeze(1), state)
        h = self.gru(torch.relu(self.encoder(obs.reshape(len(obs), 1, -1).float() / 255)), state[0].unsqueeze(0))[1]
        return logits[:, 0], values[:, 0], (h[0],)


def test_a_protocol_policy_trains_through_rollout_and_loss(tmp_path):
    """An outside class with a one-tensor state: the rollout stores its segment start states (store_initial_state)
    and resets them on done; AlignerPPO's training step updates it."""
    import lightning as L

    from aligner_lightning.datamodule import RolloutDataModule
    from aligner_lightning.module import AlignerPPO

    torch.manual_seed(0)
    module = AlignerPPO(policy=GRUPolicy, total_timesteps=1024, eval_gif=False, eval_replays=0)
    assert module.policy_spec["class_path"].endswith("test_custom_policy.GRUPolicy")
    dm = RolloutDataModule(mission="smoke", num_envs=2, bptt_horizon=16, batch_size=512, minibatch_size=256,
                           store_initial_state=True, reset_lstm_on_done=True, carry_lstm_state=True)
    dm.setup("fit")
    policy = GRUPolicy(dm.env_info)
    dm.rollout.collect(policy)
    dm.rollout.collect(policy)  # carried: the second rollout's first segments start from a nonzero state
    (stored,) = dm.rollout.buffer.initial_state
    assert stored.shape == (32, 32) and stored[:8].abs().sum() > 0
    dm.teardown("fit")

    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, dm)
    assert isinstance(module.policy, GRUPolicy) and module.agent_steps == 1024
    assert not torch.equal(module.policy.heads.weight, GRUPolicy(dm.env_info).heads.weight)


def test_policy_spec_round_trip_and_errors(aligner_info):
    spec = spec_of(AlignerPolicy)
    assert spec == {"class_path": "aligner_lightning.policy.AlignerPolicy", "init_args": {}}
    assert canonical(spec)["init_args"] == {"hidden_size": 512, "conv_channels": [64, 128], "encoder_width": 256}
    with pytest.raises(PolicySpecError, match="model.policy.class_path='no.such.Net': cannot be imported"):
        build_policy({"class_path": "no.such.Net", "init_args": {}}, aligner_info)
    with pytest.raises(PolicySpecError, match="unexpected keyword argument 'width'"):
        build_policy({"class_path": "aligner_lightning.policy.AlignerPolicy", "init_args": {"width": 3}},
                     aligner_info)
