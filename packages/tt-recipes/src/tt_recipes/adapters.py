"""LoRA / DoRA / QLoRA / QDoRA for the training recipes: the ``peft`` config section, attaching
adapters to a loaded model, and exporting an adapted model into a checkpoint (the merged model
in HF format at the top, the adapter in PEFT format under ``adapter/``).

``model_plan(cfg)`` is what a recipe passes to ``trainer.setup``: adapters when the config has
a ``peft`` section, every parameter trained when it is null.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import tt_dist
from omegaconf import DictConfig
from tt_ckpt import hub_repo_id, tt_module_to_hf
from tt_models import build_model, to_hf_config
from tt_peft import apply_lora, mark_only_adapters_trainable, merged_state_dict
from tt_peft import save_adapter as save_peft_adapter

from tt_recipes import training
from tt_recipes.checkpointing import Exporter, full_model_exporter, save_hf_model, source_dir
from tt_recipes.config import ConfigKey
from tt_recipes.trainer import ModelPlan

log = logging.getLogger("tt")

ADAPTER_DIR = "adapter"

PEFT_KEYS = {
    "rank": ConfigKey(int, default=8, doc="adapter rank r"),
    "alpha": ConfigKey(float, default=16.0, doc="scaling numerator: alpha / r"),
    "dropout": ConfigKey(float, default=0.0),
    "target_modules": ConfigKey(
        list | str,
        default=["q_proj", "v_proj"],
        doc="module names (q_proj, v_proj, gate_proj, ...) or a regex",
    ),
    "use_dora": ConfigKey(bool, default=False),
    "use_rslora": ConfigKey(bool, default=False, doc="scale by alpha / sqrt(r)"),
    "quantize_base": ConfigKey(bool, default=False, doc="NF4 base weights (QLoRA/QDoRA)"),
}

# ``peft`` of a recipe that always trains adapters (lora_finetune) ...
REQUIRED_PEFT = ConfigKey(keys=PEFT_KEYS, default={}, doc="adapter settings")
# ... and of one that trains adapters or every parameter (dpo, knowledge_distillation, grpo).
OPTIONAL_PEFT = ConfigKey(
    keys=PEFT_KEYS, default=None, doc="adapter settings; null trains every parameter"
)
# What a checkpoint of an adapted model holds besides the training state.
SAVE_ADAPTER_ONLY = ConfigKey(
    bool,
    default=False,
    doc="checkpoints hold the PEFT adapter alone, not also the merged model",
)


def check_save_adapter_only(cfg: dict[str, Any]) -> list[str]:
    """save_adapter_weights_only needs adapters (a spec check of the recipes with ``peft``)."""
    if cfg.get("save_adapter_weights_only") and cfg.get("peft") is None:
        return [
            "key 'save_adapter_weights_only': true, but peft is null, so there is no adapter; "
            "set it to false (or set peft to train adapters)"
        ]
    return []


def add_adapters(model: torch.nn.Module, cfg: DictConfig) -> torch.nn.Module:
    """Attach the ``peft`` section's adapters to the loaded model and freeze everything else."""
    peft = cfg.peft
    targets = (
        list(peft.target_modules)
        if not isinstance(peft.target_modules, str)
        else peft.target_modules
    )
    include = None
    if cfg.get("freeze") and getattr(model.config, "vision", None) is not None:
        # the frozen parts of a vision model take no adapters
        fusion = training.fusion_prefixes(model.config)
        include = lambda name: not training.is_frozen(name, cfg.freeze, fusion)  # noqa: E731
    apply_lora(
        model,
        targets,
        include=include,
        rank=peft.rank,
        alpha=peft.alpha,
        dropout=peft.dropout,
        use_dora=peft.use_dora,
        quantize_base=peft.quantize_base,
        use_rslora=peft.use_rslora,
    )
    mark_only_adapters_trainable(model)
    kind = ("Q" if peft.quantize_base else "") + ("DoRA" if peft.use_dora else "LoRA")
    log.info(f"{kind} adapters of rank {peft.rank} on {targets}")
    return model


def lora_exporter(model: torch.nn.Module, cfg: DictConfig, tokenizer: Any) -> Exporter:
    """Exports an adapted model: merged weights as a HF model, the adapter in ``adapter/``.

    When the model is sharded, rank 0 rebuilds an unsharded copy from the gathered state dict
    (on the meta device first, so only the gathered tensors take memory) and saves that.
    """

    def export(directory: Path | None) -> None:
        full_sd = tt_dist.gather_full_state_dict(model) if tt_dist.is_distributed() else None
        if directory is None:
            return
        whole = model if full_sd is None else _unsharded_copy(model, cfg, full_sd)
        if not cfg.get("save_adapter_weights_only"):
            save_hf_model(
                whole,
                cfg,
                tokenizer,
                directory,
                dtype=_adapter_dtype(whole),
                state_dict=merged_state_dict(whole),
            )
        family = to_hf_config(model.config)["model_type"]
        base = source_dir(cfg) if cfg.checkpointer.get("checkpoint_dir") else None
        save_peft_adapter(
            whole,
            directory / ADAPTER_DIR,
            # the hub id when `tt download` fetched the base, so the adapter loads anywhere
            base_model_name_or_path=(hub_repo_id(base) or str(base)) if base else None,
            key_map=lambda name: tt_module_to_hf(name, family),
        )

    return export


def _unsharded_copy(model: torch.nn.Module, cfg: DictConfig, full_sd: dict) -> torch.nn.Module:
    copy = build_model(model.config, device="meta")
    add_adapters(copy, cfg)
    copy.load_state_dict(full_sd, assign=True)
    return copy


def _adapter_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(p for p in model.parameters() if p.requires_grad).dtype


def model_plan(cfg: DictConfig) -> ModelPlan:
    """The ``ModelPlan`` for a config: adapters when ``peft`` is set (the resumable state holds
    only them; the frozen base comes back from ``checkpoint_dir``), else full training."""
    if cfg.get("peft") is None:
        return ModelPlan(prepare=None, exporter=full_model_exporter, trainable_only=False)
    return ModelPlan(prepare=add_adapters, exporter=lora_exporter, trainable_only=True)
