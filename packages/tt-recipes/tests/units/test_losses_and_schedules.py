"""Losses against hand-computed values, the schedule's shape, the resumable sampler."""

from __future__ import annotations

import math

import pytest
import torch
from tt_recipes.losses import (
    IGNORE_INDEX,
    ChunkedCrossEntropy,
    DPOLoss,
    KDLoss,
    chunked_cross_entropy_sum,
    chunked_kd_sums,
    cross_entropy_sum,
    linear_cross_entropy_sum,
    sequence_logprobs,
    shift_labels,
)
from tt_recipes.lr_schedulers import constant_with_warmup, cosine_with_warmup
from tt_recipes.sampling import ResumableSampler


def test_cross_entropy_sum_by_hand() -> None:
    # Two positions, vocab 2: logits (0, 0) -> -log(1/2); logits (ln 3, 0) on class 0 -> -log(3/4).
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])
    targets = torch.tensor([[1, 0]])
    expected = math.log(2.0) + math.log(4.0 / 3.0)
    assert cross_entropy_sum(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    masked = torch.tensor([[1, IGNORE_INDEX]])
    assert cross_entropy_sum(logits, masked).item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_sequence_logprobs_by_hand() -> None:
    # vocab 2, identity projection. Row 0: logits (0, 0) on token 1 -> log 1/2, then
    # (ln 3, 0) on token 0 -> log 3/4. Row 1: the first position is not trained.
    hidden = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]], [[0.0, 0.0], [0.0, math.log(3.0)]]])
    targets = torch.tensor([[1, 0], [IGNORE_INDEX, 0]])
    got = sequence_logprobs(hidden, lambda h: h, targets, num_chunks=2)
    want = [math.log(0.5) + math.log(0.75), math.log(0.25)]
    assert got.tolist() == pytest.approx(want, rel=1e-6)


def test_sequence_logprobs_gradients_equal_unchunked() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(3, 11, 8, requires_grad=True)
    weight = torch.randn(20, 8)
    targets = torch.randint(0, 20, (3, 11))
    targets[:, :3] = IGNORE_INDEX
    logprobs = torch.log_softmax(hidden @ weight.T, dim=-1)
    mask = targets != IGNORE_INDEX
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    want = (picked * mask).sum(dim=1)
    (want * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
    want_grad, hidden.grad = hidden.grad.clone(), None
    got = sequence_logprobs(hidden, lambda h: h @ weight.T, targets, num_chunks=4)
    (got * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(hidden.grad, want_grad)


def test_dpo_loss_by_hand() -> None:
    # log-ratios: chosen -1.0 - (-1.5) = 0.5, rejected -2.0 - (-1.5) = -0.5; beta 0.5 -> z = 0.5
    args = [torch.tensor([v]) for v in (-1.0, -2.0, -1.5, -1.5)]
    losses, chosen, rejected = DPOLoss(beta=0.5)(*args)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-0.5)), rel=1e-6)  # -log sig(z)
    assert (chosen.item(), rejected.item()) == pytest.approx((0.25, -0.25))
    smoothed, _, _ = DPOLoss(beta=0.5, label_smoothing=0.1)(*args)
    want = 0.9 * math.log(1 + math.exp(-0.5)) + 0.1 * math.log(1 + math.exp(0.5))
    assert smoothed.item() == pytest.approx(want, rel=1e-6)
    # policy == reference: every pair starts at ln 2
    same = torch.tensor([-3.0, -7.0])
    assert DPOLoss()(same, same - 1, same, same - 1)[0].tolist() == pytest.approx([math.log(2)] * 2)


def test_dpo_loss_gradient_pushes_chosen_up_and_rejected_down() -> None:
    chosen, rejected = (
        torch.tensor([-2.0], requires_grad=True),
        torch.tensor([-2.0], requires_grad=True),
    )
    DPOLoss(beta=0.1)(chosen, rejected, torch.tensor([-2.0]), torch.tensor([-2.0]))[
        0
    ].sum().backward()
    assert chosen.grad.item() == pytest.approx(-0.05) and rejected.grad.item() == pytest.approx(
        0.05
    )


def test_dpo_loss_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="loss.beta must be > 0, got 0"):
        DPOLoss(beta=0)
    with pytest.raises(ValueError, match=r"loss.label_smoothing must be in \[0, 0.5\), got 0.5"):
        DPOLoss(label_smoothing=0.5)


