"""A toy recipe with two trained models and two optimizers (the shape of PPO's policy and value
model), built from the library pieces only: it shows that a checkpoint holds every trained
model's weights and optimizer plus the run's stateful parts, and that a run resumes from it
exactly. Run with ``tt run tests/recipes/two_models_recipe.py --config tiny/full ...``.

The "policy" is the SFT model of the config; the "value" model is a second decoder of the
same shape, trained on the same batches with its own AdamW, learning rate and schedule.
"""

from __future__ import annotations

import torch
import tt_dist
from omegaconf import DictConfig
from tt_recipes import checkpointing, trainer, training
from tt_recipes.config import ConfigKey, RecipeSpec
from tt_recipes.lr_schedulers import cosine_with_warmup

SPEC = RecipeSpec(
    name="two_models",
    description="Toy: two decoders, two optimizers, one checkpoint.",
    keys={**trainer.TRAINING_KEYS, "value_lr": ConfigKey(float, default=2e-3)},
)


def recipe_main(cfg: DictConfig) -> None:
    with trainer.distributed(cfg) as dist:
        run = trainer.setup(cfg, dist, objective=trainer.SFT)
        torch.manual_seed(cfg.seed + 1)
        value = training.build_model(cfg, dist.device, torch.float32)
        if dist.is_distributed:
            training.shard(value, cfg)
        value_optimizer = torch.optim.AdamW(value.parameters(), lr=cfg.value_lr)
        value_schedule = cosine_with_warmup(value_optimizer, 2, run.total_steps)
        models = {
            "policy": tt_dist.TrainedModel(run.model, run.optimizer),
            "value": tt_dist.TrainedModel(value, value_optimizer),
        }
        state = {**trainer.stateful_parts(run), "value_scheduler": value_schedule}
        root = checkpointing.checkpoint_root(cfg)
        if cfg.resume_from_checkpoint:
            checkpointing.resume_checkpoint(root, models=models, state=state)

        def save() -> None:
            checkpointing.save_checkpoint(
                root,
                run.progress.step,
                models=models,
                state=state,
                exports={
                    "policy": checkpointing.full_model_exporter(run.model, cfg, run.tokenizer),
                    "value": checkpointing.full_model_exporter(value, cfg, run.tokenizer),
                },
                keep_last_n=cfg.keep_last_n_checkpoints,
            )

        ga = cfg.gradient_accumulation_steps
        start_epoch, start_in_epoch = divmod(run.progress.step, run.steps_per_epoch)
        for epoch in range(start_epoch, cfg.epochs):
            first = start_in_epoch if epoch == start_epoch else 0
            run.sampler.set_epoch(epoch, start_index=first * ga * cfg.batch_size)
            batches = iter(run.loader)
            for _ in range(first, run.steps_per_epoch):
                micro_batches = [trainer.to_device(next(batches), dist.device) for _ in range(ga)]
                policy_loss = trainer.forward_backward(run, micro_batches).loss
                trainer.optimizer_step(run)
                value_loss = value_step(run, value, micro_batches)
                value_optimizer.step()
                value_optimizer.zero_grad(set_to_none=True)
                value_schedule.step()
                run.progress.step += 1
                run.logger.log_dict(
                    {"loss": policy_loss, "value_loss": value_loss}, step=run.progress.step
                )
                if trainer.due(run.progress.step, cfg.save_every_n_steps):
                    save()
        save()
        run.logger.close()


def value_step(run: trainer.Run, value: torch.nn.Module, micro_batches: list) -> float:
    """The value model's cross-entropy, normalised over the step like the policy's."""
    from tt_recipes.losses import shift_labels

    world = run.dist.world_size
    units = tt_dist.sum_over_ranks(sum(trainer.trained_tokens(b) for b in micro_batches))
    total = 0.0
    for batch in micro_batches:
        hidden = trainer.hidden_states(value, batch)
        loss = run.loss_fn(hidden, value.logits_from_hidden, shift_labels(batch["labels"]))
        (loss * (world / units)).backward()
        total += loss.item()
    return tt_dist.sum_over_ranks(total) / units
