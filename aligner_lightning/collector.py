"""Collectors: who steps the envs, with which copy of the policy, and when.

A collector acts with its own copy of the policy. The learner hands it new weights through one call,
``publish(PolicyUpdate)``, once before the first rollout and once after every update; ``next_rollout()``
returns the next ``Experience``. Two kinds, chosen by ``data.collector``:

- ``InProcessCollector`` (``sync``, the default): the rollout runs in the trainer's process when the learner
  asks for it, with the weights of the update just made. This is PuffeRL's loop, step for step.
- ``ProcessCollector`` (``async``): a process of its own, with its own vector env, torch threads and RNG,
  collects rollout k+1 while the learner trains on rollout k. Rollout k is collected with the weights after
  update k-1, so the policy lag is exactly one update (rollouts 0 and 1 both use the initial weights). The
  lag is fixed, not "whatever was ready", so a seeded run is reproducible.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import time
import traceback
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from aligner_lightning.allocator import keep_freed_memory
from aligner_lightning.envs import EnvFactory, make_vecenv
from aligner_lightning.errors import CollectorError, ConfigError
from aligner_lightning.experience import Experience
from aligner_lightning.policy_spec import build_policy
from aligner_lightning.rng import capture_rng, restore_rng
from aligner_lightning.rollout import Rollout
from aligner_lightning.shaping import RefillShaping
from aligner_lightning.teacher import ScriptedTeacher, linear_anneal

COLLECTORS = ("sync", "async")


@dataclass
class PolicyUpdate:
    """The learner's one message to the collector: the weights and where training stands."""

    version: int  # updates these weights have seen (the learner's epoch when it publishes them)
    weights: dict[str, torch.Tensor]  # the policy's state_dict
    spec: dict[str, Any]  # the policy's class and arguments, to build the collector's copy once
    agent_steps: int  # global agent steps so far; the teacher-led schedule reads it
    teacher_labels: bool  # the rollout must store the teacher's labels (behaviour cloning is on)


@dataclass
class RolloutRecipe:
    """Everything needed to build a rank's ``Rollout`` (picklable: the async collector builds it in its own
    process). The fields are ``RolloutDataModule``'s arguments of the same names."""

    factory: EnvFactory
    num_envs: int
    backend: str
    num_workers: int | None
    env_batch_size: int | None
    segments: int
    horizon: int
    store_initial_state: bool
    reset_lstm_on_done: bool
    reset_envs_each_epoch: bool
    carry_lstm_state: bool
    reward_scale: float
    reward_clip: float
    refill_shaping: float
    teacher: str | None
    teacher_led_start: float
    teacher_led_steps: int
    teacher_led_by: str
    teacher_labels: str
    teacher_memory: int | None

    def build(self, device: torch.device) -> Rollout:
        vecenv = make_vecenv(self.factory, self.num_envs, self.backend, self.num_workers, self.env_batch_size)
        teacher = None
        if self.teacher is not None:
            try:
                teacher = ScriptedTeacher(vecenv, [self.factory.env_seed(i) for i in range(self.num_envs)],
                                          self.teacher, memory=self.teacher_memory)
            except BaseException:
                vecenv.close()
                raise
        return Rollout(vecenv, self.segments, self.horizon, device, store_initial_state=self.store_initial_state,
                       reset_lstm_on_done=self.reset_lstm_on_done, reset_envs_each_epoch=self.reset_envs_each_epoch,
                       carry_lstm_state=self.carry_lstm_state, reward_scale=self.reward_scale,
                       reward_clip=self.reward_clip, teacher=teacher, teacher_led_by=self.teacher_led_by,
                       teacher_labels=self.teacher_labels,
                       shaping=RefillShaping.for_mission(self.refill_shaping, self.factory.config())
                       if self.refill_shaping > 0 else None)


def _collect(rollout: Rollout, policy: torch.nn.Module, recipe: RolloutRecipe, update: PolicyUpdate,
             epoch: int) -> Experience:
    """One rollout with ``policy`` (holding ``update``'s weights), the teacher as the schedule says."""
    led = linear_anneal(recipe.teacher_led_start, recipe.teacher_led_steps, update.agent_steps)
    use_teacher = rollout.teacher is not None and (led > 0 or update.teacher_labels)
    experience = rollout.collect(policy, epoch, teacher_led=led, use_teacher=use_teacher)
    experience.policy_version = update.version
    return experience


