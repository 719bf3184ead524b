"""The LightningModule: owns the policy, the optimizer and the LR schedule; one training_step per minibatch.

Manual optimization, as PuffeRL does it: gradients of ``accumulation_steps`` minibatches are summed, clipped
to ``max_grad_norm``, and applied with Adam; the cosine schedule steps once per epoch. One Lightning epoch is
one PuffeRL epoch (a rollout plus its updates), and the run stops once ``total_timesteps`` agent steps (summed
over ranks) have been collected. Metrics go to the logger against agent steps, not optimizer steps.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.tensorboard import SummaryWriter

from aligner_lightning import algorithm
from aligner_lightning.errors import ConfigError, TrainingDiverged, raise_if
from aligner_lightning.envs import tensorboard_tag
from aligner_lightning.episodes import EvalSettings, PolicyActor, format_table, play_episodes, summarize
from aligner_lightning.policy import AlignerPolicy, logprob_and_entropy
from aligner_lightning.policy_spec import (PolicyFactory, PolicySpecError, build_policy, canonical, default_spec,
                                           spec_of)
from aligner_lightning.render import log_episode_media
from aligner_lightning.rng import capture_rng, restore_rng
from aligner_lightning.teacher import linear_anneal, schedule_problems


@dataclass
class AlgoConfig:
    """What the advantage and the prioritized sampler need (the datamodule's minibatches read it)."""

    gamma: float
    gae_lambda: float
    vtrace_rho_clip: float
    vtrace_c_clip: float
    prio_alpha: float
    prio_beta0: float
    sampling: str


class AlignerPPO(L.LightningModule):
    def __init__(
        self,
        policy: PolicyFactory = AlignerPolicy,
        total_timesteps: int = 10_000_000,
        learning_rate: float = 0.00092,
        adam_beta1: float = 0.95,
        adam_beta2: float = 0.999,
        adam_eps: float = 1e-8,
        anneal_lr: bool = True,
        min_lr_ratio: float = 0.0,
        gamma: float = 0.995,
        gae_lambda: float = 0.90,
        clip_coef: float = 0.2,
        vf_coef: float = 2.0,
        vf_clip_coef: float = 0.2,
        max_grad_norm: float = 1.5,
        ent_coef: float = 0.01,
        vtrace_rho_clip: float = 1.0,
        vtrace_c_clip: float = 1.0,
        prio_alpha: float = 0.8,
        prio_beta0: float = 0.2,
        sampling: str = "prioritized",
        torch_threads: int | None = None,
        eval_episodes: int = 8,
        eval_greedy: bool = False,
        eval_seed_base: int = 1_000_000_000,
        eval_replays: int = 1,
        eval_gif: bool = True,
        eval_max_steps: int | None = None,
        bc_coef_start: float = 0.0,
        bc_steps: int = 0,
        eval_video: bool | None = None,
    ):
        """
        Args:
            policy: the network: ``class_path`` and ``init_args`` in the YAML; the class is built as
                ``cls(env_info, **init_args)`` and follows ``aligner_lightning.policy_spec.RecurrentPolicy``.
                Default: ``AlignerPolicy``, cogames' TutorialPolicyNet.
            total_timesteps: stop after this many agent steps, summed over all ranks.
            learning_rate: Adam learning rate at the start of the run.
            adam_beta1: Adam beta1.
            adam_beta2: Adam beta2.
            adam_eps: Adam epsilon.
            anneal_lr: cosine-anneal the LR over total_timesteps // batch_size epochs.
            min_lr_ratio: the schedule's floor as a fraction of learning_rate (PuffeRL: 0).
            gamma: discount.
            gae_lambda: GAE lambda.
            clip_coef: PPO ratio clip.
            vf_coef: value loss weight.
            vf_clip_coef: value clip around the rollout-time value.
            max_grad_norm: gradient norm clip.
            ent_coef: entropy bonus weight.
            vtrace_rho_clip: V-trace rho clip on the importance ratio.
            vtrace_c_clip: V-trace c clip on the importance ratio.
            prio_alpha: prioritized replay exponent on the segment's summed |advantage|.
            prio_beta0: initial importance-sampling exponent (annealed to beta0 + (1 - beta0) * alpha).
            sampling: ``prioritized`` (PuffeRL: segments drawn by |advantage|^alpha for every minibatch) or
                ``sequential`` (option: each pass over the buffer visits every segment once, in a random order,
                with unit weights).
            torch_threads: torch intra-op threads (None: leave torch's default).
            eval_episodes: episodes per evaluation (validate/test, and every trainer.check_val_every_n_epoch).
            eval_greedy: act by argmax instead of sampling (cogames' tools sample).
            eval_seed_base: evaluation episode k plays map seed eval_seed_base + k (held out from training).
            eval_replays: episodes per evaluation saved as MettaScope replays under <run>/replays/.
            eval_gif: log an animated GIF of one evaluation episode to TensorBoard (Images tab).
            eval_max_steps: episode length override for evaluation (null: the mission's).
            bc_coef_start: kickstarting (off: 0; needs ``data.teacher``): the weight, at agent step 0, of the
                behaviour-cloning term ``CE(student logits, teacher action)`` (mean over the minibatch's steps
                that have a teacher label) added to the PPO loss; it falls linearly to 0 over ``bc_steps``.
            bc_steps: global agent steps over which ``bc_coef_start`` falls to 0.
            eval_video: deprecated, the old name of eval_gif: a value given here is used for eval_gif.
        """
        super().__init__()
        if eval_video is not None:
            warnings.warn("model.eval_video is deprecated: it is now called model.eval_gif", UserWarning,
                          stacklevel=2)
            eval_gif = eval_video
        # The policy is recorded as a spec (class_path, init_args) in the checkpoint instead.
        self.save_hyperparameters(ignore=["eval_video", "policy"])
        self.hparams.eval_gif = eval_gif
        self.automatic_optimization = False
        try:
            self.policy_spec = spec_of(policy)
        except PolicySpecError as err:
            raise ConfigError([str(err)]) from err
        self.algo = AlgoConfig(gamma, gae_lambda, vtrace_rho_clip, vtrace_c_clip, prio_alpha, prio_beta0, sampling)
        self.loss_cfg = algorithm.LossConfig(clip_coef, vf_clip_coef, vf_coef, ent_coef)
        self.policy: AlignerPolicy | None = None
        self.agent_steps = 0  # global (all ranks)
        self.train_seconds = 0.0  # wall-clock of the training epochs so far, summed over resumes
        self.eval_settings = self._validate()
        self._eval_result = None
        self._logged_env_stats: set[str] = set()  # env_stats/ tags: those that have been nonzero in this run
        self._reset_epoch_stats()

    def _validate(self) -> EvalSettings:
        """Every problem with the model's arguments at once, named as on the command line."""
        hp = self.hparams
        p = []
        if hp.total_timesteps < 1:
            p.append(f"model.total_timesteps={hp.total_timesteps}: must be >= 1")
        if hp.learning_rate <= 0:
            p.append(f"model.learning_rate={hp.learning_rate}: must be > 0")
        if not 0 <= hp.min_lr_ratio <= 1:
            p.append(f"model.min_lr_ratio={hp.min_lr_ratio}: must be in [0, 1]")
        for name in ("gamma", "gae_lambda"):
            if not 0 <= hp[name] <= 1:
                p.append(f"model.{name}={hp[name]}: must be in [0, 1]")
        for name in ("clip_coef", "vf_clip_coef", "vf_coef", "max_grad_norm", "ent_coef", "vtrace_rho_clip",
                     "vtrace_c_clip", "prio_alpha", "prio_beta0"):
            if hp[name] < 0:
                p.append(f"model.{name}={hp[name]}: must be >= 0")
        if hp.sampling not in ("prioritized", "sequential"):
            p.append(f"model.sampling={hp.sampling!r}: must be 'prioritized' (PuffeRL) or 'sequential'")
        p += schedule_problems("model.bc_coef_start", hp.bc_coef_start, "model.bc_steps", hp.bc_steps)
        if hp.torch_threads is not None and hp.torch_threads < 1:
            p.append(f"model.torch_threads={hp.torch_threads}: must be >= 1 or null")
        settings = None
        try:
            settings = EvalSettings(episodes=hp.eval_episodes, greedy=hp.eval_greedy, seed_base=hp.eval_seed_base,
                                    replays=hp.eval_replays, gif=hp.eval_gif, max_steps=hp.eval_max_steps)
        except ConfigError as err:  # EvalSettings names its own fields; give the model.eval_* names
            p += ["model.eval_" + problem for problem in err.problems]
        raise_if(p)
        return settings

    # -- model ---------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.policy is None:
            self.policy = self._build_policy(self.trainer.datamodule.env_info)

    def _build_policy(self, env_info) -> torch.nn.Module:
        try:
            return build_policy(self.policy_spec, env_info)
        except PolicySpecError as err:
            raise ConfigError([str(err)]) from err

    def use_policy_spec(self, spec: dict[str, Any]) -> None:
        """Build the network a checkpoint was trained with (evaluation and export), before ``configure_model``."""
        if self.policy is not None and canonical(spec) != canonical(self.policy_spec):
            self.policy = None
        self.policy_spec = spec

    def check_teacher(self, datamodule) -> None:
        """Behaviour cloning needs the datamodule's teacher (the CLI checks before fitting; ``setup`` again)."""
        if self.hparams.bc_coef_start > 0 and datamodule.hparams.teacher is None:
            raise_if([f"model.bc_coef_start={self.hparams.bc_coef_start}: behaviour cloning needs a teacher; set "
                      "data.teacher=scripted (or model.bc_coef_start=0)"])

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.check_teacher(self.datamodule)

    @property
    def datamodule(self):
        return self.trainer.datamodule

    @property
    def global_batch_size(self) -> int:
        """Agent steps per epoch over all ranks: each rank collects its own ``data.batch_size``."""
        return self.datamodule.batch_size * self._world_size()

    @property
    def total_epochs(self) -> int:
        """The LR schedule's length, as PuffeRL: total_timesteps // batch (at least 1)."""
        return max(1, self.hparams.total_timesteps // self.global_batch_size)

    @property
    def puffer_epoch(self) -> int:
        """PuffeRL's epoch counter: completed epochs. It anneals beta and the LR."""
        return self.current_epoch

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.Adam(self.policy.parameters(), lr=hp.learning_rate,
                                     betas=(hp.adam_beta1, hp.adam_beta2), eps=hp.adam_eps)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=self.total_epochs, eta_min=hp.learning_rate * hp.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # -- training ------------------------------------------------------------------------------------------
    def _reset_epoch_stats(self) -> None:
        self._loss_sums: dict[str, torch.Tensor] = {}
        self._num_minibatches = 0
        self._timing: dict[str, float] = {}
        self._teacher_weights = (0.0, 0.0)

    def teacher_weights(self) -> tuple[float, float]:
        """This epoch's teacher-led fraction and behaviour-cloning weight, from the global agent steps before it
        (the same on every rank). Both 0 without a teacher. Called by the loader before the rollout."""
        self._teacher_weights = (self.datamodule.teacher_led_fraction(self.agent_steps),
                                 linear_anneal(self.hparams.bc_coef_start, self.hparams.bc_steps, self.agent_steps))
        return self._teacher_weights

    def on_train_start(self) -> None:
        self._restore_rank_state()
        if self.hparams.torch_threads:
            torch.set_num_threads(self.hparams.torch_threads)
        for scheduler in [self.lr_schedulers()] if self.hparams.anneal_lr else []:
            scheduler.T_max = self.total_epochs  # a resume with a new budget re-targets the schedule
        if self.trainer.max_epochs in (None, -1):  # show "epoch k/N" and stop exactly where PuffeRL would
            self.trainer.fit_loop.max_epochs = -(-self.hparams.total_timesteps // self.global_batch_size)
        if self.agent_steps >= self.hparams.total_timesteps:
            self.trainer.should_stop = True

    def on_train_epoch_start(self) -> None:
        self._reset_epoch_stats()
        self._epoch_start = time.perf_counter()
        self._steps_at_epoch_start = self.datamodule.rollout.agent_steps

    def on_rollout_end(self, timing: dict[str, float]) -> None:
        """Called by the loader after the rollout, before the first minibatch."""
        self._timing = dict(timing)
        self._train_start = time.perf_counter()

    def training_step(self, dataloader_iter: Iterator) -> None:
        mb, batch_idx, _ = next(dataloader_iter)
        dm = self.datamodule
        logits, new_values = self.policy(mb.obs, mb.initial_state)
        logits, new_values = logits.float(), new_values.float()
        new_logprobs, entropy = logprob_and_entropy(logits, mb.actions)
        # Kickstarting, while agents are teacher-led this epoch: PPO learns from the student's own steps only.
        student_steps = ~mb.teacher_led if self._teacher_weights[0] > 0 else None
        loss, stats = algorithm.ppo_loss(new_logprobs, entropy, new_values, mb.logprobs, mb.values,
                                         mb.advantages, mb.weights, self.loss_cfg, step_mask=student_steps)
        bc_coef = self._teacher_weights[1]
        if bc_coef > 0:  # kickstarting: the rollout stored the teacher's label at every step (-1: none)
            labels = mb.teacher_actions.reshape(-1)
            has_label = (labels >= 0).float()
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.clamp(min=0), reduction="none")
            bc_loss = (ce * has_label).sum() / has_label.sum().clamp(min=1.0)
            loss = loss + bc_coef * bc_loss
            stats["bc_loss"] = bc_loss.detach()
        dm.rollout.buffer.write_back(mb.idx, stats.pop("ratio"), new_values.detach())
        for k, v in stats.items():
            self._loss_sums[k] = self._loss_sums.get(k, 0.0) + v
        self._num_minibatches += 1

        self.manual_backward(loss)
        if (batch_idx + 1) % dm.accumulation_steps == 0:
            opt = self.optimizers()
            # Checked after DDP's all-reduce, so a NaN on any rank stops every rank at the same step (no hang).
            grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.hparams.max_grad_norm)
            if not torch.isfinite(grad_norm):
                self._diverged("the loss or a gradient")
            opt.step()
            opt.zero_grad(set_to_none=True)
            if not all(torch.isfinite(p).all() for p in self.policy.parameters()):
                self._diverged("a parameter")
        if batch_idx + 1 == dm.num_minibatches:
            # Here, not in on_train_epoch_end: callbacks (checkpointing) run their epoch-end hooks first.
            self._finish_epoch()

    def _diverged(self, what: str) -> None:
        raise TrainingDiverged(
            f"training diverged: {what} became NaN/Inf at epoch {self.current_epoch}, agent step "
            f"{self.agent_steps + self.datamodule.rollout.agent_steps - self._steps_at_epoch_start}; "
            "the run stopped and the last good checkpoint was kept")

    def _finish_epoch(self) -> None:
        if self.hparams.anneal_lr:
            self.lr_schedulers().step()
        local_steps = self.datamodule.rollout.agent_steps - self._steps_at_epoch_start
        epoch_steps = int(self._all_reduce_sum(torch.tensor(float(local_steps))))
        self.agent_steps += epoch_steps
        elapsed = time.perf_counter() - self._epoch_start
        self.train_seconds += elapsed
        self._timing["train_time"] = time.perf_counter() - self._train_start
        metrics = self._epoch_metrics(local_steps / max(elapsed, 1e-9))  # summed over ranks inside
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.agent_steps)
        self.log_dict({"agent_steps": float(self.agent_steps), "SPS": metrics["SPS"],
                       "return": metrics.get("environment/episode_return", float("nan"))},
                      prog_bar=True, logger=False, rank_zero_only=True, batch_size=1)
        if self.agent_steps >= self.hparams.total_timesteps:
            self.trainer.should_stop = True

    def _epoch_metrics(self, local_sps: float) -> dict[str, float]:
        n = max(self._num_minibatches, 1)
        metrics = {f"losses/{k}": float(v) / n for k, v in self._loss_sums.items()}
        metrics["losses/explained_variance"] = self.datamodule.rollout.explained_variance
        metrics.update({f"performance/{k}": v for k, v in self._timing.items()})
        metrics["SPS"] = float(self._all_reduce_sum(torch.tensor(local_sps)))
        metrics["agent_steps"] = float(self.agent_steps)
        metrics["epoch"] = float(self.current_epoch + 1)
        metrics["learning_rate"] = self.optimizers().param_groups[0]["lr"]
        metrics["performance/train_seconds"] = self.train_seconds
        metrics.update(self._episode_means())
        metrics.update(self._teacher_metrics())
        return metrics

    def _teacher_metrics(self) -> dict[str, float]:
        """With a teacher: the BC weight this epoch, and over all ranks' buffer steps the fraction the teacher
        led, the fraction with a teacher label, and over those the fraction where the student's argmax (at
        rollout time) was the teacher's action."""
        if self.datamodule.hparams.teacher is None:
            return {}
        stats = self.datamodule.rollout.teacher_stats  # None where the teacher did not run this epoch
        keys = ("steps", "led", "labelled", "agree")
        counts = torch.tensor([stats[k] if stats else 0.0 for k in keys], dtype=torch.float64)
        steps, led, labelled, agree = (float(x) for x in self._all_reduce_sum(counts))
        metrics = {"teacher/bc_coef": self._teacher_weights[1], "teacher/led_fraction": led / steps if steps else 0.0}
        if steps:
            metrics["teacher/labelled_fraction"] = labelled / steps
        if labelled:
            metrics["teacher/agreement"] = agree / labelled
        return metrics

    def _episode_means(self) -> dict[str, float]:
        """Per-episode means over the episodes finished this epoch on all ranks (pooled sums and counts), under
        the tags of ``envs.tensorboard_tag``. An ``env_stats/`` tag is logged from the first epoch in which its
        stat is nonzero: a stat that has only ever been 0 (a resource the mission never uses) stays out."""
        sums, episodes = {}, 0
        for rank_sums, rank_episodes in self._gather(self.datamodule.rollout.episodes.pop()):
            episodes += rank_episodes
            for k, v in rank_sums.items():
                sums[k] = sums.get(k, 0.0) + v
        if not episodes:
            return {}
        means = {}
        for key, total in sorted(sums.items()):
            tag = tensorboard_tag(key)
            if tag is None or (tag.startswith("env_stats/") and tag not in self._logged_env_stats and total == 0):
                continue
            if tag.startswith("env_stats/"):
                self._logged_env_stats.add(tag)
            means[tag] = total / episodes
        return means

    def _gather(self, obj: Any) -> list:
        """Every rank's ``obj`` (a picklable object), in rank order."""
        if self._world_size() == 1:
            return [obj]
        gathered: list = [None] * self._world_size()
        dist.all_gather_object(gathered, obj)
        return gathered

    def _world_size(self) -> int:
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def _all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self._world_size() > 1:
            value = value.to(self.device)
            dist.all_reduce(value)
        return value.cpu()

    # -- evaluation (validate, test, and periodic validation during fit) ----------------------------------------
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self.trainer.sanity_checking and self.agent_steps > 0:
            return  # the sanity check evaluates a fresh run's initial policy (step 0), not a resumed run's
        self._play_evaluation("validate")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._play_evaluation("test")

    def _play_evaluation(self, stage: str) -> None:
        """This rank's share of the episodes, on held-out maps disjoint from every other rank's."""
        world, rank = self.trainer.world_size, self.global_rank
        share = -(-self.eval_settings.episodes // world)
        settings = replace(self.eval_settings, episodes=share,
                           replays=min(self.eval_settings.replays, share) if rank == 0 else 0,
                           gif=self.eval_settings.gif and rank == 0)
        log_dir = self.trainer.log_dir
        replay_dir = Path(log_dir) / "replays" / f"{stage}_agent_steps={self.agent_steps}" if log_dir else None
        # Its own generator: evaluating draws nothing from the RNG that training samples with.
        generator = torch.Generator(device=self.device).manual_seed(settings.seed_base + rank * share)
        actor = PolicyActor(self.policy, self.device, greedy=settings.greedy, generator=generator)
        dm = self.datamodule
        self._eval_result = play_episodes(actor, dm.hparams.mission, dm.mission_overrides, settings, replay_dir,
                                          episode_offset=rank * share)

    def on_validation_epoch_end(self) -> None:
        self._report_evaluation("validate")

    def on_test_epoch_end(self) -> None:
        self._report_evaluation("test")

    def _report_evaluation(self, stage: str) -> None:
        """Pool the episodes of all ranks, then log each metric's mean (eval/) and standard deviation (eval_std/)
        over the episodes against agent steps, the GIF of one episode, and print the table."""
        result, self._eval_result = self._eval_result, None
        episodes = [e for rank_episodes in self._gather(result.episodes if result else []) for e in rank_episodes]
        if not episodes:
            return
        summary = summarize(episodes)
        metrics = {f"eval/{k}": mean for k, (mean, _) in summary.items()}
        metrics.update({f"eval_std/{k}": std for k, (_, std) in summary.items()})
        self.log_dict(metrics, logger=False, batch_size=1, rank_zero_only=True)  # Lightning's results table
        if self.global_rank != 0:
            return
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.agent_steps)
            experiment = getattr(self.logger, "experiment", None)
            if result.frames and isinstance(experiment, SummaryWriter):
                log_episode_media(experiment, "eval/episode", result.frames, step=self.agent_steps)
        replays = ", ".join(str(p) for p in result.replay_paths) or "none"
        rank_zero_info(f"\n{stage} at {self.agent_steps} agent steps, {len(episodes)} episodes "
                       f"({'greedy' if self.eval_settings.greedy else 'sampled'} actions, map seeds from "
                       f"{self.eval_settings.seed_base}):\n{format_table(summary, len(episodes))}\nreplays: {replays}")

    # -- checkpoint ----------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Beyond Lightning's state: agent steps, the env interface and batch geometry (checked on resume), and
        every rank's RNG and env seeding state (Lightning itself saves rank 0's view only)."""
        dm = self.datamodule
        rank_state = {"rng": capture_rng(), "envs": dm.rollout.seed_state(), "agent_steps": dm.rollout.agent_steps}
        ranks = [rank_state]
        if self._world_size() > 1:
            ranks = [None] * self._world_size()
            dist.all_gather_object(ranks, rank_state)
        checkpoint["aligner"] = {
            "agent_steps": self.agent_steps,
            "train_seconds": self.train_seconds,
            "epoch": self.current_epoch + 1,
            "env_interface": dm.env_info.model_dump_json(),
            "policy": canonical(self.policy_spec),
            "geometry": dm.geometry(),
            "world_size": self._world_size(),
            "ranks": ranks,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("aligner", {})
        self.agent_steps = int(state.get("agent_steps", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self._pending_rank_state = None
        ranks = state.get("ranks") or []
        rank = self.trainer.global_rank if self._trainer is not None else 0
        if rank < len(ranks) and len(ranks) == self._world_size():
            self._pending_rank_state = ranks[rank]
        if self.policy is None and "env_interface" in state:  # AlignerPPO.load_from_checkpoint: no trainer
            from mettagrid.policy.policy_env_interface import PolicyEnvInterface

            self.policy_spec = state.get("policy") or default_spec()
            self.policy = self._build_policy(PolicyEnvInterface.model_validate_json(state["env_interface"]))

    def _restore_rank_state(self) -> None:
        """After Lightning's restore and before the first rollout: this rank's RNG, env streams, step count."""
        state = getattr(self, "_pending_rank_state", None)
        if state is None:
            return
        restore_rng(state["rng"])
        rollout = self.datamodule.rollout
        rollout.agent_steps = int(state["agent_steps"])
        if state["envs"] is not None:
            rollout.restore_seed_state(state["envs"])
        self._pending_rank_state = None
