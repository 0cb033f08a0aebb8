"""LoRA / DoRA / QLoRA / QDoRA fine-tuning: the ``full_finetune`` loop with adapters attached.

The base weights are frozen (NF4-quantized with ``peft.quantize_base: true``); only the
adapters train. Every checkpoint holds the merged model in HF format (transformers loads it
as a plain model), the adapter in PEFT format under ``adapter/`` (``peft`` loads it onto the
base model) and the training state.

    tt run lora_finetune --config tiny/lora
    tt run lora_finetune --config llama3_2/1B_qlora checkpointer.checkpoint_dir=...
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import tt_dist
from omegaconf import DictConfig
from tt_ckpt import tt_module_to_hf
from tt_models import build_model
from tt_peft import apply_lora, mark_only_adapters_trainable, merged_state_dict
from tt_peft import save_adapter as save_peft_adapter

from tt_recipes.config import ConfigKey, RecipeSpec
from tt_recipes.recipes import full_finetune
from tt_recipes.recipes.full_finetune import Run

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

# For recipes that train adapters or every parameter (dpo, knowledge_distillation).
OPTIONAL_PEFT = ConfigKey(
    keys=PEFT_KEYS, default=None, doc="adapter settings; null trains every parameter"
)

SPEC = RecipeSpec(
    name="lora_finetune",
    description="LoRA/DoRA/QLoRA/QDoRA fine-tuning; saves a merged HF model and a PEFT adapter.",
    keys={
        **full_finetune.SFT_KEYS,
        "peft": ConfigKey(keys=PEFT_KEYS, default={}, doc="adapter settings"),
    },
)


def recipe_main(cfg: DictConfig) -> None:
    try:
        run = full_finetune.setup(
            cfg,
            prepare_model=add_adapters,
            save_model=save_lora_model,
            trainable_state_only=True,  # the frozen base comes back from checkpoint_dir
        )
        full_finetune.train(run)
    finally:
        tt_dist.destroy_distributed()


def optional_adapters(cfg: DictConfig) -> dict[str, Any]:
    """``full_finetune.setup`` arguments for an ``OPTIONAL_PEFT`` recipe: adapters (saved as
    merged model + PEFT adapter, resumable state without the frozen base) when ``peft`` is
    set, full training when it is null."""
    if cfg.get("peft") is None:
        return {"prepare_model": None, "save_model": full_finetune.save_full_model}
    return {
        "prepare_model": add_adapters,
        "save_model": save_lora_model,
        "trainable_state_only": True,
    }


def add_adapters(model: torch.nn.Module, cfg: DictConfig) -> torch.nn.Module:
    """Attach adapters to the loaded model and freeze everything else."""
    peft = cfg.peft
    targets = (
        list(peft.target_modules)
        if not isinstance(peft.target_modules, str)
        else peft.target_modules
    )
    apply_lora(
        model,
        targets,
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


def _family(run: Run) -> str:
    from tt_models import to_hf_config

    return to_hf_config(run.model.config)["model_type"]


def _key_map(run: Run):
    family = _family(run)
    return lambda name: tt_module_to_hf(name, family)


def save_lora_model(run: Run, directory: Path, full_sd: dict | None) -> None:
    """Merged weights as a HF model at the top of the checkpoint, the adapter in ``adapter/``.

    When the model is sharded, rank 0 rebuilds an unsharded copy from the gathered state dict
    (on the meta device first, so only the gathered tensors take memory) and saves that.
    """
    model = run.model if full_sd is None else _unsharded_copy(run, full_sd)
    full_finetune.save_hf_model(
        run, directory, dtype=_adapter_dtype(model), state_dict=merged_state_dict(model)
    )
    base = run.cfg.checkpointer.get("checkpoint_dir")
    save_peft_adapter(
        model,
        directory / ADAPTER_DIR,
        base_model_name_or_path=str(full_finetune.source_dir(run.cfg)) if base else None,
        key_map=_key_map(run),
    )


def _unsharded_copy(run: Run, full_sd: dict) -> torch.nn.Module:
    copy = build_model(run.model.config, device="meta")
    add_adapters(copy, run.cfg)
    copy.load_state_dict(full_sd, assign=True)
    return copy


def _adapter_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(p for p in model.parameters() if p.requires_grad).dtype
