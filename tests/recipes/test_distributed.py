"""The recipes under torchrun on CPU (gloo): 2 processes x batch b follow 1 process x batch 2b,
and a distributed checkpoint resumes on a different number of processes.

Tolerance: the runs differ only in the order of fp32 sums (each rank reduces its own tokens,
then gradients are averaged across ranks), which moves losses by ~1e-7 relative per step;
1e-5 leaves room for AdamW amplifying that over a few steps without hiding a real mismatch
(a wrong normalisation or a skipped sample changes the loss by > 1e-3).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from recipe_testing import (
    FAST_FULL,
    FAST_LORA,
    assert_peft_adapter_equals_merged,
    losses,
    preference_file_overrides,
    run_recipe,
    save_tiny_qwen3_moe,
)
from safetensors.torch import load_file
from tt_recipes import from_pretrained
from tt_recipes.checkpointing import complete_step_dirs

SHORT = [*FAST_FULL, "max_steps_per_epoch=6", "save_every_n_steps=3"]
LORA = [*FAST_LORA, "dataset.n=640", "save_every_n_steps=3", "max_steps_per_epoch=6"]
REL = 1e-5
# log every step, no validation, save only at the end
EVERY_STEP_NO_VAL = [
    "~dataset_val",
    "run_val_every_n_steps=null",
    "log_every_n_steps=1",
    "save_every_n_steps=null",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(nproc: int, recipe: str, config: str, overrides: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TT_DEBUG": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tt_cli",
            "run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(free_port()),
            recipe,
            "--config",
            config,
            *overrides,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # torch's report of collectives nobody waited for: buffers written after they are freed
    # (NF4 weights gathered that way corrupted the heap in 1 of 2 QLoRA runs)
    assert "unwaited collective" not in result.stderr, result.stderr[-3000:]
    return result.stdout


def assert_same_losses(a: dict[int, float], b: dict[int, float]) -> None:
    assert a.keys() == b.keys()
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=REL), f"step {step}: {a[step]} vs {b[step]}"


@pytest.mark.timeout(600)
def test_two_processes_match_one_with_the_whole_batch_and_resume_on_one(tmp_path: Path) -> None:
    two, one = tmp_path / "two", tmp_path / "one"
    torchrun(2, "full_finetune", "tiny/full", [f"output_dir={two}", *SHORT, "batch_size=8"])
    run_recipe("full_finetune", "tiny/full", [f"output_dir={one}", *SHORT, "batch_size=16"])
    assert_same_losses(losses(two / "logs"), losses(one / "logs"))
    # The HF checkpoint written from the gathered shards equals the single-process one.
    a = from_pretrained(complete_step_dirs(two)[-1]).state_dict()
    b = from_pretrained(complete_step_dirs(one)[-1]).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)

    # Resume the 2-process run's step 3 in ONE process (same global batch: 16).
    shutil.rmtree(two / "step_6")
    (two / "logs" / "metrics.jsonl").unlink()
    run_recipe(
        "full_finetune",
        "tiny/full",
        [f"output_dir={two}", *SHORT, "batch_size=16", "resume_from_checkpoint=true"],
    )
    resumed = losses(two / "logs")
    assert sorted(resumed) == [4, 5, 6]
    assert_same_losses(resumed, {s: v for s, v in losses(one / "logs").items() if s > 3})


@pytest.mark.timeout(600)
def test_one_process_checkpoint_resumes_on_two(tmp_path: Path) -> None:
    one = tmp_path / "one"
    run_recipe("full_finetune", "tiny/full", [f"output_dir={one}", *SHORT, "batch_size=16"])
    expected = losses(one / "logs")
    shutil.rmtree(one / "step_6")
    (one / "logs" / "metrics.jsonl").unlink()
    torchrun(
        2,
        "full_finetune",
        "tiny/full",
        [f"output_dir={one}", *SHORT, "batch_size=8", "resume_from_checkpoint=true"],
    )
    assert_same_losses(losses(one / "logs"), {s: v for s, v in expected.items() if s > 3})


@pytest.mark.timeout(600)
@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_lora_on_two_processes_matches_one_and_saves_a_peft_adapter(
    tiny_full_run: Path, tmp_path: Path, use_dora: bool
) -> None:
    """Each rank builds the model on meta, attaches adapters, loads its shards, and starts the
    adapters exactly where a single process would."""
    two, one = tmp_path / "two", tmp_path / "one"
    common = [
        f"checkpointer.checkpoint_dir={tiny_full_run}",
        *LORA,
        f"peft.use_dora={str(use_dora).lower()}",
    ]
    out = torchrun(2, "lora_finetune", "tiny/lora", [f"output_dir={two}", *common, "batch_size=8"])
    assert "each process only its shards" in out
    run_recipe("lora_finetune", "tiny/lora", [f"output_dir={one}", *common, "batch_size=16"])
    assert_same_losses(losses(two / "logs"), losses(one / "logs"))
    base_dir = complete_step_dirs(tiny_full_run)[-1]
    assert_peft_adapter_equals_merged(base_dir, complete_step_dirs(two)[-1], seed=3)


@pytest.mark.timeout(600)
def test_two_processes_load_their_shards_from_a_checkpoint_and_match_one(
    tiny_full_run: Path, tmp_path: Path
) -> None:
    """From a checkpoint, each rank builds the model on meta and copies in only its shards."""
    two, one = tmp_path / "two", tmp_path / "one"
    common = [*SHORT, f"checkpointer.checkpoint_dir={tiny_full_run}", "~model"]
    out = torchrun(2, "full_finetune", "tiny/full", [f"output_dir={two}", *common, "batch_size=8"])
    assert "each process only its shards" in out
    run_recipe("full_finetune", "tiny/full", [f"output_dir={one}", *common, "batch_size=16"])
    assert_same_losses(losses(two / "logs"), losses(one / "logs"))
    assert losses(one / "logs")[1] < 3.0, "training did not start from the trained checkpoint"


@pytest.mark.timeout(600)
def test_a_mixture_of_experts_on_two_processes_matches_one(tmp_path: Path) -> None:
    """Experts are sharded with their block. The load-balancing loss is a statistic of each
    forward's tokens (as in transformers), so a split batch changes it: it is off here, and the
    cross-entropy alone must match; that it trains is the single-process tests' concern."""
    model_dir, two, one = tmp_path / "moe", tmp_path / "two", tmp_path / "one"
    save_tiny_qwen3_moe(model_dir)
    common = [*SHORT, f"checkpointer.checkpoint_dir={model_dir}", "~model",
              "moe_loss.aux_loss_coef=0.0"]  # fmt: skip
    out = torchrun(2, "full_finetune", "tiny/full", [f"output_dir={two}", *common, "batch_size=8"])
    assert "each process only its shards" in out
    run_recipe("full_finetune", "tiny/full", [f"output_dir={one}", *common, "batch_size=16"])
    assert_same_losses(losses(two / "logs"), losses(one / "logs"))
    merged_two = from_pretrained(complete_step_dirs(two)[-1]).state_dict()
    merged_one = from_pretrained(complete_step_dirs(one)[-1]).state_dict()
    assert any(".experts." in name for name in merged_one)
    for name, weight in merged_one.items():
        torch.testing.assert_close(merged_two[name], weight, rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def nf4_sized_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random model wide enough for FSDP to split NF4 scale blocks over 2 ranks (dim 512)."""
    import tt_models
    from tt_recipes import save_pretrained
    from tt_recipes.assets import asset_path

    torch.manual_seed(0)
    model = tt_models.transformer_decoder(
        vocab_size=512,
        dim=512,
        n_layers=2,
        n_heads=8,
        n_kv_heads=4,
        hidden_dim=1536,
        tie_embeddings=True,
    )
    out = tmp_path_factory.mktemp("nf4_sized")
    save_pretrained(
        model,
        out,
        source_dir=asset_path("tiny_tokenizer"),
        config_updates={"eos_token_id": 2, "pad_token_id": 0},
    )
    return out


@pytest.mark.timeout(600)
@pytest.mark.parametrize("use_dora", [False, True], ids=["qlora", "qdora"])
def test_qlora_on_two_processes_matches_one(
    nf4_sized_model: Path, tmp_path: Path, use_dora: bool
) -> None:
    two, one = tmp_path / "two", tmp_path / "one"
    common = [
        f"checkpointer.checkpoint_dir={nf4_sized_model}",
        *LORA,
        "peft.quantize_base=true",
        f"peft.use_dora={str(use_dora).lower()}",
        "dataset.n=256",
    ]
    out = torchrun(2, "lora_finetune", "tiny/lora", [f"output_dir={two}", *common, "batch_size=8"])
    assert "each process only its shards" in out  # NF4 shards cut on each rank, from meta
    run_recipe("lora_finetune", "tiny/lora", [f"output_dir={one}", *common, "batch_size=16"])
    assert_same_losses(losses(two / "logs"), losses(one / "logs"))
    a = from_pretrained(complete_step_dirs(two)[-1]).state_dict()
    b = from_pretrained(complete_step_dirs(one)[-1]).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("peft", ["lora", "full"])
def test_dpo_on_two_processes_matches_one(tiny_full_run: Path, tmp_path: Path, peft: str) -> None:
    """LoRA: the reference is the sharded policy with adapters off; full: a second sharded,
    frozen copy loaded shard by shard. Either way 2 x 8 pairs train like 1 x 16."""
    two, one = tmp_path / "two", tmp_path / "one"
    common = [
        *preference_file_overrides(tmp_path, train_pairs=96),
        f"checkpointer.checkpoint_dir={tiny_full_run}",
        *EVERY_STEP_NO_VAL,
        *(["peft=null", "optimizer.lr=1e-4"] if peft == "full" else []),
    ]
    out = torchrun(2, "dpo", "tiny/dpo", [f"output_dir={two}", *common, "batch_size=8"])
    assert "each process only its shards" in out
    run_recipe("dpo", "tiny/dpo", [f"output_dir={one}", *common, "batch_size=16"])
    assert_same_losses(losses(two / "logs"), losses(one / "logs"))
    assert losses(one / "logs")[6] < losses(one / "logs")[1], "DPO did not lower the loss"


@pytest.mark.timeout(600)
def test_distillation_on_two_processes_matches_one(tiny_full_run: Path, tmp_path: Path) -> None:
    """A random-init student sharded after init, the teacher sharded from meta."""
    two, one = tmp_path / "two", tmp_path / "one"
    common = [
        f"teacher.checkpoint_dir={tiny_full_run}",
        "dataset.n=192",
        *EVERY_STEP_NO_VAL,
    ]
    out = torchrun(
        2, "knowledge_distillation", "tiny/kd", [f"output_dir={two}", *common, "batch_size=8"]
    )
    assert "each process only its shards" in out  # the teacher
    run_recipe("knowledge_distillation", "tiny/kd", [f"output_dir={one}", *common, "batch_size=16"])
    assert_same_losses(losses(two / "logs"), losses(one / "logs"))
    assert losses(one / "logs")[12] < losses(one / "logs")[1]


@pytest.mark.timeout(600)
def test_qat_on_two_processes_matches_one(tiny_full_run: Path, tmp_path: Path) -> None:
    """Fake-quantized linear layers built on meta, sharded, loaded shard by shard.

    Tolerance: the first two steps (the first update included) agree to 1e-6 like the other
    tests. After that, fake quantization rounds every weight to a grid, so the ~1e-7
    differences of the gradient sums occasionally put a weight on the next grid level, and
    the runs drift apart in jumps: measured 1.1e-4 relative over 12 steps with 8-bit weights
    (5e-3 with 2-bit). 1e-3 allows that drift and still fails a wrong normalisation or a
    skipped sample, which move the loss by > 1e-2 from the first step on."""
    two, one = tmp_path / "two", tmp_path / "one"
    common = [
        "quantizer.bits=8",
        f"checkpointer.checkpoint_dir={tiny_full_run}",
        "dataset.n=192",
        *EVERY_STEP_NO_VAL,
    ]
    out = torchrun(2, "qat_finetune", "tiny/qat", [f"output_dir={two}", *common, "batch_size=8"])
    assert "each process only its shards" in out
    run_recipe("qat_finetune", "tiny/qat", [f"output_dir={one}", *common, "batch_size=16"])
    a, b = losses(two / "logs"), losses(one / "logs")
    assert a.keys() == b.keys() and len(a) == 12
    for step in a:
        rel = 1e-6 if step <= 2 else 1e-3
        assert a[step] == pytest.approx(b[step], rel=rel), f"step {step}: {a[step]} vs {b[step]}"
    quantized = from_pretrained(complete_step_dirs(two)[-1] / "quantized")  # rank 0 wrote it
    assert "Intx" in type(quantized.layers[0].attn.q_proj.weight).__name__


def test_resume_with_a_different_global_batch_is_refused(tmp_path: Path) -> None:
    run_recipe(
        "full_finetune",
        "tiny/full",
        [f"output_dir={tmp_path}", *SHORT, "batch_size=16", "max_steps_per_epoch=3"],
    )
    with pytest.raises(ValueError, match="global batch of 16 samples per step; this run has 8"):
        run_recipe(
            "full_finetune",
            "tiny/full",
            [f"output_dir={tmp_path}", *SHORT, "batch_size=8", "resume_from_checkpoint=true"],
        )


GRPO = [
    "dataset.n=32",
    "num_generations=4",
    "max_new_tokens=4",
    "~dataset_val",
    "run_val_every_n_steps=null",
    "log_every_n_steps=1",
    "save_every_n_steps=null",
]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("peft", ["lora", "full"])
def test_grpo_on_two_processes_makes_the_update_of_one(
    tiny_full_run: Path, tmp_path: Path, peft: str
) -> None:
    """The first step: the same prompts (each process takes half), the same completions
    (seeded by prompt row, not by process), the same rewards; the update then equals one
    process's on the whole batch to float tolerance."""
    common = [f"checkpointer.checkpoint_dir={tiny_full_run}", *GRPO, "max_steps_per_epoch=1",
              *(["peft=null", "optimizer.lr=1e-4", "loss.beta=0.04"] if peft == "full" else [])]  # fmt: skip
    two, one = tmp_path / "two", tmp_path / "one"
    torchrun(2, "grpo", "tiny/grpo", [f"output_dir={two}", *common, "batch_size=4"])
    run_recipe("grpo", "tiny/grpo", [f"output_dir={one}", *common, "batch_size=8"])
    a, b = (records_of(run / "logs") for run in (two, one))
    assert (
        a[1]["reward"] == b[1]["reward"]
        and a[1]["completions/mean_length"] == b[1]["completions/mean_length"]
    )
    assert a[1]["loss"] == pytest.approx(b[1]["loss"], rel=REL, abs=1e-7)
    sd_two = from_pretrained(complete_step_dirs(two)[-1]).state_dict()
    sd_one = from_pretrained(complete_step_dirs(one)[-1]).state_dict()
    for key in sd_one:
        torch.testing.assert_close(sd_two[key], sd_one[key], atol=1e-5, rtol=1e-4)


def records_of(log_dir: Path) -> dict[int, dict]:
    from recipe_testing import records

    return records(log_dir, "loss")


@pytest.mark.timeout(600)
def test_ppo_on_two_processes_makes_the_update_of_one(tiny_full_run: Path, tmp_path: Path) -> None:
    """One PPO step with verifiable rewards: the same responses and scores, advantages
    whitened over both processes, one update of the policy and one of the value model equal
    to one process's on the whole batch."""
    common = [f"checkpointer.checkpoint_dir={tiny_full_run}", "dataset.n=16", "max_new_tokens=4",
              "~dataset_val", "run_val_every_n_steps=null", "log_every_n_steps=1",
              "save_every_n_steps=null", "max_steps_per_epoch=1", "ppo_epochs=1",
              "num_minibatches=1"]  # fmt: skip
    two, one = tmp_path / "two", tmp_path / "one"
    torchrun(2, "ppo", "tiny/ppo", [f"output_dir={two}", *common, "batch_size=4"])
    run_recipe("ppo", "tiny/ppo", [f"output_dir={one}", *common, "batch_size=8"])
    a, b = (records_of(run / "logs") for run in (two, one))
    assert a[1]["score"] == b[1]["score"] and a[1]["response_length"] == b[1]["response_length"]
    for key in ("loss", "policy_loss", "value_loss", "kl"):
        assert a[1][key] == pytest.approx(b[1][key], rel=REL, abs=1e-6), key
    for part in ("policy", "value"):
        sd_two = load_file(complete_step_dirs(two)[-1] / part / "model.safetensors")
        sd_one = load_file(complete_step_dirs(one)[-1] / part / "model.safetensors")
        for key in sd_one:
            torch.testing.assert_close(sd_two[key], sd_one[key], atol=1e-5, rtol=1e-4)
