"""The learning-sweep harness (benchmarks/sweep.py): what a run gets, when it counts as done, and the result
table it reads back from ``train.py test``. No training here; the harness's runs are the sweeps themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sweep as sw  # benchmarks/ is on the path (conftest)
import yaml

from aligner_lightning.episodes import format_table


def _sweep(tmp_path: Path, configs: list[dict], common: dict | None = None, variants: dict | None = None,
           **kwargs) -> sw.Sweep:
    paths = []
    for i, cfg in enumerate(configs):
        path = tmp_path / f"base{i}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        paths.append(str(path))  # absolute: ROOT / path is the path itself
    spec = dict(name="t", configs=paths, common=common or {}, variants=variants or {"v": {}}, seeds=[1, 2],
                stop_steps=kwargs.pop("stop_steps", 1_000_000), eval_every=kwargs.pop("eval_every", 500_000),
                log_root=tmp_path / "logs", **kwargs)
    return sw.Sweep(**spec)


def test_setting_takes_the_last_config_then_the_overrides(tmp_path):
    s = _sweep(tmp_path, [{"model": {"eval_state_reset": None, "gamma": 0.99}, "data": {"num_envs": 4}},
                          {"model": {"eval_state_reset": 64}}],
               common={"data.num_envs": 16}, variants={"a": {}, "b": {"model.eval_state_reset": 32}})
    assert s.setting("a", "model.gamma") == 0.99          # only the first config sets it
    assert s.setting("a", "model.eval_state_reset") == 64  # the later config wins
    assert s.setting("b", "model.eval_state_reset") == 32  # the variant's override wins
    assert s.setting("a", "data.num_envs") == 16           # the sweep's common override wins
    assert s.setting("a", "model.nothing") is None
    assert (s.state_reset("a"), s.state_reset("b")) == ("64", "32")


def test_global_batch_reads_the_configs_and_the_devices(tmp_path):
    s = _sweep(tmp_path, [{"data": {"batch_size": 8192}, "trainer": {"devices": 1}}],
               variants={"one": {}, "ddp": {"trainer.devices": 2}, "small": {"data.batch_size": 2048}})
    assert [s.global_batch(v) for v in ("one", "ddp", "small")] == [8192, 16384, 2048]
    runner = sw.Runner(s, parallel=1, dry_run=True)
    assert runner.stop_epochs("one") == 123   # ceil(1M / 8192)
    assert runner.stop_epochs("ddp") == 62


def test_global_batch_refuses_a_device_count_it_cannot_count(tmp_path):
    s = _sweep(tmp_path, [{"data": {"batch_size": 4096}, "trainer": {"devices": "auto"}}])
    with pytest.raises(SystemExit, match="trainer.devices"):
        s.global_batch("v")


def test_a_run_judged_at_its_last_mark_is_done_without_its_checkpoints(tmp_path, monkeypatch):
    """The committed CSV travels to checkouts where the run's checkpoints do not: a run judged at its final mark
    is not trained again there, one judged only at an earlier mark is."""
    monkeypatch.setattr(sw, "RESULTS", tmp_path / "results")
    s = _sweep(tmp_path, [{"data": {"batch_size": 4096}, "trainer": {"devices": 1}}])
    runner = sw.Runner(s, parallel=1, dry_run=True)
    # 1M steps in epochs of 4096: 245 epochs; a checkpoint every 122 (500k / 4096): the last one at epoch 244.
    row = {c: "" for c in sw.COLUMNS}
    sw.append_row(runner.csv_path, {**row, "variant": "v", "seed": 1, "checkpoint": "epoch=121-step=1.ckpt"})
    assert not runner.train_done("v", 1)
    sw.append_row(runner.csv_path, {**row, "variant": "v", "seed": 1, "checkpoint": "epoch=243-step=2.ckpt"})
    assert runner.train_done("v", 1)
    assert not runner.train_done("v", 2)
    job = runner.next_job()
    assert (job.kind, job.variant, job.seed) == ("train", "v", 2)
    assert "--ckpt_path" not in job.cmd  # nothing to resume from
    cmd = " ".join(job.cmd)
    assert "--seed_everything 2 --data.seed 200000 --model.torch_threads 1" in cmd
    assert "--trainer.max_epochs 245" in cmd


def test_the_result_table_is_read_back_from_the_evaluation_log(tmp_path):
    summary = {"episode_return": (36.125, 7.5), "junctions_aligned": (17.3125, 4.25), "heart_lost": (20.0, 3.0),
               "aligner_gained": (5.5, 1.0), "deaths": (0.25, 0.5)}
    older = format_table({"junctions_aligned": (1.0, 0.0)}, 8)
    log = (f"validation at 0 agent steps\n{older}\n"
           f"test at 2500000 agent steps, 32 episodes (sampled actions):\n{format_table(summary, 32)}\nreplays: none\n")
    table = sw.result_table(log)
    assert table["junctions_aligned"] == (17.312, 4.25, 32)  # the table prints three decimals
    assert table["episode_return"][0] == 36.125
    assert set(summary) <= set(table)
    assert sw.result_table("no table here") == {}


def test_flags_write_lists_and_booleans_as_yaml():
    flags = sw._flags({"data.carry_lstm_state": True, "model.policy.init_args.conv_channels": [32, 64],
                       "model.gamma": 0.99, "model.eval_state_reset": None})
    assert flags == ["--data.carry_lstm_state", "true", "--model.policy.init_args.conv_channels", "[32, 64]",
                     "--model.gamma", "0.99", "--model.eval_state_reset", "null"]


def test_a_branch_starts_from_its_source_at_the_mark_and_takes_its_rows(tmp_path, monkeypatch):
    """A branch's first training resumes from a copy of the source run's checkpoint at the mark, with the branch's
    own overrides, and its curve starts with the source's rows up to the mark; it waits while the source trains."""
    monkeypatch.setattr(sw, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sw, "_read_ckpt_meta", lambda path: {"agent_steps": int(path.read_text())})
    s = _sweep(tmp_path, [{"data": {"batch_size": 4096}, "trainer": {"devices": 1}}],
               variants={"old": {}, "new": {"model.bc_steps": 500000}},
               branches={"new": {"variant": "old", "steps": 500000}})
    runner = sw.Runner(s, parallel=1, dry_run=False, variants=["new", "old"], seeds=[1])
    assert runner.train_job("new", 1) is None  # old s1 has no checkpoint at 500k yet, and is trained here
    ckpts = s.run_dir("old", 1) / "checkpoints"
    ckpts.mkdir(parents=True)
    for epoch, steps in ((121, 499712), (243, 999424)):  # a checkpoint every 122 epochs of 4096
        (ckpts / f"epoch={epoch}-agent_steps={steps}.ckpt").write_text(str(steps))
    row = {c: "" for c in sw.COLUMNS}
    for steps, name in ((499712, "epoch=121-agent_steps=499712.ckpt"), (999424, "epoch=243-agent_steps=999424.ckpt")):
        sw.append_row(runner.csv_path, {**row, "variant": "old", "seed": 1, "checkpoint": name, "agent_steps": steps,
                                        "aligned_mean": 3.0})
    job = runner.train_job("new", 1)
    last = s.run_dir("new", 1) / "checkpoints" / "last.ckpt"
    assert last.read_text() == "499712"  # the mark's checkpoint, not the later one
    cmd = " ".join(job.cmd)
    assert f"--ckpt_path {last}" in cmd and "--model.bc_steps 500000" in cmd and "--run_name new_s1" in cmd
    new_rows = [r for r in sw.load_rows(runner.csv_path) if r["variant"] == "new"]
    assert [(r["checkpoint"], r["aligned_mean"]) for r in new_rows] == [("epoch=121-agent_steps=499712.ckpt", "3.0")]
    runner.start_branch("new", 1, ckpts / "epoch=121-agent_steps=499712.ckpt")  # again: no duplicate rows
    assert len([r for r in sw.load_rows(runner.csv_path) if r["variant"] == "new"]) == 1


