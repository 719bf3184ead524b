"""The LightningModule is the algorithm: the policy, the optimizer, the LR schedule, and PuffeRL's update.

One Lightning epoch is one PuffeRL epoch. The DataModule's loader yields the epoch's rollout (an ``Experience``)
and ``training_step`` runs the whole update on it, top to bottom (manual optimization, as PuffeRL does it), then
hands the new weights to the DataModule's collector. The run stops once ``total_timesteps`` agent steps (summed
over ranks) have been collected. Metrics go to the logger against agent steps, not optimizer steps.
Evaluation (``evaluation.py``) and the per-rank collector state (``RolloutDataModule.state_dict``) live with the
modules that own them.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch

from aligner_lightning import algorithm, distributed
from aligner_lightning.collector import PolicyUpdate
from aligner_lightning.epoch_metrics import EpisodeMeans, teacher_metrics
from aligner_lightning.errors import ConfigError, TrainingDiverged, raise_if
from aligner_lightning.episodes import EvalSettings
from aligner_lightning.evaluation import Evaluation
from aligner_lightning.experience import Experience
from aligner_lightning.policy import AlignerPolicy, logprob_and_entropy
from aligner_lightning.policy_spec import (PolicyFactory, PolicySpecError, build_policy, canonical, default_spec,
                                           spec_of)
from aligner_lightning.teacher import linear_anneal, schedule_problems


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
        lr_anneal_steps: int | None = None,
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
        eval_state_reset: int | None = None,
        bc_coef_start: float = 0.0,
        bc_steps: int = 0,
        bc_epochs: int = 0,
        anchor_coef: float = 0.0,
        anchor_at: int = 0,
        anchor_steps: int = 0,
        critic_warmup_at: int = 0,
        critic_warmup_steps: int = 0,
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
            anneal_lr: cosine-anneal the LR over total_timesteps // batch_size epochs (or over lr_anneal_steps).
            min_lr_ratio: the schedule's floor as a fraction of learning_rate (PuffeRL: 0).
            lr_anneal_steps: agent steps (all ranks) over which the cosine falls to its floor; the LR then stays at
                the floor until total_timesteps (null: the schedule spans total_timesteps, as PuffeRL's).
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
            eval_state_reset: zero the policy's recurrent state every this many steps of an evaluation episode
                (null: carry it over the whole episode). A rollout that starts every epoch from zeros (no
                ``data.carry_lstm_state``) trains a policy that has never acted on an older state; setting this to
                the steps each agent plays per epoch (batch_size / agents) judges the policy as it acts there.
            bc_coef_start: kickstarting (off: 0; needs ``data.teacher``): the weight, at agent step 0, of the
                behaviour-cloning term ``CE(student logits, teacher action)`` (mean over the minibatch's steps
                that have a teacher label) added to the PPO loss; it falls linearly to 0 over ``bc_steps``.
            bc_steps: global agent steps over which ``bc_coef_start`` falls to 0.
            bc_epochs: kickstarting: extra passes per epoch over the rollout with the cloning term alone (weighted
                by the current BC weight), after the PPO update and while that weight is above 0; each pass visits
                every segment once, in minibatches of the PPO update's size. More cloning steps per sample
                without more PPO passes.
            anchor_coef: kickstarting's hand-over (off: 0): at the first epoch from global agent step ``anchor_at``
                on, a frozen copy of the policy is kept as an anchor, and ``anchor_coef * KL(anchor || policy)``
                (the mean over every step of the minibatch, the anchor acting from the same initial LSTM state)
                is added to the PPO loss; the weight falls linearly to 0 over ``anchor_steps`` after
                ``anchor_at``. The anchor is the student itself (say, once cloning has taught it), not the
                teacher: it needs no teacher and works after the teacher's weights are 0. It costs one forward
                pass of the anchor per minibatch while its weight is above 0, and is saved in checkpoints.
            anchor_at: global agent step at which the anchor is frozen.
            anchor_steps: global agent steps after ``anchor_at`` over which ``anchor_coef`` falls to 0.
            critic_warmup_at: kickstarting's critic warm-up (off while ``critic_warmup_steps`` is 0): from the first
                epoch at global agent step ``critic_warmup_at`` on, for ``critic_warmup_steps`` agent steps, PPO's
                policy terms (the clipped surrogate and the entropy bonus) are left out of the loss, so the value
                function fits the student's returns while only cloning and the anchor (where their weights are
                above 0) move the policy. The value loss still trains the layers it shares with the policy.
            critic_warmup_steps: agent steps the critic warm-up lasts.
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
        self.algo = algorithm.AlgoConfig(gamma, gae_lambda, vtrace_rho_clip, vtrace_c_clip, prio_alpha, prio_beta0,
                                         sampling)
        self.loss_cfg = algorithm.LossConfig(clip_coef, vf_clip_coef, vf_coef, ent_coef)
        self.policy: AlignerPolicy | None = None
        self.agent_steps = 0  # global (all ranks)
        self.train_seconds = 0.0  # wall-clock of the training epochs so far, summed over resumes
        self.eval_settings = self._validate()
        self.evaluation = Evaluation(self.eval_settings)
        self.episode_means = EpisodeMeans()
        # Kickstarting's anchor: a frozen copy of the policy, kept off the module's submodules (so it is neither
        # trained nor in the state_dict) and saved in the checkpoint's "aligner" entry instead.
        self._anchor: torch.nn.Module | None = None
        self._anchor_weights: dict[str, torch.Tensor] | None = None  # from a checkpoint, until the policy exists

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
        if hp.lr_anneal_steps is not None and (not isinstance(hp.lr_anneal_steps, int) or hp.lr_anneal_steps < 1):
            p.append(f"model.lr_anneal_steps={hp.lr_anneal_steps!r}: must be an int >= 1 (agent steps) or null "
                     "(anneal over model.total_timesteps)")
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
        if hp.bc_epochs < 0:
            p.append(f"model.bc_epochs={hp.bc_epochs}: must be >= 0")
        elif hp.bc_epochs > 0 and hp.bc_coef_start == 0:
            p.append(f"model.bc_epochs={hp.bc_epochs}: cloning passes need a cloning weight; set "
                     "model.bc_coef_start > 0 (or model.bc_epochs=0)")
        p += schedule_problems("model.anchor_coef", hp.anchor_coef, "model.anchor_steps", hp.anchor_steps)
        if not isinstance(hp.anchor_at, int) or hp.anchor_at < 0:
            p.append(f"model.anchor_at={hp.anchor_at!r}: must be an int >= 0 (the agent step the anchor is frozen at)")
        for name in ("critic_warmup_at", "critic_warmup_steps"):
            if not isinstance(hp[name], int) or hp[name] < 0:
                p.append(f"model.{name}={hp[name]!r}: must be an int >= 0 (agent steps)")
        if hp.torch_threads is not None and hp.torch_threads < 1:
            p.append(f"model.torch_threads={hp.torch_threads}: must be >= 1 or null")
        settings = None
        try:
            settings = EvalSettings(episodes=hp.eval_episodes, greedy=hp.eval_greedy, seed_base=hp.eval_seed_base,
                                    replays=hp.eval_replays, gif=hp.eval_gif, max_steps=hp.eval_max_steps,
                                    state_reset=hp.eval_state_reset)
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
        if self.hparams.torch_threads:  # every stage: `validate` and `test` play on the same cores as `fit`
            torch.set_num_threads(self.hparams.torch_threads)
        if stage == "fit":
            self.check_teacher(self.datamodule)

    @property
    def datamodule(self):
        return self.trainer.datamodule

    @property
    def global_batch_size(self) -> int:
        """Agent steps per epoch over all ranks: each rank collects its own ``data.batch_size``."""
        return self.datamodule.batch_size * distributed.world_size()

    @property
    def total_epochs(self) -> int:
        """The run's length in epochs, as PuffeRL: total_timesteps // batch (at least 1)."""
        return max(1, self.hparams.total_timesteps // self.global_batch_size)

    @property
    def anneal_epochs(self) -> int:
        """The LR schedule's length in epochs: total_timesteps // batch as PuffeRL, or lr_anneal_steps // batch."""
        steps = self.hparams.lr_anneal_steps or self.hparams.total_timesteps
        return max(1, steps // self.global_batch_size)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.Adam(self.policy.parameters(), lr=hp.learning_rate,
                                     betas=(hp.adam_beta1, hp.adam_beta2), eps=hp.adam_eps)
        return optimizer

    def lr_at(self, epoch: int) -> float:
        """The LR for the epoch after ``epoch`` epochs: PuffeRL's cosine from ``learning_rate`` to
        ``learning_rate * min_lr_ratio`` over ``anneal_epochs``, then that floor; ``learning_rate`` throughout
        without ``anneal_lr``. A function of the epoch alone (not stepped from the last LR), so a resume that
        changes the budget, the schedule's length or the LR follows the new schedule from its first epoch."""
        hp = self.hparams
        if not hp.anneal_lr:
            return hp.learning_rate
        floor = hp.learning_rate * hp.min_lr_ratio
        return floor + (hp.learning_rate - floor) * (1 + math.cos(math.pi * min(epoch / self.anneal_epochs, 1.0))) / 2

    def _set_lr(self, epoch: int) -> None:
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = self.lr_at(epoch)

    # -- training ------------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self._set_lr(self.current_epoch)  # on a resume, the configured schedule, not the checkpoint's LR
        if self.trainer.max_epochs in (None, -1):  # show "epoch k/N" and stop exactly where PuffeRL would
            self.trainer.fit_loop.max_epochs = -(-self.hparams.total_timesteps // self.global_batch_size)
        if self.agent_steps >= self.hparams.total_timesteps:
            self.trainer.should_stop = True
        self._publish_policy(self.current_epoch)  # the weights the first rollout acts with

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()

    def bc_coef(self) -> float:
        """This epoch's behaviour-cloning weight, from the global agent steps before it (0 without kickstarting)."""
        return linear_anneal(self.hparams.bc_coef_start, self.hparams.bc_steps, self.agent_steps)

    def anchor_coef(self) -> float:
        """This epoch's anchor weight: 0 before ``anchor_at``, then ``anchor_coef`` falling to 0 over
        ``anchor_steps``."""
        hp = self.hparams
        if self.agent_steps < hp.anchor_at:
            return 0.0
        return linear_anneal(hp.anchor_coef, hp.anchor_steps, self.agent_steps - hp.anchor_at)

    def critic_warmup(self) -> bool:
        """Whether this epoch is in the critic warm-up (PPO's policy terms left out)."""
        hp = self.hparams
        return hp.critic_warmup_steps > 0 and 0 <= self.agent_steps - hp.critic_warmup_at < hp.critic_warmup_steps

    def anchor_policy(self) -> torch.nn.Module:
        """The anchor: the checkpoint's, or else a frozen copy of the policy as it is now."""
        if self._anchor is None:
            anchor = copy.deepcopy(self.policy).requires_grad_(False).eval()
            if self._anchor_weights is not None:
                anchor.load_state_dict(self._anchor_weights)
                self._anchor_weights = None
            object.__setattr__(self, "_anchor", anchor)  # not nn.Module's setattr: no submodule
        return self._anchor

    def training_step(self, rollout: Experience) -> None:
        """PuffeRL's update on one rollout: for each minibatch, V-trace advantages over the whole buffer, a
        prioritized draw of segments, the clipped PPO loss (plus behaviour cloning when kickstarting), backward,
        the ratio and value write-back; every ``accumulation_steps`` minibatches, clip and Adam. Then, when
        kickstarting with ``model.bc_epochs``, the cloning-only passes."""
        dm, algo, hp = self.datamodule, self.algo, self.hparams
        train_start = time.perf_counter()
        bc_coef = self.bc_coef()
        anchor_coef = self.anchor_coef()
        anchor = self.anchor_policy() if anchor_coef > 0 else None
        warmup = self.critic_warmup()
        # Kickstarting, while some episodes were teacher-led: PPO learns from the student's own steps only.
        student_steps = ~rollout.teacher_led if rollout.teacher_led_fraction > 0 else None
        beta = algorithm.anneal_beta(algo.prio_beta0, algo.prio_alpha, self.current_epoch, self.total_epochs)
        sampler = algorithm.SegmentSampler(algo, rollout.segments, dm.minibatch_segments, beta, rollout.obs.device)
        rollout.ratio.fill_(1.0)
        loss_sums: dict[str, torch.Tensor] = {}
        for i in range(dm.num_minibatches):
            with torch.no_grad():  # advantages see every earlier minibatch's written-back ratios and values
                adv = algorithm.puff_advantage(rollout.values, rollout.rewards, rollout.terminals, rollout.ratio,
                                               algo.gamma, algo.gae_lambda, algo.vtrace_rho_clip, algo.vtrace_c_clip)
                if i == 0:  # the standard explained variance, on the rollout's own values
                    explained_variance = float(algorithm.explained_variance(rollout.values, adv + rollout.values))
                idx, weights = sampler.draw(adv)

            state = None if rollout.initial_state is None else tuple(s[idx] for s in rollout.initial_state)
            logits, new_values = self.policy(rollout.obs[idx], state)
            logits, new_values = logits.float(), new_values.float()
            new_logprobs, entropy = logprob_and_entropy(logits, rollout.actions[idx])
            loss, stats = algorithm.ppo_loss(new_logprobs, entropy, new_values, rollout.logprobs[idx],
                                             rollout.values[idx], adv[idx], weights, self.loss_cfg,
                                             step_mask=None if student_steps is None else student_steps[idx],
                                             policy_terms=not warmup)
            if bc_coef > 0:  # cross-entropy on the steps with a teacher label
                bc_loss = algorithm.cloning_loss(logits, rollout.teacher_actions[idx],
                                                 _rows(rollout.teacher_moves, idx))
                loss = loss + bc_coef * bc_loss
                stats["bc_loss"] = bc_loss.detach()
            if anchor is not None:  # KL to the frozen student, on every step
                with torch.no_grad():
                    anchor_logits, _ = anchor(rollout.obs[idx], state)
                anchor_kl = algorithm.distillation_loss(logits, anchor_logits.float())
                loss = loss + anchor_coef * anchor_kl
                stats["anchor_kl"] = anchor_kl.detach()
            rollout.ratio[idx] = stats.pop("ratio")  # the write-back: later minibatches' V-trace reads these
            rollout.values[idx] = new_values.detach()
            for k, v in stats.items():
                loss_sums[k] = loss_sums.get(k, 0.0) + v

            self.manual_backward(loss)
            if (i + 1) % dm.accumulation_steps == 0:
                self._optimizer_step()
        losses = {f"losses/{k}": float(v) / dm.num_minibatches for k, v in loss_sums.items()}
        if bc_coef > 0 and hp.bc_epochs > 0:
            losses["losses/bc_pass_loss"] = self._cloning_passes(rollout, bc_coef)
        self._set_lr(self.current_epoch + 1)

        losses["losses/explained_variance"] = explained_variance
        if self.hparams.anchor_coef > 0:
            losses["losses/anchor_coef"] = anchor_coef
        if self.hparams.critic_warmup_steps > 0:
            losses["losses/critic_warmup"] = float(warmup)
        timing = {**rollout.timing, "train_time": time.perf_counter() - train_start}
        self._finish_epoch(rollout, losses, timing, bc_coef)
        self._publish_policy(self.current_epoch + 1)  # the next rollouts act with these weights

    def _optimizer_step(self) -> None:
        """Clip the accumulated gradient, Adam, zero it; stop on a NaN/Inf."""
        # Checked after DDP's all-reduce, so a NaN on any rank stops every rank at the same step (no hang).
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.hparams.max_grad_norm)
        if not torch.isfinite(grad_norm):
            self._diverged("the loss or a gradient")
        opt = self.optimizers()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not all(torch.isfinite(p).all() for p in self.policy.parameters()):
            self._diverged("a parameter")

    def _cloning_passes(self, rollout: Experience, bc_coef: float) -> float:
        """``model.bc_epochs`` passes of behaviour cloning alone over the rollout (kickstarting): each visits every
        segment once in a random order, in the PPO update's minibatches; returns the mean cloning loss."""
        dm, losses = self.datamodule, []
        for _ in range(self.hparams.bc_epochs):
            order = torch.randperm(rollout.segments, device=rollout.obs.device)
            for i, idx in enumerate(order.split(dm.minibatch_segments)):
                state = None if rollout.initial_state is None else tuple(s[idx] for s in rollout.initial_state)
                logits, values = self.policy(rollout.obs[idx], state)
                bc_loss = algorithm.cloning_loss(logits.float(), rollout.teacher_actions[idx],
                                                 _rows(rollout.teacher_moves, idx))
                # 0 x the value keeps every parameter in the graph (DDP expects a gradient for each).
                self.manual_backward(bc_coef * bc_loss + 0.0 * values.float().sum())
                losses.append(float(bc_loss.detach()))
                if (i + 1) % dm.accumulation_steps == 0:
                    self._optimizer_step()
        return sum(losses) / len(losses)

    def _publish_policy(self, version: int) -> None:
        """The one hand-off to the DataModule: the weights after ``version`` updates."""
        self.datamodule.publish_policy(PolicyUpdate(
            version=version, weights=self.policy.state_dict(), spec=self.policy_spec,
            agent_steps=self.agent_steps, teacher_labels=self.bc_coef() > 0))

    def _diverged(self, what: str) -> None:
        raise TrainingDiverged(
            f"training diverged: {what} became NaN/Inf in epoch {self.current_epoch} (after {self.agent_steps} "
            "agent steps); the run stopped and the last good checkpoint was kept")

    def _finish_epoch(self, rollout: Experience, losses: dict[str, float], timing: dict[str, float],
                      bc_coef: float) -> None:
        device = self.device
        self.agent_steps += int(distributed.all_reduce_sum(torch.tensor(float(rollout.agent_steps)), device))
        elapsed = time.perf_counter() - self._epoch_start
        self.train_seconds += elapsed
        metrics = dict(losses)
        metrics.update({f"performance/{k}": v for k, v in timing.items()})
        metrics["performance/train_seconds"] = self.train_seconds
        metrics["performance/policy_lag"] = float(self.current_epoch - rollout.policy_version)
        metrics["SPS"] = float(distributed.all_reduce_sum(torch.tensor(rollout.agent_steps / max(elapsed, 1e-9)),
                                                          device))
        metrics["agent_steps"] = float(self.agent_steps)
        metrics["epoch"] = float(self.current_epoch + 1)
        metrics["learning_rate"] = self.optimizers().param_groups[0]["lr"]
        metrics.update(self.episode_means(rollout))
        if self.datamodule.hparams.teacher is not None:
            metrics.update(teacher_metrics(rollout, bc_coef, device))
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.agent_steps)
        self.log_dict({"agent_steps": float(self.agent_steps), "SPS": metrics["SPS"],
                       "return": metrics.get("environment/episode_return", float("nan"))},
                      prog_bar=True, logger=False, rank_zero_only=True, batch_size=1)
        if self.agent_steps >= self.hparams.total_timesteps:
            self.trainer.should_stop = True

    # -- evaluation (validate, test, and periodic validation during fit) ----------------------------------------
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self.trainer.sanity_checking and self.agent_steps > 0:
            return  # the sanity check evaluates a fresh run's initial policy (step 0), not a resumed run's
        self._play_evaluation("validate")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._play_evaluation("test")

    def _play_evaluation(self, stage: str) -> None:
        log_dir = self.trainer.log_dir
        replay_dir = Path(log_dir) / "replays" / f"{stage}_agent_steps={self.agent_steps}" if log_dir else None
        dm = self.datamodule
        self.evaluation.play(self.policy, self.device, dm.hparams.mission, dm.mission_overrides, replay_dir)

    def on_validation_epoch_end(self) -> None:
        self._report_evaluation("validate")

    def on_test_epoch_end(self) -> None:
        self._report_evaluation("test")

    def _report_evaluation(self, stage: str) -> None:
        metrics = self.evaluation.report(stage, self.agent_steps, self.logger)
        if metrics:
            self.log_dict(metrics, logger=False, batch_size=1, rank_zero_only=True)  # Lightning's results table

    # -- checkpoint ----------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Beyond Lightning's state: agent steps, the env interface, policy and batch geometry (checked on
        resume). Every rank's RNG and env streams are the DataModule's (``RolloutDataModule.state_dict``)."""
        dm = self.datamodule
        checkpoint["aligner"] = {
            "agent_steps": self.agent_steps,
            "train_seconds": self.train_seconds,
            "epoch": self.current_epoch + 1,
            "env_interface": dm.env_info.model_dump_json(),
            "policy": canonical(self.policy_spec),
            "geometry": dm.geometry(),
            "world_size": distributed.world_size(),
        }
        if self._anchor is not None or self._anchor_weights is not None:
            checkpoint["aligner"]["anchor"] = (self._anchor_weights if self._anchor is None
                                               else self._anchor.state_dict())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("aligner", {})
        self.agent_steps = int(state.get("agent_steps", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        object.__setattr__(self, "_anchor", None)
        self._anchor_weights = state.get("anchor")
        if self.policy is None and "env_interface" in state:  # AlignerPPO.load_from_checkpoint: no trainer
            from mettagrid.policy.policy_env_interface import PolicyEnvInterface

            self.policy_spec = state.get("policy") or default_spec()
            self.policy = self._build_policy(PolicyEnvInterface.model_validate_json(state["env_interface"]))


def _rows(tensor: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    """``tensor[idx]``, or None for a buffer the rollout does not keep."""
    return None if tensor is None else tensor[idx]
