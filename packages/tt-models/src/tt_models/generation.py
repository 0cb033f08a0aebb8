"""Autoregressive generation with a KV-cache: batched ``generate`` and single-prompt
``generate_stream``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from tt_models.decoder import TransformerDecoder

Prompt = Sequence[Sequence[int]] | torch.Tensor


def generate(
    model: TransformerDecoder,
    prompt_tokens: Prompt,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] | None = None,
    pad_id: int = 0,
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate continuations of a batch of prompts.

    Prompts of different lengths are left-padded; each row gets the positions and attention it
    would have alone, so a padded row produces the same tokens as running it unpadded. The
    model's KV-caches are set up for the call and removed afterwards.

    Args:
        model: the decoder (its own dtype and device are used).
        prompt_tokens: a list of token-id lists (any lengths >= 1), or a ``[b, s]`` tensor of
            unpadded prompts of equal length.
        max_new_tokens: most tokens to generate per row.
        temperature: softmax temperature; 0 means greedy (argmax).
        top_k: sample only among the ``top_k`` most likely tokens.
        top_p: sample only from the smallest set of tokens whose probability reaches ``top_p``.
        stop_tokens: a row stops after producing one of these (it is kept in the output).
        pad_id: fills prompts' left padding and rows' output after they stop.
        seed: seeds the ``torch.Generator`` used for sampling (reproducible runs).

    Returns:
        ``(tokens, logprobs)``, each ``[b, n]`` with ``n <= max_new_tokens`` (fewer when every row
        stopped early). ``logprobs`` are the log-probabilities of the chosen tokens under the
        model's unmodified distribution (temperature 1, no top-k/top-p), 0 after a row stops.
    """
    steps = list(
        _decode_steps(
            model,
            _prompt_list(prompt_tokens),
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            stop_tokens=stop_tokens,
            pad_id=pad_id,
            seed=seed,
        )
    )
    tokens, logprobs = zip(*steps)
    return torch.stack(tokens, dim=1), torch.stack(logprobs, dim=1)


def generate_stream(
    model: TransformerDecoder,
    prompt_tokens: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] | None = None,
    seed: int | None = None,
) -> Iterator[int]:
    """Yield the token ids generated for one prompt as they are produced.

    Same sampling arguments as ``generate``; the stream ends after a stop token or
    ``max_new_tokens`` tokens. Closing the iterator early removes the KV-caches too.
    """
    prompt = prompt_tokens.tolist() if isinstance(prompt_tokens, torch.Tensor) else prompt_tokens
    for token, _ in _decode_steps(
        model,
        _prompt_list([prompt]),
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop_tokens=stop_tokens,
        pad_id=0,
        seed=seed,
    ):
        yield int(token[0])


@torch.inference_mode()
def _decode_steps(
    model: TransformerDecoder,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    stop_tokens: Sequence[int] | None,
    pad_id: int,
    seed: int | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(tokens [b], logprobs [b])`` for each new position."""
    _check_sampling(max_new_tokens, temperature, top_k, top_p)
    vocab_size = model.config.vocab_size
    _check_token_ids(prompts, stop_tokens or [], pad_id, vocab_size)
    device = model.output_weight().device
    tokens, input_pos = _left_pad(prompts, pad_id, device)
    cache_len = tokens.shape[1] + max_new_tokens
    if cache_len > model.config.max_seq_len:
        raise ValueError(
            f"generate: longest prompt ({tokens.shape[1]}) + max_new_tokens ({max_new_tokens}) = "
            f"{cache_len} exceeds the model's max_seq_len={model.config.max_seq_len}"
        )
    generator = None if seed is None else torch.Generator(device).manual_seed(seed)
    stop = torch.tensor(list(stop_tokens or []), dtype=torch.long, device=device)
    next_pos = torch.tensor([len(p) for p in prompts], device=device)  # [b]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    model.setup_caches(len(prompts), cache_len)
    try:
        logits = model(tokens, input_pos=input_pos)[:, -1].float()
        for step in range(max_new_tokens):
            token = _pick(logits, temperature, top_k, top_p, generator)
            logprob = torch.log_softmax(logits, -1).gather(-1, token[:, None])[:, 0]
            token = token.masked_fill(done, pad_id)
            yield token, logprob.masked_fill(done, 0.0)
            done |= torch.isin(token, stop)
            if step == max_new_tokens - 1 or bool(done.all()):
                return
            logits = model(token[:, None], input_pos=next_pos[:, None])[:, 0].float()
            next_pos += 1
    finally:
        model.remove_caches()


def _left_pad(
    prompts: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad ``prompts`` to ``[b, s]`` and give every token its cache slot/position.

    Real tokens get positions ``0..len-1`` (as if unpadded). Padding gets the slots just after
    its row's prompt: the default position-causal mask hides them from every real token, and
    the row's generated tokens overwrite them later, so no explicit padding mask is needed.
    """
    longest = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    input_pos = torch.empty((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        n_pad = longest - len(prompt)
        tokens[row, n_pad:] = torch.tensor(prompt, dtype=torch.long)
        input_pos[row, n_pad:] = torch.arange(len(prompt))
        input_pos[row, :n_pad] = torch.arange(len(prompt), longest)
    return tokens.to(device), input_pos.to(device)


def _pick(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Choose one token per row from fp32 ``logits`` ``[b, vocab]``; returns ``[b]``."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        kth_best = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None:
        logits = _top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most likely tokens until their total probability reaches ``top_p``."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    sorted_probs = torch.softmax(sorted_logits, dim=-1)
    # A token is dropped when the tokens ranked above it already reach top_p; the first never is.
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    drop_sorted = mass_before >= top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _prompt_list(prompt_tokens: Prompt) -> list[list[int]]:
    if isinstance(prompt_tokens, torch.Tensor):
        if prompt_tokens.dim() != 2 or prompt_tokens.is_floating_point():
            raise ValueError(
                "generate: a prompt tensor must hold integer ids of shape [batch, seq_len], got "
                f"{prompt_tokens.dtype} {tuple(prompt_tokens.shape)}"
            )
        return prompt_tokens.tolist()
    prompts = [list(p) for p in prompt_tokens]
    if not prompts:
        raise ValueError("generate: prompt_tokens is empty; give at least one prompt")
    empty = [row for row, p in enumerate(prompts) if not p]
    if empty:
        raise ValueError(f"generate: prompts at rows {empty} are empty; each needs >= 1 token")
    return prompts


def _check_token_ids(
    prompts: list[list[int]], stop_tokens: Sequence[int], pad_id: int, vocab_size: int
) -> None:
    for row, prompt in enumerate(prompts):
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(
                f"generate: prompt row {row} has token ids {bad[:5]} outside [0, {vocab_size})"
            )
    for name, ids in (("stop_tokens", list(stop_tokens)), ("pad_id", [pad_id])):
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"generate: {name} {bad} outside the vocabulary [0, {vocab_size})")


def _check_sampling(
    max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None
) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens={max_new_tokens} must be >= 1")
    if temperature < 0:
        raise ValueError(f"generate: temperature={temperature} must be >= 0 (0 means greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"generate: top_k={top_k} must be >= 1 or None")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"generate: top_p={top_p} must be in (0, 1] or None")
