"""GRPO: online RL with verifiable rewards, on 1..N processes, full or LoRA/QLoRA.

Each step: take ``batch_size`` prompts per process; sample ``num_generations`` completions of
each with the policy (no gradients); score them with the reward functions; turn each group's
rewards into advantages; then take ``num_iterations`` optimizer steps of the policy loss on
these rollouts (``tt_recipes.rl.losses.GRPOLoss``: grpo, dr_grpo, dapo, bnpo; clipped to the
log-probabilities the completions were sampled with; a k3 KL to a reference when beta > 0).

The reference is the policy with its adapters switched off for LoRA (no copy), a frozen copy
sharded like the policy for full fine-tuning, and nothing at all when ``loss.beta`` is 0.

    tt run grpo --config tiny/grpo
    tt run --nproc_per_node 2 grpo --config tiny/grpo batch_size=4
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import torch
import tt_dist
from omegaconf import DictConfig

from tt_recipes import adapters, trainer, training
from tt_recipes.config import ConfigKey, RecipeSpec, instantiate, is_component, resolve_component
from tt_recipes.losses import token_logprobs
from tt_recipes.rl import advantages as advantage_fns
from tt_recipes.rl import rewards as reward_fns
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


def _check_rl_keys(cfg: dict[str, Any]) -> list[str]:
    problems = []
    for i, item in enumerate(cfg.get("reward_functions") or []):
        if isinstance(item, str):
            try:
                resolve_component(item, where=f"key 'reward_functions[{i}]'")
            except Exception as e:
                problems.append(str(e))
        elif not is_component(item):
            problems.append(
                f"key 'reward_functions[{i}]': expected a dotted path of a reward function or a "
                f"mapping with a '_component_' key, got {item!r}"
            )
    weights = cfg.get("reward_weights")
    if weights is not None and len(weights) != len(cfg.get("reward_functions") or []):
        problems.append(
            f"key 'reward_weights': {len(weights)} weights for "
            f"{len(cfg.get('reward_functions') or [])} reward functions"
        )
    if cfg.get("temperature", 1.0) <= 0:
        problems.append(
            "key 'temperature': 0 samples every completion of a prompt alike (greedy), so the "
            "group has no advantage to learn from; use a temperature > 0 (1.0 is usual)"
        )
    return problems


SPEC = RecipeSpec(
    name="grpo",
    description="GRPO online RL with verifiable rewards (full or LoRA) on 1..N processes.",
    keys={
        **trainer.TRAINING_KEYS,
        "dataset": ConfigKey(
            component=True,
            required=True,
            positional=1,
            doc="prompts (tt_data.prompt_dataset, gsm8k_prompts, synthetic_arithmetic_prompts)",
        ),
        "dataset_val": ConfigKey(
            component=True, positional=1, doc="held-out prompts, scored greedily"
        ),
        "batch_size": ConfigKey(int, default=8, min=1, doc="prompts per step per process"),
        "gradient_accumulation_steps": ConfigKey(
            int,
            default=1,
            min=1,
            doc="micro-batches each optimizer step on a rollout is split into",
        ),
        "peft": adapters.OPTIONAL_PEFT,
        "save_adapter_weights_only": adapters.SAVE_ADAPTER_ONLY,
        "loss": ConfigKey(
            component=True,
            required=True,
            doc="tt_recipes.rl.losses.GRPOLoss (loss_type, epsilon, epsilon_high, beta, ...)",
        ),
        "reward_functions": ConfigKey(
            list,
            required=True,
            doc="dotted paths of fn(prompts, completions, **columns), or factories",
        ),
        "reward_weights": ConfigKey(list | None, default=None, doc="one per function; default 1"),
        "num_generations": ConfigKey(
            int, default=8, min=2, doc="completions per prompt (a group: at least 2 to compare)"
        ),
        "max_new_tokens": ConfigKey(int, default=256, min=1, doc="longest completion"),
        "stop_token_ids": ConfigKey(
            list | None, default=None, doc="more ids that end a response (besides the tokenizer's)"
        ),
        "temperature": ConfigKey(float, default=1.0, min=0),
        "top_p": ConfigKey(float | None, default=None, min=0),
        "top_k": ConfigKey(int | None, default=None, min=1),
        "advantage_estimator": ConfigKey(str, default="grpo", choices=("grpo", "rloo")),
        "scale_rewards": ConfigKey(
            str, default="group", choices=advantage_fns.SCALES, doc="none = Dr. GRPO"
        ),
        "num_iterations": ConfigKey(
            int, default=1, min=1, doc="optimizer steps on each rollout batch"
        ),
        "mask_truncated_completions": ConfigKey(
            bool, default=False, doc="completions without a stop token carry no loss"
        ),
        "compile_generation": ConfigKey(bool, default=False, doc="torch.compile the decode step"),
        "log_samples_every_n_steps": ConfigKey(int | None, default=None, min=1),
        "num_samples_to_log": ConfigKey(int, default=4, min=1),
    },
    checks=(_check_rl_keys, adapters.check_save_adapter_only),
)


def recipe_main(cfg: DictConfig) -> None:
    with trainer.distributed(cfg) as dist:
        lora, beta = cfg.peft is not None, float(cfg.loss.get("beta", 0.0))
        reference = training.frozen_model(cfg, dist) if beta > 0 and not lora else None
        loss = instantiate(cfg.loss, max_completion_length=cfg.max_new_tokens)
        objective = trainer.Objective(
            batch_loss=partial(policy_loss, reference=reference, temperature=cfg.temperature),
            units=lambda batch: loss.units(batch["loss_mask"]),
            collate=lambda samples, pad_id: samples,  # prompt items, as they are
        )
        run = trainer.setup(
            cfg,
            dist,
            objective=objective,
            plan=adapters.model_plan(cfg),
            loss_fn=loss,
            batches_per_step=1,
            optimizer_steps_per_step=cfg.num_iterations,
        )
        describe_reference(lora, beta)
        rewards = reward_fns.RewardFunctions.from_config(cfg)
        rewards.check_columns(run.loader.dataset, "dataset")
        check_prompt_lengths(run.loader.dataset, cfg.max_new_tokens, run.model.config.max_seq_len)
        engine = KVCacheEngine.from_config(run.model, run.tokenizer, cfg)
        train(run, engine, rewards, reference)


def describe_reference(lora: bool, beta: float) -> None:
    if beta == 0:
        log.info("No reference model: loss.beta is 0 (no KL penalty)")
    elif lora:
        log.info("Reference model: the policy with its adapters switched off")
    else:
        log.info("Reference model: a frozen copy of the starting model")


def train(
    run: Run,
    engine: KVCacheEngine,
    rewards: reward_fns.RewardFunctions,
    reference: torch.nn.Module | None,
) -> None:
    """For each step: rollouts, rewards, advantages, then ``num_iterations`` optimizer steps;
    validation and checkpoints when due."""
    cfg = run.cfg
    if cfg.resume_from_checkpoint:
        trainer.resume(run)
    elif cfg.run_val_every_n_steps and run.val_loader is not None:
        run.logger.log_dict(validate(run, engine, rewards), step=0)  # the starting point
    with trainer.stepping(run) as progress:
        for prompts, steps_left in trainer.epochs(run, loader_batches_per_step=1):
            for _ in range(steps_left):
                reward = grpo_step(run, engine, rewards, reference, next(prompts))
                progress.update(1)
                progress.set_postfix(reward=f"{reward:.3f}")
                step = run.progress.step
                if trainer.due(step, cfg.run_val_every_n_steps) and run.val_loader is not None:
                    run.logger.log_dict(validate(run, engine, rewards), step=step)
                if trainer.due(step, cfg.save_every_n_steps) and step < run.total_steps:
                    trainer.save(run)
        if (
            cfg.run_val_every_n_steps
            and run.val_loader is not None
            and not trainer.due(run.progress.step, cfg.run_val_every_n_steps)
        ):
            run.logger.log_dict(validate(run, engine, rewards), step=run.progress.step)  # the end
        trainer.save(run, final=True)


def grpo_step(
    run: Run,
    engine: KVCacheEngine,
    rewards: reward_fns.RewardFunctions,
    reference: torch.nn.Module | None,
    prompts: list,
) -> float:
    """One step; returns the mean reward of its rollouts (on every process)."""
    cfg = run.cfg
    started = time.perf_counter()
    rollouts = generate_rollouts(
        engine,
        prompts,
        cfg.num_generations,
        cfg.seed,
        run.progress.step,
        run.tokenizer.decode,
        engine.stop_tokens,
    )
    generated = time.perf_counter()
    scores = rewards.score(rollouts)
    advantages = compute_advantages(cfg, torch.tensor(scores.total))
    batches = training_batches(
        rollouts,
        advantages,
        cfg.gradient_accumulation_steps,
        run.tokenizer.pad_id,
        mask_truncated=cfg.mask_truncated_completions,
    )
    batches = [trainer.to_device(batch, run.dist.device) for batch in batches]
    if run.loss_fn.beta > 0:
        add_reference_logprobs(run, batches, reference)
    results, grad_norm = [], None
    for _ in range(cfg.num_iterations):
        if tt_dist.sum_over_ranks(sum(run.objective.units(b) for b in batches)) == 0:
            log.warning(f"step {run.progress.step + 1}: every completion was masked; no update")
            break
        results.append(trainer.forward_backward(run, batches))
        grad_norm = trainer.optimizer_step(run)
        engine.sync_weights()
    trained = time.perf_counter()
    run.progress.step += 1
    loss = results[-1].loss if results else 0.0
    trainer.check_finite(run, loss)
    run.progress.history.append(loss)
    metrics = step_metrics(run, rollouts, scores, results, generated - started, trained - generated)
    if grad_norm is not None:
        metrics["grad_norm"] = grad_norm
    if trainer.due(run.progress.step, cfg.log_every_n_steps) or run.progress.step == 1:
        run.logger.log_dict(metrics, step=run.progress.step)
    if trainer.due(run.progress.step, cfg.log_samples_every_n_steps):
        log_samples(run, rollouts, scores)
    return metrics["reward"]


def policy_loss(
    run: Run, batch: Batch, reference: torch.nn.Module | None, temperature: float
) -> BatchLoss:
    """The GRPO loss of a micro-batch of rollouts, summed over its units."""
    hidden = trainer.forward_hidden(run, batch)
    logprobs, entropy = token_logprobs(
        hidden, run.model.logits_from_hidden, batch["targets"], temperature=temperature
    )
    loss, metrics = run.loss_fn(
        logprobs,
        batch["old_logprobs"],
        batch["advantages"],
        batch["loss_mask"],
        batch.get("ref_logprobs"),
    )
    metrics["entropy"] = (float(entropy.sum()), float(batch["loss_mask"].sum()))
    return BatchLoss(loss, metrics)


@torch.no_grad()
def add_reference_logprobs(
    run: Run, batches: list[Batch], reference: torch.nn.Module | None
) -> None:
    """Each batch's ``ref_logprobs``: under the frozen reference, or the policy with its
    adapters switched off (LoRA)."""
    from tt_peft import disable_adapters

    for batch in batches:
        if reference is not None:
            batch["ref_logprobs"] = _logprobs(reference, batch, run.cfg.temperature)
        else:
            with disable_adapters(run.model):
                batch["ref_logprobs"] = _logprobs(run.model, batch, run.cfg.temperature)


def _logprobs(model: torch.nn.Module, batch: Batch, temperature: float) -> torch.Tensor:
    hidden = trainer.hidden_states(model, batch)
    logprobs, _ = token_logprobs(
        hidden, model.logits_from_hidden, batch["targets"], temperature=temperature
    )
    return logprobs


def compute_advantages(cfg: DictConfig, rewards: torch.Tensor) -> torch.Tensor:
    if cfg.advantage_estimator == "rloo":
        return advantage_fns.rloo_advantages(rewards, cfg.num_generations)
    batch_std = None
    if cfg.scale_rewards == "batch":  # the std of every process's rewards together
        n = tt_dist.sum_over_ranks(rewards.numel())
        mean = tt_dist.sum_over_ranks(float(rewards.sum())) / n
        squares = tt_dist.sum_over_ranks(float(((rewards - mean) ** 2).sum()))
        batch_std = (squares / max(n - 1, 1)) ** 0.5
    return advantage_fns.group_advantages(
        rewards, cfg.num_generations, cfg.scale_rewards, batch_std
    )


# ---------------------------------------------------------------------------------------------
# Logs


def step_metrics(
    run: Run,
    rollouts: Rollouts,
    scores: reward_fns.Scores,
    results: list[trainer.StepResult],
    rollout_s: float,
    train_s: float,
) -> dict[str, float]:
    """What a step did, over every process: rewards, completions, the loss's own metrics,
    throughput and where the time went."""
    lengths = [len(t) for t in rollouts.completions.tokens]
    n = tt_dist.sum_over_ranks(len(lengths))
    total = torch.tensor(scores.total)
    mean = tt_dist.sum_over_ranks(float(total.sum())) / n
    variance = tt_dist.sum_over_ranks(float(((total - mean) ** 2).sum())) / max(n - 1, 1)
    generated = tt_dist.sum_over_ranks(sum(lengths))
    groups = total.view(-1, rollouts.group_size)
    metrics = {
        "loss": results[-1].loss if results else 0.0,
        **(results[-1].metrics if results else {}),
        "lr": run.schedule_optimizer.param_groups[0]["lr"],
        "reward": mean,
        "reward_std": variance**0.5,
        "frac_reward_zero_std": tt_dist.sum_over_ranks(float((groups.std(1) == 0).sum()))
        / tt_dist.sum_over_ranks(groups.shape[0]),
    }
    for name, values in scores.per_function.items():
        applied = [v for v in values if v is not None]
        metrics[f"rewards/{name}"] = tt_dist.sum_over_ranks(sum(applied)) / max(
            tt_dist.sum_over_ranks(len(applied)), 1
        )
    metrics["completions/mean_length"] = generated / n
    metrics["completions/max_length"] = tt_dist.max_over_ranks(max(lengths))
    metrics["completions/truncated"] = (
        tt_dist.sum_over_ranks(sum(rollouts.completions.truncated)) / n
    )
    trained_tokens = sum(r.tokens for r in results)
    metrics["rollout_tokens_per_s"] = generated / max(rollout_s, 1e-9)
    metrics["train_tokens_per_s"] = trained_tokens / max(train_s, 1e-9)
    metrics["time/rollout_s"] = rollout_s
    metrics["time/train_s"] = train_s
    if run.cfg.log_peak_memory_stats:
        metrics["peak_memory_gib"] = training.peak_memory_gib(run.dist.device)
    return metrics


def log_samples(run: Run, rollouts: Rollouts, scores: reward_fns.Scores) -> None:
    """A few prompt / completion / reward triples into the log (rank 0's)."""
    count = min(run.cfg.num_samples_to_log, len(rollouts))
    samples = [
        {
            "prompt": rollouts.prompts[i]["prompt"],
            "completion": rollouts.texts[i],
            "reward": scores.total[i],
        }
        for i in range(count)
    ]
    write = getattr(run.logger, "log_samples", None)
    if write is not None:
        write(samples, step=run.progress.step)


@torch.no_grad()
def validate(
    run: Run, engine: KVCacheEngine, rewards: reward_fns.RewardFunctions
) -> dict[str, float]:
    """Greedy completions of every held-out prompt, scored: ``val_reward`` and one mean per
    reward function (the fraction answered right, for a 0/1 checker)."""
    greedy_engine = greedy(engine)
    totals: dict[str, float] = {}
    count = 0
    for prompts in run.val_loader:
        rollouts = generate_rollouts(
            greedy_engine, prompts, 1, 0, 0, run.tokenizer.decode, engine.stop_tokens
        )
        scores = rewards.score(rollouts)
        totals["val_reward"] = totals.get("val_reward", 0.0) + sum(scores.total)
        for name, values in scores.per_function.items():
            key = f"val_rewards/{name}"
            totals[key] = totals.get(key, 0.0) + sum(v for v in values if v is not None)
        count += len(rollouts)
    n = max(tt_dist.sum_over_ranks(count), 1)
    return {key: tt_dist.sum_over_ranks(value) / n for key, value in totals.items()}
