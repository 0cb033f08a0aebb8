"""PPO with a learned reward model (classic RLHF) or with verifiable rewards, on 1..N
processes, policy full or LoRA.

Four models: the policy (trained), its reference (the policy with adapters off for LoRA, a
frozen copy otherwise), a value model (initialised from the reward model, or from the policy
under a new score head when there is none; trained with its own optimizer) and the reward
model (frozen). Without a reward model (``reward_model.checkpoint_dir: null``) the reward is
the weighted sum of ``reward_functions``, the checkers GRPO uses. Each step:

1. the policy completes ``batch_size`` prompts per process (no gradients);
2. the reward model (or the reward functions) scores each prompt + response; a response with no
   stop token (``penalise_no_eos``) or shorter than ``min_response_length`` gets
   ``reward_penalty`` instead;
3. per token, the reward is ``-kl_coef * (log pi - log ref)``, plus the score at the last
   token (``kl_coef`` fixed, or adaptive towards ``kl_target``);
4. GAE (``gamma``, ``lam``) over the values of the value model, advantages whitened;
5. ``ppo_epochs`` passes over the rollouts in ``num_minibatches`` minibatches, each one
   optimizer step of both models on ``tt_recipes.rl.losses.PPOLoss`` (clipped policy loss +
   ``value_coeff`` x clipped value loss).

Checkpoints hold both trained models (``step_N/policy``, ``step_N/value``) and the state of
both optimizers and schedules, the KL coefficient, RNG and prompt position: a run resumes
exactly. ``tt run ppo --config tiny/ppo``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import tt_dist
from omegaconf import DictConfig, OmegaConf

from tt_recipes import adapters, checkpointing, scoring, trainer, training
from tt_recipes.config import ConfigKey, RecipeSpec, instantiate
from tt_recipes.losses import token_logprobs
from tt_recipes.rl.advantages import gae, whiten
from tt_recipes.rl.kl import KLController, token_kl
from tt_recipes.rl.rewards import RewardFunctions
from tt_recipes.rl.rollout import (
    KVCacheEngine,
    Rollouts,
    check_prompt_lengths,
    generate_rollouts,
    greedy,
    training_batches,
)
from tt_recipes.trainer import Batch, BatchLoss, Run

log = logging.getLogger("tt")


def _model_dir(doc: str, required: bool) -> ConfigKey:
    return ConfigKey(
        keys={"checkpoint_dir": ConfigKey(str, required=required, doc=doc)},
        required=required,
        default=None if required else {},
    )


def _check_reward_source(cfg: dict[str, Any]) -> list[str]:
    if (cfg.get("reward_model") or {}).get("checkpoint_dir") or cfg.get("reward_functions"):
        return []
    return [
        "keys 'reward_model.checkpoint_dir' and 'reward_functions': PPO needs a reward; set "
        "reward_model.checkpoint_dir to a reward model (tt run reward_model writes one) or "
        "reward_functions to checkers, e.g. [tt_recipes.rl.rewards.arithmetic_answer]"
    ]


SPEC = RecipeSpec(
    name="ppo",
    description="PPO with a learned reward model: policy, value, reference, reward; 1..N processes.",
    keys={
        **trainer.TRAINING_KEYS,
        "dataset": ConfigKey(
            component=True, required=True, positional=1, doc="prompts (tt_data.prompt_dataset, ...)"
        ),
        "dataset_val": ConfigKey(
            component=True, positional=1, doc="held-out prompts, answered greedily and scored"
        ),
        "batch_size": ConfigKey(int, default=8, min=1, doc="prompts per step per process"),
        "gradient_accumulation_steps": ConfigKey(
            int, default=1, min=1, doc="micro-batches per minibatch"
        ),
        "peft": adapters.OPTIONAL_PEFT,
        "save_adapter_weights_only": adapters.SAVE_ADAPTER_ONLY,
        "reward_model": _model_dir(
            "a reward model (tt run reward_model writes one); null: reward_functions", False
        ),
        "value_model": _model_dir(
            "the value model's start; default: the reward model, else the policy", False
        ),
        "value_optimizer": ConfigKey(component=True, required=True, positional=1),
        "loss": ConfigKey(
            component=True,
            required=True,
            doc="tt_recipes.rl.losses.PPOLoss (epsilon, value_clip_range, value_coeff)",
        ),
        "max_new_tokens": ConfigKey(int, default=128, min=1),
        "stop_token_ids": ConfigKey(
            list | None, default=None, doc="more ids that end a response (besides the tokenizer's)"
        ),
        "temperature": ConfigKey(float, default=1.0, min=0),
        "top_p": ConfigKey(float | None, default=None, min=0),
        "top_k": ConfigKey(int | None, default=None, min=1),
        "kl_coef": ConfigKey(float, default=0.05, min=0, doc="weight of the per-token KL penalty"),
        "kl_target": ConfigKey(
            float | None, default=None, min=0, doc="adapt kl_coef towards this KL per response"
        ),
        "kl_horizon": ConfigKey(int, default=10_000, min=1),
        "penalise_no_eos": ConfigKey(bool, default=True, doc="score reward_penalty without a stop"),
        "min_response_length": ConfigKey(int | None, default=None, min=1),
        "reward_penalty": ConfigKey(float, default=-3.0),
        "gamma": ConfigKey(float, default=1.0, min=0),
        "lam": ConfigKey(float, default=0.95, min=0),
        "whiten_rewards": ConfigKey(bool, default=False),
        "ppo_epochs": ConfigKey(int, default=1, min=1, doc="passes over each rollout batch"),
        "num_minibatches": ConfigKey(int, default=1, min=1, doc="optimizer steps per pass"),
        "reward_functions": ConfigKey(
            list,
            default=[],
            doc="the reward without a reward model; with one, checkers of held-out prompts only",
        ),
        "reward_weights": ConfigKey(list | None, default=None),
        "compile_generation": ConfigKey(bool, default=False),
        "log_samples_every_n_steps": ConfigKey(int | None, default=None, min=1),
        "num_samples_to_log": ConfigKey(int, default=4, min=1),
    },
    checks=(_check_reward_source, adapters.check_save_adapter_only),
)


def recipe_main(cfg: DictConfig) -> None:
    with trainer.distributed(cfg) as dist:
        lora = cfg.peft is not None
        reference = None if lora else training.frozen_model(cfg, dist)
        reward_dir = reward_model_dir(cfg)
        reward = training.frozen_model(cfg, dist, scorer_dir(reward_dir)) if reward_dir else None
        objective = trainer.Objective(
            batch_loss=ppo_loss, units=lambda batch: int(batch["loss_mask"].sum()),
            collate=lambda samples, pad_id: samples,
        )  # fmt: skip
        steps_per_rollout = cfg.ppo_epochs * cfg.num_minibatches
        run = trainer.setup(
            cfg,
            dist,
            objective=objective,
            plan=adapters.model_plan(cfg),
            batches_per_step=1,
            optimizer_steps_per_step=steps_per_rollout,
        )
        value = ValueModel.build(cfg, dist, run.total_steps * steps_per_rollout)
        check_vocabularies(run.model, *([reward] if reward is not None else []), value.model)
        log.info(
            "Reference model: "
            + ("the policy with its adapters switched off" if lora else "a frozen copy")
            + (f"; reward model {reward_dir} (frozen)" if reward is not None else "")
            + "; value model trained"
        )
        check_prompt_lengths(run.loader.dataset, cfg.max_new_tokens, run.model.config.max_seq_len)
        checkers = RewardFunctions.from_config(cfg) if cfg.reward_functions else None
        if checkers is not None:
            if reward is None:
                checkers.check_columns(run.loader.dataset, "dataset")
            if run.val_loader is not None:
                checkers.check_columns(run.val_loader.dataset, "dataset_val")
        engine = KVCacheEngine.from_config(run.model, run.tokenizer, cfg)
        ppo = PPO(run, engine, value, reward, reference, KLController(
            cfg.kl_coef, cfg.kl_target, cfg.kl_horizon), checkers)  # fmt: skip
        ppo.train()


def reward_model_dir(cfg: DictConfig) -> str | None:
    return (cfg.get("reward_model") or {}).get("checkpoint_dir")


def scorer_dir(path: str) -> str:
    directory = training.resolve_checkpoint_dir(path)
    if not training.is_scorer_checkpoint(directory):
        raise ValueError(
            f"reward_model.checkpoint_dir={path!r} ({directory}) holds no score head: its "
            "config.json architectures are not *ForSequenceClassification. Train one with "
            "`tt run reward_model` (tiny/reward_model) and point reward_model.checkpoint_dir at it"
        )
    return str(directory)


def check_vocabularies(policy: torch.nn.Module, *scorers: torch.nn.Module) -> None:
    """The reward and value models read the policy's tokens: the same vocabulary."""
    for scorer in scorers:
        if scorer.config.vocab_size != policy.config.vocab_size:
            raise ValueError(
                f"the reward/value model has a vocabulary of {scorer.config.vocab_size} tokens and "
                f"the policy {policy.config.vocab_size}: they must share the policy's tokenizer"
            )


