"""Rollouts: completions sampled with the policy, without gradients, then made into batches.

The generator sits behind a small interface, :class:`RolloutEngine`: ``generate(prompts,
seeds) -> Completions``. :class:`KVCacheEngine` runs tt_models' KV-cache generation on the
policy itself (sharded or not). An inference server (vLLM) would be another engine: it would
receive the policy's weights after each optimizer step (``sync_weights``) and generate
from them; docs/RL.md says how it attaches.

Each completion is sampled from its own generator, seeded by (seed, step, the prompt's row
in the dataset, the sample's number): a resumed run samples exactly what the uninterrupted
run did, whatever the number of processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
import tt_dist
from tt_models import generate

from tt_recipes.losses import IGNORE_INDEX


@dataclass(frozen=True)
class Completions:
    """What an engine returns for a batch of prompts (one entry per prompt given)."""

    tokens: list[list[int]]  # generated ids up to and including the stop token, no padding
    logprobs: list[list[float]]  # of each generated token, at the sampling temperature
    truncated: list[bool]  # max_new_tokens reached before a stop token


class RolloutEngine(Protocol):
    """Anything that completes token prompts with the current policy."""

    def generate(self, prompts: list[list[int]], seeds: list[int]) -> Completions: ...

    def sync_weights(self) -> None:
        """Called after every optimizer step (an engine holding its own copy updates it)."""


@dataclass
class KVCacheEngine:
    """Generation with tt_models' KV-cache on the policy itself: always current, so
    ``sync_weights`` has nothing to do. Under FSDP the weights are gathered once per
    rollout and every process decodes until all have finished."""

    model: torch.nn.Module
    stop_tokens: Sequence[int]
    pad_id: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    compile: bool = False
    reshard_after_forward: bool = True

    def generate(self, prompts: list[list[int]], seeds: list[int]) -> Completions:
        was_training = self.model.training
        self.model.eval()
        try:
            with tt_dist.unsharded(self.model, self.reshard_after_forward):
                tokens, logprobs = generate(
                    self.model,
                    prompts,
                    self.max_new_tokens,
                    temperature=self.temperature,
                    top_p=self.top_p,
                    top_k=self.top_k,
                    stop_tokens=list(self.stop_tokens),
                    pad_id=self.pad_id,
                    seeds=seeds if self.temperature > 0 else None,
                    logprob_temperature=self.temperature if self.temperature > 0 else 1.0,
                    compile=self.compile,
                    stop_together=_all_ranks_done if tt_dist.is_distributed() else None,
                )
        finally:
            self.model.train(was_training)
        return _completions(tokens.tolist(), logprobs.tolist(), set(self.stop_tokens))

    def sync_weights(self) -> None:
        pass

    @classmethod
    def from_config(cls, model: torch.nn.Module, tokenizer: Any, cfg: Any) -> KVCacheEngine:
        """The engine an RL recipe's config describes (its sampling and generation keys)."""
        return cls(
            model,
            # the tokenizer's stop tokens, and any the config adds (e.g. a sentence's end)
            stop_tokens=[*tokenizer.stop_tokens, *(cfg.get("stop_token_ids") or [])],
            pad_id=tokenizer.pad_id,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            compile=cfg.compile_generation,
            reshard_after_forward=cfg.fsdp_reshard_after_forward,
        )


def greedy(engine: KVCacheEngine) -> KVCacheEngine:
    """The same engine decoding greedily (validation)."""
    return replace(engine, temperature=0.0, top_p=None, top_k=None)


def _all_ranks_done(done_here: bool) -> bool:
    return tt_dist.sum_over_ranks(0.0 if done_here else 1.0) == 0


def _completions(
    tokens: list[list[int]], logprobs: list[list[float]], stops: set[int]
) -> Completions:
    out_tokens, out_logprobs, truncated = [], [], []
    for row_tokens, row_logprobs in zip(tokens, logprobs):
        end = next((i + 1 for i, t in enumerate(row_tokens) if t in stops), None)
        out_tokens.append(row_tokens[: end or len(row_tokens)])
        out_logprobs.append(row_logprobs[: end or len(row_tokens)])
        truncated.append(end is None)
    return Completions(out_tokens, out_logprobs, truncated)


