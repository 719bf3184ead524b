"""Kickstarting: a teacher beside the collector, whose weight fades to 0 over the run.

The student (the trained policy) only ever sees its own observations. The teacher is the privileged scripted
team (``scripted.py``): it reads the simulators the collector already steps, so it runs wherever the envs are
stepped in process. ``ScriptedTeacher`` is the component a collector calls once per env step, with the agents
of the env batch it just received; it owns one ``ScriptedTeam`` per env, which follows its env across
auto-resets. Envs in worker processes (the Multiprocessing backend) are out of its reach: it refuses them.

Two uses, each with a linear schedule over global agent steps (``linear_anneal``), both off by default:

- **Behaviour cloning** (``model.bc_coef_start``, ``model.bc_steps``): ``bc_coef * CE(student logits, teacher
  action)``, averaged over the buffer steps that have a label, added to the PPO loss. A step has no label
  (``NO_LABEL``) where the teacher had nothing to do for that agent (every alignable junction aligned or
  claimed): it then stands still, a choice the student cannot make from its own view (whether far junctions
  are still neutral), and which in the teacher's own episodes is about the second half of every episode, so
  cloning it would teach standing still.
  With ``data.teacher_labels: shortest`` the label is the set of moves as good as the teacher's (every free
  move along a shortest path to its goal, ``ScriptedTeam.moves``) and the term is ``-log`` of the student's
  probability of that set: where two moves are equally short the teacher always takes the first in a fixed
  order, a tie the student cannot see the reason for.
- **Teacher-led agents** (``data.teacher_led_start``, ``data.teacher_led_steps``): per agent and per episode,
  with probability ``led`` (the schedule's value when the episode starts), the agent executes the teacher's
  actions for its whole episode, as Metta's sliced cloner slices agents; with ``data.teacher_led_by: env``
  the draw is per env, so whole teams are teacher-led. When the schedule reaches 0, every agent is the
  student's at once.

PPO and the teacher-led steps: **masked**. They are left out of the whole PPO loss (clipped surrogate, value
loss, entropy bonus, and the advantage normalisation), so PPO learns from the student's own steps only, and
the teacher-led steps feed behaviour cloning alone. (The buffer still records, for a teacher-led step, the
student's log-probability of the executed action, so the ratios written back for V-trace and the logged KL
statistics are pi_new / pi_student_old everywhere.) Measured on the aligner (16 envs, 150k agent steps, every
agent teacher-led): keeping those steps in PPO, with that log-probability, drove the student away from the
teacher (BC loss 1.6 -> 2-3): the value function cannot tell a teacher-led agent from a student-led one, nor
the idle end of an episode (every junction aligned, the highest per-step reward) from its busy start, so the
teacher's moves got negative advantages and its idle noops positive ones. Keeping only their value loss
still stalled cloning (BC loss flat at 1.5); masked, the BC loss fell to 1.3 and agreement rose from 0.24 to
0.4, as with cloning alone.

The teacher is called only while either weight is above 0; afterwards it costs nothing.
"""

from __future__ import annotations

import bisect
import time
from typing import Sequence

import numpy as np

from aligner_lightning.errors import ConfigError
from aligner_lightning.scripted import ScriptedTeam

# The scripted team as a teacher: ``scripted`` knows the whole map; ``scripted_local`` targets only junctions its
# agent has had in view this episode and otherwise walks to the nearest cell it has not seen (``ScriptedTeam``'s
# local mode), so its choices rest on what the student could have observed.
TEACHERS = ("scripted", "scripted_local")
LED_BY = ("agent", "env")  # data.teacher_led_by: one teacher-led draw per agent's episode, or per env's
NO_LABEL = -1  # a step without a teacher label (the teacher was idle)
# data.teacher_labels: what cloning counts as the teacher's choice: its action, or every move as short as it.
LABELS = ("action", "shortest")


def schedule_problems(start_key: str, start: float, steps_key: str, steps: int, upper: float | None = None) -> list[str]:
    """What is wrong with a linear schedule's two settings (``start``, falling to 0 over ``steps``), named by
    their config keys; ``upper`` bounds ``start`` (a fraction: 1)."""
    p = []
    if not isinstance(start, (int, float)) or start < 0 or (upper is not None and start > upper):
        p.append(f"{start_key}={start!r}: must be " + (f"in [0, {upper:g}]" if upper is not None else ">= 0") +
                 " (0 = off)")
    if not isinstance(steps, int) or steps < 0:
        p.append(f"{steps_key}={steps!r}: must be an int >= 0 (agent steps)")
    elif not p and start > 0 and steps < 1:
        p.append(f"{steps_key}={steps}: must be >= 1 when {start_key} > 0 (the agent steps over which it falls to 0)")
    return p


def linear_anneal(start: float, steps: int, agent_steps: int) -> float:
    """``start`` at agent step 0, falling linearly to 0 at ``steps`` and 0 from then on (0 if ``steps`` is 0)."""
    if start <= 0 or steps <= 0:
        return 0.0
    return start * max(0.0, 1.0 - agent_steps / steps)


class ScriptedTeacher:
    """The scripted team's actions for the agents of an in-process vector env (pufferlib Serial: ``vecenv.envs``).

    ``actions(agent_ids)`` takes the agent ids of one env batch (as ``vecenv.recv`` returns them: whole envs,
    consecutive) and returns, int64, in the same order, the teacher's actions (what a teacher-led agent
    executes) and its labels (the same, or ``NO_LABEL`` where the teacher was idle); after each call ``moves``
    holds, in the same order, the bitmasks of the actions as good as the teacher's (``ScriptedTeam.moves``).
    ``seconds`` and ``env_steps`` count its own cost.
    """

    def __init__(self, vecenv, seeds: Sequence[int], kind: str = "scripted", memory: int | None = None):
        envs = getattr(vecenv, "envs", None)
        if envs is None:
            raise ConfigError([f"data.teacher: the scripted teacher reads each env's simulator, and this "
                               f"vector env ({type(vecenv).__name__}) keeps its envs in worker processes; use "
                               f"data.backend=serial"])
        if len(seeds) != len(envs):
            raise ValueError(f"{len(seeds)} seeds for {len(envs)} envs")
        local = kind == "scripted_local"  # one of TEACHERS
        self.teams = [ScriptedTeam(env, seed=int(seed), local=local, memory=memory) for env, seed in zip(envs, seeds)]
        self._first_agent = list(np.cumsum([0] + [env.num_agents for env in envs]))
        self.seconds = 0.0
        self.env_steps = 0
        self.moves = np.zeros(0, dtype=np.int64)

    def actions(self, agent_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        start = time.perf_counter()
        first, count = int(agent_ids[0]), len(agent_ids)
        env = bisect.bisect_right(self._first_agent, first) - 1
        if self._first_agent[env] != first:
            raise ValueError(f"agent {first} does not start an env: teacher batches must hold whole envs")
        actions, idle, filled = np.empty(count, dtype=np.int64), np.empty(count, dtype=bool), 0
        self.moves = np.empty(count, dtype=np.int64)
        while filled < count:
            team = self.teams[env]
            team_actions = team.actions()
            end = filled + len(team_actions)
            if end > count:
                raise ValueError(f"{count} agents from agent {first} do not make whole envs")
            actions[filled:end], idle[filled:end], self.moves[filled:end] = team_actions, team.idle, team.moves
            filled = end
            env += 1
            self.env_steps += 1
        self.seconds += time.perf_counter() - start
        return actions, np.where(idle, NO_LABEL, actions)
