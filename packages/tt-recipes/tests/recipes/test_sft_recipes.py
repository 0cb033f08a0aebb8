"""full_finetune -> lora_finetune -> generate on the tiny default, end to end.

Asserts that learning happened and that transformers / peft load what the recipes wrote.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from recipe_testing import (
    FAST_FULL,
    FAST_LORA,
    assert_peft_adapter_equals_merged,
    losses,
    run_recipe,
)
from safetensors.torch import load_file
from tt_recipes import from_pretrained
from tt_recipes.checkpointing import complete_step_dirs


def _logits_equal_transformers(step_dir: Path) -> None:
    tokens = torch.randint(0, 456, (2, 12), generator=torch.Generator().manual_seed(0))
    ours = from_pretrained(step_dir)(tokens)
    hf = transformers.AutoModelForCausalLM.from_pretrained(step_dir).eval()
    with torch.no_grad():
        theirs = hf(tokens).logits
    torch.testing.assert_close(ours.detach(), theirs, atol=1e-4, rtol=0)


def test_full_finetune_learns_and_writes_a_transformers_checkpoint(tiny_full_run: Path) -> None:
    history = losses(tiny_full_run / "logs")
    steps = sorted(history)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 40
    first, last = history[steps[0]], sum(history[s] for s in steps[-5:]) / 5
    assert last < 0.4 * first, f"loss did not fall enough: {first:.3f} -> {last:.3f}"
    (step_dir,) = complete_step_dirs(tiny_full_run)
    assert step_dir.name == "step_40"
    assert (step_dir / "training_state" / ".metadata").is_file()
    assert (step_dir / "tokenizer.json").is_file(), "tokenizer files travel with the model"
    _logits_equal_transformers(step_dir)
    # transformers' generate stops at the tokens tt's stops at
    from tt_data.tokenizers import from_pretrained as tokenizer_from

    tokenizer = tokenizer_from(step_dir)
    stops = sorted(set(tokenizer.stop_tokens))
    generation = transformers.GenerationConfig.from_pretrained(step_dir)
    assert generation.eos_token_id == (stops[0] if len(stops) == 1 else stops)
    assert (generation.pad_token_id, generation.bos_token_id) == (
        tokenizer.pad_id,
        tokenizer.bos_id,
    )


def test_lora_finetune_from_the_full_run_saves_merged_model_and_peft_adapter(
    tiny_full_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "lora"
    run_recipe(
        "lora_finetune",
        "tiny/lora",
        [
            f"output_dir={out}",
            f"checkpointer.checkpoint_dir={tiny_full_run}",
            "dataset.n=320",
            *FAST_LORA,
        ],
    )
    history = losses(out / "logs")
    assert history[max(history)] < history[1], "LoRA training did not lower the loss"
    (step_dir,) = complete_step_dirs(out)
    _logits_equal_transformers(step_dir)  # merged weights

    # The PEFT adapter on the base model gives the merged model's logits.
    assert_peft_adapter_equals_merged(complete_step_dirs(tiny_full_run)[-1], step_dir, seed=1)
    config = json.loads((step_dir / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 16 and sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


def test_save_adapter_weights_only_writes_the_adapter_without_the_merged_model(
    tiny_full_run: Path, tmp_path: Path
) -> None:
    out, base = tmp_path / "lora", tmp_path / "base"
    shutil.copytree(complete_step_dirs(tiny_full_run)[-1], base)
    (base / "tt_source.json").write_text(
        '{"repo_id": "acme/tiny", "revision": "main"}'
    )  # as tt download writes it
    overrides = [f"output_dir={out}", f"checkpointer.checkpoint_dir={base}",
                 "dataset.n=64", "max_steps_per_epoch=2", *FAST_LORA]  # fmt: skip
    run_recipe("lora_finetune", "tiny/lora", [*overrides, "save_adapter_weights_only=true"])
    (step_dir,) = complete_step_dirs(out)
    assert (step_dir / "adapter" / "adapter_model.safetensors").is_file()
    adapter_config = json.loads((step_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "acme/tiny"  # the hub id, not a path
    assert not list(step_dir.glob("model*.safetensors"))  # no merged weights
    assert (step_dir / "training_state").is_dir()  # still resumable


def test_log_level_warning_keeps_progress_lines_out(tiny_full_run: Path, capsys) -> None:
    run_recipe("generate", "tiny/generate",
               [f"checkpoint_dir={tiny_full_run}", "max_new_tokens=2", "log_level=WARNING"])  # fmt: skip
    assert "Prompt (" not in capsys.readouterr().out
    run_recipe("generate", "tiny/generate", [f"checkpoint_dir={tiny_full_run}", "max_new_tokens=2"])
    assert "Prompt (" in capsys.readouterr().out


def test_generate_streams_an_answer(tiny_full_run: Path, capsys: pytest.CaptureFixture) -> None:
    run_recipe("generate", "tiny/generate", [f"checkpoint_dir={tiny_full_run}", "max_new_tokens=4"])
    out = capsys.readouterr().out
    assert "tokens/s" in out
    assert "What is 25 + 14?" in out


@pytest.mark.parametrize("qlora", [False, True], ids=["dora", "qdora"])
def test_dora_and_qdora_train_and_save(tiny_full_run: Path, tmp_path: Path, qlora: bool) -> None:
    out = tmp_path / "dora"
    run_recipe(
        "lora_finetune",
        "tiny/lora",
        [
            f"output_dir={out}",
            f"checkpointer.checkpoint_dir={tiny_full_run}",
            "peft.use_dora=true",
            f"peft.quantize_base={str(qlora).lower()}",
            "dataset.n=96",
            *FAST_LORA,
        ],
    )
    history = losses(out / "logs")
    assert len(history) == 6 and all(math.isfinite(v) for v in history.values())
    (step_dir,) = complete_step_dirs(out)
    adapter = load_file(step_dir / "adapter" / "adapter_model.safetensors")
    lora_b = [t for k, t in adapter.items() if k.endswith("lora_B.weight")]
    assert lora_b and all(t.abs().max() > 0 for t in lora_b), "the adapters did not train"
    assert any(k.endswith("lora_magnitude_vector") for k in adapter)
    _logits_equal_transformers(step_dir)
    if not qlora:  # peft applies the adapter to the full-precision base: same as our merge
        assert_peft_adapter_equals_merged(complete_step_dirs(tiny_full_run)[-1], step_dir, seed=2)


def test_gradient_accumulation_matches_a_bigger_batch(tmp_path: Path) -> None:
    """bs=4, ga=1 and bs=1, ga=4 see the same samples and give the same updates, because
    the loss is normalised by the trained tokens of the whole optimizer step."""
    common = [
        *FAST_FULL,
        "max_steps_per_epoch=3",
        "optimizer._component_=torch.optim.SGD",
        "~optimizer.weight_decay",
        "~optimizer.betas",
        "optimizer.lr=0.5",
        "clip_grad_norm=null",
    ]
    run_recipe(
        "full_finetune",
        "tiny/full",
        [f"output_dir={tmp_path / 'a'}", *common, "batch_size=4", "gradient_accumulation_steps=1"],
    )
    run_recipe(
        "full_finetune",
        "tiny/full",
        [f"output_dir={tmp_path / 'b'}", *common, "batch_size=1", "gradient_accumulation_steps=4"],
    )
    a, b = losses(tmp_path / "a" / "logs"), losses(tmp_path / "b" / "logs")
    assert a.keys() == b.keys() == {1, 2, 3}
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-6)
    wa = from_pretrained(complete_step_dirs(tmp_path / "a")[-1]).state_dict()
    wb = from_pretrained(complete_step_dirs(tmp_path / "b")[-1]).state_dict()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-5, rtol=1e-5)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FloatingPointError, match=r"loss became (nan|inf) at step \d+"):
        run_recipe(
            "full_finetune",
            "tiny/full",
            [
                f"output_dir={tmp_path}",
                *FAST_FULL,
                "save_every_n_steps=1",
                "optimizer.lr=1e30",
                "clip_grad_norm=null",
                "lr_scheduler=null",
            ],
        )
    kept = complete_step_dirs(tmp_path)
    assert kept, "the checkpoints before the bad step must survive"
    from_pretrained(kept[-1])  # loads: complete, not half-written


def test_optimizer_in_backward_matches_a_normal_step_and_resumes(tmp_path: Path) -> None:
    common = [*FAST_FULL, "max_steps_per_epoch=6", "clip_grad_norm=null"]
    run_recipe("full_finetune", "tiny/full", [f"output_dir={tmp_path / 'a'}", *common])
    run_recipe(
        "full_finetune",
        "tiny/full",
        [f"output_dir={tmp_path / 'b'}", *common, "optimizer_in_bwd=true", "save_every_n_steps=3"],
    )
    a, b = losses(tmp_path / "a" / "logs"), losses(tmp_path / "b" / "logs")
    assert a.keys() == b.keys() == set(range(1, 7))
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5), step
    # Its per-parameter optimizer states resume too.
    shutil.rmtree(tmp_path / "b" / "step_6")
    run_recipe(
        "full_finetune",
        "tiny/full",
        [
            f"output_dir={tmp_path / 'b'}",
            *common,
            "optimizer_in_bwd=true",
            "save_every_n_steps=3",
            "resume_from_checkpoint=true",
        ],
    )
    resumed = losses(tmp_path / "b" / "logs")
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(a[step], rel=1e-5), step


def test_optimizer_in_backward_refuses_clipping_and_accumulation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot clip gradients \(clip_grad_norm=1.0\)"):
        run_recipe(
            "full_finetune",
            "tiny/full",
            [f"output_dir={tmp_path}", *FAST_FULL, "optimizer_in_bwd=true"],
        )
    with pytest.raises(ValueError, match="cannot be combined with gradient_accumulation_steps=2"):
        run_recipe(
            "full_finetune",
            "tiny/full",
            [
                f"output_dir={tmp_path}",
                *FAST_FULL,
                "optimizer_in_bwd=true",
                "clip_grad_norm=null",
                "gradient_accumulation_steps=2",
            ],
        )


def test_profiler_writes_a_chrome_trace_and_an_operator_table(tmp_path: Path) -> None:
    run_recipe(
        "full_finetune",
        "tiny/full",
        [
            f"output_dir={tmp_path}",
            *FAST_FULL,
            "max_steps_per_epoch=5",
            "profiler.enabled=true",
            "profiler.wait_steps=1",
            "profiler.warmup_steps=1",
            "profiler.active_steps=2",
        ],
    )
    profile = tmp_path / "profile"
    # steps 1 skipped, 2 warm-up, 3-4 recorded: the files are named by the last one
    assert sorted(p.name for p in profile.iterdir()) == ["ops_step4.txt", "trace_step4.json"]
    trace = json.loads((profile / "trace_step4.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    # torch numbers the profiler's steps from 0: #2 and #3 are training steps 3 and 4
    assert {"aten::mm", "ProfilerStep#2", "ProfilerStep#3"} <= names
    assert "ProfilerStep#1" not in names
    table = (profile / "ops_step4.txt").read_text()
    assert "Self CPU" in table and "aten::mm" in table


def test_a_finished_run_says_what_it_did_and_where_the_result_is(tmp_path: Path, capsys) -> None:
    run_recipe("full_finetune", "tiny/full", [f"output_dir={tmp_path}", "dataset.n=640",
               "batch_size=16", "epochs=1", "max_steps_per_epoch=4", "run_val_every_n_steps=2"])  # fmt: skip
    out = capsys.readouterr().out
    assert "Finished: 4 steps in " in out and "training loss " in out
    assert "Validation: val_loss " in out and "(best " in out
    assert f"Last checkpoint: {tmp_path / 'step_4'}" in out
    assert f"tt run generate --config tiny/generate checkpoint_dir={tmp_path / 'step_4'}" in out
    elsewhere = tmp_path / "ckpts"  # checkpoints in checkpointer.output_dir: named there
    run_recipe("full_finetune", "tiny/full", [f"output_dir={tmp_path / 'b'}", "dataset.n=640",
               "batch_size=16", "epochs=1", "max_steps_per_epoch=2",
               f"checkpointer.output_dir={elsewhere}"])  # fmt: skip
    assert f"Last checkpoint: {elsewhere / 'step_2'}" in capsys.readouterr().out


def test_a_profiler_that_records_nothing_says_so(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="profiler.cpu is false and the run is on cpu"):
        run_recipe("full_finetune", "tiny/full", [f"output_dir={tmp_path}", *FAST_FULL,
                   "profiler.enabled=true", "profiler.cpu=false"])  # fmt: skip


def test_adamw_defaults_to_the_fused_kernel_with_the_same_updates(tmp_path: Path) -> None:
    """Without fused/foreach in the config, torch's fused AdamW runs (one pass over all
    parameters); its training equals the per-parameter loop's up to float rounding."""
    common = [*FAST_FULL, "max_steps_per_epoch=4"]
    run_recipe("full_finetune", "tiny/full", [f"output_dir={tmp_path / 'fused'}", *common])
    run_recipe(
        "full_finetune",
        "tiny/full",
        [f"output_dir={tmp_path / 'loop'}", *common, "optimizer.foreach=false"],
    )
    fused, loop = losses(tmp_path / "fused" / "logs"), losses(tmp_path / "loop" / "logs")
    assert fused.keys() == loop.keys() == {1, 2, 3, 4}
    for step in fused:
        assert fused[step] == pytest.approx(loop[step], rel=1e-5), step