def sample_seed(seed: int, step: int, row: int, sample: int) -> int:
    """The seed of one completion: stable across runs, processes and platforms."""
    digest = hashlib.sha256(f"tt-rollout:{seed}:{step}:{row}:{sample}".encode()).hexdigest()
    return int(digest[:15], 16)


@dataclass
class Rollouts:
    """A step's completions: ``group_size`` per prompt, each prompt's next to each other."""

    prompts: list[dict[str, Any]]  # the prompt item of every completion (repeated)
    completions: Completions
    group_size: int
    texts: list[str] = field(default_factory=list)  # decoded completions (stop token dropped)

    def __len__(self) -> int:
        return len(self.prompts)


def generate_rollouts(
    engine: RolloutEngine,
    prompts: list[dict[str, Any]],
    group_size: int,
    seed: int,
    step: int,
    decode: Callable[[list[int]], str],
    stop_tokens: Sequence[int],
) -> Rollouts:
    """``group_size`` completions of every prompt item (``prompt_tokens``, ``row_index``)."""
    repeated = [item for item in prompts for _ in range(group_size)]
    seeds = [
        sample_seed(seed, step, item["row_index"], g) for item in prompts for g in range(group_size)
    ]
    completions = engine.generate([item["prompt_tokens"] for item in repeated], seeds)
    stops = set(stop_tokens)
    texts = [decode([t for t in tokens if t not in stops]) for tokens in completions.tokens]
    return Rollouts(repeated, completions, group_size, texts)


def training_batches(
    rollouts: Rollouts,
    advantages: torch.Tensor,
    micro_batches: int,
    pad_id: int,
    mask_truncated: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Prompt + completion sequences for the policy update, split into ``micro_batches``.

    Each batch: ``tokens`` ``[b, s]`` (right-padded), ``targets`` ``[b, s]`` (the next token at
    the positions that predict a completion token, else ignored), ``old_logprobs`` ``[b, s]``
    (the rollout's, aligned with ``targets``), ``loss_mask`` ``[b, s]`` (where there is a target),
    ``advantages`` ``[b]``. With ``mask_truncated`` completions that hit max_new_tokens
    without a stop token carry no loss (DAPO's overlong filtering).
    """
    n = len(rollouts)
    if n % micro_batches:
        raise ValueError(f"{n} completions do not split into {micro_batches} micro-batches")
    size = n // micro_batches
    batches = []
    for start in range(0, n, size):
        rows = range(start, start + size)
        sequences = [
            rollouts.prompts[i]["prompt_tokens"] + rollouts.completions.tokens[i] for i in rows
        ]
        width = max(len(s) for s in sequences)
        tokens = torch.full((size, width), pad_id, dtype=torch.long)
        targets = torch.full((size, width), IGNORE_INDEX, dtype=torch.long)
        old = torch.zeros((size, width), dtype=torch.float32)
        for r, i in enumerate(rows):
            prompt = rollouts.prompts[i]["prompt_tokens"]
            completion = rollouts.completions.tokens[i]
            tokens[r, : len(prompt) + len(completion)] = torch.tensor(prompt + completion)
            if mask_truncated and rollouts.completions.truncated[i]:
                continue
            first = len(prompt) - 1  # the position that predicts the first completion token
            targets[r, first : first + len(completion)] = torch.tensor(completion)
            old[r, first : first + len(completion)] = torch.tensor(rollouts.completions.logprobs[i])
        batches.append(
            {
                "tokens": tokens,
                "targets": targets,
                "old_logprobs": old,
                "loss_mask": targets != IGNORE_INDEX,
                "advantages": advantages[start : start + size].float(),
            }
        )
    return batches


def check_prompt_lengths(dataset: Any, max_new_tokens: int, max_seq_len: int) -> None:
    """The longest prompt plus ``max_new_tokens`` must fit the model's context."""
    longest = max(len(dataset[i]["prompt_tokens"]) for i in range(len(dataset)))
    if longest + max_new_tokens > max_seq_len:
        raise ValueError(
            f"the longest prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) "
            f"exceeds the model's max_seq_len={max_seq_len}; lower max_new_tokens or filter "
            "long prompts"
        )