def test_kl_by_hand() -> None:
    # vocab 2, identity projections; one trained position: teacher (3/4, 1/4), student (1/2, 1/2)
    student = torch.tensor([[[0.0, 0.0], [5.0, 1.0]]])
    teacher = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]])
    targets = torch.tensor([[0, IGNORE_INDEX]])
    ce, kl = chunked_kd_sums(student, lambda h: h, teacher, lambda h: h, targets, num_chunks=2)
    want = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kl.item() == pytest.approx(want, rel=1e-6)
    assert ce.item() == pytest.approx(math.log(2.0), rel=1e-6)  # student (1/2, 1/2), target 0
    _, same = chunked_kd_sums(teacher, lambda h: h, teacher, lambda h: h, targets)
    assert same.item() == pytest.approx(0.0, abs=1e-7)


def test_kl_chunks_temperature_and_gradients_equal_the_unchunked_formula() -> None:
    torch.manual_seed(0)
    student = torch.randn(2, 9, 8, requires_grad=True)
    teacher = torch.randn(2, 9, 8)
    w_s, w_t = torch.randn(30, 8), torch.randn(30, 8)
    targets = torch.randint(0, 30, (2, 9))
    targets[:, :2] = IGNORE_INDEX
    t = 2.0
    log_s = torch.log_softmax(student @ w_s.T / t, -1)
    log_t = torch.log_softmax(teacher @ w_t.T / t, -1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)
    want = (kl * (targets != IGNORE_INDEX)).sum() * t * t
    want.backward()
    want_grad, student.grad = student.grad.clone(), None
    _, got = chunked_kd_sums(
        student, lambda h: h @ w_s.T, teacher, lambda h: h @ w_t.T, targets,
        temperature=t, num_chunks=4,
    )  # fmt: skip
    got.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(student.grad, want_grad)


def test_kd_loss_mixes_cross_entropy_and_kl() -> None:
    torch.manual_seed(0)
    hidden, teacher = torch.randn(1, 5, 4), torch.randn(1, 5, 4)
    w = torch.randn(10, 4)
    targets = torch.randint(0, 10, (1, 5))
    project = lambda h: h @ w.T  # noqa: E731
    total, ce, kl = KDLoss(kd_ratio=0.25)(hidden, project, teacher, project, targets)
    assert total.item() == pytest.approx(0.75 * ce.item() + 0.25 * kl.item(), rel=1e-6)
    assert ce.item() == pytest.approx(cross_entropy_sum(project(hidden), targets).item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"loss.kd_ratio must be in \[0, 1\], got 1.5"):
        KDLoss(kd_ratio=1.5)
    with pytest.raises(ValueError, match="loss.temperature must be > 0, got 0"):
        KDLoss(temperature=0)


