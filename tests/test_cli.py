"""The real entry point and what a user sees from it: the scalars, checkpoints and evaluation of a run, the
evaluate-only subcommands, and the answers to bad input."""

from __future__ import annotations

import json
import math
import sys
import zlib

import pytest
import torch
import yaml
from helpers import DEBUG, EPOCH_STEPS, ROOT, TRAINED_EPOCHS, run_main, scalars
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aligner_lightning import cli, evaluation
from aligner_lightning.envs import METRICS
from aligner_lightning.module import AlignerPPO

LOSSES = ("policy_loss", "value_loss", "entropy", "approx_kl", "old_approx_kl", "clipfrac", "importance",
          "explained_variance")


def test_fit_logs_scalars_and_checkpoints(trained_run):
    run_dir = trained_run / "lightning_logs" / "full"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "hparams.yaml").is_file()
    logged = scalars(run_dir)
    for tag in ("SPS", "agent_steps", "learning_rate", *(f"losses/{k}" for k in LOSSES), "performance/rollout_time"):
        assert tag in logged, f"{tag} missing; logged: {sorted(logged)}"
    steps = [s for s, _ in logged["losses/policy_loss"]]
    assert steps == [EPOCH_STEPS * (i + 1) for i in range(TRAINED_EPOCHS)]  # x-axis: agent steps, one point an epoch
    for tag in ("losses/policy_loss", "losses/value_loss", "losses/entropy"):
        assert all(math.isfinite(v) for _, v in logged[tag])
    lr = [v for _, v in logged["learning_rate"]]
    assert lr[0] < 0.00092 and lr[-1] == pytest.approx(0.0, abs=1e-12)  # cosine annealed to 0 over the run


def test_environment_group_is_the_episode_metrics(trained_run):
    """environment/ holds exactly the per-episode metrics (one TensorBoard page); the other mettagrid stats are in
    env_stats/, without the map's object counts, the observation-token counters and stats that were never
    nonzero (resources the mission does not use)."""
    logged = scalars(trained_run / "lightning_logs" / "full")
    environment = {t.split("/", 1)[1] for t in logged if t.startswith("environment/")}
    assert environment == set(METRICS) and len(environment) <= 12
    for tag in ("environment/episode_length", "environment/first_alignment_step"):
        assert all(0 < v <= 63 for _, v in logged[tag])  # 63-step episodes
    env_stats = {t for t in logged if t.startswith("env_stats/")}
    assert "env_stats/game/cogs/heart.withdrawn" in env_stats and "env_stats/agent/heart.gained" in env_stats
    assert not [t for t in env_stats if "objects." in t or "tokens_" in t]
    assert "env_stats/game/cogs/solar.amount" not in env_stats  # the hub never holds solar
    assert all(any(v != 0 for _, v in logged[t]) for t in env_stats)


def test_periodic_evaluation_during_fit(trained_run):
    """An evaluation at step 0 (the initial policy) and every 2 epochs: each metric's mean in eval/, its standard
    deviation over episodes in eval_std/, at least three finite points per chart."""
    logged = scalars(trained_run / "lightning_logs" / "full")
    for key in METRICS:
        for group in ("eval", "eval_std"):
            points = logged[f"{group}/{key}"]
            assert [s for s, _ in points] == [0, 2 * EPOCH_STEPS, 4 * EPOCH_STEPS], f"{group}/{key}"
            assert all(math.isfinite(v) for _, v in points)
    assert {t.split("/")[0] for t in logged if t.startswith("eval")} == {"eval", "eval_std"}


def printed_tables(monkeypatch) -> list[str]:
    """What evaluation prints through Lightning's rank-zero logger (the tables), as it is printed."""
    printed: list[str] = []
    monkeypatch.setattr(evaluation, "rank_zero_info", printed.append)
    return printed


def test_test_subcommand_evaluates_a_checkpoint(monkeypatch, trained_run):
    printed = printed_tables(monkeypatch)
    ckpt = trained_run / "lightning_logs/full/checkpoints/last.ckpt"
    assert run_main(monkeypatch, trained_run, "test", "--config", DEBUG, "--ckpt_path", ckpt,
                    "--trainer.enable_progress_bar", "false", "--model.eval_episodes", "2") == 0
    (table,) = printed
    assert "test at 2048 agent steps, 2 episodes" in table and "junctions_aligned" in table
    test_dir = trained_run / "lightning_logs/full/test"  # beside the run's own logs, its config untouched
    logged = scalars(test_dir)
    for key in METRICS:
        assert logged[f"eval/{key}"][0][0] == logged[f"eval_std/{key}"][0][0] == 2048  # the checkpoint's steps
    (replay,) = test_dir.glob("replays/*/*.json.z")
    replay_json = json.loads(zlib.decompress(replay.read_bytes()))
    assert {"version", "map_size", "num_agents", "objects", "action_names"} <= replay_json.keys()
    acc = EventAccumulator(str(test_dir), size_guidance={"images": 0})
    acc.Reload()
    assert "eval/episode" in acc.Tags()["images"]  # the animated episode


