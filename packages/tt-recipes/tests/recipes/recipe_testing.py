"""Helpers that run the bundled tiny recipes in-process on small budgets."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from tt_recipes.config import prepare_config
from tt_recipes.registry import load_recipe, resolve_config

# One epoch of small batches, no validation, every step logged, saved only at the end.
_SHORT = [
    "epochs=1",
    "batch_size=16",
    "run_val_every_n_steps=null",
    "~dataset_val",
    "log_every_n_steps=1",
    "save_every_n_steps=null",
]
# Shrinks tiny/full to a few seconds of CPU.
FAST_FULL = ["dataset.n=640", *_SHORT]
# Shrinks tiny/lora the same way (set dataset.n and checkpointer.checkpoint_dir beside it).
FAST_LORA = [*_SHORT, "optimizer.lr=1e-2"]
# tiny/full for resume tests: 2 epochs x 12 steps of shuffled data and a warmup+cosine
# schedule (the data position and scheduler state matter), a checkpoint every 3 steps.
RESUMABLE = [
    *FAST_FULL,
    "save_every_n_steps=3",
    "keep_last_n_checkpoints=2",
    "dataset.n=1280",
    "batch_size=8",
    "max_steps_per_epoch=12",
    "epochs=2",
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


def records(log_dir: Path, key: str) -> dict[int, dict[str, float]]:
    """step -> the last metrics.jsonl record of that step holding ``key`` (e.g. "val_loss")."""
    out = {}
    for line in (log_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if key in record:
            out[record["step"]] = record
    return out


def train_tiny_full(output_dir: Path) -> Path:
    """A short tiny/full run (40 steps): a trained checkpoint for LoRA and generate tests."""
    run_recipe("full_finetune", "tiny/full", [f"output_dir={output_dir}", *FAST_FULL])
    return output_dir


# A few reward-model steps on the arithmetic preference pairs (no validation, saved at the end).
FAST_REWARD = [
    "dataset.n=128",
    "batch_size=16",
    "~dataset_val",
    "run_val_every_n_steps=null",
    "log_every_n_steps=1",
    "save_every_n_steps=null",
]


def train_tiny_reward(output_dir: Path, base: Path) -> Path:
    """A short tiny/reward_model run from ``base`` (8 steps): a reward model for PPO tests."""
    run_recipe("reward_model", "tiny/reward_model",
               [f"output_dir={output_dir}", f"checkpointer.checkpoint_dir={base}", *FAST_REWARD])  # fmt: skip
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


def write_preference_pairs(path: Path, n: int, seed: int) -> Path:
    """A JSONL of sum questions where a direct answer is preferred over a refusal: a style
    preference that a weakly trained tiny model learns in a few dozen DPO steps."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            a, b = rng.randint(0, 20), rng.randint(0, 20)
            row = {"prompt": f"What is {a} + {b}?", "chosen": str(a + b), "rejected": "no idea"}
            f.write(json.dumps(row) + "\n")
    return path


def preference_file_overrides(root: Path, train_pairs: int, val_pairs: int = 128) -> list[str]:
    """tiny/dpo overrides that read train/validation pairs from JSONL files written here."""
    train = write_preference_pairs(root / "train.jsonl", train_pairs, seed=0)
    val = write_preference_pairs(root / "val.jsonl", val_pairs, seed=1)
    return [
        "dataset=null",
        "dataset._component_=tt_data.preference_dataset",
        "dataset.source=json",
        f"dataset.data_files={train}",
        "dataset_val=null",
        "dataset_val._component_=tt_data.preference_dataset",
        "dataset_val.source=json",
        f"dataset_val.data_files={val}",
    ]


def save_tiny_qwen3_moe(directory: Path) -> None:
    """A random tiny transformers Qwen3-MoE (2 layers, 4 experts, top 2, normalised top-k
    weights) with the tiny tokenizer beside it."""
    import torch
    import transformers
    from tt_recipes.assets import asset_path

    config = transformers.Qwen3MoeConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    for file in Path(asset_path("tiny_tokenizer")).iterdir():
        shutil.copy(file, directory / file.name)


def lora_overrides(model_dir: Path, out: Path, steps: int, batch_size: int = 8) -> list[str]:
    """A bundled LoRA config made tiny for the model in ``model_dir``: fp32 on CPU, ``steps``
    steps of arithmetic, no validation, every step logged, saved only at the end.

    The learning rate is raised and its warmup removed so that a few steps move the adapter
    far enough for logit checks to see it; the rank must fit tiny k/v projections (32
    outputs) and alpha / rank stays at the bundled configs' 2.
    """
    n = steps * batch_size
    return [
        f"output_dir={out}",
        f"checkpointer.checkpoint_dir={model_dir}",
        f"dataset={{_component_: tt_data.synthetic_arithmetic, n: {n}, seed: 0}}",
        "dataset_val=null",
        "run_val_every_n_steps=null",
        f"batch_size={batch_size}",
        "gradient_accumulation_steps=1",
        f"max_steps_per_epoch={steps}",
        "save_every_n_steps=null",
        "log_every_n_steps=1",
        "dtype=fp32",
        "device=cpu",
        "enable_activation_checkpointing=false",
        "optimizer.lr=1e-2",
        "lr_scheduler.num_warmup_steps=0",
        "peft.rank=8",
        "peft.alpha=16",
    ]
