"""Kickstarting from the scripted team: the teacher, the teacher-led steps, the BC term and its schedule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import DDP, DEBUG, EPOCH_STEPS, ROOT, run_main, scalars, tb_points, train, write_config
from helpers import factory as make_factory

from aligner_lightning import algorithm
from aligner_lightning.datamodule import RolloutDataModule
from aligner_lightning.envs import EnvFactory, env_interface
from aligner_lightning.errors import ConfigError
from aligner_lightning.policy import AlignerPolicy
from aligner_lightning.rollout import Rollout
from aligner_lightning.scripted import ScriptedTeam
from aligner_lightning.teacher import NO_LABEL, ScriptedTeacher, linear_anneal

NUM_ENVS, AGENTS, HORIZON = 2, 4, 16


def smoke_rollout(segments_per_agent: int, seed: int = 3, teacher: str = "scripted",
                  **options) -> tuple[Rollout, EnvFactory]:
    """A scripted-teacher rollout on two smoke envs (no early reset), built as training builds it."""
    steps = NUM_ENVS * AGENTS * segments_per_agent * HORIZON
    dm = RolloutDataModule(mission="smoke", num_envs=NUM_ENVS, seed=seed, early_reset=False, bptt_horizon=HORIZON,
                           batch_size=steps, minibatch_size=steps, teacher=teacher, **options)
    return dm.make_rollout(torch.device("cpu")), dm.factory


def agent_sequence(buffer: torch.Tensor, agent: int) -> torch.Tensor:
    """Agent ``agent``'s steps in collection order: rows agent, agent + N, agent + 2N, ... (one env batch)."""
    return buffer[agent::NUM_ENVS * AGENTS].reshape(-1)


def policy_for(factory: EnvFactory) -> AlignerPolicy:
    torch.manual_seed(0)
    return AlignerPolicy.from_env_interface(env_interface(factory))


# ------------------------------------------------------------------------------------------------ the teacher


@pytest.mark.parametrize("mission, steps", [("aligner_tutorial", 500), ("smoke", 2 * 96 + 5)])
def test_reused_reads_choose_the_plain_teams_actions(mission, steps):
    """The cheap team (reads and distance maps reused between steps) acts exactly as the plain one, across an
    auto-reset on smoke. Two agents follow the team, two act at random (claims, detours, stuck agents)."""
    envs = make_factory(mission, seed=11)
    fast_env, plain_env = envs.make_env(0), envs.make_env(0)
    fast_env.reset()
    plain_env.reset()
    fast, plain = ScriptedTeam(fast_env, seed=5), ScriptedTeam(plain_env, seed=5, reuse=False)
    rng = np.random.default_rng(0)
    for step in range(steps):
        a, b = fast.actions(), plain.actions()
        np.testing.assert_array_equal(a, b, err_msg=f"step {step}")
        a[2:] = rng.integers(0, 5, size=2)
        fast_env.step(a)
        plain_env.step(a.copy())
    fast_env.close()
    plain_env.close()


def test_the_local_team_aims_only_at_junctions_its_agent_has_seen():
    """Local mode: each agent's view starts as the 121-cell window around it and only grows; every junction an
    agent walks to lies in what it has seen, and it explores when none is (that it still aligns every junction
    is test_mission's)."""
    env = make_factory("aligner_tutorial", map_seed=0).make_env(0)
    env.reset()
    team = ScriptedTeam(env, seed=5, local=True)
    team.actions()
    views = [state.seen.copy() for state in team._agents]
    assert [int(v.sum()) for v in views] == [121] * 4  # the agents start near the hub, clear of the map's edge
    explored, targeted = 0, 0
    for _ in range(999):
        env.step(team.actions())
        neutral = team._world.static[2]
        for i, state in enumerate(team._agents):
            assert not (views[i] & ~state.seen).any()  # the seen cells only grow
            views[i] = state.seen.copy()
            if state.target is not None:
                junction = neutral[state.target]
                assert state.seen[junction["r"], junction["c"]], f"agent {i} aims at a junction it has not seen"
                targeted += 1
            elif state.explore is not None:
                explored += 1
    env.close()
    assert explored > 100 and targeted > 500


