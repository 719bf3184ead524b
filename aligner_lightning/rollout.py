"""Rollout: act in the vector env with a policy and fill one ``Experience`` (``experience.py`` has the layout).
The only module that steps environments; the collectors (``collector.py``) drive it in process or in a process
of their own.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from aligner_lightning.envs import reseed_vecenv, restore_vecenv_seed_state, vecenv_seed_state
from aligner_lightning.experience import Experience
from aligner_lightning.policy import action_logprob, sample_actions
from aligner_lightning.policy_spec import RecurrentPolicy, State
from aligner_lightning.shaping import RefillShaping
from aligner_lightning.teacher import NO_LABEL, ScriptedTeacher


def initial_state_buffers(buf: Experience, state: State) -> State | None:
    """The stored-state buffers of ``buf``, shaped like ``state`` per row, allocated at first use."""
    if buf.initial_state is None:
        buf.initial_state = tuple(torch.zeros(buf.segments, *s.shape[1:], dtype=s.dtype, device=s.device)
                                  for s in state)
    return buf.initial_state


@dataclass
class EpisodeStats:
    """Sums of the finished episodes' info values, and how many episodes, since the last ``pop``.

    mettagrid leaves a stat out of an episode's info when it is 0, so a key missing from an episode counts as 0
    and every mean is over all episodes. (PuffeRL averages each key over the episodes that have it, which
    inflates rare events such as alignments early in training.)
    """

    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    episodes: int = 0

    def add(self, info: dict) -> None:
        if "episode_return" not in info:  # resets hand back empty infos
            return
        self.episodes += 1
        for k, v in info.items():
            if isinstance(v, (int, float, np.floating, np.integer)):
                self.sums[k] += float(v)

    def pop(self) -> tuple[dict[str, float], int]:
        sums, episodes = dict(self.sums), self.episodes
        self.sums.clear()
        self.episodes = 0
        return sums, episodes


class Rollout:
    """Owns the vector env, one ``Experience`` (filled in place by every ``collect``) and each env batch's policy
    state between steps.

    ``teacher`` (optional, ``teacher.ScriptedTeacher``) is called by ``collect`` at every env step while
    ``use_teacher`` is set; see ``teacher.py`` for what the buffer then holds.
    """

    def __init__(self, vecenv, segments: int, horizon: int, device: torch.device, *, store_initial_state: bool,
                 reset_lstm_on_done: bool, reset_envs_each_epoch: bool, carry_lstm_state: bool, reward_scale: float,
                 reward_clip: float, teacher: ScriptedTeacher | None, teacher_led_by: str, teacher_labels: str,
                 shaping: RefillShaping | None):
        """The options are ``RolloutDataModule``'s arguments of the same names (``RolloutRecipe.build`` passes them)."""
        self.vecenv = vecenv
        self.horizon = horizon
        self.device = device
        self.total_agents = vecenv.num_agents
        self.agents_per_batch = vecenv.agents_per_batch
        self.buffer = Experience.allocate(segments, horizon, vecenv.single_observation_space.shape, device,
                                          teacher=teacher is not None,
                                          teacher_moves=teacher is not None and teacher_labels == "shortest")
        # Option (off by default, PuffeRL starts every training segment from zeros): store each row's policy
        # state at its first step, so that training replays the segment from it.
        self.store_initial_state = store_initial_state
        self.teacher = teacher
        self._led: dict[int, torch.Tensor] = {}  # env batch start -> which of its agents the teacher leads
        # One draw per agent, or one per env shared by its agents (contiguous in a batch, as the backends order them).
        self._led_group = vecenv.driver_env.num_agents if teacher_led_by == "env" else 1
        self.reset_lstm_on_done = reset_lstm_on_done
        self.reset_envs_each_epoch = reset_envs_each_epoch
        self.carry_lstm_state = carry_lstm_state
        self.reward_scale, self.reward_clip = reward_scale, reward_clip
        self.shaping = shaping  # option: a training-only reward added to the env's (shaping.py)
        self.episodes = EpisodeStats()
        self.agent_steps = 0  # this process's env steps, all epochs
        self._state: dict[int, State] = {}  # env batch start -> the policy state of its agents
        # On CUDA: one pinned host staging copy per step, so the device copy is a single async transfer.
        # On CPU the env's own array is read in place and copied once, into the buffer.
        obs_shape = (self.agents_per_batch, *vecenv.single_observation_space.shape)
        self._obs_host = torch.empty(obs_shape, dtype=torch.uint8, pin_memory=True) if device.type == "cuda" else None
        self._started = False

    def start(self) -> None:
        """Reset every env (each with its own seed) once, before the first epoch."""
        self.vecenv.async_reset(0)  # the number is ignored: SeededPufferEnv keeps its (seed, rank, index) seed
        if self.shaping is not None:
            self.shaping.reset()
        self._started = True

    @torch.inference_mode()
    def collect(self, policy: RecurrentPolicy, epoch: int = 0, teacher_led: float = 0.0,
                use_teacher: bool = False) -> Experience:
        """Fill every row of ``self.buffer`` with fresh experience and return it (the same object every time).
        ``epoch`` seeds the envs in deterministic mode (``reset_envs_each_epoch``).

        With ``use_teacher`` the teacher is asked at every step (its labels are stored), and an agent starting an
        episode is teacher-led for that episode with probability ``teacher_led``.
        """
        if use_teacher and self.teacher is None:
            raise RuntimeError("collect(use_teacher=True) on a Rollout built without a teacher")
        if self.reset_envs_each_epoch or not use_teacher or teacher_led <= 0:
            self._led.clear()  # new episodes (or no leading): every agent is drawn again
        teacher_seconds = self.teacher.seconds if self.teacher is not None else 0.0
        teacher_steps = 0
        teacher_counts = torch.zeros(3, dtype=torch.long, device=self.device)  # led, labelled, argmax agrees
        if self.reset_envs_each_epoch:  # deterministic mode: every epoch starts from envs seeded by the epoch
            reseed_vecenv(self.vecenv, epoch)
            self.start()
        elif not self._started:
            self.start()
        buf, horizon, device = self.buffer, self.horizon, self.device
        segments = buf.segments
        steps_before = self.agent_steps
        if buf.teacher_actions is not None and not use_teacher:  # no labels from an earlier rollout survive
            buf.teacher_actions.fill_(NO_LABEL)
            buf.teacher_led.zero_()
        was_training = policy.training
        policy.eval()
        if not self.carry_lstm_state:  # PuffeRL zeroes the LSTM state at every epoch's start
            for state in self._state.values():
                for s in state:
                    s.zero_()
        next_row = self.total_agents
        row_of: dict[int, int] = {}  # env batch start -> first buffer row it writes
        col_of: dict[int, int] = {}  # env batch start -> column t
        full_rows = 0
        env_time = policy_time = 0.0
        t0 = time.perf_counter()
        while full_rows < segments:
            te = time.perf_counter()
            obs_np, rew_np, term_np, trunc_np, _teacher, infos, env_id, mask = self.vecenv.recv()
            env_time += time.perf_counter() - te
            start = int(env_id[0])
            n = len(env_id)
            self.agent_steps += int(mask.sum())
            for info in infos:
                self.episodes.add(info)

            if self._obs_host is None:
                obs = torch.from_numpy(obs_np)
            else:
                self._obs_host[:n].numpy()[:] = obs_np
                obs = self._obs_host[:n].to(device, non_blocking=True)
            # Not in place: on CPU these tensors share memory with the env's buffers.
            rewards = torch.from_numpy(rew_np).to(device)
            if self.shaping is not None:
                rewards = rewards + self.shaping.bonus(start, obs, torch.from_numpy(term_np | trunc_np).to(device))
            if self.reward_scale != 1.0:
                rewards = rewards * self.reward_scale
            rewards = rewards.clamp(-self.reward_clip, self.reward_clip)
            terminals = torch.from_numpy(term_np).to(device).float()

            state = self._state.get(start)
            if state is None:
                state = self._state[start] = policy.initial_state(n, device)
            t = col_of.setdefault(start, 0)
            row = row_of.setdefault(start, start)
            if t == 0 and self.store_initial_state and row < segments:
                for buffer, s in zip(initial_state_buffers(buf, state), state):
                    buffer[row:row + n] = s
            tp = time.perf_counter()
            logits, value, new_state = policy.step(obs, state)
            for s, new in zip(state, new_state):
                if self.reset_lstm_on_done:  # option: the next episode starts from the initial (zero) state
                    new = new * (1.0 - terminals).view(-1, *([1] * (new.dim() - 1)))
                s.copy_(new)
            action, logprob = sample_actions(logits)
            policy_time += time.perf_counter() - tp
            if use_teacher:
                action, logprob, label, led = self._teach(start, env_id, term_np | trunc_np, logits, action, logprob,
                                                          teacher_led)

            if row < segments:  # async backends can return a batch again after its last row filled
                rows = slice(row, row + n)
                buf.obs[rows, t] = obs
                buf.actions[rows, t] = action
                buf.logprobs[rows, t] = logprob
                buf.rewards[rows, t] = rewards
                buf.terminals[rows, t] = terminals
                buf.values[rows, t] = value.float()
                if use_teacher:
                    buf.teacher_actions[rows, t] = label
                    buf.teacher_led[rows, t] = led
                    if buf.teacher_moves is not None:
                        buf.teacher_moves[rows, t] = torch.from_numpy(self.teacher.moves).to(device)
                    teacher_steps += n
                    teacher_counts += torch.stack([led.sum(), (label >= 0).sum(), (logits.argmax(dim=-1) == label).sum()])
                if t + 1 >= horizon:
                    row_of[start] = next_row
                    col_of[start] = 0
                    next_row += n
                    full_rows += n
                else:
                    col_of[start] = t + 1

            te = time.perf_counter()
            self.vecenv.send(action.cpu().numpy())
            env_time += time.perf_counter() - te
        policy.train(was_training)
        total = time.perf_counter() - t0
        buf.timing = {"rollout_time": total, "env_time": env_time, "policy_time": policy_time}
        buf.teacher_stats = None
        if self.teacher is not None:
            buf.timing["teacher_time"] = self.teacher.seconds - teacher_seconds
            led, labelled, agree = (float(x) for x in teacher_counts.tolist())
            if use_teacher:
                buf.teacher_stats = {"steps": float(teacher_steps), "led": led, "labelled": labelled, "agree": agree}
        buf.teacher_led_fraction = teacher_led if use_teacher else 0.0
        buf.agent_steps = self.agent_steps - steps_before
        buf.episode_sums, buf.episodes = self.episodes.pop()
        return buf

    def _teach(self, start: int, env_id: np.ndarray, done: np.ndarray, logits: torch.Tensor, action: torch.Tensor,
               logprob: torch.Tensor, led_fraction: float) -> tuple[torch.Tensor, ...]:
        """The teacher's actions for one env batch; the teacher-led agents execute them.

        An agent is drawn (probability ``led_fraction``) when it is first seen and whenever its episode has just
        ended (``done``: the action chosen now is the next episode's first); with ``teacher_led_by: env`` the
        agents of one env share their env's draw (they start and end their episodes together). Returns the executed actions, their
        log-probabilities under the student (the same formula as ``sample_actions``), the teacher's labels and
        the teacher-led mask.
        """
        teacher_np, label_np = self.teacher.actions(env_id)
        teacher_action = torch.from_numpy(teacher_np).to(self.device)
        n = len(env_id)
        led = self._led.get(start)
        if led_fraction > 0:
            if led is None:
                led = self._draw_led(n, led_fraction)
            elif done.any():
                redraw = torch.from_numpy(done.astype(bool)).to(self.device)
                led = torch.where(redraw, self._draw_led(n, led_fraction), led)
            self._led[start] = led
        else:
            led = torch.zeros(n, dtype=torch.bool, device=self.device)
        if bool(led.any()):
            action = torch.where(led, teacher_action, action)
            logprob = action_logprob(logits, action)
        return action, logprob, torch.from_numpy(label_np).to(self.device), led

    def _draw_led(self, n: int, led_fraction: float) -> torch.Tensor:
        """Teacher-led or not for ``n`` agents, drawn per agent or per env (``_led_group`` agents each)."""
        draw = torch.rand(n).view(-1, self._led_group)[:, :1].expand(-1, self._led_group).reshape(-1)
        return (draw < led_fraction).to(self.device)

    def seed_state(self) -> list[dict] | None:
        return vecenv_seed_state(self.vecenv)

    def restore_seed_state(self, states: list[dict]) -> None:
        """Resume each env's map stream; applied by the first reset, so call before the first ``collect``."""
        if self._started:
            raise RuntimeError("restore_seed_state must run before the first rollout")
        # Deterministic mode resets every env at each epoch's start: nothing of an episode in progress carries on.
        restore_vecenv_seed_state(self.vecenv, states, keep_phase=not self.reset_envs_each_epoch)

    def close(self) -> None:
        self.vecenv.close()