def test_a_branch_without_its_source_says_how_to_train_it(tmp_path, monkeypatch):
    monkeypatch.setattr(sw, "RESULTS", tmp_path / "results")
    base = [{"data": {"batch_size": 4096}, "trainer": {"devices": 1}}]
    s = _sweep(tmp_path, base, variants={"old": {}, "new": {}}, branches={"new": {"variant": "old", "steps": 500000}})
    with pytest.raises(SystemExit, match="train it first: --variants old --seeds 2"):
        sw.Runner(s, parallel=1, dry_run=False, variants=["new"], seeds=[2]).train_job("new", 2)
    with pytest.raises(SystemExit, match=r"branches.new.steps=700000: must be a mark"):
        _sweep(tmp_path, base, variants={"old": {}, "new": {}}, branches={"new": {"variant": "old", "steps": 700000}})
    with pytest.raises(SystemExit, match=r"branches.new.variant='gone'"):
        _sweep(tmp_path, base, variants={"old": {}, "new": {}}, branches={"new": {"variant": "gone", "steps": 500000}})


def test_rerun_from_a_mark_sets_the_run_back_there_and_keeps_what_it_moves(tmp_path, monkeypatch):
    """``--rerun-from``: the later checkpoints, evaluation logs, event files and CSV rows of the selected runs move
    aside (nothing is deleted), the mark's checkpoint becomes ``last.ckpt``, and the next training resumes from it;
    other seeds are untouched, and a bad mark or a run without it stops before anything moves."""
    monkeypatch.setattr(sw, "RESULTS", tmp_path / "results")
    s = _sweep(tmp_path, [{"data": {"batch_size": 4096}, "trainer": {"devices": 1}}], stop_steps=2_000_000)
    runner = sw.Runner(s, parallel=1, dry_run=False, seeds=[1])
    row = {c: "" for c in sw.COLUMNS}
    marks = ((121, 499712), (243, 999424), (365, 1499136))  # a checkpoint every 122 epochs of 4096
    for seed in (1, 2):
        run = s.run_dir("v", seed)
        (run / "checkpoints").mkdir(parents=True)
        for epoch, steps in marks:
            name = f"epoch={epoch}-agent_steps={steps}"
            (run / "checkpoints" / f"{name}.ckpt").write_text(name)
            (run / f"eval_{name}.log").write_text("table")
            sw.append_row(runner.csv_path, {**row, "variant": "v", "seed": seed, "checkpoint": f"{name}.ckpt",
                                            "agent_steps": steps})
        (run / "checkpoints" / "last.ckpt").write_text("latest")
        mark = run / "checkpoints" / "epoch=243-agent_steps=999424.ckpt"
        os.utime(mark, (1_000_000_000, 1_000_000_000))
        (run / "events.out.tfevents.999999000.host.1.0").write_text("from step 0")
        (run / "events.out.tfevents.1000000500.host.2.0").write_text("a resume after the mark")
    csv_before = runner.csv_path.read_text()

    with pytest.raises(SystemExit, match="--rerun-from=700000: must be a mark"):
        runner.rewind(700_000)
    with pytest.raises(SystemExit, match="no checkpoint at that mark"):
        runner.rewind(2_000_000)
    assert runner.csv_path.read_text() == csv_before  # nothing moved

    runner.rewind(1_000_000)
    run = s.run_dir("v", 1)
    assert (run / "checkpoints" / "last.ckpt").read_text() == "epoch=243-agent_steps=999424"
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch=*")) == [
        "epoch=121-agent_steps=499712.ckpt", "epoch=243-agent_steps=999424.ckpt"]
    assert sorted(p.name for p in run.glob("events.*")) == ["events.out.tfevents.999999000.host.1.0"]
    assert not (run / "eval_epoch=365-agent_steps=1499136.log").exists()
    [aside] = (run.parent / "replaced").iterdir()
    assert sorted(p.name for p in aside.iterdir()) == [
        "epoch=365-agent_steps=1499136.ckpt", "eval_epoch=365-agent_steps=1499136.log",
        "events.out.tfevents.1000000500.host.2.0", "last.ckpt", "rows.csv"]
    assert (aside / "last.ckpt").read_text() == "latest"
    assert [r["agent_steps"] for r in sw.load_rows(aside / "rows.csv")] == ["1499136"]
    kept = [(r["seed"], r["agent_steps"]) for r in sw.load_rows(runner.csv_path)]
    assert kept == [("1", "499712"), ("1", "999424")] + [("2", str(steps)) for _, steps in marks]
    assert (s.run_dir("v", 2) / "checkpoints" / "last.ckpt").read_text() == "latest"  # seed 2 not selected
    job = runner.train_job("v", 1)
    assert f"--ckpt_path {run / 'checkpoints' / 'last.ckpt'}" in " ".join(job.cmd)