def test_the_full_team_aims_at_junctions_it_has_not_seen():
    """The contrast that makes the test above meaningful: knowing the whole map, agents do walk to junctions
    outside anything they have had in view (checked with the local mode's view bookkeeping)."""
    from aligner_lightning.scripted import _AgentState, _look

    env = make_factory("aligner_tutorial", map_seed=0).make_env(0)
    env.reset()
    team = ScriptedTeam(env, seed=5)
    views = [_AgentState() for _ in range(4)]
    unseen_targets = 0
    for _ in range(300):
        actions = team.actions()
        neutral = team._world.static[2]
        objects = env.current_simulation.grid_objects(ignore_types=team._world.non_agent_types).values()
        cells = {o["agent_id"]: (o["r"], o["c"]) for o in objects if o.get("agent_id") is not None}
        for i, state in enumerate(team._agents):
            _look(views[i], cells[i], team._world.blocked.shape)
            if state.target is not None:
                junction = neutral[state.target]
                unseen_targets += not views[i].seen[junction["r"], junction["c"]]
        env.step(actions)
    env.close()
    assert unseen_targets > 0


def test_a_forgetful_local_agent_knows_only_its_last_views():
    """``memory=3``: what each agent knows is exactly the union of its views from its last three positions
    (rebuilt here from the positions alone), which is less than everything it has seen this episode."""
    from aligner_lightning.scripted import _AgentState, _look

    with pytest.raises(ValueError, match="memory=3: needs local=True"):
        ScriptedTeam(make_factory("smoke").make_env(0), memory=3)
    env = make_factory("aligner_tutorial", map_seed=0).make_env(0)
    env.reset()
    team = ScriptedTeam(env, seed=5, local=True, memory=3)
    trail: list[list[tuple[int, int]]] = [[] for _ in range(4)]
    everything = [_AgentState() for _ in range(4)]
    forgotten = 0
    for _ in range(300):
        actions = team.actions()
        shape = team._world.blocked.shape
        objects = env.current_simulation.grid_objects(ignore_types=team._world.non_agent_types).values()
        cells = {o["agent_id"]: (o["r"], o["c"]) for o in objects if o.get("agent_id") is not None}
        for i, state in enumerate(team._agents):
            trail[i].append(cells[i])
            recent = _AgentState()
            for cell in trail[i][-3:]:
                _look(recent, cell, shape)
            _look(everything[i], cells[i], shape)
            np.testing.assert_array_equal(state.seen, recent.seen)
            forgotten += int((everything[i].seen & ~recent.seen).sum())
        env.step(actions)
    env.close()
    assert forgotten > 0


@pytest.mark.parametrize("teacher, labels, memory", [("scripted", "action", None), ("scripted_local", "shortest", None),
                                                     ("scripted_local", "action", 1)])
def test_teacher_actions_are_the_scripted_teams_run_directly(teacher, labels, memory):
    """Everything teacher-led: the executed actions for each agent are what a ScriptedTeam (in local mode for
    ``scripted_local``), driving its own copy of that env from the same seeds, chooses step by step, and the
    labels are those actions except where the team was idle (nothing left to align: NO_LABEL); with
    ``teacher_labels: shortest`` the buffer also holds the team's bitmasks of equally short moves; with
    ``teacher_memory`` the team forgets as ``ScriptedTeam(memory=...)`` does (which changes its actions here)."""
    rollout, factory = smoke_rollout(segments_per_agent=8, teacher=teacher, teacher_labels=labels,  # one auto-reset
                                     teacher_memory=memory)
    assert [team.memory for team in rollout.teacher.teams] == [memory] * NUM_ENVS
    rollout.collect(policy_for(factory), teacher_led=1.0, use_teacher=True)
    buf = rollout.buffer
    assert bool(buf.teacher_led.all())
    assert (buf.teacher_moves is None) == (labels == "action")
    for i in range(NUM_ENVS):
        env = factory.make_env(i)
        env.reset()
        team = ScriptedTeam(env, seed=factory.env_seed(i), local=teacher == "scripted_local", memory=memory)
        actions, labelled, moves = [], [], []
        for _ in range(8 * HORIZON):
            step_actions = team.actions()
            actions.append(step_actions.copy())
            labelled.append(np.where(team.idle, NO_LABEL, step_actions))
            moves.append(team.moves.copy())
            env.step(step_actions)
        env.close()
        actions, labelled, moves = np.stack(actions), np.stack(labelled), np.stack(moves)
        for a in range(AGENTS):
            np.testing.assert_array_equal(agent_sequence(buf.actions, i * AGENTS + a).numpy(), actions[:, a])
            np.testing.assert_array_equal(agent_sequence(buf.teacher_actions, i * AGENTS + a).numpy(), labelled[:, a])
            if buf.teacher_moves is not None:
                np.testing.assert_array_equal(agent_sequence(buf.teacher_moves, i * AGENTS + a).numpy(), moves[:, a])
    labelled = (buf.teacher_actions >= 0)
    assert 0 < int(labelled.sum()) < labelled.numel()  # smoke's 5 junctions are all aligned before step 96
    stats = rollout.buffer.teacher_stats
    assert stats["led"] == stats["steps"] == buf.actions.numel() and stats["labelled"] == int(labelled.sum())
    rollout.close()


