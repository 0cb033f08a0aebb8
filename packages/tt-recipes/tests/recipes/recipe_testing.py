"""Helpers that run the bundled tiny recipes in-process on small budgets."""

from __future__ import annotations

import json
from pathlib import Path

from tt_recipes.config import prepare_config
from tt_recipes.registry import load_recipe, resolve_config

# Shrinks tiny/full to a few seconds of CPU: fewer samples, no validation, frequent logs.
FAST_FULL = [
    "dataset.n=640",
    "epochs=1",
    "batch_size=16",
    "run_val_every_n_steps=null",
    "~dataset_val",
    "log_every_n_steps=1",
    "save_every_n_steps=null",
]


# Shrinks tiny/lora the same way (set dataset.n and checkpointer.checkpoint_dir beside it).
FAST_LORA = [
    "epochs=1",
    "batch_size=16",
    "run_val_every_n_steps=null",
    "~dataset_val",
    "log_every_n_steps=1",
    "save_every_n_steps=null",
    "optimizer.lr=1e-2",
]


def run_recipe(recipe: str, config: str, overrides: list[str]) -> None:
    path, _ = resolve_config(config)
    spec = load_recipe(recipe)
    spec.main(prepare_config(spec.spec, path, overrides, source=config))


def losses(log_dir: Path) -> dict[int, float]:
    """step -> loss from a DiskLogger's metrics.jsonl (the last record of a step wins)."""
    out = {}
    for line in (log_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


def train_tiny_full(output_dir: Path) -> Path:
    """A short tiny/full run (40 steps): a trained checkpoint for LoRA and generate tests."""
    run_recipe("full_finetune", "tiny/full", [f"output_dir={output_dir}", *FAST_FULL])
    return output_dir


def assert_peft_adapter_equals_merged(base_dir: Path, step_dir: Path, seed: int = 0) -> None:
    """peft's adapter on the base model gives the logits of the merged model tt saved."""
    import peft
    import torch
    import transformers

    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    adapted = peft.PeftModel.from_pretrained(base, step_dir / "adapter").eval()
    merged = transformers.AutoModelForCausalLM.from_pretrained(step_dir).eval()
    tokens = torch.randint(0, 456, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        torch.testing.assert_close(adapted(tokens).logits, merged(tokens).logits, atol=1e-4, rtol=0)
