"""The ppo recipe end to end on small budgets: with a reward model (classic RLHF) and with
verifiable rewards; what a checkpoint holds; the errors a user meets first. Learning itself is
asserted by the tiny chain (tests/recipes/test_tiny_default.py), on the full tiny/ppo."""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers
from recipe_testing import records, run_recipe
from tt_recipes.checkpointing import complete_step_dirs
from tt_recipes.config import ConfigError

# Four PPO steps of 8 prompts; a checkpoint at steps 2 and 4.
FAST_PPO = [
    "dataset.n=32",
    "batch_size=8",
    "dataset_val.n=8",
    "run_val_every_n_steps=4",
    "log_every_n_steps=1",
    "log_samples_every_n_steps=2",
    "save_every_n_steps=2",
]


def run_ppo(policy: Path, output_dir: Path, *overrides: str) -> None:
    run_recipe("ppo", "tiny/ppo", [f"output_dir={output_dir}",
                                   f"checkpointer.checkpoint_dir={policy}", *FAST_PPO, *overrides])  # fmt: skip


def test_ppo_with_a_reward_model(tiny_full_run: Path, tiny_reward_run: Path, tmp_path: Path):
    run_ppo(tiny_full_run, tmp_path, f"reward_model.checkpoint_dir={tiny_reward_run}")
    logged = records(tmp_path / "logs", "policy_loss")
    assert sorted(logged) == [1, 2, 3, 4]
    for key in ("score", "kl", "value_loss", "approx_kl", "clip_ratio", "kl_coef", "entropy"):
        assert all(key in record for record in logged.values()), key
    assert logged[1]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as its reference
    val = records(tmp_path / "logs", "val_score")
    assert sorted(val) == [0, 4] and "val_rewards/arithmetic_answer" in val[4]
    # each checkpoint: the merged policy (a causal LM) and the value model (a score head)
    for step_dir in complete_step_dirs(tmp_path):
        policy = transformers.AutoConfig.from_pretrained(step_dir / "policy")
        value = transformers.AutoConfig.from_pretrained(step_dir / "value")
        assert policy.architectures == ["LlamaForCausalLM"], policy.architectures
        assert value.architectures == ["LlamaForSequenceClassification"], value.architectures
    assert [d.name for d in complete_step_dirs(tmp_path)] == ["step_2", "step_4"]


def test_ppo_with_verifiable_rewards(tiny_full_run: Path, tmp_path: Path) -> None:
    """No reward model: the reward is the checker's, the value model the policy's decoder."""
    run_ppo(tiny_full_run, tmp_path)
    logged = records(tmp_path / "logs", "score")
    assert sorted(logged) == [1, 2, 3, 4]
    assert all(0.0 <= r["score"] <= 1.0 for r in logged.values())  # right (1) or wrong (0)
    val = records(tmp_path / "logs", "val_score")[4]
    assert val["val_score"] == pytest.approx(val["val_rewards/arithmetic_answer"])
    value = transformers.AutoConfig.from_pretrained(complete_step_dirs(tmp_path)[-1] / "value")
    assert value.architectures == ["LlamaForSequenceClassification"]


def test_no_reward_at_all_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PPO needs a reward"):
        run_ppo(tmp_path, tmp_path, "reward_functions=[]")


def test_a_causal_lm_as_the_reward_model(tiny_full_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds no score head.*tt run reward_model"):
        run_ppo(tiny_full_run, tmp_path, f"reward_model.checkpoint_dir={tiny_full_run}")


def test_a_value_model_that_cannot_be_built(tiny_full_run: Path, tmp_path: Path) -> None:
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text('{"architectures": ["FooModel"], "model_type": "foo"}')
    with pytest.raises(ValueError, match="value model cannot be built from .*unknown.*'foo'"):
        run_ppo(tiny_full_run, tmp_path / "out", f"value_model.checkpoint_dir={unknown}")


def test_a_reward_model_with_another_vocabulary() -> None:
    from types import SimpleNamespace

    from tt_recipes.recipes.ppo import check_vocabularies

    def model(vocab: int) -> SimpleNamespace:
        return SimpleNamespace(config=SimpleNamespace(vocab_size=vocab))

    check_vocabularies(model(512), model(512))
    with pytest.raises(ValueError, match="vocabulary of 32000 tokens and the policy 512"):
        check_vocabularies(model(512), model(32000))