def test_the_teams_equally_short_moves_all_lead_one_step_nearer_its_goal():
    """``ScriptedTeam.moves``: the chosen action is always in the set, and every move in it lands one step
    nearer the agent's goal (the station, the hub or its junction), often one of two."""
    from aligner_lightning.scripted import MOVES, STUCK_STEPS, walking_distances

    env = make_factory("aligner_tutorial", map_seed=0).make_env(0)
    env.reset()
    team = ScriptedTeam(env, seed=5)
    names = env.current_simulation.action_names
    cap = env.current_simulation.config.game.agent.inventory.limits["heart"].max
    checked, pairs = 0, 0
    for _ in range(300):
        actions = team.actions()
        hub, station, neutral = team._world.static
        objects = env.current_simulation.grid_objects(ignore_types=team._world.non_agent_types).values()
        agents = {o["agent_id"]: o for o in objects if o.get("agent_id") is not None}
        for i, state in enumerate(team._agents):
            assert team.moves[i] >> int(actions[i]) & 1, f"agent {i}: its action is not in its set"
            o = agents[i]
            pos, hearts = (o["r"], o["c"]), o.get("inv:heart", 0)
            near_hub = abs(pos[0] - hub["r"]) + abs(pos[1] - hub["c"]) == 1
            if o.get("inv:aligner", 0) == 0:
                goal = station
            elif hearts == 0 or (hearts < cap and near_hub):
                goal = hub
            else:
                goal = neutral.get(state.target) if state.target is not None else None
            if goal is None or state.stuck >= STUCK_STEPS:  # idle, or an unsticking step at random
                continue
            dist = walking_distances(team._world.blocked, (goal["r"], goal["c"]))
            if dist[pos] == 0:  # next to it: the one move into the goal
                continue
            in_set = [name for name in MOVES if team.moves[i] >> names.index(name) & 1]
            for name in in_set:
                assert dist[pos[0] + MOVES[name][0], pos[1] + MOVES[name][1]] == dist[pos] - 1, (i, name)
            checked += len(in_set) > 0
            pairs += len(in_set) > 1
        env.step(actions)
    env.close()
    assert checked > 200 and pairs > 20, (checked, pairs)


def test_cloning_on_sets_of_moves_is_the_log_probability_of_the_set():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    actions = torch.tensor([[0, 3, NO_LABEL], [2, 4, 1]])
    log_p = logits.log_softmax(-1)
    # Single bits: exactly the cross-entropy on the actions.
    torch.testing.assert_close(algorithm.cloning_loss(logits, actions, 1 << actions.clamp(min=0)),
                               algorithm.cloning_loss(logits, actions))
    # Two moves accepted at (1, 0): -log(p2 + p3) there; the unlabelled step counts for nothing.
    moves = (1 << actions.clamp(min=0)).clone()
    moves[1, 0] |= 1 << 3
    terms = [-log_p[0, 0, 0], -log_p[0, 1, 3], -torch.logaddexp(log_p[1, 0, 2], log_p[1, 0, 3]), -log_p[1, 1, 4],
             -log_p[1, 2, 1]]
    torch.testing.assert_close(algorithm.cloning_loss(logits, actions, moves), torch.stack(terms).mean())


