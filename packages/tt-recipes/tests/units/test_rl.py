"""RL pieces against hand-computed values: advantages, every GRPO loss variant (value and
gradient), rollout batches, reward functions and their errors."""

from __future__ import annotations

import math

import pytest
import torch
from tt_recipes.losses import IGNORE_INDEX
from tt_recipes.rl import rewards
from tt_recipes.rl.advantages import group_advantages, rloo_advantages
from tt_recipes.rl.losses import GRPOLoss
from tt_recipes.rl.rollout import Completions, Rollouts, sample_seed, training_batches

# ---- advantages ------------------------------------------------------------------------------

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0])  # two groups of 3


def test_group_advantages_by_hand():
    # group 1: mean 1/3, unbiased std sqrt(1/3); group 2: mean 5/3, std sqrt(1/3)
    std = math.sqrt(1 / 3)
    want = [(2 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4),
            (-2 / 3) / (std + 1e-4), (1 / 3) / (std + 1e-4), (1 / 3) / (std + 1e-4)]  # fmt: skip
    torch.testing.assert_close(group_advantages(REWARDS, 3), torch.tensor(want))
    unscaled = [2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3]  # Dr. GRPO
    torch.testing.assert_close(group_advantages(REWARDS, 3, "none"), torch.tensor(unscaled))
    batch_std = float(REWARDS.std())
    torch.testing.assert_close(
        group_advantages(REWARDS, 3, "batch"), torch.tensor(unscaled) / (batch_std + 1e-4)
    )
    torch.testing.assert_close(
        group_advantages(REWARDS, 3, "batch", batch_std=2.0), torch.tensor(unscaled) / 2.0001
    )


def test_rloo_advantages_by_hand():
    # r_i - mean of the other two
    want = [1 - 0, 0 - 0.5, 0 - 0.5, 1 - 2, 2 - 1.5, 2 - 1.5]
    torch.testing.assert_close(rloo_advantages(REWARDS, 3), torch.tensor(want))


def test_groups_of_one_are_refused():
    with pytest.raises(ValueError, match="num_generations=1: advantages compare completions"):
        group_advantages(REWARDS, 1)
    with pytest.raises(ValueError, match="do not split into groups of 4"):
        rloo_advantages(REWARDS, 4)


# ---- the loss family -------------------------------------------------------------------------

# Two completions: lengths 2 and 3 (the last position of row 0 is padding).
MASK = torch.tensor([[True, True, False], [True, True, True]])
OLD = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -1.5, -1.0]])
NEW = torch.tensor([[-0.9, -2.3, 0.0], [-0.5, -1.0, -1.2]])
ADV = torch.tensor([1.0, -0.5])
REF = torch.tensor([[-1.1, -2.1, 0.0], [-0.6, -1.4, -1.1]])


def per_token_by_hand(eps_low=0.2, eps_high=0.2, beta=0.0, sequence=False):
    """L_it with plain Python floats, the way the module docstring writes it."""
    out = [[0.0] * 3 for _ in range(2)]
    for i in range(2):
        tokens = [t for t in range(3) if MASK[i, t]]
        seq_ratio = math.exp(sum(NEW[i, t] - OLD[i, t] for t in tokens) / len(tokens))
        for t in tokens:
            ratio = seq_ratio if sequence else math.exp(NEW[i, t] - OLD[i, t])
            clipped = min(max(ratio, 1 - eps_low), 1 + eps_high)
            loss = -min(ratio * ADV[i].item(), clipped * ADV[i].item())
            if beta:
                d = (REF[i, t] - NEW[i, t]).item()
                loss += beta * (math.exp(d) - d - 1)
            out[i][t] = float(loss)
    return out


