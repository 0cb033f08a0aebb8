"""tt_peft: LoRA, DoRA, QLoRA and QDoRA adapters for any ``torch.nn.Module``.

Works on tt_models models and on transformers models alike; adapters are saved in the PEFT
format (``adapter_config.json`` + ``adapter_model.safetensors``) so ``peft`` loads them.
"""

from tt_peft.apply import (
    adapter_layers,
    adapter_params,
    adapter_state_dict,
    apply_lora,
    disable_adapters,
    mark_only_adapters_trainable,
    merge_adapters,
    merged_state_dict,
)
from tt_peft.layers import DoRALinear, LoRALinear
from tt_peft.peft_format import load_adapter, read_adapter_config, save_adapter

__all__ = [
    "DoRALinear",
    "LoRALinear",
    "adapter_layers",
    "adapter_params",
    "adapter_state_dict",
    "apply_lora",
    "disable_adapters",
    "load_adapter",
    "mark_only_adapters_trainable",
    "merge_adapters",
    "merged_state_dict",
    "read_adapter_config",
    "save_adapter",
]
