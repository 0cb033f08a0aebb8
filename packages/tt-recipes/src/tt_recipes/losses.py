"""Loss functions shared by the recipes.

Cross-entropy here is a *sum* over trained tokens; the recipe divides by the number of trained
tokens in the whole optimizer step (all gradient-accumulation micro-batches), so that
``batch_size=4, gradient_accumulation_steps=1`` and ``batch_size=1, gradient_accumulation_steps=4``
produce the same gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from tt_data import IGNORE_INDEX  # the label of positions without loss, as in the datasets


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Labels for next-token prediction: position t is scored on token t+1.

    labels: [b, s] -> [b, s] where the last position is ``ignore_index``.
    """
    pad = torch.full_like(labels[:, :1], ignore_index)
    return torch.cat([labels[:, 1:], pad], dim=1)


Projection = Callable[[torch.Tensor], torch.Tensor]


def sequence_chunks(tensor: torch.Tensor, num_chunks: int) -> list[torch.Tensor]:
    """``tensor`` [b, s, ...] split into ``num_chunks`` contiguous chunks along the sequence.

    Contiguous because a strided [b, chunk, dim] slice cannot be folded into one matrix
    product: ``F.linear`` then falls back to a batched product over a materialised copy of
    the broadcast weight ([b, dim, vocab], once per chunk and again in backward), which took
    a third of a bf16 LoRA step on CPU (measured with torch.profiler, bench/README.md).
    """
    return [chunk.contiguous() for chunk in tensor.chunk(num_chunks, dim=1)]


def chunked_cross_entropy_sum(
    hidden: torch.Tensor,
    project: Projection,
    targets: torch.Tensor,
    *,
    num_chunks: int = 8,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Summed cross-entropy of ``project(hidden)`` against ``targets``.

    ``project`` maps hidden states to logits (``model.logits_from_hidden``: the output layer,
    its adapters and any logit soft-capping). It runs, with the fp32 upcast, one sequence chunk
    at a time, so the fp32 logits of the whole batch ([b, s, vocab], often the largest tensor
    of a step) never exist at once. Each chunk is checkpointed: its logits are recomputed in
    backward instead of being kept alive.

    hidden: [b, s, dim]; targets: [b, s] already shifted.
    Returns a 0-dim fp32 tensor (sum over non-ignored positions).
    """
    return _row_nll_sums(hidden, project, targets, num_chunks, ignore_index).sum()


def _row_nll_sums(
    hidden: torch.Tensor,
    project: Projection,
    targets: torch.Tensor,
    num_chunks: int,
    ignore_index: int,
) -> torch.Tensor:
    """Per-row summed negative log-likelihood [b], one checkpointed sequence chunk at a time."""
    total = hidden.new_zeros(hidden.shape[0], dtype=torch.float32)
    for h, t in zip(sequence_chunks(hidden, num_chunks), targets.chunk(num_chunks, dim=1)):
        total = total + torch.utils.checkpoint.checkpoint(
            _chunk_row_nll, h, project, t, ignore_index, use_reentrant=False
        )
    return total


def _chunk_row_nll(
    hidden: torch.Tensor, project: Projection, targets: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    logits = project(hidden).float()  # [b, chunk, vocab]
    nll = F.cross_entropy(  # ignored positions come out as 0
        logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index, reduction="none"
    )
    return nll.view(targets.shape).sum(dim=1)


def cross_entropy_sum(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Summed cross-entropy over full logits [b, s, vocab] (reference for the chunked version)."""
    return F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=ignore_index, reduction="sum"
    )


