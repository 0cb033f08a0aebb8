"""EleutherAI's lm-evaluation-harness on tt models: an lm-eval ``LM`` backed by a tt decoder.

``TTLM`` follows the conventions of lm-eval's own transformers backend (``HFLM``): contexts and
continuations are tokenized together and split (``TemplateLM``), an empty context is
conditioned on BOS (EOS when there is none), inputs longer than the model's window keep their
last tokens, and rolling log-likelihoods use lm-eval's disjoint windows. So a tt model and the
same weights loaded by ``HFLM`` score every request alike (tested).

    lm = TTLM(model, tokenizer, batch_size=8)
    results = lm_eval.simple_evaluate(model=lm, tasks=["hellaswag"])

lm-eval is an optional dependency: ``pip install 'tt-recipes[eval]'``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

try:
    from lm_eval import utils as lm_eval_utils
    from lm_eval.api.model import TemplateLM
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "evaluation needs EleutherAI's lm-evaluation-harness: pip install 'tt-recipes[eval]'"
    ) from e


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class TTLM(TemplateLM):
    """An lm-eval language model over a tt decoder and a tt_data tokenizer.

    Args:
        model: a ``tt_models`` decoder (or anything returning logits from token ids and having
            ``setup_caches`` for ``generate_until``); it is put in eval mode.
        tokenizer: a ``tt_data`` tokenizer.
        batch_size: requests scored per forward pass.
        max_seq_len: the longest input; defaults to the tokenizer's ``max_seq_len``, else the
            model's ``config.max_seq_len``.
        max_new_tokens: the generation limit when a task does not set ``max_gen_toks``.
        add_bos: prepend BOS to encoded text (default: when the tokenizer has one).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        batch_size: int = 8,
        max_seq_len: int | None = None,
        max_new_tokens: int = 256,
        add_bos: bool | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.tt_tokenizer = tokenizer
        self.batch_size = batch_size
        config_len = getattr(getattr(model, "config", None), "max_seq_len", None)
        self._max_length = max_seq_len or tokenizer.max_seq_len or config_len
        if not self._max_length:
            raise ValueError("max_seq_len is unknown: pass it (the tokenizer and model set none)")
        self.max_new_tokens = max_new_tokens
        self.add_bos = tokenizer.bos_id is not None if add_bos is None else add_bos
        self._device = next(model.parameters()).device

    # --- tokenization ------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tt_tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tt_tokenizer.bos_id
        return bos if bos is not None else self.tt_tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return type(self.tt_tokenizer).__name__

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
    ) -> list[int]:
        add_bos = self.add_bos if add_special_tokens is None else add_special_tokens
        add_bos = add_bos and self.tt_tokenizer.bos_id is not None
        return self.tt_tokenizer.encode(string, add_bos=add_bos, add_eos=False)

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        render = getattr(self.tt_tokenizer, "render", None)
        if render is None:
            raise ValueError(
                f"apply_chat_template needs a tokenizer with a chat template string (the "
                f"Hugging Face backend); {type(self.tt_tokenizer).__name__} has none"
            )
        from tt_data import Message

        messages = [Message(role=m["role"], content=m["content"]) for m in chat_history]
        return render(messages, add_generation_prompt=add_generation_prompt)

    # --- scoring -----------------------------------------------------------------------------

    @torch.no_grad()
    def _logprobs(self, rows: list[list[int]]) -> torch.Tensor:
        """Log-softmax over the vocabulary for right-padded rows: [b, longest, vocab] fp32."""
        width = max(len(r) for r in rows)
        tokens = torch.full((len(rows), width), self.tt_tokenizer.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = torch.tensor(row)
        logits = self.model(tokens.to(self._device))  # right padding: causal rows are unaffected
        return F.log_softmax(logits.float(), dim=-1).cpu()

    def _loglikelihood_tokens(
        self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False, **_
    ) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether greedy decoding gives it) per request."""
        results = []
        progress = tqdm(total=len(requests), desc="scoring", disable=disable_tqdm)
        for batch in _batches(requests, self.batch_size):
            # the last max_length tokens of context + continuation, minus the final one
            inputs = [(ctx + cont)[-(self.max_length + 1) :][:-1] for _, ctx, cont in batch]
            logprobs = self._logprobs(inputs)
            for row, (_, _, cont), inp in zip(logprobs, batch, inputs):
                scored = row[len(inp) - len(cont) : len(inp)]  # positions predicting cont
                target = torch.tensor(cont)
                total = scored.gather(1, target[:, None]).sum().item()
                results.append((total, bool((scored.argmax(-1) == target).all())))
            progress.update(len(batch))
        progress.close()
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts (perplexity tasks), in disjoint windows that each see
        up to ``max_length`` tokens of context."""
        results = []
        for (text,) in tqdm([r.args for r in requests], desc="rolling", disable=disable_tqdm):
            windows = map(
                lm_eval_utils.make_disjoint_window,
                lm_eval_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            )
            scores = self._loglikelihood_tokens(
                [(None, ctx, cont) for ctx, cont in windows], disable_tqdm=True
            )
            results.append(sum(score for score, _ in scores))
        return results

    # --- generation --------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, when the task asks) continuations, cut at the first stop string."""
        results: list[str] = []
        args = [r.args for r in requests]
        progress = tqdm(total=len(args), desc="generating", disable=disable_tqdm)
        start = 0
        while start < len(args):
            kwargs = args[start][1]
            end = start + 1  # a batch shares one set of generation settings
            while end < len(args) and end - start < self.batch_size and args[end][1] == kwargs:
                end += 1
            results += self._generate([context for context, _ in args[start:end]], kwargs)
            progress.update(end - start)
            start = end
        progress.close()
        return results

    def _generate(self, contexts: list[str], gen_kwargs: dict[str, Any]) -> list[str]:
        from tt_models import generate

        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = kwargs.pop("max_gen_toks", self.max_new_tokens)
        sample = kwargs.pop("do_sample", False)
        temperature = kwargs.pop("temperature", 1.0) if sample else 0.0
        keep = self.max_length - max_new  # room for the prompt in the model's window
        prompts = [self.tok_encode(c)[-keep:] for c in contexts]
        with torch.no_grad():
            tokens, _ = generate(
                self.model,
                prompts,
                max_new,
                temperature=temperature,
                top_k=kwargs.pop("top_k", None),
                top_p=kwargs.pop("top_p", None),
                stop_tokens=self.tt_tokenizer.stop_tokens,
                pad_id=self.tt_tokenizer.pad_id,
            )
        texts = []
        for row in tokens.tolist():
            stops = [i for i, t in enumerate(row) if t in self.tt_tokenizer.stop_tokens]
            text = self.tt_tokenizer.decode(row[: stops[0]] if stops else row)
            for stop in until:
                text = text.split(stop)[0] if stop else text
            texts.append(text)
        return texts
