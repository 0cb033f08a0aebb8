"""Five of torchtune's own configs run through `tt run`, unchanged but for where the files are.

Each gets a tiny random Llama written at the file names the config lists (one
``model.safetensors``, or four shards for an 8B), a Meta-format tokenizer under
``original/``, local rows in the dataset's schema, and the CPU; nothing else is overridden.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoints import write_llama_checkpoint, write_rows
from torchtune_wheel import shipped_configs

ONE_FILE = ["model.safetensors"]
FOUR_SHARDS = [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
STEPS = 3


def _config(name: str):
    return next(c for c in shipped_configs()[0] if c.name == name)


def _tt_run(recipe: str, config: Path, overrides: list[str], cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "tt_cli", "run", recipe, "--config", str(config), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "TT_DEBUG": "1", "OMP_NUM_THREADS": "2"},
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def _losses(out: Path) -> list[float]:
    lines = (out / "logs" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"loss"' in line]


def _common(tmp_path: Path, model: Path, rows: Path) -> list[str]:
    return [
        f"output_dir={tmp_path / 'out'}",
        f"checkpointer.checkpoint_dir={model}",
        f"tokenizer.path={model / 'original' / 'tokenizer.model'}",
        "dataset.source=json",
        f"dataset.data_files={rows}",
        "device=cpu",
        "batch_size=2",
        f"max_steps_per_epoch={STEPS}",
        "gradient_accumulation_steps=1",
    ]


@pytest.mark.parametrize(
    ("name", "adapter"),
    [
        ("llama3_2/1B_lora_single_device", True),
        ("llama3_2/1B_qlora_single_device", True),
        ("llama3_2/1B_full_single_device", False),
    ],
)
def test_sft_config_runs_unchanged(name, adapter, tmp_path):
    config = _config(name)
    model = write_llama_checkpoint(tmp_path / "Llama-3.2-1B", ONE_FILE, tie_embeddings=True)
    rows = write_rows(tmp_path / "alpaca.jsonl", "alpaca")
    stdout = _tt_run(config.recipe, config.path, _common(tmp_path, model, rows), tmp_path)
    assert "as a torchtune config" in stdout
    _check_run(tmp_path / "out", adapter)


def test_dpo_config_runs_unchanged(tmp_path):
    config = _config("llama3_1/8B_lora_dpo_single_device")
    model = write_llama_checkpoint(tmp_path / "Llama-3.1-8B", FOUR_SHARDS, tie_embeddings=False)
    rows = write_rows(tmp_path / "pairs.jsonl", "stack_exchange")
    _tt_run(config.recipe, config.path, _common(tmp_path, model, rows), tmp_path)
    _check_run(tmp_path / "out", adapter=True)


def test_knowledge_distillation_config_runs_unchanged(tmp_path):
    config = _config("llama3_2/8B_to_1B_KD_lora_single_device")
    student = write_llama_checkpoint(tmp_path / "Llama-3.2-1B", ONE_FILE, tie_embeddings=True)
    teacher = write_llama_checkpoint(
        tmp_path / "Llama-3.1-8B", FOUR_SHARDS, tie_embeddings=False, seed=1, dim=192
    )
    rows = write_rows(tmp_path / "alpaca.jsonl", "alpaca")
    overrides = [
        *_common(tmp_path, student, rows),
        f"teacher_checkpointer.checkpoint_dir={teacher}",
    ]
    _tt_run(config.recipe, config.path, overrides, tmp_path)
    _check_run(tmp_path / "out", adapter=True)


def _check_run(out: Path, adapter: bool) -> None:
    losses = _losses(out)
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses), losses
    step = out / f"step_{STEPS}"
    assert (step / "config.json").is_file()
    assert (step / "adapter" / "adapter_model.safetensors").is_file() == adapter
