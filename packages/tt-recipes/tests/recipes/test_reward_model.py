"""The reward_model recipe: what it saves is a transformers sequence classifier with the same
scores, it learns the arithmetic preference, and its loss is the Bradley-Terry formula."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers
from recipe_testing import FAST_REWARD, records, run_recipe
from tt_recipes.checkpointing import complete_step_dirs
from tt_recipes.losses import BradleyTerryLoss
from tt_recipes.pretrained import scorer_from_pretrained


def test_bradley_terry_loss_and_gradient_by_hand():
    chosen = torch.tensor([1.0, -0.5], requires_grad=True)
    rejected = torch.tensor([0.0, 0.5])
    losses = BradleyTerryLoss(margin=0.5)(chosen, rejected)
    want = [-math.log(1 / (1 + math.exp(-(1.0 - 0.0 - 0.5)))),
            -math.log(1 / (1 + math.exp(-(-0.5 - 0.5 - 0.5))))]  # fmt: skip
    assert losses.tolist() == pytest.approx(want, rel=1e-6)
    losses.sum().backward()
    # d/dz -log sigmoid(z) = sigmoid(z) - 1
    grad = [1 / (1 + math.exp(-0.5)) - 1, 1 / (1 + math.exp(1.5)) - 1]
    assert chosen.grad.tolist() == pytest.approx(grad, rel=1e-6)


def test_a_response_is_scored_at_its_end_of_turn_where_ppo_reads_it():
    """ChatML writes a newline after <|im_end|>; a PPO response ends at <|im_end|>. Training
    must score where PPO will: the last stop token of the response, not the newline."""
    from tt_models import DecoderConfig, TransformerScorer, build_model
    from tt_recipes.recipes.reward_model import pair_loss
    from tt_recipes.scoring import at_end_of_turn

    stop, newline, pad = 2, 30, 0
    tokens = torch.tensor([
        [5, 6, stop, 7, 8, stop, newline, pad],  # prompt turn, response "7 8", newline, padding
        [5, 6, stop, 7, 8, 9, 9, 9],  # a response cut by max_seq_len: no end of turn
        [5, 6, stop, 7, stop, pad, pad, pad],  # ends at its stop token already
    ])  # fmt: skip
    labels = torch.where(torch.arange(8) >= 3, tokens, torch.tensor(-100))
    labels[tokens == pad] = -100
    positions = torch.arange(24.0).reshape(3, 8, 1)
    ends = at_end_of_turn(positions, {"tokens": tokens, "labels": labels}, pad, [stop])
    # row 0: the response's <|im_end|> (index 5), not the newline nor the prompt's stop (2)
    assert ends[:, 0].tolist() == [5.0, 8 + 7.0, 16 + 4.0]
    # the recipe's loss scores a pair where PPO will read it: on the sequence cut at the stop
    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2, hidden_dim=24)
    scorer = TransformerScorer(build_model(config)).eval()
    run = SimpleNamespace(
        model=scorer,
        loss_fn=BradleyTerryLoss(),
        tokenizer=SimpleNamespace(pad_id=pad, stop_tokens=[stop]),
        cfg=SimpleNamespace(enable_activation_offloading=False),
        dist=SimpleNamespace(device=torch.device("cpu")),
    )
    pair = {"tokens": tokens[[0, 2]], "labels": labels[[0, 2]]}  # chosen row 0, rejected row 2
    with torch.no_grad():
        metrics = pair_loss(run, pair).metrics
        chosen_read_by_ppo = scorer.sequence_scores(tokens[:1, :6], pad)
        rejected_read_by_ppo = scorer.sequence_scores(tokens[2:, :5], pad)
    assert metrics["chosen"] == pytest.approx(float(chosen_read_by_ppo), abs=1e-6)
    assert metrics["rejected"] == pytest.approx(float(rejected_read_by_ppo), abs=1e-6)


@pytest.mark.parametrize("peft", ["lora", "full"])
def test_the_saved_reward_model_scores_like_transformers(
    tiny_full_run: Path, tmp_path: Path, peft: str
) -> None:
    overrides = [f"output_dir={tmp_path}", f"checkpointer.checkpoint_dir={tiny_full_run}",
                 *FAST_REWARD, *(["peft=null", "optimizer.lr=1e-4"] if peft == "full" else [])]  # fmt: skip
    run_recipe("reward_model", "tiny/reward_model", overrides)
    logged = records(tmp_path / "logs", "loss")
    assert logged[1]["loss"] == pytest.approx(math.log(2), abs=0.05)  # a new head scores ~0
    assert {"accuracy", "margin", "chosen", "rejected"} <= set(logged[1])
    step_dir = complete_step_dirs(tmp_path)[-1]
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(step_dir).eval()
    ours = scorer_from_pretrained(step_dir)
    assert hf.config.num_labels == 1 and hf.config.pad_token_id == 0
    tokens = torch.randint(3, 400, (3, 12), generator=torch.Generator().manual_seed(0))
    tokens[0, 8:] = 0  # padding: the score is the last real token's
    with torch.no_grad():
        torch.testing.assert_close(
            ours.sequence_scores(tokens, pad_id=0), hf(tokens).logits, atol=1e-5, rtol=0
        )


def test_a_new_head_is_the_same_whatever_the_run(tiny_full_run: Path, tmp_path: Path) -> None:
    """The head comes from a generator seeded by the run's seed (so N processes start as one)."""
    from omegaconf import OmegaConf
    from tt_recipes import from_pretrained
    from tt_recipes.scoring import as_scorer
    from tt_recipes.training import resolve_checkpoint_dir

    base = resolve_checkpoint_dir(tiny_full_run)
    cfg = OmegaConf.create({"seed": 3, "peft": None})
    torch.manual_seed(0)
    first = as_scorer(from_pretrained(base), cfg, lora=False).score.weight.clone()
    torch.manual_seed(99)
    second = as_scorer(from_pretrained(base), cfg, lora=False).score.weight
    torch.testing.assert_close(first, second, rtol=0, atol=0)