def test_teacher_led_steps_record_the_students_logprob_of_the_executed_action():
    """On teacher-led steps the buffer holds the teacher's action and log pi_student(that action), so the ratio
    written back for V-trace is pi_new / pi_student_old there too; leading is per agent and per episode."""
    rollout, factory = smoke_rollout(segments_per_agent=12)  # 192 steps: one auto-reset
    policy = policy_for(factory)
    torch.manual_seed(1)
    rollout.collect(policy, teacher_led=0.5, use_teacher=True)
    buf = rollout.buffer
    led = buf.teacher_led
    assert 0 < int(led.sum()) < led.numel()
    labelled = led & (buf.teacher_actions >= 0)
    assert torch.equal(buf.actions[labelled], buf.teacher_actions[labelled])
    # The first segment of each agent started from a zero LSTM state, as the training forward does.
    first = slice(0, NUM_ENVS * AGENTS)
    with torch.no_grad():
        logits, _ = policy(buf.obs[first])
    logp = logits.log_softmax(-1).gather(-1, buf.actions[first].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(buf.logprobs[first], logp, rtol=0, atol=1e-4)
    # The student rarely samples the teacher's action everywhere, so the check above could tell them apart.
    assert (buf.actions[first][labelled[first]] != logits[labelled[first]].argmax(-1)).any()
    # An agent is led for a whole episode: its flag changes only at step 96, where the first episode's terminal
    # observation arrives (the action chosen there is the next episode's first).
    changed = 0
    for agent in range(NUM_ENVS * AGENTS):
        flags = agent_sequence(led, agent)
        changes = (flags[1:] != flags[:-1]).nonzero().reshape(-1) + 1
        assert set(changes.tolist()) <= {96}, (agent, changes)
        changed += len(changes)
    assert changed > 0  # (seeded: some agents were drawn again at the episode's end)
    rollout.close()


def test_teacher_led_by_env_leads_whole_teams():
    """With ``teacher_led_by: env`` the four agents of an env are led, or not, together, episode by episode;
    per agent (the default), the same draws split teams."""
    mixed_teams = 0
    for led_by in ("env", "agent"):
        rollout, factory = smoke_rollout(segments_per_agent=12, teacher_led_by=led_by)  # one auto-reset at 96
        policy = policy_for(factory)
        for draw in range(4):
            torch.manual_seed(draw)
            rollout.collect(policy, teacher_led=0.5, use_teacher=True)
            flags = torch.stack([agent_sequence(rollout.buffer.teacher_led, a) for a in range(NUM_ENVS * AGENTS)])
            teams = flags.view(NUM_ENVS, AGENTS, -1)
            same = bool((teams == teams[:, :1]).all())
            if led_by == "env":
                assert same, teams
            mixed_teams += not same
        rollout.close()
    assert mixed_teams > 0  # per agent, some team was split


def test_teacher_led_steps_are_masked_out_of_the_ppo_loss():
    """The PPO loss with a step mask is the PPO loss of the kept steps alone, and the masked steps get no
    gradient; with every step kept it is PuffeRL's loss."""
    from aligner_lightning import algorithm
    from aligner_lightning.module import AlignerPPO

    gen = torch.Generator().manual_seed(0)
    n, h = 6, 8
    new_logp, old_logp = -torch.rand(n, h, generator=gen) * 2, -torch.rand(n, h, generator=gen) * 2
    new_logp.requires_grad_(True)
    entropy, new_v, old_v = (torch.rand(n, h, generator=gen), torch.randn(n, h, generator=gen),
                             torch.randn(n, h, generator=gen))
    adv, weights = torch.randn(n, h, generator=gen), torch.rand(n, 1, generator=gen) + 0.5
    cfg = AlignerPPO().loss_cfg  # the default coefficients
    args = (new_logp, entropy, new_v, old_logp, old_v, adv, weights, cfg)
    full, full_stats = algorithm.ppo_loss(*args)
    all_kept, _ = algorithm.ppo_loss(*args, step_mask=torch.ones(n, h, dtype=torch.bool))
    torch.testing.assert_close(all_kept, full)
    rows = torch.tensor([0, 2, 3])
    mask = torch.zeros(n, h, dtype=torch.bool)
    mask[rows] = True
    masked, stats = algorithm.ppo_loss(*args, step_mask=mask)
    subset, subset_stats = algorithm.ppo_loss(*(x[rows] for x in args[:7]), cfg)
    torch.testing.assert_close(masked, subset)
    for key in ("policy_loss", "value_loss"):
        torch.testing.assert_close(stats[key], subset_stats[key])
    torch.testing.assert_close(stats["approx_kl"], full_stats["approx_kl"])  # statistics: every step
    (grad,) = torch.autograd.grad(masked, new_logp)
    assert bool((grad[~mask] == 0).all()) and bool((grad[mask] != 0).any())


def test_the_teacher_is_not_called_when_off():
    rollout, factory = smoke_rollout(segments_per_agent=1)
    rollout.collect(policy_for(factory))
    assert rollout.teacher.env_steps == 0 and rollout.buffer.teacher_stats is None
    rollout.collect(policy_for(factory), use_teacher=True)  # BC only: every env asked, no agent led
    assert rollout.teacher.env_steps == NUM_ENVS * HORIZON and rollout.buffer.teacher_stats["led"] == 0
    rollout.close()


def test_linear_anneal():
    assert linear_anneal(0.5, 1000, 0) == 0.5
    assert linear_anneal(0.5, 1000, 500) == 0.25
    assert linear_anneal(0.5, 1000, 1000) == 0.0 and linear_anneal(0.5, 1000, 5000) == 0.0
    assert linear_anneal(0.0, 1000, 0) == 0.0 and linear_anneal(1.0, 0, 0) == 0.0


def test_a_vecenv_without_in_process_envs_is_refused():
    class Remote:  # what the Multiprocessing backend looks like from here: no .envs
        pass

    with pytest.raises(ConfigError, match="data.backend=serial"):
        ScriptedTeacher(Remote(), [0])


# ------------------------------------------------------------------------------------------- configuration


def cli_error(monkeypatch, capsys, tmp_path, *args: str) -> str:
    assert run_main(monkeypatch, tmp_path, "fit", "--config", DEBUG, *args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_multiprocessing_with_a_teacher_is_refused(monkeypatch, capsys, tmp_path):
    err = cli_error(monkeypatch, capsys, tmp_path, "--data.teacher", "scripted", "--data.backend", "multiprocessing",
                    "--data.num_workers", "2")
    assert "data.teacher='scripted'" in err and "multiprocessing backend" in err and "data.backend=serial" in err


def test_auto_backend_choosing_multiprocessing_with_a_teacher_is_refused(monkeypatch, capsys, tmp_path):
    from aligner_lightning import envs

    monkeypatch.setattr(envs.os, "sched_getaffinity", lambda _pid: set(range(8)))
    err = cli_error(monkeypatch, capsys, tmp_path, "--data.teacher", "scripted", "--data.backend", "auto")
    assert "data.backend=auto chose it" in err and "data.backend=serial" in err


@pytest.mark.parametrize("args, expected", [
    (["--data.teacher", "oracle"], "data.teacher='oracle': must be null (no teacher) or one of scripted, scripted_local"),
    (["--data.teacher_led_start", "0.5", "--data.teacher_led_steps", "100"], "needs a teacher (data.teacher: scripted or scripted_local)"),
    (["--data.teacher", "scripted", "--data.teacher_led_start", "1.5"],
     "data.teacher_led_start=1.5: must be in [0, 1]"),
    (["--data.teacher", "scripted", "--data.teacher_led_start", "0.5"], "data.teacher_led_steps=0: must be >= 1"),
    (["--data.teacher", "scripted", "--model.bc_coef_start", "1.0"], "model.bc_steps=0: must be >= 1"),
    (["--model.bc_coef_start", "-1"], "model.bc_coef_start=-1.0: must be >= 0"),
    (["--model.bc_coef_start", "1.0", "--model.bc_steps", "100"], "behaviour cloning needs a teacher"),
    (["--model.bc_epochs", "-1"], "model.bc_epochs=-1: must be >= 0"),
    (["--data.teacher_led_by", "team"], "data.teacher_led_by='team': must be one of agent, env"),
    (["--data.teacher_labels", "path"], "data.teacher_labels='path': must be one of action, shortest"),
    (["--model.bc_epochs", "2"], "model.bc_epochs=2: cloning passes need a cloning weight"),
    (["--data.teacher", "scripted", "--data.teacher_memory", "64"],
     "data.teacher_memory=64: must be null (the whole episode) or an int >= 1 (steps), with data.teacher: scripted_local"),
    (["--data.teacher", "scripted_local", "--data.teacher_memory", "0"], "data.teacher_memory=0: must be null"),
])
def test_bad_teacher_settings_get_one_clear_error(monkeypatch, capsys, tmp_path, args, expected):
    assert expected in cli_error(monkeypatch, capsys, tmp_path, *args)


def test_kickstart_config_is_an_overlay_of_the_seed_config(monkeypatch, capsys, tmp_path):
    args = ["--config", ROOT / "configs/aligner.yaml", "--config", ROOT / "configs/aligner_kickstart.yaml"]
    assert run_main(monkeypatch, tmp_path, "fit", *args, "--print_config") == 0
    printed = capsys.readouterr().out
    for line in ("teacher: scripted_local", "mission: aligner_tutorial", "num_envs: 16", "update_epochs: 4",
                 "total_timesteps: 3000000", "lr_anneal_steps: 5000000", "anchor_coef: 1.0", "anchor_at: 500000",
                 "anchor_steps: 1500000", "bc_steps: 2000000"):  # the anchor and cloning both end at 2M
        assert line in printed


# ------------------------------------------------------------------------------------ training, end to end

# The schedules: teacher-led agents until agent step 3072, BC until 6144, then PPO alone until 8192 (16 epochs).
SCHEDULE = ["--data.teacher_led_start", "0.5", "--data.teacher_led_steps", "3072", "--model.bc_coef_start", "1.0",
            "--model.bc_steps", "6144"]
# Behaviour cloning alone: every agent teacher-led (so every step is masked out of PPO), BC at full weight.
CLONING = ["--data.teacher_led_start", "1.0", "--data.teacher_led_steps", "1000000000", "--model.bc_coef_start",
           "1.0", "--model.bc_steps", "1000000000", "--model.learning_rate", "0.003"]


def fit_on_smoke(monkeypatch: pytest.MonkeyPatch, tmp: Path, epochs: int, args: list[str]) -> dict[str, list]:
    """``train.py fit`` in this process: the debug config's own data (96-step episodes across epochs: two
    minibatches of 256 per epoch), a scripted teacher, ``epochs`` epochs of 512 agent steps, no evaluation. The
    logged scalars, and the run's optimizer steps under ``"optimizer_steps"``."""
    cfg = write_config(tmp, epochs, evaluation=False, deterministic=False, teacher="scripted")
    assert run_main(monkeypatch, tmp, "fit", "--config", cfg, *args, "--run_name", "ks") == 0
    run = tmp / "lightning_logs" / "ks"
    steps = torch.load(run / "checkpoints/last.ckpt", weights_only=False)["global_step"]
    return {**scalars(run), "optimizer_steps": steps}


@pytest.fixture(scope="module")
def schedule_run(tmp_path_factory) -> dict[str, list]:
    """16 epochs of 512 agent steps on smoke, with two cloning passes per epoch while cloning lasts."""
    with pytest.MonkeyPatch.context() as mp:
        return fit_on_smoke(mp, tmp_path_factory.mktemp("schedule"), 16, [*SCHEDULE, "--model.bc_epochs", "2"])


def test_kickstart_fit_logs_the_teacher_metrics(schedule_run):
    for tag in ("teacher/led_fraction", "teacher/bc_coef", "losses/bc_loss", "teacher/agreement",
                "performance/teacher_time"):
        assert tag in schedule_run, f"{tag} missing; logged: {sorted(schedule_run)}"
    steps = [s for s, _ in schedule_run["teacher/bc_coef"]]
    assert steps == [512 * (i + 1) for i in range(16)]  # against agent steps, every epoch


def test_the_schedules_reach_zero_and_the_teacher_stops(schedule_run):
    """Epoch e (512 e agent steps before it) uses the weights at 512 e; the teacher runs while either is > 0."""
    def by_epoch(tag):
        return {s // 512 - 1: v for s, v in schedule_run[tag]}

    bc, led = by_epoch("teacher/bc_coef"), by_epoch("teacher/led_fraction")
    seconds = by_epoch("performance/teacher_time")
    for epoch in range(16):
        assert bc[epoch] == pytest.approx(linear_anneal(1.0, 6144, 512 * epoch))
        if 512 * epoch >= 3072:
            assert led[epoch] == 0.0
        assert (seconds[epoch] > 0) == (512 * epoch < 6144), (epoch, seconds[epoch])
    assert led[0] > 0.2  # about half the agents at the start
    assert set(by_epoch("teacher/agreement")) == set(by_epoch("losses/bc_loss")) == set(range(12))


def test_cloning_passes_run_while_cloning_lasts(schedule_run):
    """Each epoch: PPO's two minibatches; while the BC weight is above 0 (epochs 0-11), two cloning passes of
    two minibatches each, with their loss logged."""
    assert schedule_run["optimizer_steps"] == 16 * 2 + 12 * 2 * 2
    assert [s // 512 - 1 for s, _ in schedule_run["losses/bc_pass_loss"]] == list(range(12))


def test_cloning_passes_clone_faster(monkeypatch, tmp_path):
    """Every agent teacher-led (nothing for PPO): after four epochs, three extra cloning passes per epoch leave a
    lower cloning loss than the one pass alone."""
    final = {}
    for passes in (0, 3):
        (tmp_path / str(passes)).mkdir()
        logged = fit_on_smoke(monkeypatch, tmp_path / str(passes), 4, [*CLONING, "--model.bc_epochs", str(passes)])
        final[passes] = logged["losses/bc_loss"][-1][1]
    assert final[3] < final[0] - 0.1, final


def test_the_async_collector_runs_the_teacher_one_update_behind(monkeypatch, tmp_path):
    """The teacher runs in the collector process. Rollout k acts with the weights of update k - 1, so it follows
    the schedules as of 512 (k - 1) agent steps: the teacher still runs in epoch 12 (BC ends at 6144 = 512 x 12)."""
    logged = fit_on_smoke(monkeypatch, tmp_path, 14, [*SCHEDULE, "--data.collector", "async"])
    seconds = {s // 512 - 1: v for s, v in logged["performance/teacher_time"]}
    assert [epoch for epoch in range(14) if seconds[epoch] > 0] == list(range(13))
    assert logged["teacher/led_fraction"][0][1] > 0.2 and "teacher/agreement" in logged


def test_behaviour_cloning_raises_agreement(monkeypatch, tmp_path):
    logged = fit_on_smoke(monkeypatch, tmp_path, 12, CLONING)
    agreement = [v for _, v in logged["teacher/agreement"]]
    bc_loss = [v for _, v in logged["losses/bc_loss"]]
    assert np.mean(agreement[-4:]) > np.mean(agreement[:2]) + 0.12, agreement
    assert np.mean(bc_loss[-4:]) < np.mean(bc_loss[:2]) - 0.2, bc_loss
    assert all(v == 0 for _, v in logged["losses/policy_loss"])  # nothing left for PPO


def test_ddp_each_rank_runs_its_own_teacher(tmp_path):
    """Two DDP ranks, each with its own serial envs and teacher; every agent teacher-led, so every episode on
    both ranks is the scripted team's, and the weights stay identical on both ranks (through a cloning pass too)."""
    probe = {"class_path": "fault_injection.DDPProbe", "init_args": {"out_dir": str(tmp_path)}}
    cfg = write_config(tmp_path, 4, [probe], evaluation=False, teacher="scripted", teacher_led_start=1.0,
                       teacher_led_steps=10**9)
    code, _, err = train(cfg, tmp_path, "--run_name", "ddp", "--model.bc_coef_start", "1.0",
                         "--model.bc_steps", "100000", "--model.bc_epochs", "1", *DDP)
    assert code == 0, err[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["steps_checked"] == ranks[1]["steps_checked"] > 0
    for r in ranks:  # the scripted team's episodes (an untrained student's return is about 1-2; the first,
        returns = [value for _, value in r["episodes"]]  # early-reset episode of each env can be a few steps)
        assert returns and float(np.median(returns)) > 5, (r["rank"], returns)
    led = dict(tb_points(tmp_path / "lightning_logs/ddp", "teacher/led_fraction"))
    assert sorted(led) == [2 * EPOCH_STEPS * (e + 1) for e in range(2)] and set(led.values()) == {1.0}
