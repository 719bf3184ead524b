"""Kickstarting: a teacher beside the collector, whose weight fades to 0 over the run.

The student (the trained policy) only ever sees its own observations. The teacher is the privileged scripted
team (``scripted.py``): it reads the simulators the collector already steps, so it runs wherever the envs are
stepped in process. ``ScriptedTeacher`` is the component a collector calls once per env step, with the agents
of the env batch it just received; it owns one ``ScriptedTeam`` per env, which follows its env across
auto-resets. Envs in worker processes (the Multiprocessing backend) are out of its reach: it refuses them.

Two uses, each with a linear schedule over global agent steps (``linear_anneal``), both off by default:

- **Behaviour cloning** (``model.bc_coef_start``, ``model.bc_steps``): ``bc_coef * CE(student logits, teacher
  action)``, averaged over every buffer step, added to the PPO loss.
- **Teacher-led agents** (``data.teacher_led_start``, ``data.teacher_led_steps``): per agent and per episode,
  with probability ``led`` (the schedule's value when the episode starts), the agent executes the teacher's
  actions for its whole episode, as Metta's sliced cloner slices agents. The buffer keeps, for such a step,
  the student's log-probability of the executed (teacher's) action, so the PPO ratio is pi_new / pi_student_old
  there as everywhere (no step is masked): the clip keeps the update within the student's own trust region,
  and on those steps the surrogate is advantage-weighted imitation of the teacher. When the schedule reaches
  0, every agent is the student's at once.

The teacher is called only while either weight is above 0; afterwards it costs nothing.
"""

from __future__ import annotations

import bisect
import time
from typing import Sequence

import numpy as np

from aligner_lightning.errors import ConfigError
from aligner_lightning.scripted import ScriptedTeam

TEACHERS = ("scripted",)


def linear_anneal(start: float, steps: int, agent_steps: int) -> float:
    """``start`` at agent step 0, falling linearly to 0 at ``steps`` and 0 from then on (0 if ``steps`` is 0)."""
    if start <= 0 or steps <= 0:
        return 0.0
    return start * max(0.0, 1.0 - agent_steps / steps)


class ScriptedTeacher:
    """The scripted team's actions for the agents of an in-process vector env (pufferlib Serial: ``vecenv.envs``).

    ``actions(agent_ids)`` takes the agent ids of one env batch (as ``vecenv.recv`` returns them: whole envs,
    consecutive) and returns their teacher actions, int64, in the same order. ``seconds`` and ``env_steps``
    count its own cost.
    """

    def __init__(self, vecenv, seeds: Sequence[int]):
        envs = getattr(vecenv, "envs", None)
        if envs is None:
            raise ConfigError([f"data.teacher=scripted: the scripted teacher reads each env's simulator, and this "
                               f"vector env ({type(vecenv).__name__}) keeps its envs in worker processes; use "
                               f"data.backend=serial"])
        if len(seeds) != len(envs):
            raise ValueError(f"{len(seeds)} seeds for {len(envs)} envs")
        self.teams = [ScriptedTeam(env, seed=int(seed)) for env, seed in zip(envs, seeds)]
        self._first_agent = list(np.cumsum([0] + [env.num_agents for env in envs]))
        self.seconds = 0.0
        self.env_steps = 0

    def actions(self, agent_ids: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        first, count = int(agent_ids[0]), len(agent_ids)
        env = bisect.bisect_right(self._first_agent, first) - 1
        if self._first_agent[env] != first:
            raise ValueError(f"agent {first} does not start an env: teacher batches must hold whole envs")
        out, filled = np.empty(count, dtype=np.int64), 0
        while filled < count:
            team_actions = self.teams[env].actions()
            if filled + len(team_actions) > count:
                raise ValueError(f"{count} agents from agent {first} do not make whole envs")
            out[filled:filled + len(team_actions)] = team_actions
            filled += len(team_actions)
            env += 1
            self.env_steps += 1
        self.seconds += time.perf_counter() - start
        return out