class _PolicyCopy:
    """The collector's own network, built from the first update's spec and loaded from every update (once:
    the async collector's rollouts 0 and 1 share the first)."""

    def __init__(self, env_info, device: torch.device):
        self.env_info, self.device = env_info, device
        self.policy: torch.nn.Module | None = None
        self.spec: dict | None = None
        self._loaded: PolicyUpdate | None = None

    def load(self, update: PolicyUpdate) -> torch.nn.Module:
        if update is self._loaded:
            return self.policy
        if self.policy is None or update.spec != self.spec:
            with torch.random.fork_rng(devices=[]):  # building it must not move the RNG training samples with
                self.policy = build_policy(update.spec, self.env_info).to(self.device)
            self.spec = update.spec
        self.policy.load_state_dict(update.weights)
        self._loaded = update
        return self.policy


class InProcessCollector:
    """``sync``: the rollout runs in this process, on the learner's device, with the latest published weights.
    Checkpoint state: this process's RNG (shared with the learner, as in PuffeRL), the env streams and the
    rank's agent steps."""

    def __init__(self, recipe: RolloutRecipe, env_info, device: torch.device):
        self.recipe = recipe
        self.rollout = recipe.build(device)
        self._copy = _PolicyCopy(env_info, device)
        self._update: PolicyUpdate | None = None
        self._pending: dict | None = None

    def publish(self, update: PolicyUpdate) -> None:
        self._copy.load(update)
        self._update = update

    def next_rollout(self) -> Experience:
        if self._update is None:
            raise CollectorError("next_rollout() before the first publish(): the collector has no weights")
        if self._pending is not None:  # a resumed run: before the first env step and the first random draw
            _restore(self.rollout, self._pending)
            self._pending = None
        return _collect(self.rollout, self._copy.policy, self.recipe, self._update, self._update.version)

    def state(self) -> dict[str, Any]:
        return {"rng": capture_rng(), **_snapshot(self.rollout, rng=False)}

    def restore(self, state: dict[str, Any]) -> None:
        """Applied before the next rollout (call it before the first)."""
        self._pending = state

    def close(self) -> None:
        self.rollout.close()


def _snapshot(rollout: Rollout, rng: bool) -> dict[str, Any]:
    """Where a rollout's streams stand: env seeds, its agent steps, and (``rng``) this process's RNG."""
    state = {"envs": rollout.seed_state(), "agent_steps": rollout.agent_steps}
    if rng:
        state["collector_rng"] = capture_rng()
    return state


def _restore(rollout: Rollout, state: dict[str, Any], rng_key: str = "rng") -> None:
    if state.get(rng_key) is not None:
        restore_rng(state[rng_key])
    rollout.agent_steps = int(state["agent_steps"])
    if state.get("envs") is not None:
        rollout.restore_seed_state(state["envs"])