def mean_over(per_token, loss_type, max_len=4):
    rows = [[per_token[i][t] for t in range(3) if MASK[i, t]] for i in range(2)]
    if loss_type == "grpo":
        return sum(sum(r) / len(r) for r in rows) / 2
    if loss_type in ("dapo", "bnpo"):
        return sum(map(sum, rows)) / sum(map(len, rows))
    return sum(map(sum, rows)) / (2 * max_len)  # dr_grpo


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_each_variant_equals_the_formula(loss_type, level):
    loss = GRPOLoss(loss_type, epsilon=0.2, epsilon_high=0.25, beta=0.1,
                    importance_sampling_level=level, max_completion_length=4)  # fmt: skip
    new = NEW.clone().requires_grad_(True)
    total, metrics = loss(new, OLD, ADV, MASK, REF)
    value = total / loss.units(MASK)  # what the trainer divides by
    want = mean_over(per_token_by_hand(0.2, 0.25, 0.1, level == "sequence"), loss_type)
    assert value.item() == pytest.approx(want, rel=1e-6)
    assert loss.units(MASK) == (5 if loss_type == "dapo" else 2)
    # the gradient equals the autograd of the same formula written directly
    value.backward()
    reference = NEW.clone().requires_grad_(True)
    ratio = torch.exp(reference - OLD)
    if level == "sequence":
        log_ratio = ((reference - OLD) * MASK).sum(1, keepdim=True) / MASK.sum(1, keepdim=True)
        ratio = torch.exp(log_ratio).expand(-1, 3)
    clipped = ratio.clamp(0.8, 1.25)
    d = REF - reference
    direct = -torch.minimum(ratio * ADV[:, None], clipped * ADV[:, None]) + 0.1 * (d.exp() - d - 1)
    direct = direct * MASK
    if loss_type == "grpo":
        direct_loss = (direct.sum(1) / MASK.sum(1)).mean()
    elif loss_type == "dr_grpo":
        direct_loss = direct.sum() / (2 * 4)
    else:
        direct_loss = direct.sum() / MASK.sum()
    direct_loss.backward()
    torch.testing.assert_close(new.grad, reference.grad)
    assert metrics["kl"][1] == 5 and metrics["clip_ratio"][1] == 5


def test_the_clip_bounds_stop_the_gradient_where_they_should():
    """A token whose ratio went past 1 + epsilon_high with A > 0 (or below 1 - epsilon with
    A < 0) has no gradient; inside the bounds it has."""
    old = torch.zeros(2, 2)
    new = torch.tensor([[0.5, 0.1], [-0.5, -0.1]], requires_grad=True)  # ratios e^.5, e^.1, ...
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 2, dtype=torch.bool)
    loss = GRPOLoss("dapo", epsilon=0.2, epsilon_high=0.28)
    total, metrics = loss(new, old, adv, mask)
    total.backward()
    assert new.grad[0, 0] == 0 and new.grad[1, 0] == 0  # clipped: e^.5 > 1.28, e^-.5 < 0.8
    assert new.grad[0, 1] != 0 and new.grad[1, 1] != 0
    assert metrics["clip_ratio"] == (2.0, 4.0)


def test_a_first_iteration_is_the_policy_gradient():
    """With new == old (num_iterations=1, or the first of several) the ratio is 1 and the
    gradient is -A per token (grpo: over each completion's length)."""
    logp = OLD.clone().requires_grad_(True)
    total, _ = GRPOLoss("grpo")(logp, OLD, ADV, MASK)
    (total / 2).backward()
    want = torch.tensor([[-1 / 2, -1 / 2, 0.0], [0.5 / 3, 0.5 / 3, 0.5 / 3]]) / 2
    torch.testing.assert_close(logp.grad, want)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="loss_type='ppo' is not valid"):
        GRPOLoss("ppo")
    with pytest.raises(ValueError, match="importance_sampling_level='step'"):
        GRPOLoss(importance_sampling_level="step")
    with pytest.raises(ValueError, match="dr_grpo' needs max_completion_length"):
        GRPOLoss("dr_grpo")
    with pytest.raises(ValueError, match="beta > 0 needs ref_logprobs"):
        GRPOLoss(beta=0.1)(NEW, OLD, ADV, MASK)


# ---- rollouts as batches ---------------------------------------------------------------------


def test_training_batches_align_completions_with_their_logprobs():
    prompts = [{"prompt_tokens": [5, 6, 7], "row_index": 0}, {"prompt_tokens": [8], "row_index": 1}]
    completions = Completions(
        tokens=[[10, 11, 2], [12, 13, 14]],
        logprobs=[[-0.1, -0.2, -0.3], [-1.0, -2.0, -3.0]],
        truncated=[False, True],
    )
    rollouts = Rollouts(prompts, completions, group_size=1, texts=["a", "b"])
    (batch,) = training_batches(rollouts, torch.tensor([1.0, -1.0]), 1, pad_id=0)
    assert batch["tokens"].tolist() == [[5, 6, 7, 10, 11, 2], [8, 12, 13, 14, 0, 0]]
    ignored = IGNORE_INDEX
    assert batch["targets"].tolist() == [
        [ignored, ignored, 10, 11, 2, ignored],
        [12, 13, 14, ignored, ignored, ignored],
    ]
    assert batch["old_logprobs"][0, 2:5].tolist() == pytest.approx([-0.1, -0.2, -0.3])
    assert batch["old_logprobs"][1, :3].tolist() == pytest.approx([-1.0, -2.0, -3.0])
    assert batch["loss_mask"].sum().item() == 6
    (masked,) = training_batches(rollouts, torch.tensor([1.0, -1.0]), 1, 0, mask_truncated=True)
    assert masked["loss_mask"][1].sum() == 0 and masked["loss_mask"][0].sum() == 3
    halves = training_batches(rollouts, torch.tensor([1.0, -1.0]), 2, pad_id=0)
    assert [b["tokens"].shape[0] for b in halves] == [1, 1]


