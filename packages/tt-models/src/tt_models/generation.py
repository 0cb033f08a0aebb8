"""Autoregressive generation with a KV-cache: batched ``generate`` and single-prompt
``generate_stream``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from tt_models.config import DecoderConfig
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
    seeds: Sequence[int] | None = None,
    logprob_temperature: float = 1.0,
    compile: bool = False,
    stop_together: Callable[[bool], bool] | None = None,
    images: Mapping[str, torch.Tensor] | None = None,
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
        seeds: one seed per row instead: row ``i`` samples from its own generator, so what it
            draws does not depend on which other rows share its batch (RL rollouts seed each
            completion by step, prompt and sample, so a resumed run draws the same).
        logprob_temperature: the temperature the returned log-probabilities are computed at
            (RL losses score completions under the distribution they were sampled from).
        compile: ``torch.compile`` the one-token decode step (static shapes: the KV-cache is
            sized once per call, rounded up to a multiple of 64 positions).
        stop_together: called with "every row here has stopped"; return whether to stop.
            Under FSDP every process must run the same number of forward passes: pass a
            function that agrees across processes (stop only when all have stopped).
        images: for a vision model (``FusionModel``), the prompts' images as tt_data's
            collator batches them: ``images``, ``aspect_ratio_ids``, ``aspect_ratio_mask`` and
            ``image_mask`` (``[b, longest prompt, n_images, tiles]``, each row's prompt from
            column 0). They are encoded once, in the prompt's pass.

    Returns:
        ``(tokens, logprobs)``, each ``[b, n]`` with ``n <= max_new_tokens`` (fewer when every row
        stopped early). ``logprobs`` are the log-probabilities of the chosen tokens under the
        model's distribution at ``logprob_temperature`` (no top-k/top-p), 0 after a row stops.
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
            seeds=seeds,
            logprob_temperature=logprob_temperature,
            compile=compile,
            stop_together=stop_together,
            images=images,
        )
    )
    tokens, logprobs = (torch.stack(column, dim=1) for column in zip(*steps))
    return _trim_finished(tokens, logprobs, stop_tokens, pad_id)


def _trim_finished(
    tokens: torch.Tensor, logprobs: torch.Tensor, stop_tokens: Sequence[int] | None, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing positions where every row had already stopped (the stop check runs
    every few steps, to spare a host sync per token)."""
    if not stop_tokens:
        return tokens, logprobs
    stopped = torch.isin(tokens, torch.tensor(list(stop_tokens), device=tokens.device))
    # a row is done after its first stop token; position t is needed while any row is not
    done_before = (stopped.cumsum(1) - stopped.long()) > 0  # [b, n]
    needed = (~done_before).any(0).nonzero()
    n = int(needed.max()) + 1 if len(needed) else 1
    return tokens[:, :n], logprobs[:, :n]


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
    images: Mapping[str, torch.Tensor] | None = None,
) -> Iterator[int]:
    """Yield the token ids generated for one prompt as they are produced.

    Same sampling arguments as ``generate`` (``images``: the prompt's, batched for one row);
    the stream ends after a stop token or ``max_new_tokens`` tokens. Closing the iterator
    early removes the KV-caches too.
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
        images=images,
    ):
        yield int(token[0])
        if stop_tokens and int(token[0]) in stop_tokens:
            return


# How many tokens are generated between two checks that every row has stopped: each check
# waits for the device, so checking every token would serialise a GPU's work per token.
_STOP_CHECK_EVERY = 8
# The KV-cache length is rounded up to a multiple of this, so a compiled decode step sees few
# distinct shapes across calls with different prompt lengths.
_CACHE_ROUNDING = 64


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
    seeds: Sequence[int] | None = None,
    logprob_temperature: float = 1.0,
    compile: bool = False,
    stop_together: Callable[[bool], bool] | None = None,
    images: Mapping[str, torch.Tensor] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(tokens [b], logprobs [b])`` for each new position: one prefill pass over the
    prompts, then one decode step per token over a KV-cache sized once."""
    _check_sampling(max_new_tokens, temperature, top_k, top_p)
    _check_token_ids(prompts, stop_tokens or [], pad_id, model.config)
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"generate: {len(seeds)} seeds for {len(prompts)} prompts")
    device = model.output_weight().device
    tokens, input_pos = _left_pad(prompts, pad_id, device)
    needed = tokens.shape[1] + max_new_tokens
    if needed > model.config.max_seq_len:
        raise ValueError(
            f"generate: longest prompt ({tokens.shape[1]}) + max_new_tokens ({max_new_tokens}) = "
            f"{needed} exceeds the model's max_seq_len={model.config.max_seq_len}"
        )
    cache_len = min(-(-needed // _CACHE_ROUNDING) * _CACHE_ROUNDING, model.config.max_seq_len)
    sampler = _Sampler(temperature, top_k, top_p, seed, seeds, device)
    stop = torch.tensor(list(stop_tokens or []), dtype=torch.long, device=device)
    next_pos = torch.tensor([len(p) for p in prompts], device=device)  # [b]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    step_fn = torch.compile(model.decode_step, dynamic=False) if compile else model.decode_step
    model.setup_caches(len(prompts), cache_len)
    try:
        image_inputs = _left_padded_images(images, prompts, tokens.shape[1], device)
        logits = model(tokens, input_pos=input_pos, **image_inputs)[:, -1].float()  # prefill
        for step in range(max_new_tokens):
            token = sampler.pick(logits)
            logprob = torch.log_softmax(logits / logprob_temperature, -1).gather(-1, token[:, None])
            token = token.masked_fill(done, pad_id)
            yield token, logprob[:, 0].masked_fill(done, 0.0)
            done |= torch.isin(token, stop)
            if step == max_new_tokens - 1:
                return
            if len(stop) and (step + 1) % _STOP_CHECK_EVERY == 0:
                all_done = bool(done.all())
                if stop_together(all_done) if stop_together is not None else all_done:
                    return
            logits = step_fn(token[:, None], next_pos[:, None])[:, 0].float()
            next_pos += 1
    finally:
        model.remove_caches()


class _Sampler:
    """Picks one token per row: greedy, or sampled from one generator (``seed``) or from one
    generator per row (``seeds``)."""

    def __init__(self, temperature, top_k, top_p, seed, seeds, device) -> None:
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generator = None if seed is None else torch.Generator(device).manual_seed(seed)
        self.generators = (
            None if seeds is None else [torch.Generator(device).manual_seed(s) for s in seeds]
        )

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """``[b, vocab]`` fp32 logits -> ``[b]`` token ids."""
        if self.temperature == 0:
            return logits.argmax(-1)
        probs = _sampling_probs(logits, self.temperature, self.top_k, self.top_p)
        if self.generators is None:
            return torch.multinomial(probs, 1, generator=self.generator)[:, 0]
        rows = [torch.multinomial(p[None], 1, generator=g) for p, g in zip(probs, self.generators)]
        return torch.cat(rows)[:, 0]


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


IMAGE_KEYS = ("images", "aspect_ratio_ids", "aspect_ratio_mask", "image_mask")


def _left_padded_images(
    images: Mapping[str, torch.Tensor] | None,
    prompts: list[list[int]],
    longest: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """The image inputs on ``device``, ``image_mask`` moved to the left-padded positions."""
    if images is None:
        return {}
    missing = [k for k in IMAGE_KEYS if k not in images]
    if missing:
        raise ValueError(f"generate: images lacks {missing} (needs {list(IMAGE_KEYS)})")
    given = images["image_mask"]
    if given.shape[0] != len(prompts) or given.shape[1] < longest:
        raise ValueError(
            f"generate: image_mask {tuple(given.shape)} must be [{len(prompts)}, >= {longest}, "
            "images, tiles] for these prompts"
        )
    image_mask = torch.zeros_like(given[:, :longest])
    for row, prompt in enumerate(prompts):
        image_mask[row, longest - len(prompt) :] = given[row, : len(prompt)]
    out = {k: images[k].to(device) for k in IMAGE_KEYS[:3]}
    return {**out, "image_mask": image_mask.to(device)}


def _sampling_probs(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> torch.Tensor:
    """The distribution to sample from: ``logits`` at ``temperature``, top-k then top-p."""
    logits = logits / temperature
    if top_k is not None:
        kth_best = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None:
        logits = _top_p_filter(logits, top_p)
    return torch.softmax(logits, dim=-1)


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
    prompts: list[list[int]], stop_tokens: Sequence[int], pad_id: int, config: DecoderConfig
) -> None:
    # Prompts may hold tokens the model reads but never writes (an image token).
    readable, vocab_size = config.embedding_rows, config.vocab_size
    for row, prompt in enumerate(prompts):
        bad = [t for t in prompt if not 0 <= t < readable]
        if bad:
            raise ValueError(
                f"generate: prompt row {row} has token ids {bad[:5]} outside [0, {readable})"
            )
    for name, ids, limit in (("stop_tokens", list(stop_tokens), vocab_size),
                             ("pad_id", [pad_id], readable)):  # fmt: skip
        bad = [t for t in ids if not 0 <= t < limit]
        if bad:
            raise ValueError(f"generate: {name} {bad} outside the vocabulary [0, {limit})")


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
