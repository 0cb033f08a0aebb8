"""A tiny Qwen3-MoE through the real `tt` command with the bundled qwen3_moe LoRA config, its
adapters on attention and on every expert: the loss falls, the load-balancing loss and the
expert load are logged, and the saved PEFT adapter loads in peft onto the transformers model
(whose experts are fused in memory: peft maps the per-expert adapters onto them) with the
merged checkpoint's logits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import peft
import torch
import transformers
from recipe_testing import lora_overrides, losses, records, save_tiny_qwen3_moe
from safetensors.torch import load_file
from tt_recipes import from_pretrained
from tt_recipes.checkpointing import complete_step_dirs

STEPS = 30
TOKENIZER_VOCAB = 456  # ids the tiny tokenizer can produce


def test_qwen3_moe_lora_finetune_through_tt(tmp_path: Path) -> None:
    model_dir, out = tmp_path / "model", tmp_path / "out"
    save_tiny_qwen3_moe(model_dir)
    overrides = [
        *lora_overrides(model_dir, out, STEPS, batch_size=16),
        "peft.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]",
        "moe_loss.aux_loss_coef=0.01",
        "moe_loss.z_loss_coef=0.001",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "tt_cli", "run", "lora_finetune", "--config",
         "qwen3_moe/30B_A3B_lora", *overrides],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "TT_DEBUG": "1", "OMP_NUM_THREADS": "2"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    history = losses(out / "logs")
    first, last = history[1], sum(history[s] for s in range(STEPS - 4, STEPS + 1)) / 5
    assert last < first - 0.5, history  # measured 6.24 -> 5.22 (mean of the last 5)
    logged = records(out / "logs", "aux_loss")
    assert sorted(logged) == list(range(1, STEPS + 1))
    for record in logged.values():
        # 4 experts, top 2: the loss is 2 when perfectly balanced, and above it otherwise
        assert 2.0 - 1e-4 <= record["aux_loss"] <= 4.0, record
        assert record["expert_load_min"] <= 1.0 + 1e-6 <= record["expert_load_max"] + 2e-6
        assert record["z_loss"] > 0

    (step_dir,) = complete_step_dirs(out)
    adapter = load_file(step_dir / "adapter" / "adapter_model.safetensors")
    experts = [k for k in adapter if ".mlp.experts." in k and k.endswith("lora_B.weight")]
    assert len(experts) == 2 * 4 * 3 and all(adapter[k].abs().max() > 0 for k in experts)
    tokens = torch.randint(0, TOKENIZER_VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base_model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
        base = base_model(tokens).logits
        adapted = peft.PeftModel.from_pretrained(base_model, step_dir / "adapter").eval()
        adapted_logits = adapted(tokens).logits
        merged = transformers.AutoModelForCausalLM.from_pretrained(step_dir).eval()(tokens).logits
        ours = from_pretrained(step_dir)(tokens)
    assert (merged - base).abs().max() > 1e-2, "LoRA left the logits unchanged"
    torch.testing.assert_close(adapted_logits, merged, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours, merged, atol=1e-4, rtol=0)
