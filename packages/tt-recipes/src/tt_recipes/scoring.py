"""Reward and value models in the training recipes: a decoder under a ``score`` head
(``tt_models.TransformerScorer``), trained whole or with adapters, exported as transformers'
``*ForSequenceClassification``.

``scorer_plan(cfg)`` is the ``ModelPlan`` a recipe passes to ``trainer.setup``: it wraps the
loaded decoder (a causal LM checkpoint: a new head; a reward model: its own head, see
``training.build_model``), attaches the ``peft`` section's adapters if any, and keeps the head
trainable. The new head is drawn from a generator seeded by the run's seed, so one process
and N processes start from the same head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import tt_dist
from omegaconf import DictConfig
from tt_data import IGNORE_INDEX
from tt_models import TransformerDecoder, TransformerScorer, build_model, last_token_index
from tt_peft import mark_only_adapters_trainable, merged_state_dict

from tt_recipes.adapters import add_adapters
from tt_recipes.checkpointing import Exporter, save_hf_model
from tt_recipes.trainer import ModelPlan


def scorer_plan(cfg: DictConfig) -> ModelPlan:
    """Full or adapter training of a scorer; the resumable state of an adapter run holds the
    adapters and the head (the frozen decoder comes back from ``checkpoint_dir``)."""
    lora = cfg.get("peft") is not None
    return ModelPlan(
        prepare=lambda model, cfg: as_scorer(model, cfg, lora),
        exporter=scorer_exporter,
        trainable_only=lora,
    )


def as_scorer(model: torch.nn.Module, cfg: DictConfig, lora: bool) -> TransformerScorer:
    scorer = model if isinstance(model, TransformerScorer) else TransformerScorer(model)
    if not isinstance(model, TransformerScorer) and not scorer.score.weight.is_meta:
        init_score_head(scorer, cfg.seed)
    if lora:
        add_adapters(scorer, cfg)
        mark_only_adapters_trainable(scorer)
        scorer.score.weight.requires_grad_(True)
    return scorer


@torch.no_grad()
def init_score_head(scorer: TransformerScorer, seed: int) -> None:
    """A new head, N(0, 0.02) as transformers initialises it, from a generator of its own
    (sharded or not, every process gets the values one process would)."""
    weight = scorer.score.weight
    full = torch.randn(weight.shape, generator=torch.Generator().manual_seed(seed)) * 0.02
    full = full.to(dtype=weight.dtype)
    if hasattr(weight, "device_mesh"):  # an FSDP DTensor shard
        from torch.distributed.tensor import distribute_tensor

        shard = distribute_tensor(full.to(weight.device), weight.device_mesh, weight.placements)
        weight.to_local().copy_(shard.to_local())
    else:
        weight.copy_(full)


def scorer_exporter(model: TransformerScorer, cfg: DictConfig, tokenizer: Any) -> Exporter:
    """Exports a scorer (adapters merged) as a HF ``*ForSequenceClassification`` directory
    whose ``pad_token_id`` tells transformers where each sequence's score is."""

    def export(directory: Path | None) -> None:
        full_sd = tt_dist.gather_full_state_dict(model) if tt_dist.is_distributed() else None
        if directory is None:
            return
        whole = model if full_sd is None else _unsharded_copy(model, cfg, full_sd)
        save_hf_model(whole, cfg, tokenizer, directory, state_dict=merged_state_dict(whole))

    return export


def _unsharded_copy(model: TransformerScorer, cfg: DictConfig, full_sd: dict) -> TransformerScorer:
    decoder: TransformerDecoder = build_model(model.config, device="meta")
    with torch.device("meta"):
        copy = TransformerScorer(decoder, model.num_labels)
    if cfg.get("peft") is not None:
        add_adapters(copy, cfg)
    copy.load_state_dict(full_sd, assign=True)
    return copy


def at_end_of_turn(
    values: torch.Tensor, batch: dict[str, torch.Tensor], pad_id: int, stop_tokens: list[int]
) -> torch.Tensor:
    """``values`` ``[b, s, ...]`` at each response's end of turn ``[b, ...]``: its last stop
    token among the trained positions (``labels``), else its last token that is not padding.

    A chat template may write more after the end of turn (ChatML's newline), but a PPO response
    ends at its stop token, and the reward model must be trained where PPO reads its score.
    transformers' score of the sequence cut after that token is the same (causal attention)."""
    tokens, labels = batch["tokens"], batch["labels"]
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    last = last_token_index(tokens, pad_id)
    stops = torch.tensor(stop_tokens, device=tokens.device)
    is_end = torch.isin(tokens, stops) & (labels != IGNORE_INDEX) & (positions <= last[:, None])
    index = torch.where(is_end.any(-1), (positions * is_end).argmax(-1), last)
    return values[torch.arange(tokens.shape[0], device=tokens.device), index]
