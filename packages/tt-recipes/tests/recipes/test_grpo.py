"""The grpo recipe on the tiny model: which reference it builds, its logs, and the errors a
bad config or dataset gets before any training step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from recipe_testing import records, run_recipe
from tt_recipes import training
from tt_recipes.config import ConfigError

# A few steps of 4 prompts x 4 completions; no validation, every step logged.
FAST_GRPO = [
    "dataset.n=16",
    "batch_size=4",
    "num_generations=4",
    "max_new_tokens=4",
    "~dataset_val",
    "run_val_every_n_steps=null",
    "save_every_n_steps=null",
    "log_every_n_steps=1",
    "log_samples_every_n_steps=2",
]


def run_grpo(out: Path, tiny_full_run: Path, *overrides: str) -> Path:
    run_recipe("grpo", "tiny/grpo", [f"output_dir={out}",
               f"checkpointer.checkpoint_dir={tiny_full_run}", *FAST_GRPO, *overrides])  # fmt: skip
    return out


def count_frozen_models(monkeypatch: pytest.MonkeyPatch) -> list:
    built = []
    original = training.frozen_model
    monkeypatch.setattr(
        training, "frozen_model", lambda *a, **k: built.append(1) or original(*a, **k)
    )
    return built


@pytest.mark.parametrize(("peft", "beta", "copies"), [("lora", 0.0, 0), ("lora", 0.1, 0),
                                                       ("full", 0.0, 0), ("full", 0.1, 1)])  # fmt: skip
def test_the_reference_is_a_copy_only_for_full_training_with_a_kl(
    tiny_full_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, peft, beta, copies
) -> None:
    built = count_frozen_models(monkeypatch)
    out = run_grpo(tmp_path, tiny_full_run, f"loss.beta={beta}",
                   *(["peft=null", "optimizer.lr=1e-4"] if peft == "full" else []))  # fmt: skip
    assert len(built) == copies
    logged = records(out / "logs", "loss")
    assert sorted(logged) == [1, 2, 3, 4]
    assert ("kl" in logged[1]) == (beta > 0)
    if beta > 0:  # the policy starts as the reference: KL 0 on the first rollouts
        assert logged[1]["kl"] == pytest.approx(0.0, abs=1e-6)
    for key in ("reward", "rewards/arithmetic_answer", "clip_ratio", "entropy",
                "completions/mean_length", "rollout_tokens_per_s", "time/rollout_s"):  # fmt: skip
        assert key in logged[4], key


@pytest.mark.parametrize("adapter", ["peft.use_dora=true", "peft.quantize_base=true"],
                         ids=["DoRA", "QLoRA"])  # fmt: skip
def test_dora_and_qlora_policies_train(tiny_full_run: Path, tmp_path: Path, adapter: str) -> None:
    out = run_grpo(tmp_path, tiny_full_run, adapter, "loss.beta=0.1")
    logged = records(out / "logs", "loss")
    assert sorted(logged) == [1, 2, 3, 4] and logged[1]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert (out / "step_4" / "adapter" / "adapter_model.safetensors").is_file()


def test_lora_reference_logprobs_are_the_base_models(tiny_full_run: Path) -> None:
    """With adapters that change the policy, the reference the loss sees is the base model."""
    from omegaconf import OmegaConf
    from tt_recipes import from_pretrained
    from tt_recipes.losses import token_logprobs
    from tt_recipes.recipes.grpo import add_reference_logprobs
    from tt_recipes.trainer import hidden_states

    base = from_pretrained(training.resolve_checkpoint_dir(tiny_full_run))
    policy = from_pretrained(training.resolve_checkpoint_dir(tiny_full_run))
    cfg = OmegaConf.create({"peft": {"rank": 4, "alpha": 8, "dropout": 0.0, "use_dora": False,
                            "quantize_base": False, "use_rslora": False,
                            "target_modules": ["q_proj", "v_proj"]}, "temperature": 0.7})  # fmt: skip
    from tt_recipes.adapters import add_adapters

    add_adapters(policy, cfg)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_b" in name:
                p.normal_()  # adapters that matter
    tokens = torch.randint(3, 400, (2, 10), generator=torch.Generator().manual_seed(0))
    targets = torch.cat([tokens[:, 1:], torch.full((2, 1), -100)], dim=1)
    batch = {"tokens": tokens, "targets": targets}

    class _Run:  # what add_reference_logprobs reads of a run
        model = policy
        cfg = OmegaConf.create({"temperature": 0.7})

    add_reference_logprobs(_Run, [batch], reference=None)
    want, _ = token_logprobs(hidden_states(base, batch), base.logits_from_hidden, targets,
                             temperature=0.7)  # fmt: skip
    torch.testing.assert_close(batch["ref_logprobs"], want, atol=1e-5, rtol=0)
    moved, _ = token_logprobs(hidden_states(policy, batch), policy.logits_from_hidden, targets,
                              temperature=0.7)  # fmt: skip
    assert (moved - want).abs().max() > 1e-2  # the adapters do change the policy


def test_samples_are_logged(tiny_full_run: Path, tmp_path: Path) -> None:
    run_grpo(tmp_path, tiny_full_run)
    lines = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").open()]
    samples = [line for line in lines if "samples" in line]
    assert [s["step"] for s in samples] == [2, 4]
    first = samples[0]["samples"][0]
    assert set(first) == {"prompt", "completion", "reward"} and first["prompt"].startswith(
        "What is"
    )


def test_a_dataset_without_the_column_a_reward_reads(tiny_full_run: Path, tmp_path: Path) -> None:
    rows = tmp_path / "prompts.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?"}) + "\n" for i in range(8)))
    with pytest.raises(
        ValueError, match=r"arithmetic_answer reads the column\(s\) \['answer'\].*have \['prompt'\]"
    ):
        run_grpo(tmp_path / "out", tiny_full_run, "dataset=null",
                 "dataset._component_=tt_data.prompt_dataset", "dataset.source=json",
                 f"dataset.data_files={rows}")  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "reward_functions=[tt_recipes.rl.rewards.nope]",
            r"reward_functions\[0\].*has no attribute 'nope'",
        ),
        ("num_generations=1", r"'num_generations': 1 is too small; it must be >= 2"),
        ("temperature=0", r"'temperature': 0 samples every completion of a prompt alike"),
        ("reward_weights=[1.0, 2.0]", r"2 weights for 1 reward functions"),
        ("loss.loss_type=ppo", None),
    ],
)
def test_config_errors_before_anything_loads(tmp_path: Path, override: str, message) -> None:
    if message is None:  # GRPOLoss checks its own arguments when it is built
        with pytest.raises(ValueError, match="loss_type='ppo' is not valid"):
            run_grpo(tmp_path, tmp_path, override)
        return
    with pytest.raises(ConfigError, match=message):
        run_grpo(tmp_path, tmp_path, override)


def test_a_prompt_too_long_for_the_context(tiny_full_run: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"longest prompt \(\d+ tokens\) \+ max_new_tokens \(300\) exceeds the model's max_seq_len=256",
    ):
        run_grpo(tmp_path, tiny_full_run, "max_new_tokens=300")
    rows = tmp_path / "long.jsonl"
    rows.write_text(
        json.dumps({"prompt": "What is " + "1 + " * 200 + "1?", "answer": "201"}) + "\n"
    )
    with pytest.raises(
        ValueError, match=r"row 0 \(line 1\): the prompt is longer than max_prompt_len=256"
    ):
        run_grpo(tmp_path / "out", tiny_full_run, "dataset=null",
                 "dataset._component_=tt_data.prompt_dataset", "dataset.source=json",
                 f"dataset.data_files={rows}")  # fmt: skip
