"""TTLM scores every kind of lm-eval request like lm-eval's own transformers backend (HFLM)
does on the same weights: log-likelihoods (with truncation and an empty context), rolling
log-likelihoods over several windows, and greedy generation with stop strings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import tt_models
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from tt_data.tokenizers import from_pretrained as load_tokenizer
from tt_recipes import from_pretrained, save_pretrained
from tt_recipes.assets import asset_path
from tt_recipes.evaluation import TTLM

WINDOW = 48
LONG = " ".join(f"{i} + {i + 1} = {2 * i + 1}." for i in range(40))  # several windows long


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = tt_models.transformer_decoder(
        vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128
    )
    out = tmp_path_factory.mktemp("tiny")
    save_pretrained(
        model,
        out,
        source_dir=asset_path("tiny_tokenizer"),
        config_updates={"eos_token_id": 2, "pad_token_id": 0},
    )
    return out


@pytest.fixture(scope="module")
def both(model_dir: Path) -> tuple[TTLM, HFLM]:
    ours = TTLM(
        from_pretrained(model_dir), load_tokenizer(model_dir), batch_size=3, max_seq_len=WINDOW
    )
    theirs = HFLM(pretrained=str(model_dir), batch_size=1, max_length=WINDOW, device="cpu")
    return ours, theirs


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_loglikelihoods_equal_hflm(both: tuple[TTLM, HFLM]) -> None:
    ours, theirs = both
    reqs = requests(
        "loglikelihood",
        [
            ("What is 3 + 4?", " 7"),
            ("What is 3 + 4? ", "7"),  # the trailing space moves to the continuation
            ("", "What is 12 + 1?"),  # empty context: conditioned on the prefix token
            (LONG, " 81."),  # longer than the window: only the last tokens are seen
            ("1 + 1 =", " 2. 2 + 2 = 4."),
        ],
    )
    got, want = ours.loglikelihood(reqs), theirs.loglikelihood(reqs)
    for (g, g_greedy), (w, w_greedy) in zip(got, want):
        assert g == pytest.approx(w, abs=1e-4) and g_greedy == w_greedy
    assert got[0] == got[1]  # the same split of the same text
    assert len({round(g, 3) for g, _ in got}) == len(got) - 1  # the others differ


def test_rolling_loglikelihoods_equal_hflm(both: tuple[TTLM, HFLM]) -> None:
    ours, theirs = both
    assert len(ours.tok_encode(LONG)) > 3 * WINDOW
    reqs = requests("loglikelihood_rolling", [(LONG,), ("What is 5 + 5? 10",)])
    for g, w in zip(ours.loglikelihood_rolling(reqs), theirs.loglikelihood_rolling(reqs)):
        assert g == pytest.approx(w, rel=1e-5)


def test_greedy_generation_equals_hflm(both: tuple[TTLM, HFLM]) -> None:
    ours, theirs = both
    settings = {"until": ["7"], "max_gen_toks": 12, "do_sample": False}
    reqs = requests(
        "generate_until",
        [("What is 3 + 4?", settings), ("1 + 2 =", settings), (LONG, dict(settings, until=[]))],
    )
    got, want = ours.generate_until(reqs), theirs.generate_until(reqs)
    assert got == want and any(got)


def test_chat_template_renders_with_the_tokenizer() -> None:
    tokenizer = load_tokenizer(asset_path("tiny_tokenizer"))
    lm = TTLM(tt_models.transformer_decoder(vocab_size=512, dim=32, n_layers=1, n_heads=2,
              hidden_dim=64), tokenizer, max_seq_len=64)  # fmt: skip
    text = lm.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}])
    assert text == "<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        TTLM(lm.model, tokenizer, batch_size=0)