def test_validate_uses_model_torch_threads(monkeypatch, tmp_path):
    """`model.torch_threads` holds outside `fit` too (`validate` here; `test` takes the same `setup`): with torch's
    default threads on cores other runs keep busy, an evaluation's policy steps slow down many times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    played_with = []
    monkeypatch.setattr(evaluation.Evaluation, "play", lambda self, *args: played_with.append(torch.get_num_threads()))
    monkeypatch.setattr(AlignerPPO, "_report_evaluation", lambda self, stage: None)
    try:
        assert run_main(monkeypatch, tmp_path, "validate", "--config", DEBUG, "--run_name", "threads",
                        "--trainer.enable_progress_bar", "false", "--model.torch_threads", "1") == 0
    finally:
        torch.set_num_threads(before)
    assert played_with == [1]


def test_validate_subcommand_evaluates_the_initial_policy(monkeypatch, tmp_path):
    printed = printed_tables(monkeypatch)
    assert run_main(monkeypatch, tmp_path, "validate", "--config", DEBUG, "--run_name", "v",
                    "--trainer.enable_progress_bar", "false", "--model.eval_episodes", "1",
                    "--model.eval_gif", "false", "--model.eval_replays", "0") == 0
    (table,) = printed
    assert "validate at 0 agent steps, 1 episodes" in table and "replays: none" in table
    run_dir = tmp_path / "lightning_logs" / "v"
    logged = scalars(run_dir)
    assert [s for s, _ in logged["eval/junctions_aligned"]] == [0]
    assert logged["eval/episode_length"] == [(0, 96.0)] and logged["eval_std/episode_return"] == [(0, 0.0)]
    assert not (run_dir / "replays").exists()  # eval_replays 0
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    acc.Reload()
    assert acc.Tags()["images"] == []  # eval_gif false


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--data.mission", "nope"], "unknown mission 'nope'"),
        (["--data.batch_size", "256"], "data.batch_size=256"),  # < agents x horizon = 8 x 64
        (["--data.minibatch_size", "100"], "data.minibatch_size=100: must be a multiple of data.bptt_horizon"),
        (["--data.mission_overrides", "{max_steps: 0}"], "max_steps must be an int in [1, 100000]"),
        (["--model.eval_episodes", "0", "--model.gamma", "2"], "model.eval_episodes=0"),  # all problems at once
        (["--model.eval_episodes", "0", "--model.gamma", "2"], "model.gamma=2.0: must be in [0, 1]"),
        (["--model.eval_gif", "1"], "model.eval_gif"),
        (["--model.eval_state_reset", "0"], "model.eval_state_reset=0: must be an int >= 1 or None"),
        (["--model.lr_anneal_steps", "0"], "model.lr_anneal_steps=0: must be an int >= 1 (agent steps) or null"),
    ],
)
def test_bad_config_values_get_one_clear_error(monkeypatch, capsys, tmp_path, args, expected):
    extra = ["--data.bptt_horizon", "64", "--data.batch_size", "512", "--data.minibatch_size", "512"]
    assert run_main(monkeypatch, tmp_path, "fit", "--config", DEBUG, *extra, *args) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


@pytest.mark.parametrize("configs", [["aligner.yaml"], ["debug.yaml"], ["aligner.yaml", "ddp.yaml"],
                                     ["aligner.yaml", "aligner_fast.yaml"]])
def test_shipped_configs_parse(monkeypatch, capsys, configs):
    """Every config the README tells users to run parses, and the DDP overlay changes only what it says."""
    args = [arg for name in configs for arg in ("--config", str(ROOT / "configs" / name))]
    monkeypatch.setattr(sys, "argv", ["train.py", "fit", *args, "--print_config"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "mission:" in printed
    if "ddp.yaml" in configs:
        assert "strategy: ddp" in printed and "devices: 2" in printed and "torch_threads: 1" in printed
        assert "batch_size: 4096" in printed and "RunCheckpoint" in printed  # the base config is kept
    if "aligner_fast.yaml" in configs:
        assert "collector: async" in printed and "hidden_size: 128" in printed and "num_envs: 16" in printed
        assert "update_epochs: 4" in printed and "refill_shaping: 0.05" in printed


def test_the_fast_overlay_uses_the_small_network_as_configured():
    """aligner_fast.yaml spells out the network of policy_small.yaml (an overlay cannot include another); the two
    must not drift apart."""
    fast, small = (yaml.safe_load((ROOT / "configs" / name).read_text()) for name in ("aligner_fast.yaml",
                                                                                         "policy_small.yaml"))
    assert fast["model"]["policy"] == small["model"]["policy"]


def test_missing_config_file(monkeypatch, capsys, tmp_path):
    assert run_main(monkeypatch, tmp_path, "fit", "--config", tmp_path / "missing.yaml") != 0
    err = capsys.readouterr().err
    assert "missing.yaml" in err and "Traceback" not in err


def test_product_never_imports_pufferl(fresh_imports):
    """Importing pufferlib.pufferl makes RuntimeWarnings errors and hijacks Ctrl-C; the product must not."""
    assert fresh_imports["pufferl"] is False