def test_completion_seeds_are_stable_and_distinct():
    assert sample_seed(0, 3, 17, 2) == sample_seed(0, 3, 17, 2)
    seeds = {
        sample_seed(0, step, row, g) for step in range(3) for row in range(4) for g in range(4)
    }
    assert len(seeds) == 48 and all(0 <= s < 2**60 for s in seeds)


# ---- rewards ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "answer", "reward"),
    [
        ("so the total is 72.", "Natalia sold ... #### 72", 1.0),
        ("The answer is \\boxed{3.50}", "3.5", 1.0),
        ("#### 1,234", "1234", 1.0),
        ("it is 71", "#### 72", 0.0),
        ("no number here", "#### 72", 0.0),
        ("\\boxed{x+1}", "\\boxed{x+1}", 1.0),  # compared as text when not numbers
    ],
)
def test_math_answer(completion, answer, reward):
    assert rewards.math_answer(["q"], [completion], answer=[answer]) == [reward]


def test_format_and_length_rewards():
    fmt = rewards.format_reward(r"<think>.*</think>\s*\d+")
    assert fmt(["q", "q"], ["<think>a\nb</think> 42", "42"]) == [1.0, 0.0]
    overlong = rewards.length_penalty(max_tokens=10, buffer=4)
    ids = [[0] * 6, [0] * 8, [0] * 10, [0] * 12]
    assert overlong(["q"] * 4, ["x"] * 4, completion_ids=ids) == [-0.0, -0.5, -1.0, -1.0]
    assert rewards.arithmetic_answer(["q", "q"], [" 39", "38"], answer=["39", "39"]) == [1.0, 0.0]


def test_scores_weight_and_skip_none():
    def half(prompts, completions, **_):
        return [0.5 if c else None for c in completions]

    scores = rewards.score(
        [rewards.arithmetic_answer, half], [2.0, 1.0], ["q", "q"], ["3", ""], {"answer": ["3", "3"]}
    )
    assert scores.total == [2.5, 0.0]
    assert scores.per_function == {"arithmetic_answer": [1.0, 0.0], "half": [0.5, None]}


def test_a_bad_reward_function_is_named_with_the_sample():
    def breaks_on_b(prompts, completions, **_):
        return [1.0 / (c != "b") for c in completions]

    with pytest.raises(
        rewards.RewardError,
        match=r"breaks_on_b raised on sample 11 \(prompt 'q1', completion 'b'\): ZeroDivisionError",
    ):
        rewards.score([breaks_on_b], [1.0], ["q0", "q1"], ["a", "b"], {}, first_row=10)

    def too_few(prompts, completions, **_):
        return [1.0]

    with pytest.raises(rewards.RewardError, match="too_few returned 1 rewards for 2 completions"):
        rewards.score([too_few], [1.0], ["q", "q"], ["a", "b"], {})

    def nan(prompts, completions, **_):
        return [0.0, float("nan")]

    with pytest.raises(rewards.RewardError, match=r"nan returned nan for sample 1 \(prompt 'q'"):
        rewards.score([nan], [1.0], ["q", "q"], ["a", "b"], {})


def test_the_columns_a_reward_function_reads():
    assert rewards.required_columns(rewards.math_answer) == ["answer"]
    assert rewards.required_columns(rewards.format_reward("x")) == []
    assert rewards.required_columns(rewards.length_penalty(5, 2)) == []


# ---- PPO -------------------------------------------------------------------------------------