def test_a_run_a_live_training_holds_is_neither_trained_twice_nor_rewound(tmp_path, monkeypatch):
    """A run whose training claim names a live process (another invocation's training) is left to it: this
    invocation starts no training of it, and ``--rerun-from`` refuses it before anything moves. Once that process
    is gone its claim is stale, the run is trained here, and the claim then names this invocation."""
    monkeypatch.setattr(sw, "RESULTS", tmp_path / "results")
    s = _sweep(tmp_path, [{"data": {"batch_size": 4096}, "trainer": {"devices": 1}}])
    runner = sw.Runner(s, parallel=1, dry_run=False, seeds=[1])
    run = s.run_dir("v", 1)
    (run / "checkpoints").mkdir(parents=True)
    name = "epoch=121-agent_steps=499712"
    (run / "checkpoints" / f"{name}.ckpt").write_text(name)
    (run / "checkpoints" / "last.ckpt").write_text("latest")
    monkeypatch.setattr(sw, "_read_ckpt_meta", lambda path: {"epoch": 130})  # short of the 245 epochs of 1M
    sw.append_row(runner.csv_path, {**{c: "" for c in sw.COLUMNS}, "variant": "v", "seed": 1,
                                    "checkpoint": f"{name}.ckpt", "agent_steps": 499712})  # judged: no eval job
    claim = run.parent / "v_s1.train.claim"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claim.write_text(str(other.pid))
        assert runner.next_job() is None
        with pytest.raises(SystemExit, match=f"v_s1 is being trained by process {other.pid}; stop it first"):
            runner.rewind(500_000)
        assert (run / "checkpoints" / "last.ckpt").read_text() == "latest"
        assert not (run.parent / "replaced").exists()
    finally:
        other.kill()
        other.wait()
    job = runner.next_job()
    assert job is not None and job.kind == "train" and job.cmd[job.cmd.index("--ckpt_path") + 1].endswith("last.ckpt")
    assert claim.read_text() == str(os.getpid())
    assert sw.Runner(s, parallel=1, dry_run=False, seeds=[1]).next_job() is not None  # same process: its own claim


def test_a_csv_from_before_a_column_existed_gains_it_and_keeps_its_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(sw, "RESULTS", tmp_path)
    path = tmp_path / "t.csv"
    old = [c for c in sw.COLUMNS if c not in ("state_reset", "cpu")]
    path.write_text(",".join(old) + "\n" + ",".join("1" if c == "seed" else f"old_{c}" for c in old) + "\n")
    sw.append_row(path, {**{c: "" for c in sw.COLUMNS}, "variant": "new", "seed": 2, "state_reset": "64"})
    assert path.read_text().splitlines()[0] == ",".join(sw.COLUMNS)
    first, second = sw.load_rows(path)
    assert (first["variant"], first["aligned_mean"], first["state_reset"], first["cpu"]) == (
        "old_variant", "old_aligned_mean", "", "")
    assert (second["variant"], second["seed"], second["state_reset"]) == ("new", "2", "64")
    assert not list(tmp_path.glob("*.tmp"))