class ProcessCollector:
    """``async``: a process of its own (forked or spawned: ``start_method``) collects the next rollout while the
    learner trains.

    The process dies with the trainer (``PR_SET_PDEATHSIG``, so even after a SIGKILL), ignores SIGINT (the
    trainer handles Ctrl-C and stops it), and sends any exception's traceback back, where ``next_rollout``
    raises it. It collects on CPU whatever the learner's device.

    Checkpoint state: the learner's RNG, and the collector's RNG, env streams and agent steps as of the end of
    the last rollout it delivered. A resumed run continues those streams; the rollout that was in flight at
    save time is collected again, with the saved weights (lag 0 for that one rollout).
    """

    def __init__(self, recipe: RolloutRecipe, env_info, threads: int, seed: int):
        ctx = torch.multiprocessing.get_context(start_method(threads))
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child_conn, recipe, env_info, threads, seed, os.getpid()),
                                 daemon=True, name="aligner-collector")
        self._proc.start()
        child_conn.close()
        self._snapshot: dict | None = None  # the collector's streams after the last delivered rollout
        self._learner_rng: dict | None = None  # a resumed run's, restored before the first rollout
        self._published = False
        self.rollout = None  # the envs live in the other process

    def publish(self, update: PolicyUpdate) -> None:
        # A copy: the pipe shares tensors' memory, and the learner's parameters change in place.
        weights = {k: v.detach().to("cpu", copy=True) for k, v in update.weights.items()}
        self._send(("update", replace(update, weights=weights)))
        self._published = True

    def next_rollout(self) -> Experience:
        if not self._published:
            raise CollectorError("next_rollout() before the first publish(): the collector has no weights")
        if self._learner_rng is not None:
            restore_rng(self._learner_rng)
            self._learner_rng = None
        start = time.perf_counter()
        while not self._conn.poll(1.0):
            if not self._proc.is_alive():
                raise CollectorError(f"the collector process exited (code {self._proc.exitcode}) without a rollout")
        kind, *payload = self._recv()
        if kind == "error":
            raise CollectorError(f"the collector process failed:\n{payload[0]}")
        experience, self._snapshot = payload
        experience.timing["wait_time"] = time.perf_counter() - start  # the learner idled this long
        return experience

    def state(self) -> dict[str, Any]:
        return {"rng": capture_rng(), **(self._snapshot or {"envs": None, "agent_steps": 0})}

    def restore(self, state: dict[str, Any]) -> None:
        """The learner's RNG before the first rollout; the collector's streams before its first (call this before
        the first ``publish``)."""
        self._learner_rng = state.get("rng")
        self._snapshot = {k: state.get(k) for k in ("envs", "agent_steps", "collector_rng")}
        self._send(("restore", self._snapshot))

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(timeout=5)  # it stops after the rollout in progress...
            if self._proc.is_alive():
                self._proc.terminate()  # ...or now
                self._proc.join(timeout=5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        self._conn.close()

    def _send(self, message: tuple) -> None:
        try:
            self._conn.send(message)
        except (BrokenPipeError, OSError) as err:
            raise CollectorError(f"the collector process is gone (exit code {self._proc.exitcode})") from err

    def _recv(self) -> tuple:
        try:
            return self._conn.recv()
        except (EOFError, OSError) as err:
            raise CollectorError(f"the collector process is gone (exit code {self._proc.exitcode})") from err


START_METHOD_ENV = "ALIGNER_COLLECTOR_START"


def start_method(threads: int) -> str:
    """How the collector process starts. ``fork`` shares the learner's pages (torch's own ~270 MB of
    initialised memory, the imported modules) copy-on-write, where ``spawn`` builds them again; but after the
    learner has run OpenMP kernels, a forked child that runs them on more than one thread hangs, and a CUDA
    context does not survive a fork. So: fork for a one-thread collector of a learner that has not touched CUDA,
    spawn otherwise. ``ALIGNER_COLLECTOR_START=fork|spawn`` forces one."""
    forced = os.environ.get(START_METHOD_ENV, "auto")
    if forced not in ("auto", "fork", "spawn"):
        raise ConfigError([f"{START_METHOD_ENV}={forced!r}: use auto, fork or spawn"])
    if forced == "fork" and threads != 1:
        raise ConfigError([f"{START_METHOD_ENV}=fork needs data.collector_threads=1 (got {threads}): a forked "
                           "collector on more threads hangs in OpenMP; unset it, or set data.collector_threads 1"])
    if forced != "auto":
        return forced
    return "fork" if threads == 1 and not torch.cuda.is_initialized() else "spawn"


def _die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel kills this process when its parent dies, however the parent dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


def _serve(conn, recipe: RolloutRecipe, env_info, threads: int, seed: int, parent_pid: int) -> None:
    """The collector process: rollout k with the weights of update max(first, k - 1), sent as it finishes."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked child inherits the trainer's handler
    keep_freed_memory()  # as the trainer does (cli.main)
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    rollout = None
    try:
        rollout = recipe.build(torch.device("cpu"))
        copy = _PolicyCopy(env_info, torch.device("cpu"))
        update: PolicyUpdate | None = None
        first = epoch = 0  # the first update's version; the epoch the next rollout is for
        while True:
            # Messages arrive in order; read only up to the weights this rollout needs, never ahead.
            while update is None or update.version < max(first, epoch - 1):
                message = conn.recv()
                if message[0] == "stop":
                    return
                if message[0] == "restore":
                    _restore(rollout, message[1], rng_key="collector_rng")
                    continue
                if update is None:
                    first = epoch = message[1].version
                update = message[1]
            experience = _collect(rollout, copy.load(update), recipe, update, epoch)
            # A copy: the next rollout refills the buffer while the learner still trains on this one.
            sent = experience.map_tensors(torch.clone)
            conn.send(("rollout", sent, _snapshot(rollout, rng=True)))
            epoch += 1
    except Exception:
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        if rollout is not None:
            rollout.close()
