"""The real entry point, run as a user runs it, plus its answers to bad input."""

from __future__ import annotations

import json
import math
import subprocess
import zlib
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aligner_lightning import cli

ROOT = Path(__file__).resolve().parents[1]
DEBUG = str(ROOT / "configs" / "debug.yaml")


def run_train(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def scalars(run_dir: Path) -> dict[str, list]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory) -> Path:
    """--print_config output is valid input: the debug fit runs from the printed config."""
    tmp = tmp_path_factory.mktemp("debug")
    printed = run_train(["fit", "--config", DEBUG, "--print_config"], tmp)
    assert printed.returncode == 0, printed.stderr
    cfg = tmp / "printed.yaml"
    cfg.write_text(printed.stdout)
    out = run_train(["fit", "--config", str(cfg), "--run_name", "smoke"], tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp


def test_debug_fit_logs_scalars_and_checkpoints(debug_run):
    run_dir = debug_run / "lightning_logs" / "smoke"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "hparams.yaml").is_file()
    logged = scalars(run_dir)
    for tag in ("SPS", "agent_steps", "learning_rate", "losses/policy_loss", "losses/value_loss", "losses/entropy",
                "losses/approx_kl", "losses/old_approx_kl", "losses/clipfrac", "losses/importance",
                "losses/explained_variance", "environment/episode_return", "environment/game/cogs/aligned.junction.held",
                "performance/rollout_time"):
        assert tag in logged, f"{tag} missing; logged: {sorted(logged)}"
    steps = [e.step for e in logged["losses/policy_loss"]]
    assert steps == [512 * (i + 1) for i in range(8)]  # x-axis is agent steps, one point per epoch
    for tag in ("losses/policy_loss", "losses/value_loss", "losses/entropy"):
        assert all(math.isfinite(e.value) for e in logged[tag])
    lr = [e.value for e in logged["learning_rate"]]
    assert lr[0] < 0.00092 and lr[-1] == pytest.approx(0.0, abs=1e-12)  # cosine annealed to 0 over the run


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--data.mission", "nope"], "unknown mission 'nope'"),
        (["--data.batch_size", "256"], "data.batch_size=256"),  # < agents x horizon = 8 x 64
        (["--data.minibatch_size", "100"], "data.minibatch_size=100: must be a multiple of data.bptt_horizon"),
        (["--data.mission_overrides", "{max_steps: 0}"], "max_steps must be an int in [1, 100000]"),
        (["--model.eval_episodes", "0", "--model.gamma", "2"], "model.eval_episodes=0"),  # all problems at once
        (["--model.eval_episodes", "0", "--model.gamma", "2"], "model.gamma=2.0: must be in [0, 1]"),
    ],
)
def test_bad_config_values_get_one_clear_error(monkeypatch, capsys, args, expected):
    extra = ["--data.bptt_horizon", "64", "--data.batch_size", "512", "--data.minibatch_size", "512"]
    monkeypatch.setattr(sys, "argv", ["train.py", "fit", "--config", DEBUG, *extra, *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


@pytest.mark.parametrize("configs", [["aligner.yaml"], ["debug.yaml"], ["aligner.yaml", "ddp.yaml"]])
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


def test_missing_config_file(tmp_path):
    out = run_train(["fit", "--config", str(tmp_path / "missing.yaml")], tmp_path, timeout=120)
    assert out.returncode != 0
    assert "missing.yaml" in out.stderr and "Traceback" not in out.stderr


def test_periodic_evaluation_during_fit(debug_run):
    logged = scalars(debug_run / "lightning_logs" / "smoke")
    assert [e.step for e in logged["eval/junctions_aligned"]] == [2048, 4096]  # every 4 epochs of 512 steps


def test_test_subcommand_evaluates_a_checkpoint(debug_run):
    ckpt = debug_run / "lightning_logs/smoke/checkpoints/last.ckpt"
    out = run_train(["test", "--config", DEBUG, "--ckpt_path", str(ckpt), "--model.eval_episodes", "2"], debug_run)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "junctions_aligned" in out.stdout + out.stderr  # the printed table
    test_dir = debug_run / "lightning_logs/smoke/test"  # beside the run's own logs, its config untouched
    logged = scalars(test_dir)
    for key in ("return", "junctions_aligned", "aligned_held_avg", "hearts_used", "deaths", "first_alignment_step"):
        assert f"eval/{key}" in logged and f"eval/{key}_std" in logged
        assert logged[f"eval/{key}"][0].step == 4096  # x-axis: the checkpoint's agent steps
    (replay,) = test_dir.glob("replays/*/*.json.z")
    replay_json = json.loads(zlib.decompress(replay.read_bytes()))
    assert {"version", "map_size", "num_agents", "objects", "action_names"} <= replay_json.keys()
    acc = EventAccumulator(str(test_dir), size_guidance={"images": 0})
    acc.Reload()
    assert "eval/episode" in acc.Tags()["images"]  # the animated episode


def test_validate_subcommand_runs(tmp_path):
    out = run_train(["validate", "--config", DEBUG, "--model.eval_episodes", "1", "--model.eval_video", "false",
                     "--model.eval_replays", "0"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]


def test_product_never_imports_pufferl():
    """Importing pufferlib.pufferl makes RuntimeWarnings errors and hijacks Ctrl-C; the product must not."""
    code = ("import sys, aligner_lightning.cli, aligner_lightning.evaluate, aligner_lightning.export; "
            "print('pufferlib.pufferl' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