def test_gae_by_hand():
    """One row of 3 response tokens (and one of 2, then padding), gamma 0.9, lambda 0.8."""
    from tt_recipes.rl.advantages import gae

    rewards = torch.tensor([[0.1, -0.2, 1.0], [0.5, 0.3, 9.9]])
    values = torch.tensor([[0.4, 0.5, 0.6], [0.2, -0.1, 9.9]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    g, lam = 0.9, 0.8
    # row 0: deltas with V after the last token = 0
    d2 = 1.0 - 0.6
    d1 = -0.2 + g * 0.6 - 0.5
    d0 = 0.1 + g * 0.5 - 0.4
    a2 = d2
    a1 = d1 + g * lam * a2
    a0 = d0 + g * lam * a1
    # row 1: two tokens
    e1 = 0.3 - (-0.1)
    e0 = 0.5 + g * (-0.1) - 0.2
    b1 = e1
    b0 = e0 + g * lam * b1
    advantages, returns = gae(rewards, values, mask, g, lam)
    torch.testing.assert_close(advantages, torch.tensor([[a0, a1, a2], [b0, b1, 0.0]]))
    torch.testing.assert_close(
        returns, torch.tensor([[a0 + 0.4, a1 + 0.5, a2 + 0.6], [b0 + 0.2, b1 - 0.1, 0.0]])
    )


def test_whitening_over_the_masked_entries():
    from tt_recipes.rl.advantages import whiten

    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    kept = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    mean, std = kept.mean(), kept.std()
    out = whiten(x, mask)
    torch.testing.assert_close(out[mask], (kept - mean) / torch.sqrt(std**2 + 1e-8))
    assert out[0, 2] == 0
    torch.testing.assert_close(
        whiten(x, mask, shift_mean=False)[mask], (kept - mean) / std + mean, atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        whiten(x, mask, moments=(3.0, 4.0))[mask], (kept - 3) / 2, atol=1e-6, rtol=0
    )


def test_the_kl_penalty_and_its_adaptive_coefficient():
    from tt_recipes.rl.kl import KLController, token_kl

    logp = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]])
    ref = torch.tensor([[-1.5, -1.0], [-0.5, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    torch.testing.assert_close(token_kl(logp, ref, mask), torch.tensor([[0.5, -1.0], [0.0, 0.0]]))
    fixed = KLController(0.1)
    fixed.update(5.0, 64)
    assert fixed.value == 0.1
    adaptive = KLController(0.1, target=6.0, horizon=1000)
    adaptive.update(12.0, 100)  # error clipped to +0.2
    assert adaptive.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 1000))
    adaptive.update(5.4, 100)  # error -0.1
    assert adaptive.value == pytest.approx(0.1 * 1.02 * (1 - 0.1 * 0.1))
    copy = KLController(0.5)
    copy.load_state_dict(adaptive.state_dict())
    assert copy.value == adaptive.value


def test_the_ppo_losses_by_hand():
    from tt_recipes.rl.losses import PPOLoss

    logp = torch.tensor([[-0.7, -1.2]], requires_grad=True)
    old = torch.tensor([[-1.0, -1.0]])
    adv = torch.tensor([[1.0, -2.0]])
    values = torch.tensor([[0.5, 0.9]], requires_grad=True)
    old_values = torch.tensor([[0.2, 1.0]])
    returns = torch.tensor([[1.0, 0.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss_fn = PPOLoss(epsilon=0.2, value_clip_range=0.2, value_coeff=0.5)
    loss, metrics = loss_fn(logp, old, adv, values, old_values, returns, mask)
    r0, r1 = math.exp(0.3), math.exp(-0.2)  # 1.35 (clipped at 1.2 for A>0), 0.82 (inside)
    policy = [max(-1 * r0, -1 * 1.2), max(2 * r1, 2 * r1)]
    # values: token 0 moved 0.3 > 0.2 from its old value: the clipped one (0.4) is further
    # from the return 1.0, so the max picks it; token 1 moved 0.1 (inside)
    value = [0.5 * max((0.5 - 1) ** 2, (0.4 - 1) ** 2), 0.5 * (0.9 - 0) ** 2]
    assert loss.item() == pytest.approx(sum(policy) + 0.5 * sum(value), rel=1e-6)
    assert metrics["clip_ratio"] == (1.0, 2.0) and metrics["value_clip_ratio"] == (1.0, 2.0)
    loss.backward()
    assert logp.grad[0, 0] == 0  # clipped: no gradient
    assert logp.grad[0, 1] == pytest.approx(2 * r1)
    assert values.grad[0, 0] == 0  # the clipped value term holds no gradient for V
    assert values.grad[0, 1] == pytest.approx(0.5 * 0.9)
    assert PPOLoss.units(mask) == 2


def test_stop_token_ids_end_responses_besides_the_tokenizers_stop_tokens() -> None:
    from types import SimpleNamespace

    from omegaconf import OmegaConf
    from tt_recipes.rl.rollout import KVCacheEngine

    tokenizer = SimpleNamespace(stop_tokens=[2], pad_id=0)
    keys = {"max_new_tokens": 4, "temperature": 1.0, "top_p": None, "top_k": None,
            "compile_generation": False, "fsdp_reshard_after_forward": True}  # fmt: skip
    plain = KVCacheEngine.from_config(torch.nn.Linear(1, 1), tokenizer, OmegaConf.create(keys))
    more = KVCacheEngine.from_config(
        torch.nn.Linear(1, 1), tokenizer, OmegaConf.create({**keys, "stop_token_ids": [13]})
    )
    assert (list(plain.stop_tokens), list(more.stop_tokens)) == ([2], [2, 13])