def linear_cross_entropy_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    num_chunks: int = 8,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets``, its gradient computed
    in the forward pass, one chunk of rows at a time.

    The same value and gradients as ``chunked_cross_entropy_sum`` with a plain projection, for
    less work: each chunk's logits are computed once (not again in backward), the gradient of
    the logits is formed directly (softmax minus one-hot, no zero-filled buffer), and the
    weight gradient is accumulated into one buffer inside the matrix product (``addmm_``).
    The idea of Liger's fused linear cross-entropy. It costs a weight-sized buffer held from
    forward to backward when ``weight`` trains (none for a frozen output layer, as in LoRA).

    hidden: [b, s, dim]; weight: [vocab, dim]; targets: [b, s] already shifted.
    Returns a 0-dim fp32 tensor (sum over non-ignored positions).
    """
    return _LinearCrossEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), num_chunks, ignore_index
    )


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, num_chunks, ignore_index):  # type: ignore[override]
        wants_hidden, wants_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        upcast = torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 when given
        total = torch.zeros((), dtype=upcast, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if wants_hidden else None
        grad_weight = torch.zeros_like(weight) if wants_weight else None
        rows = -(-hidden.shape[0] // num_chunks)
        for start in range(0, hidden.shape[0], rows):
            h, t = hidden[start : start + rows], targets[start : start + rows]
            logits = (h @ weight.t()).to(upcast)  # [rows, vocab]
            trained = t != ignore_index
            picked = t.masked_fill(~trained, 0)[:, None]
            log_norm = torch.logsumexp(logits, dim=-1)
            total += ((log_norm - logits.gather(1, picked)[:, 0]) * trained).sum()
            if not (wants_hidden or wants_weight):
                continue
            # d(sum of nll)/d(logits) = softmax - one_hot(target), zero on ignored rows
            grad = logits.sub_(log_norm[:, None]).exp_()
            grad.scatter_add_(1, picked, torch.full_like(picked, -1, dtype=grad.dtype))
            grad = grad.mul_(trained[:, None]).to(hidden.dtype)
            if wants_hidden:
                torch.mm(grad, weight, out=grad_hidden[start : start + rows])
            if wants_weight:
                grad_weight.addmm_(grad.t(), h)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_total):  # type: ignore[override]
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_total.to(grad_hidden.dtype if grad_hidden is not None else grad_weight.dtype)
        return (
            None if grad_hidden is None else grad_hidden * scale,
            None if grad_weight is None else grad_weight * scale,
            None,
            None,
            None,
        )


class ChunkedCrossEntropy:
    """The default SFT loss: summed cross-entropy computed in ``num_chunks`` sequence chunks.

    Called by the recipe as ``loss(hidden [b, s, dim], model.logits_from_hidden, targets)``.
    When the projection is a plain matrix (``model.plain_output_weight()``: no adapter, fake
    quantization or soft-cap on the output layer) and not a sharded one, the projection and
    the loss are fused (``linear_cross_entropy_sum``); otherwise each chunk's logits are
    checkpointed and recomputed in backward (``chunked_cross_entropy_sum``).
    """

    def __init__(self, num_chunks: int = 8, ignore_index: int = IGNORE_INDEX):
        if num_chunks < 1:
            raise ValueError(f"loss.num_chunks must be >= 1, got {num_chunks}")
        self.num_chunks = num_chunks
        self.ignore_index = ignore_index

    def __call__(
        self, hidden: torch.Tensor, project: Projection, targets: torch.Tensor
    ) -> torch.Tensor:
        weight = _plain_weight(project)
        if weight is not None:
            return linear_cross_entropy_sum(
                hidden, weight, targets, num_chunks=self.num_chunks, ignore_index=self.ignore_index
            )
        return chunked_cross_entropy_sum(
            hidden,
            project,
            targets,
            num_chunks=self.num_chunks,
            ignore_index=self.ignore_index,
        )


def _plain_weight(project: Projection) -> torch.Tensor | None:
    """The matrix ``project`` multiplies by, when it is a decoder's plain output layer held as
    an ordinary tensor: not a tensor subclass such as an FSDP shard (a DTensor, gathered only
    by its module's hooks, which only a call of the module runs) or an NF4 weight."""
    model = getattr(project, "__self__", None)
    weight = model.plain_output_weight() if hasattr(model, "plain_output_weight") else None
    return weight if type(weight) in (torch.Tensor, torch.nn.Parameter) else None


# ---------------------------------------------------------------------------------------------
# Preference optimization


def sequence_logprobs(
    hidden: torch.Tensor,
    project: Projection,
    targets: torch.Tensor,
    *,
    num_chunks: int = 8,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Per-row sum of log p(target token) over the positions that are not ``ignore_index``.

    The log-likelihood a preference loss compares: ``log pi(response | prompt)`` when only the
    response is labelled. Computed in sequence chunks with recomputation in backward, like
    ``chunked_cross_entropy_sum``, so full-batch fp32 logits never exist.

    hidden: [b, s, dim]; targets: [b, s] already shifted. Returns [b] fp32.
    """
    return -_row_nll_sums(hidden, project, targets, num_chunks, ignore_index)


def token_logprobs(
    hidden: torch.Tensor,
    project: Projection,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    num_chunks: int = 8,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``log p(target)`` of ``project(hidden) / temperature`` and the entropy of that
    distribution (no gradient), both ``[b, s]`` fp32 and 0 where the target is ignored.

    What a policy-gradient loss scores (each completion token under the distribution it was
    sampled from), chunked and recomputed in backward like ``chunked_cross_entropy_sum``.
    """
    logps, entropies = [], []
    for h, t in zip(sequence_chunks(hidden, num_chunks), targets.chunk(num_chunks, dim=1)):
        logp, entropy = torch.utils.checkpoint.checkpoint(
            _chunk_token_logprobs, h, project, t, temperature, ignore_index, use_reentrant=False
        )
        logps.append(logp)
        entropies.append(entropy)
    return torch.cat(logps, dim=1), torch.cat(entropies, dim=1)


def _chunk_token_logprobs(
    hidden: torch.Tensor, project: Projection, targets: torch.Tensor, temperature: float,
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    logits = project(hidden).float() / temperature  # [b, chunk, vocab]
    logp = -F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index, reduction="none"
    ).view(targets.shape)
    with torch.no_grad():
        log_probs = torch.log_softmax(logits, dim=-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1) * (targets != ignore_index)
    return logp, entropy


class DPOLoss:
    """Direct Preference Optimization (Rafailov et al., 2023), per preference pair.

    With log-ratios ``r_c = log pi(chosen) - log ref(chosen)`` and ``r_r`` likewise for the
    rejected response, the loss is ``-log sigmoid(beta (r_c - r_r))``. ``label_smoothing``
    (eps, conservative DPO) assumes a fraction eps of the labels are flipped:
    ``-(1 - eps) log sigmoid(beta z) - eps log sigmoid(-beta z)``.

    Called with four [b] tensors of sequence log-probabilities (``sequence_logprobs``); returns
    (losses [b], chosen rewards [b], rejected rewards [b]), the rewards being ``beta r`` (the
    implicit reward of the DPO paper), detached.
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0):
        if beta <= 0:
            raise ValueError(f"loss.beta must be > 0, got {beta}")
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"loss.label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.beta = beta
        self.label_smoothing = label_smoothing

    def __call__(
        self,
        policy_chosen: torch.Tensor,
        policy_rejected: torch.Tensor,
        reference_chosen: torch.Tensor,
        reference_rejected: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        chosen_ratio = policy_chosen - reference_chosen
        rejected_ratio = policy_rejected - reference_rejected
        z = self.beta * (chosen_ratio - rejected_ratio)
        eps = self.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
        return losses, self.beta * chosen_ratio.detach(), self.beta * rejected_ratio.detach()


class BradleyTerryLoss:
    """The reward-model loss on preference pairs (Bradley-Terry, as in InstructGPT):
    ``-log sigmoid(r_chosen - r_rejected - margin)`` per pair. ``margin`` asks the chosen
    score to exceed the rejected one by that much (Llama 2 uses per-pair margins)."""

    def __init__(self, margin: float = 0.0):
        self.margin = margin

    def __call__(self, chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
        """Per-pair losses ``[b]`` from the scores ``[b]`` of the chosen and rejected responses."""
        return -F.logsigmoid(chosen.float() - rejected.float() - self.margin)


# ---------------------------------------------------------------------------------------------
# Knowledge distillation


def chunked_kd_sums(
    student_hidden: torch.Tensor,
    student_project: Projection,
    teacher_hidden: torch.Tensor,
    teacher_project: Projection,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    num_chunks: int = 8,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy of the student on ``targets``, summed KL(teacher || student))
    over the trained positions. The KL compares the next-token distributions at
    ``temperature`` and is multiplied by ``temperature**2`` (so gradients keep their scale as
    the temperature changes, as in Hinton et al. 2015).

    One sequence chunk at a time, the student's logits are projected once for both terms and
    recomputed in backward; the teacher's are recomputed too (one more projection, no
    gradient) rather than kept, so no full-batch fp32 logits tensor ever exists.
    hidden states: [b, s, dim] each; targets: [b, s] already shifted. Returns two 0-dim fp32
    tensors; the KL is 0 when the models agree.
    """
    total = student_hidden.new_zeros(2, dtype=torch.float32)
    chunks = zip(
        sequence_chunks(student_hidden, num_chunks),
        sequence_chunks(teacher_hidden, num_chunks),
        targets.chunk(num_chunks, dim=1),
    )
    for s, t, y in chunks:
        total = total + torch.utils.checkpoint.checkpoint(
            _chunk_kd,
            s,
            student_project,
            t.detach(),
            teacher_project,
            y,
            ignore_index,
            temperature,
            use_reentrant=False,
        )
    return total[0], total[1] * temperature**2


def _chunk_kd(
    student_hidden: torch.Tensor,
    student_project: Projection,
    teacher_hidden: torch.Tensor,
    teacher_project: Projection,
    targets: torch.Tensor,
    ignore_index: int,
    temperature: float,
) -> torch.Tensor:
    logits = student_project(student_hidden).float()  # [b, chunk, vocab]
    ce = F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index, reduction="sum"
    )
    student = F.log_softmax(logits / temperature, dim=-1)
    with torch.no_grad():
        teacher = F.log_softmax(teacher_project(teacher_hidden).float() / temperature, dim=-1)
    kl = (teacher.exp() * (teacher - student)).sum(dim=-1)  # [b, chunk]
    return torch.stack([ce, (kl * (targets != ignore_index)).sum()])


class KDLoss:
    """Knowledge distillation: ``(1 - kd_ratio) * CE(labels) + kd_ratio * KL(teacher||student)``.

    Called with the student's and teacher's last hidden states, their ``logits_from_hidden``
    and the shifted labels; returns the summed (total, cross-entropy, KL) over the trained
    tokens, which the recipe normalises by the trained tokens of the whole step.
    """

    def __init__(self, kd_ratio: float = 0.5, temperature: float = 1.0, num_chunks: int = 8):
        if not 0 <= kd_ratio <= 1:
            raise ValueError(f"loss.kd_ratio must be in [0, 1], got {kd_ratio}")
        if temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {temperature}")
        if num_chunks < 1:
            raise ValueError(f"loss.num_chunks must be >= 1, got {num_chunks}")
        self.kd_ratio = kd_ratio
        self.temperature = temperature
        self.num_chunks = num_chunks

    def __call__(
        self,
        student_hidden: torch.Tensor,
        student_project: Projection,
        teacher_hidden: torch.Tensor,
        teacher_project: Projection,
        targets: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ce, kl = chunked_kd_sums(
            student_hidden,
            student_project,
            teacher_hidden,
            teacher_project,
            targets,
            temperature=self.temperature,
            num_chunks=self.num_chunks,
        )
        return (1 - self.kd_ratio) * ce + self.kd_ratio * kl, ce, kl
