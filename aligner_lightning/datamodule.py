"""RolloutDataModule: the Lightning face of the rollout.

Its train loader is an iterable whose ``__iter__`` runs one epoch: a rollout with the current policy, then
``update_epochs * batch_size / minibatch_size`` prioritized minibatches, each drawn lazily. The module
fetches them itself (``training_step(dataloader_iter)``), so Lightning never prefetches a minibatch before
the previous step has written its ratios and values back. Everything runs in the main process.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import lightning as L
import torch

from aligner_lightning import algorithm
from aligner_lightning.envs import BACKENDS, EnvFactory, env_interface, make_vecenv, resolve_backend
from aligner_lightning.errors import raise_if
from aligner_lightning.missions import make_mission
from aligner_lightning.rollout import Minibatch, Rollout
from aligner_lightning.teacher import TEACHERS, ScriptedTeacher, linear_anneal, schedule_problems


class RolloutDataModule(L.LightningDataModule):
    def __init__(
        self,
        mission: str = "aligner_tutorial",
        mission_overrides: dict[str, Any] | None = None,
        num_envs: int = 4,
        backend: str = "serial",
        num_workers: int | None = None,
        env_batch_size: int | None = None,
        seed: int = 42,
        seed_stride: int = 1,
        early_reset: bool = True,
        bptt_horizon: int = 64,
        batch_size: int = 4096,
        minibatch_size: int = 4096,
        max_minibatch_size: int = 32768,
        update_epochs: int = 1,
        reset_lstm_on_done: bool = False,
        store_initial_state: bool = False,
        carry_lstm_state: bool = False,
        reward_scale: float = 1.0,
        reward_clip: float = 1.0,
        reset_envs_each_epoch: bool = False,
        teacher: str | None = None,
        teacher_led_start: float = 0.0,
        teacher_led_steps: int = 0,
    ):
        """
        Args:
            mission: registered mission name (``aligner_lightning.missions.list_missions()``).
            mission_overrides: validated mission overrides, e.g. ``{max_steps: 500}``.
            num_envs: envs per rank (each with the mission's agents).
            backend: ``serial`` (one process), ``multiprocessing``, or ``auto`` (picks from the core count).
            num_workers: Multiprocessing worker processes; must divide ``num_envs``.
            env_batch_size: envs per Multiprocessing batch; below ``num_envs`` it overlaps env steps with inference.
            seed: env seed; env i of rank r uses ``seed + (r * num_envs + i) * seed_stride``.
            seed_stride: spacing of the per-env seed streams (1 = the tutorial's seeds).
            early_reset: end each env's first episode at a random step (the tutorial's desynchronisation).
            bptt_horizon: steps per segment (H).
            batch_size: agent steps per rank per epoch (B); must be a multiple of H and of agents x H.
            minibatch_size: agent steps per gradient computation; a multiple of H, at most ``batch_size``.
            max_minibatch_size: larger minibatches are split into this size and their gradients summed.
            update_epochs: passes over the buffer per epoch.
            reset_lstm_on_done: option, off in PuffeRL: zero an agent's LSTM state when its episode ends.
            store_initial_state: option, off in PuffeRL: replay each segment from its rollout-time LSTM state.
            carry_lstm_state: option, off in PuffeRL: keep each agent's LSTM state from one rollout to the next
                instead of zeroing it at every epoch's start (pair it with ``store_initial_state``, so that
                training replays segments from the state they were collected with).
            reward_scale: the rollout stores ``clamp(reward * reward_scale, -reward_clip, reward_clip)``; PuffeRL
                is 1 and 1. A scale of 0.2 keeps the aligner's shaping apart (an alignment no longer counts the
                same as a gear pickup). Logged episode returns are always the env's own.
            reward_clip: the clamp's bound, applied after the scale.
            reset_envs_each_epoch: deterministic mode (serial only): reset every env at each epoch's start with
                seeds from (seed, rank, env index, epoch), so a resumed run replays exactly; episodes still
                running at an epoch's end are cut (keep episodes no longer than the rollout).
            teacher: kickstarting (off: null): ``scripted`` runs the privileged scripted team beside the envs
                (serial backend only), for behaviour cloning (``model.bc_coef_start``) and teacher-led agents.
                See ``aligner_lightning/teacher.py``.
            teacher_led_start: the probability, at agent step 0, that an agent's episode is played by the
                teacher (those steps are masked out of the PPO loss and feed behaviour cloning only); it falls
                linearly to 0 over ``teacher_led_steps``.
            teacher_led_steps: global agent steps over which ``teacher_led_start`` falls to 0.
        """
        super().__init__()
        self.save_hyperparameters()
        self.mission_overrides = dict(mission_overrides or {})
        self.num_envs, self.backend, self.num_workers = num_envs, backend, num_workers
        self.env_batch_size = env_batch_size
        self.horizon, self.batch_size = bptt_horizon, batch_size
        self.minibatch_size, self.max_minibatch_size = minibatch_size, max_minibatch_size
        self.update_epochs = update_epochs
        self.factory = EnvFactory(mission, self.mission_overrides, seed, seed_stride, early_reset)
        self.agents_per_env = make_mission(mission, **self.mission_overrides).game.num_agents
        self._validate()
        self.rollout: Rollout | None = None
        self.env_info = env_interface(self.factory)

    # -- sizes (spec section 1) ----------------------------------------------------------------------------
    @property
    def segments(self) -> int:
        return self.batch_size // self.horizon

    @property
    def total_agents(self) -> int:
        return self.num_envs * self.agents_per_env

    @property
    def accumulation_steps(self) -> int:
        return max(1, self.minibatch_size // self.max_minibatch_size)

    @property
    def num_minibatches(self) -> int:
        return int(self.update_epochs * self.batch_size / min(self.minibatch_size, self.max_minibatch_size))

    @property
    def minibatch_segments(self) -> int:
        return min(self.minibatch_size, self.max_minibatch_size) // self.horizon

    def _validate(self) -> None:
        p: list[str] = []
        h, b, mb, mmb = self.horizon, self.batch_size, self.minibatch_size, self.max_minibatch_size
        for name, value in (("num_envs", self.num_envs), ("bptt_horizon", h), ("batch_size", b),
                            ("minibatch_size", mb), ("max_minibatch_size", mmb), ("update_epochs", self.update_epochs)):
            if not isinstance(value, int) or value < 1:
                p.append(f"data.{name}={value!r}: must be a positive integer")
        if p:
            raise_if(p)
        if self.backend not in BACKENDS:
            p.append(f"data.backend={self.backend!r}: must be one of {', '.join(BACKENDS)}")
        agents = self.total_agents
        if b % h:
            p.append(f"data.batch_size={b}: must be a multiple of data.bptt_horizon={h} (try {max(h, b // h * h)})")
        elif b < agents * h or (b // h) % agents:
            p.append(f"data.batch_size={b}: must be a multiple of agents x horizon = {agents} x {h} = {agents * h} "
                     f"(every agent fills whole segments); try {max(1, b // (agents * h)) * agents * h}")
        if mb % h:
            p.append(f"data.minibatch_size={mb}: must be a multiple of data.bptt_horizon={h}")
        if mb > b:
            p.append(f"data.minibatch_size={mb}: must be <= data.batch_size={b}")
        if mb > mmb and mb % mmb:
            p.append(f"data.minibatch_size={mb}: above data.max_minibatch_size={mmb} it must be a multiple of it")
        if mmb % h:
            p.append(f"data.max_minibatch_size={mmb}: must be a multiple of data.bptt_horizon={h}")
        if not self.hparams.reward_scale > 0:
            p.append(f"data.reward_scale={self.hparams.reward_scale}: must be > 0 (1 = PuffeRL)")
        if not self.hparams.reward_clip > 0:
            p.append(f"data.reward_clip={self.hparams.reward_clip}: must be > 0 (1 = PuffeRL)")
        p += self._validate_teacher()
        if self.hparams.reset_envs_each_epoch and self.backend != "serial":
            p.append(f"data.reset_envs_each_epoch=true needs data.backend=serial (got {self.backend!r})")
        if self.backend == "multiprocessing":
            workers = self.num_workers or 1
            if self.num_envs % workers:
                p.append(f"data.num_workers={workers}: must divide data.num_envs={self.num_envs}")
            cores = os.cpu_count() or 1
            if workers > cores:
                p.append(f"data.num_workers={workers}: more than this machine's {cores} cores (PufferLib refuses); "
                         f"use at most {cores}, or data.backend=auto")
            eb = self.env_batch_size or self.num_envs
            if eb % (self.num_envs // max(workers, 1)) or self.num_envs % eb:
                p.append(f"data.env_batch_size={eb}: must divide data.num_envs={self.num_envs} and be a multiple "
                         f"of envs per worker ({self.num_envs // max(workers, 1)})")
        raise_if(p)

    def _validate_teacher(self) -> list[str]:
        hp, p = self.hparams, []
        if hp.teacher is not None and hp.teacher not in TEACHERS:
            p.append(f"data.teacher={hp.teacher!r}: must be null (no teacher) or one of {', '.join(TEACHERS)}")
        p += schedule_problems("data.teacher_led_start", hp.teacher_led_start, "data.teacher_led_steps",
                               hp.teacher_led_steps, upper=1.0)
        if not p and hp.teacher_led_start > 0 and hp.teacher is None:
            p.append(f"data.teacher_led_start={hp.teacher_led_start}: needs a teacher (data.teacher=scripted)")
        if hp.teacher is not None and self.backend in BACKENDS:
            resolved = self.backend
            if resolved == "auto":
                resolved = resolve_backend(self.backend, self.num_envs, self.num_workers, quiet=True)[0]
            if resolved != "serial":
                via = " (data.backend=auto chose it on this machine)" if self.backend == "auto" else ""
                p.append(f"data.teacher={hp.teacher!r}: the teacher reads each env's simulator in this process, and "
                         f"the {resolved} backend{via} keeps the envs in worker processes; use data.backend=serial")
        return p

    def teacher_led_fraction(self, agent_steps: int) -> float:
        """The scheduled probability that an agent's episode starting now is teacher-led."""
        return linear_anneal(self.hparams.teacher_led_start, self.hparams.teacher_led_steps, agent_steps)

    # -- Lightning hooks -----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit" or self.rollout is not None:
            return
        rank = self.trainer.global_rank if self.trainer else 0
        self.factory.first_env = rank * self.num_envs
        device = self.trainer.lightning_module.device if self.trainer else torch.device("cpu")
        self.rollout = self.make_rollout(device)

    def make_rollout(self, device: torch.device) -> Rollout:
        """This rank's vector env and rollout buffer, with this module's options."""
        vecenv = make_vecenv(self.factory, self.num_envs, self.backend, self.num_workers, self.env_batch_size)
        hp = self.hparams
        teacher = None
        if hp.teacher is not None:
            try:
                teacher = ScriptedTeacher(vecenv, [self.factory.env_seed(i) for i in range(self.num_envs)])
            except BaseException:
                vecenv.close()
                raise
        return Rollout(vecenv, self.segments, self.horizon, device, store_initial_state=hp.store_initial_state,
                       reset_lstm_on_done=hp.reset_lstm_on_done, reset_envs_each_epoch=hp.reset_envs_each_epoch,
                       carry_lstm_state=hp.carry_lstm_state, reward_scale=hp.reward_scale, reward_clip=hp.reward_clip,
                       teacher=teacher)

    def teardown(self, stage: str) -> None:
        if self.rollout is not None:
            self.rollout.close()
            self.rollout = None

    def train_dataloader(self) -> "EpochIterable":
        return EpochIterable(self)

    def val_dataloader(self) -> list[int]:
        return [0]  # one "batch": validation_step plays this rank's evaluation episodes itself

    def test_dataloader(self) -> list[int]:
        return [0]

    def geometry(self) -> dict[str, int]:
        """The batch layout a checkpoint's optimizer state and schedule were built for."""
        return {"batch_size": self.batch_size, "bptt_horizon": self.horizon, "minibatch_size": self.minibatch_size,
                "total_agents": self.total_agents}

    def on_exception(self, exception: BaseException) -> None:
        self.teardown("fit")  # close the envs (and any worker processes) on the way out


class EpochIterable:
    """One pass = one PuffeRL epoch: the rollout, then the minibatches (drawn lazily)."""

    def __init__(self, dm: RolloutDataModule):
        self.dm = dm

    def __len__(self) -> int:
        return self.dm.num_minibatches

    def __iter__(self) -> Iterator[Minibatch]:
        dm = self.dm
        module = dm.trainer.lightning_module
        rollout = dm.rollout
        led, bc = module.teacher_weights()  # both 0 without a teacher
        if rollout.teacher is None:
            timing = rollout.collect(module.policy, module.puffer_epoch)
        else:
            timing = rollout.collect(module.policy, module.puffer_epoch, teacher_led=led, use_teacher=led > 0 or bc > 0)
        module.on_rollout_end(timing)
        beta = algorithm.anneal_beta(module.algo.prio_beta0, module.algo.prio_alpha,
                                     module.puffer_epoch, module.total_epochs)
        yield from rollout.minibatches(dm.num_minibatches, dm.minibatch_segments, module.algo, beta)
