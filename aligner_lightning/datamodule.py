"""RolloutDataModule: the experience source.

It owns this rank's vector env and a collector (``collector.py``) that acts with its own copy of the policy.
Its train loader yields one batch per epoch: one whole rollout, an ``Experience``. The LightningModule hands it
new weights through one call, ``publish_policy(PolicyUpdate)``, before the first rollout and after every update;
the DataModule never reaches into the LightningModule.

Its checkpoint state (``state_dict``) is every rank's: RNG, env streams and agent steps, restored to the rank
that wrote them.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from aligner_lightning import distributed
from aligner_lightning.collector import (COLLECTORS, InProcessCollector, PolicyUpdate, ProcessCollector,
                                         RolloutRecipe)
from aligner_lightning.envs import BACKENDS, EnvFactory, env_interface, resolve_backend
from aligner_lightning.errors import raise_if
from aligner_lightning.experience import Experience
from aligner_lightning.missions import make_mission
from aligner_lightning.rollout import Rollout
from aligner_lightning.teacher import LABELS, LED_BY, TEACHERS, schedule_problems


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
        refill_shaping: float = 0.0,
        reset_envs_each_epoch: bool = False,
        teacher: str | None = None,
        teacher_led_start: float = 0.0,
        teacher_led_steps: int = 0,
        teacher_led_by: str = "agent",
        teacher_labels: str = "action",
        teacher_memory: int | None = None,
        collector: str = "sync",
        collector_threads: int = 1,
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
            refill_shaping: option (0 = off): a training-only reward of this much per step closer to the spawn
                pad while an agent holds aligner gear and no heart, added to the env's reward before the scale
                and the clamp (``aligner_lightning/shaping.py``).
            reset_envs_each_epoch: deterministic mode (serial only): reset every env at each epoch's start with
                seeds from (seed, rank, env index, epoch), so a resumed run replays exactly; episodes still
                running at an epoch's end are cut (keep episodes no longer than the rollout).
            teacher: kickstarting (off: null): ``scripted`` runs the privileged scripted team beside the envs
                (serial backend only), for behaviour cloning (``model.bc_coef_start``) and teacher-led agents;
                ``scripted_local`` is the same team knowing only what each agent has seen. See
                ``aligner_lightning/teacher.py``.
            teacher_led_start: the probability, at agent step 0, that an agent's episode is played by the
                teacher (those steps are masked out of the PPO loss and feed behaviour cloning only); it falls
                linearly to 0 over ``teacher_led_steps``.
            teacher_led_steps: global agent steps over which ``teacher_led_start`` falls to 0.
            teacher_led_by: what one teacher-led draw covers: ``agent`` (each agent's episode on its own, so a
                student plays beside teacher-led teammates) or ``env`` (every agent of an env's episode: whole
                teams are the teacher's or the student's).
            teacher_labels: what behaviour cloning takes as the teacher's choice: ``action`` (its action) or
                ``shortest`` (every move as good as its action: any free move along a shortest path to its goal).
            teacher_memory: ``scripted_local`` only (null: the whole episode): each of the teacher's agents knows
                only the cells it has had in view in its last this-many steps, so its choices rest on what a
                student could have seen that recently.
            collector: ``sync`` (PuffeRL: collect, then train, in turn) or ``async`` (option: a process of its
                own collects the next rollout while the learner trains on this one; the policy lag is one update;
                serial backend only). See docs/algorithm.md.
            collector_threads: torch threads of the async collector process.
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
        self.collector: InProcessCollector | ProcessCollector | None = None
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
        if not 0 <= self.hparams.refill_shaping < float("inf"):
            p.append(f"data.refill_shaping={self.hparams.refill_shaping}: must be >= 0 (0 = off)")
        p += self._validate_teacher()
        if self.hparams.collector not in COLLECTORS:
            p.append(f"data.collector={self.hparams.collector!r}: must be one of {', '.join(COLLECTORS)}")
        elif self.hparams.collector == "async":
            if self.backend != "serial":
                p.append(f"data.collector=async needs data.backend=serial (got {self.backend!r}): the collector "
                         "process steps its envs itself")
            if self.hparams.reset_envs_each_epoch:
                p.append("data.reset_envs_each_epoch=true needs data.collector=sync (deterministic mode)")
        if not isinstance(self.hparams.collector_threads, int) or self.hparams.collector_threads < 1:
            p.append(f"data.collector_threads={self.hparams.collector_threads!r}: must be a positive integer")
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
        if hp.teacher_led_by not in LED_BY:
            p.append(f"data.teacher_led_by={hp.teacher_led_by!r}: must be one of {', '.join(LED_BY)}")
        if hp.teacher_labels not in LABELS:
            p.append(f"data.teacher_labels={hp.teacher_labels!r}: must be one of {', '.join(LABELS)}")
        if hp.teacher_memory is not None and (not isinstance(hp.teacher_memory, int) or hp.teacher_memory < 1
                                              or hp.teacher != "scripted_local"):
            p.append(f"data.teacher_memory={hp.teacher_memory!r}: must be null (the whole episode) or an int >= 1 "
                     f"(steps), with data.teacher: scripted_local")
        if not p and hp.teacher_led_start > 0 and hp.teacher is None:
            p.append(f"data.teacher_led_start={hp.teacher_led_start}: needs a teacher "
                     f"(data.teacher: {' or '.join(TEACHERS)})")
        if hp.teacher is not None and self.backend in BACKENDS:
            resolved = self.backend
            if resolved == "auto":
                resolved = resolve_backend(self.backend, self.num_envs, self.num_workers, quiet=True)[0]
            if resolved != "serial":
                via = " (data.backend=auto chose it on this machine)" if self.backend == "auto" else ""
                p.append(f"data.teacher={hp.teacher!r}: the teacher reads each env's simulator in this process, and "
                         f"the {resolved} backend{via} keeps the envs in worker processes; use data.backend=serial")
        return p

    # -- the experience source -----------------------------------------------------------------------------
    def recipe(self) -> RolloutRecipe:
        """How to build this rank's rollout (its envs start at ``factory.first_env``)."""
        hp = self.hparams
        return RolloutRecipe(
            factory=self.factory, num_envs=self.num_envs, backend=self.backend, num_workers=self.num_workers,
            env_batch_size=self.env_batch_size, segments=self.segments, horizon=self.horizon,
            store_initial_state=hp.store_initial_state, reset_lstm_on_done=hp.reset_lstm_on_done,
            reset_envs_each_epoch=hp.reset_envs_each_epoch, carry_lstm_state=hp.carry_lstm_state,
            reward_scale=hp.reward_scale, reward_clip=hp.reward_clip, refill_shaping=hp.refill_shaping,
            teacher=hp.teacher,
            teacher_led_start=hp.teacher_led_start, teacher_led_steps=hp.teacher_led_steps,
            teacher_led_by=hp.teacher_led_by, teacher_labels=hp.teacher_labels, teacher_memory=hp.teacher_memory)

    def make_rollout(self, device: torch.device) -> Rollout:
        """This rank's vector env and rollout buffer, with this module's options (for driving it by hand)."""
        return self.recipe().build(device)

    @property
    def rollout(self) -> Rollout | None:
        """The in-process rollout (sync collector); None before ``setup`` and in async mode."""
        return self.collector.rollout if self.collector is not None else None

    def publish_policy(self, update: PolicyUpdate) -> None:
        """The learner's hand-off: the weights the next rollouts act with, and where training stands."""
        self.collector.publish(update)

    # -- Lightning hooks -----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit" or self.collector is not None:
            return
        rank = self.trainer.global_rank if self.trainer else 0
        self.factory.first_env = rank * self.num_envs
        if self.hparams.collector == "async":
            # Its own seed stream, from the run's seed and the rank.
            seed = (torch.initial_seed() * 1_000_003 + rank + 1) % 2**63
            self.collector = ProcessCollector(self.recipe(), self.env_info, self.hparams.collector_threads, seed)
        else:
            device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
            self.collector = InProcessCollector(self.recipe(), self.env_info, device)

    def teardown(self, stage: str) -> None:
        if self.collector is not None:
            self.collector.close()
            self.collector = None

    def train_dataloader(self) -> "RolloutLoader":
        return RolloutLoader(self)

    def val_dataloader(self) -> list[int]:
        return [0]  # one "batch": validation_step plays this rank's evaluation episodes itself

    def test_dataloader(self) -> list[int]:
        return [0]

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch.to(device) if isinstance(batch, Experience) else batch

    def state_dict(self) -> dict[str, Any]:
        """Every rank's collector state (gathered: Lightning saves rank 0's view only)."""
        if self.collector is None:
            return {}
        return {"ranks": distributed.gather_objects(self.collector.state())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Called on resume after ``setup`` and before the first rollout."""
        if self.collector is None:
            return
        ranks = state.get("ranks") or []
        if len(ranks) != distributed.world_size():
            rank_zero_warn("the checkpoint holds no env streams for this run's ranks: the envs start from their "
                           "first maps again and the RNG is not restored")
            return
        self.collector.restore(ranks[distributed.rank()])

    def geometry(self) -> dict[str, int]:
        """The batch layout a checkpoint's optimizer state and schedule were built for."""
        return {"batch_size": self.batch_size, "bptt_horizon": self.horizon, "minibatch_size": self.minibatch_size,
                "total_agents": self.total_agents}

    def on_exception(self, exception: BaseException) -> None:
        self.teardown("fit")  # close the envs (and any worker or collector process) on the way out


class RolloutLoader:
    """One pass = one epoch's batch: the next rollout."""

    def __init__(self, dm: RolloutDataModule):
        self.dm = dm

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[Experience]:
        yield self.dm.collector.next_rollout()