@pytest.mark.parametrize("num_chunks", [1, 3, 8])
def test_chunked_loss_and_gradients_equal_the_full_loss(num_chunks: int) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(2, 13, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    targets = torch.randint(0, 40, (2, 13))
    targets[0, :4] = IGNORE_INDEX
    full = cross_entropy_sum(hidden @ weight.T, targets)
    full.backward()
    expected_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    chunked = ChunkedCrossEntropy(num_chunks=num_chunks)(hidden, lambda h: h @ weight.T, targets)
    chunked.backward()
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden.grad, expected_grads[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad, expected_grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_chunks", [1, 3, 8])
@pytest.mark.parametrize("weight_trains", [True, False])
def test_fused_linear_loss_and_gradients_equal_the_full_loss(
    num_chunks: int, weight_trains: bool
) -> None:
    """The gradient computed in forward, scaled by the upstream gradient in backward, is the
    gradient of the full loss (float64: exact up to rounding; ignored targets contribute 0)."""
    torch.manual_seed(0)
    hidden = torch.randn(2, 13, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(40, 16, dtype=torch.float64, requires_grad=weight_trains)
    targets = torch.randint(0, 40, (2, 13))
    targets[0, :4] = IGNORE_INDEX
    inputs = (hidden, weight) if weight_trains else (hidden,)
    full = 0.3 * torch.nn.functional.cross_entropy(  # in float64 (cross_entropy_sum is fp32)
        (hidden @ weight.T).flatten(0, 1), targets.flatten(), reduction="sum"
    )
    expected = torch.autograd.grad(full, inputs)
    fused = linear_cross_entropy_sum(hidden, weight, targets, num_chunks=num_chunks) * 0.3
    for got, want in zip(torch.autograd.grad(fused, inputs), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused, full, rtol=1e-12, atol=0.0)
    assert torch.autograd.gradcheck(
        lambda h, w: linear_cross_entropy_sum(h, w, targets, num_chunks=num_chunks),
        (hidden.detach().requires_grad_(), weight.detach().requires_grad_()),
    )


def test_default_loss_fuses_a_plain_output_layer_only() -> None:
    """ChunkedCrossEntropy takes the fused path for a plain or tied output layer and the
    checkpointed one when an adapter or a soft-cap changes the projection; both agree."""
    from tt_models import transformer_decoder
    from tt_peft import apply_lora

    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    targets = torch.randint(0, 64, (2, 9))
    results = {}
    for name, tied, change in [
        ("tied", True, None),
        ("untied", False, None),
        ("softcap", True, lambda m: setattr(m, "final_softcap", 30.0)),
        ("lora", False, lambda m: apply_lora(m, ["output"], rank=2, alpha=4)),
    ]:
        torch.manual_seed(0)
        model = transformer_decoder(
            vocab_size=64, dim=16, n_layers=1, n_heads=2, hidden_dim=32, tie_embeddings=tied
        )
        if change is not None:
            change(model)
        hidden = torch.randn(2, 9, 16)
        calls.clear()
        torch.utils.checkpoint.checkpoint = counting
        try:
            results[name] = ChunkedCrossEntropy(num_chunks=3)(
                hidden, model.logits_from_hidden, targets
            )
        finally:
            torch.utils.checkpoint.checkpoint = original
        assert bool(calls) == (name in ("softcap", "lora")), name
        expected = cross_entropy_sum(model.logits_from_hidden(hidden), targets)
        torch.testing.assert_close(results[name], expected, rtol=1e-5, atol=1e-5)


def test_chunked_loss_upcasts_bf16_logits() -> None:
    hidden = torch.randn(1, 5, 8, dtype=torch.bfloat16)
    weight = torch.randn(11, 8, dtype=torch.bfloat16)
    out = chunked_cross_entropy_sum(hidden, lambda h: h @ weight.T, torch.randint(0, 11, (1, 5)))
    assert out.dtype == torch.float32


def test_shift_labels_scores_the_next_token() -> None:
    labels = torch.tensor([[5, 6, IGNORE_INDEX, 8]])
    assert shift_labels(labels).tolist() == [[6, IGNORE_INDEX, 8, IGNORE_INDEX]]


def test_bad_num_chunks_is_rejected() -> None:
    with pytest.raises(ValueError, match="loss.num_chunks must be >= 1, got 0"):
        ChunkedCrossEntropy(num_chunks=0)


def _lrs(scheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_cosine_with_warmup_values() -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    lrs = _lrs(cosine_with_warmup(opt, num_training_steps=12, num_warmup_steps=2), 12)
    assert lrs[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    # Cosine from 1 at step 2 to 0 at step 12: halfway (step 7) is 0.5.
    assert lrs[7] == pytest.approx(0.5)
    assert lrs[11] == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 10)))


def test_constant_with_warmup_values() -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    assert _lrs(constant_with_warmup(opt, 5, num_warmup_steps=1), 4) == pytest.approx(
        [1.0, 2.0, 2.0, 2.0]
    )


def test_negative_warmup_is_rejected() -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    with pytest.raises(ValueError, match="num_warmup_steps must be >= 0, got -1"):
        cosine_with_warmup(opt, 10, num_warmup_steps=-1)


def test_sampler_ranks_split_the_single_process_order() -> None:
    whole = ResumableSampler(10, seed=3)
    whole.set_epoch(1)
    ranks = [ResumableSampler(10, seed=3, rank=r, world_size=2) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(1)
    order = list(whole)
    assert list(ranks[0]) == order[0::2] and list(ranks[1]) == order[1::2]
    ranks[0].set_epoch(1, start_index=2)
    assert list(ranks[0]) == order[4::2] and len(ranks[0]) == 3
    other_epoch = ResumableSampler(10, seed=3)
    other_epoch.set_epoch(2)
    assert list(other_epoch) != order and sorted(other_epoch) == list(range(10))