class ValueModel:
    """The trained value model: a scorer, its optimizer and schedule."""

    def __init__(
        self, model: torch.nn.Module, optimizer: Any, scheduler: Any, cfg: DictConfig
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.cfg = cfg  # the run's config as the value model sees it: its source, no adapters
        self.clip = cfg.clip_grad_norm

    @classmethod
    def build(cls, cfg: DictConfig, dist: tt_dist.DistInfo, total_steps: int) -> ValueModel:
        # a causal LM (the policy's own checkpoint without a reward model) gets a new score head
        source = (
            (cfg.get("value_model") or {}).get("checkpoint_dir")
            or reward_model_dir(cfg)
            or cfg.checkpointer.checkpoint_dir
        )
        value_cfg = OmegaConf.merge(
            cfg,
            {"checkpointer": {"checkpoint_dir": source, "checkpoint_files": None}, "peft": None},
        )
        dtype = training.get_dtype(cfg.dtype, dist.device)
        try:
            plan = scoring.scorer_plan(value_cfg)
            model = trainer.build_trained_model(value_cfg, dist, dtype, plan)
        except (ValueError, KeyError, OSError) as e:
            raise ValueError(f"the value model cannot be built from {source!r}: {e}") from e
        optimizer = instantiate(
            cfg.value_optimizer, [p for p in model.parameters() if p.requires_grad]
        )
        scheduler = (
            instantiate(cfg.lr_scheduler, optimizer, total_steps)
            if cfg.get("lr_scheduler") is not None
            else None
        )
        return cls(model, optimizer, scheduler, value_cfg)

    def step(self) -> float | None:
        norm = None
        if self.clip is not None:
            params = [p for p in self.model.parameters() if p.requires_grad]
            norm = tt_dist.full_value(torch.nn.utils.clip_grad_norm_(params, self.clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        return norm


def ppo_loss(run: Run, batch: Batch) -> BatchLoss:
    """The joint PPO loss of a micro-batch (policy and value), summed over response tokens."""
    value_model = batch["_value_model"]
    hidden = trainer.forward_hidden(run, batch)
    logprobs, entropy = token_logprobs(
        hidden, run.model.logits_from_hidden, batch["targets"], temperature=run.cfg.temperature
    )
    values = value_model(batch["tokens"])[..., 0].float()
    loss, metrics = run.loss_fn(
        logprobs,
        batch["old_logprobs"],
        batch["advantages"],
        values,
        batch["old_values"],
        batch["returns"],
        batch["loss_mask"],
    )
    metrics["entropy"] = (float(entropy.sum()), float(batch["loss_mask"].sum()))
    return BatchLoss(loss, metrics)


class PPO:
    """The PPO loop over a set-up run and its other three models."""

    def __init__(self, run: Run, engine: KVCacheEngine, value: ValueModel, reward: Any,
                 reference: Any, kl: KLController, checkers: RewardFunctions | None) -> None:  # fmt: skip
        self.run, self.engine, self.value, self.reward = run, engine, value, reward
        self.reference, self.kl, self.checkers = reference, kl, checkers

    # -- checkpoints ------------------------------------------------------------------------

    def models(self) -> dict[str, tt_dist.TrainedModel]:
        run = self.run
        return {
            "policy": tt_dist.TrainedModel(run.model, run.optimizer, run.plan.trainable_only),
            "value": tt_dist.TrainedModel(self.value.model, self.value.optimizer),
        }

    def state(self) -> dict[str, Any]:
        parts = {**trainer.stateful_parts(self.run), "kl_coef": self.kl}
        if self.value.scheduler is not None:
            parts["value_scheduler"] = self.value.scheduler
        return parts

    def save(self, final: bool = False) -> None:
        run = self.run
        checkpointing.save_checkpoint(
            checkpointing.checkpoint_root(run.cfg),
            run.progress.step,
            models=self.models(),
            state=self.state(),
            exports={
                "policy": run.plan.exporter(run.model, run.cfg, run.tokenizer),
                "value": scoring.scorer_exporter(self.value.model, self.value.cfg, run.tokenizer),
            },
            keep_last_n=run.cfg.keep_last_n_checkpoints,
            training_state=not final or run.cfg.save_final_training_state,
        )

    def resume(self) -> None:
        latest = checkpointing.resume_checkpoint(
            checkpointing.checkpoint_root(self.run.cfg), models=self.models(), state=self.state()
        )
        log.info(f"Resumed from {latest} at step {self.run.progress.step}")
        mark = getattr(self.run.logger, "resumed", None)
        if mark is not None:
            mark(self.run.progress.step, str(latest))

    # -- the loop ---------------------------------------------------------------------------

    def train(self) -> None:
        run, cfg = self.run, self.run.cfg
        if cfg.resume_from_checkpoint:
            self.resume()
        elif cfg.run_val_every_n_steps and run.val_loader is not None:
            run.logger.log_dict(self.validate(), step=0)
        with trainer.stepping(run) as progress:
            for prompts, steps_left in trainer.epochs(run, loader_batches_per_step=1):
                for _ in range(steps_left):
                    score = self.step(next(prompts))
                    progress.update(1)
                    progress.set_postfix(score=f"{score:.3f}")
                    step = run.progress.step
                    if trainer.due(step, cfg.run_val_every_n_steps) and run.val_loader is not None:
                        run.logger.log_dict(self.validate(), step=step)
                    if trainer.due(step, cfg.save_every_n_steps) and step < run.total_steps:
                        self.save()
            if (
                cfg.run_val_every_n_steps
                and run.val_loader is not None
                and not trainer.due(run.progress.step, cfg.run_val_every_n_steps)
            ):
                run.logger.log_dict(self.validate(), step=run.progress.step)
            self.save(final=True)

    def step(self, prompts: list) -> float:
        """One PPO step; returns the mean reward-model score of its responses."""
        run, cfg = self.run, self.run.cfg
        started = time.perf_counter()
        rollouts = generate_rollouts(self.engine, prompts, 1, cfg.seed, run.progress.step,
                                     run.tokenizer.decode, self.engine.stop_tokens)  # fmt: skip
        generated = time.perf_counter()
        zeros = torch.zeros(len(rollouts))
        (batch,) = training_batches(rollouts, zeros, 1, run.tokenizer.pad_id)
        batch = trainer.to_device(batch, run.dist.device)
        scores, stats = self.score(batch, rollouts)
        self.add_advantages(batch, scores, stats)
        batch["_value_model"] = self.value.model
        results = []
        for _ in range(cfg.ppo_epochs):
            for minibatch in self.minibatches(batch):
                results.append(trainer.forward_backward(run, minibatch))
                stats["grad_norm"] = trainer.optimizer_step(run)
                stats["value_grad_norm"] = self.value.step()
                self.engine.sync_weights()
        trained = time.perf_counter()
        run.progress.step += 1
        trainer.check_finite(run, results[-1].loss)
        run.progress.history.append(results[-1].loss)
        self.kl.update(stats["kl"], tt_dist.sum_over_ranks(len(rollouts)))
        if trainer.due(run.progress.step, cfg.log_every_n_steps) or run.progress.step == 1:
            self.log(rollouts, results, stats, generated - started, trained - generated)
        if trainer.due(run.progress.step, cfg.log_samples_every_n_steps):
            write = getattr(run.logger, "log_samples", None)
            if write is not None:
                count = min(cfg.num_samples_to_log, len(rollouts))
                write([{"prompt": rollouts.prompts[i]["prompt"], "response": rollouts.texts[i],
                        "score": float(scores[i])} for i in range(count)], step=run.progress.step)  # fmt: skip
        return stats["score"]

    def raw_scores(self, batch: Batch, rollouts: Rollouts) -> torch.Tensor:
        if self.reward is None:
            return torch.tensor(self.checkers.score(rollouts).total, device=batch["tokens"].device)
        return self.reward.sequence_scores(batch["tokens"], self.run.tokenizer.pad_id)[:, 0].float()

    @torch.no_grad()
    def score(self, batch: Batch, rollouts: Rollouts) -> tuple[torch.Tensor, dict[str, float]]:
        """The reward model's score (or the reward functions') of each prompt + response,
        penalised where configured."""
        cfg = self.run.cfg
        raw = self.raw_scores(batch, rollouts)
        scores = raw.clone()
        lengths = torch.tensor([len(t) for t in rollouts.completions.tokens], device=raw.device)
        penalised = torch.zeros_like(scores, dtype=torch.bool)
        if cfg.penalise_no_eos:
            penalised |= torch.tensor(rollouts.completions.truncated, device=raw.device)
        if cfg.min_response_length:
            penalised |= lengths < cfg.min_response_length
        scores[penalised] = cfg.reward_penalty
        n = tt_dist.sum_over_ranks(len(scores))
        stats = {
            "score": tt_dist.sum_over_ranks(float(raw.sum())) / n,
            "penalised": tt_dist.sum_over_ranks(float(penalised.sum())) / n,
        }
        return scores, stats

    @torch.no_grad()
    def add_advantages(self, batch: Batch, scores: torch.Tensor, stats: dict[str, float]) -> None:
        """Reference log-probabilities, the KL-penalised token rewards, values, GAE."""
        cfg = self.run.cfg
        mask = batch["loss_mask"]
        ref = self.reference_logprobs(batch)
        kl = token_kl(batch["old_logprobs"], ref, mask)
        rewards = -self.kl.value * kl
        last = mask.long().cumsum(1).argmax(1)  # each row's last response token
        rows = torch.arange(len(scores), device=scores.device)
        rewards[rows, last] += scores
        if cfg.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False, moments=self.moments(rewards, mask))
        was_training = self.value.model.training
        self.value.model.eval()
        values = self.value.model(batch["tokens"])[..., 0].float() * mask
        self.value.model.train(was_training)
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        batch["advantages_raw"] = advantages
        batch["advantages"] = whiten(advantages, mask, moments=self.moments(advantages, mask))
        batch["old_values"], batch["returns"] = values, returns
        n = tt_dist.sum_over_ranks(len(scores))
        total = lambda t: tt_dist.sum_over_ranks(float(t.sum()))  # noqa: E731
        stats["kl"] = total(kl) / n
        stats["non_score_reward"] = -self.kl.value * stats["kl"]
        stats["kl_coef"] = self.kl.value
        residual = returns - values
        tokens = tt_dist.sum_over_ranks(float(mask.sum()))
        var_returns = self.moments(returns, mask)[1]
        var_residual = self.moments(residual, mask)[1]
        stats["value_explained_variance"] = 1 - var_residual / max(var_returns, 1e-8)
        stats["response_length"] = tokens / n

    def moments(self, values: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
        """Mean and unbiased variance of the masked entries over every process."""
        m = mask.to(values.dtype)
        n = tt_dist.sum_over_ranks(float(m.sum()))
        mean = tt_dist.sum_over_ranks(float((values * m).sum())) / n
        squares = tt_dist.sum_over_ranks(float((((values - mean) ** 2) * m).sum()))
        return mean, squares / max(n - 1, 1)

    def reference_logprobs(self, batch: Batch) -> torch.Tensor:
        from tt_peft import disable_adapters

        model = self.reference if self.reference is not None else self.run.model
        context = disable_adapters(self.run.model) if self.reference is None else _Nothing()
        with context:
            hidden = trainer.hidden_states(model, batch)
            logprobs, _ = token_logprobs(hidden, model.logits_from_hidden, batch["targets"],
                                         temperature=self.run.cfg.temperature)  # fmt: skip
        return logprobs

    def minibatches(self, batch: Batch) -> list[list[Batch]]:
        """``num_minibatches`` minibatches of ``gradient_accumulation_steps`` micro-batches."""
        cfg = self.run.cfg
        n = batch["tokens"].shape[0]
        pieces = cfg.num_minibatches * cfg.gradient_accumulation_steps
        if n % pieces:
            raise ValueError(
                f"{n} responses per process do not split into num_minibatches="
                f"{cfg.num_minibatches} x gradient_accumulation_steps="
                f"{cfg.gradient_accumulation_steps}; make batch_size a multiple of their product"
            )
        size = n // pieces
        micro = [
            {k: v[i : i + size] if torch.is_tensor(v) else v for k, v in batch.items()}
            for i in range(0, n, size)
        ]
        ga = cfg.gradient_accumulation_steps
        return [micro[i : i + ga] for i in range(0, len(micro), ga)]

    def log(self, rollouts, results, stats, rollout_s: float, train_s: float) -> None:
        run = self.run
        generated = tt_dist.sum_over_ranks(sum(len(t) for t in rollouts.completions.tokens))
        metrics = {
            "loss": results[-1].loss,
            **results[-1].metrics,
            **{k: v for k, v in stats.items() if v is not None},
            "lr": run.schedule_optimizer.param_groups[0]["lr"],
            "rollout_tokens_per_s": generated / max(rollout_s, 1e-9),
            "train_tokens_per_s": sum(r.tokens for r in results) / max(train_s, 1e-9),
            "time/rollout_s": rollout_s,
            "time/train_s": train_s,
        }
        run.logger.log_dict(metrics, step=run.progress.step)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Greedy responses to the held-out prompts: the mean reward (the reward model's score,
        or the reward functions' sum) and the mean of each checker (exact match for a 0/1 one)."""
        run = self.run
        engine = greedy(self.engine)
        totals: dict[str, float] = {"val_score": 0.0}
        count = 0
        for prompts in run.val_loader:
            rollouts = generate_rollouts(engine, prompts, 1, 0, 0, run.tokenizer.decode,
                                         engine.stop_tokens)  # fmt: skip
            (batch,) = training_batches(
                rollouts, torch.zeros(len(rollouts)), 1, run.tokenizer.pad_id
            )
            batch = trainer.to_device(batch, run.dist.device)
            checked = self.checkers.score(rollouts) if self.checkers is not None else None
            if self.reward is None:  # the reward is the checkers' (scored once)
                totals["val_score"] += sum(checked.total)
            else:
                totals["val_score"] += float(self.raw_scores(batch, rollouts).sum())
            if checked is not None:
                for name, values in checked.per_function.items():
                    key = f"val_rewards/{name}"
                    totals[key] = totals.get(key, 0.0) + sum(v for v in values if v is not None)
            count += len(rollouts)
        n = max(tt_dist.sum_over_ranks(count), 1)
        return {key: tt_dist.sum_over_ranks(value) / n for key, value in totals.items()}


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None
