"""generate / generate_stream: greedy equals transformers, sampling is reproducible."""

from __future__ import annotations

import pytest
import torch
from tt_models import generate, generate_stream
from tt_models_testing import LLAMA3_ROPE, tiny_tt_model

PROMPTS = [[5, 17, 99, 3, 250, 8, 41], [77, 2, 11], [200]]


def _hf_greedy(hf, prompts, max_new_tokens, **kwargs) -> torch.Tensor:
    """transformers greedy generation of left-padded ``prompts``; returns only the new tokens."""
    longest = max(len(p) for p in prompts)
    input_ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    out = hf.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=0,
        **kwargs,
    )
    return out[:, longest:]


def test_greedy_matches_transformers_on_a_batch_of_different_lengths(llama_pair):
    hf, tt = llama_pair(rope_parameters=LLAMA3_ROPE)
    tokens, logprobs = generate(tt, PROMPTS, 12, temperature=0)
    assert torch.equal(tokens, _hf_greedy(hf, PROMPTS, 12))
    assert logprobs.shape == (3, 12) and bool((logprobs < 0).all())
    # Each row alone gives the same tokens as inside the padded batch.
    for row, prompt in enumerate(PROMPTS):
        alone, _ = generate(tt, [prompt], 12, temperature=0)
        assert torch.equal(alone[0], tokens[row])
    assert not tt.caches_are_enabled()


def test_stop_token_ends_rows_like_transformers_eos(llama_pair):
    hf, tt = llama_pair()
    free, _ = generate(tt, PROMPTS, 10, temperature=0)
    row0 = free[0].tolist()
    # The first step > 0 whose token row 0 has not produced before (other rows may produce it).
    step = next(i for i in range(1, 10) if row0[i] not in row0[:i])
    stop = row0[step]
    tokens, logprobs = generate(tt, PROMPTS, 10, temperature=0, stop_tokens=[stop], pad_id=0)
    assert torch.equal(tokens, _hf_greedy(hf, PROMPTS, 10, eos_token_id=stop))
    assert tokens[0, step] == stop and bool((tokens[0, step + 1 :] == 0).all())
    assert bool((logprobs[0, step + 1 :] == 0).all()) and logprobs[0, step] < 0
    assert torch.equal(tokens[0, :step], free[0, :step])


def test_logprobs_are_those_of_the_full_forward():
    model = tiny_tt_model()
    prompt = [3, 14, 15, 92, 65]
    tokens, logprobs = generate(model, [prompt], 6, temperature=0.8, seed=0)
    sequence = torch.tensor([prompt + tokens[0].tolist()])
    with torch.no_grad():
        all_logprobs = torch.log_softmax(model(sequence).float(), dim=-1)
    expected = all_logprobs[0, len(prompt) - 1 : -1].gather(-1, tokens[0][:, None])[:, 0]
    assert (logprobs[0] - expected).abs().max() <= 1e-5


def test_sampling_is_reproducible_with_a_seed():
    model = tiny_tt_model()
    first = generate(model, PROMPTS, 8, temperature=1.0, top_p=0.95, seed=123)
    second = generate(model, PROMPTS, 8, temperature=1.0, top_p=0.95, seed=123)
    other = generate(model, PROMPTS, 8, temperature=1.0, top_p=0.95, seed=7)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("kwargs", [dict(top_k=1), dict(top_p=1e-6)], ids=["top_k=1", "tiny_top_p"])
def test_filtering_down_to_one_token_equals_greedy(kwargs):
    model = tiny_tt_model()
    greedy, _ = generate(model, PROMPTS, 8, temperature=0)
    sampled, _ = generate(model, PROMPTS, 8, temperature=1.5, seed=0, **kwargs)
    assert torch.equal(sampled, greedy)


def test_top_k_restricts_the_choices():
    model = tiny_tt_model()
    prompt = [9, 8, 7]
    with torch.no_grad():
        top3 = set(model(torch.tensor([prompt]))[0, -1].topk(3).indices.tolist())
    # 30 copies of one prompt: 30 independent draws from the same filtered distribution.
    firsts, _ = generate(model, [prompt] * 30, 1, top_k=3, temperature=5.0, seed=0)
    assert set(firsts[:, 0].tolist()) <= top3 and len(set(firsts[:, 0].tolist())) > 1


def test_stream_yields_the_same_tokens_as_generate():
    model = tiny_tt_model()
    expected, _ = generate(model, [PROMPTS[0]], 9, temperature=0, stop_tokens=[1])
    streamed = list(generate_stream(model, torch.tensor(PROMPTS[0]), 9, temperature=0))
    assert streamed == expected[0].tolist()[: len(streamed)]
    stream = generate_stream(model, PROMPTS[1], 9, temperature=0)
    next(stream)
    assert model.caches_are_enabled()
    stream.close()
    assert not model.caches_are_enabled()


def test_tensor_prompt_is_an_unpadded_batch():
    model = tiny_tt_model()
    prompts = [[4, 5, 6], [7, 8, 9]]
    from_list, _ = generate(model, prompts, 5, temperature=0)
    from_tensor, _ = generate(model, torch.tensor(prompts), 5, temperature=0)
    assert torch.equal(from_list, from_tensor)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (([[1, 2]], 0), {}, "max_new_tokens=0 must be >= 1"),
        (([[1, 2]], 4), dict(temperature=-1.0), "temperature=-1.0 must be >= 0"),
        (([[1, 2]], 4), dict(top_k=0), "top_k=0 must be >= 1"),
        (([[1, 2]], 4), dict(top_p=1.5), r"top_p=1.5 must be in \(0, 1\]"),
        (([[1, 2], []], 4), {}, r"prompts at rows \[1\] are empty"),
        (([], 4), {}, "prompt_tokens is empty"),
        (([[1, 999]], 4), {}, r"prompt row 0 has token ids \[999\] outside \[0, 256\)"),
        (([[1]], 4), dict(stop_tokens=[300]), r"stop_tokens \[300\] outside the vocabulary"),
        (([[1]], 4), dict(pad_id=-1), r"pad_id \[-1\] outside the vocabulary"),
        (([[1] * 100], 40), {}, r"= 140 exceeds the model's max_seq_len=128"),
        (
            (torch.ones(3), 4),
            {},
            r"prompt tensor must hold integer ids of shape \[batch, seq_len\]",
        ),
    ],
)
def test_generate_rejects_bad_arguments(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_tt_model(), *args, **kwargs)


def test_per_row_seeds_draw_the_same_whatever_the_batch():
    """RL rollouts seed every completion by (step, prompt, sample): a row draws the same
    tokens alone, with other rows, or at another position of the batch."""
    model = tiny_tt_model()
    together, _ = generate(model, PROMPTS, 8, temperature=1.0, seeds=[11, 12, 13])
    for row, prompt in enumerate(PROMPTS):
        alone, _ = generate(model, [prompt], 8, temperature=1.0, seeds=[11 + row])
        assert torch.equal(alone[0], together[row])
    swapped, _ = generate(model, PROMPTS[::-1], 8, temperature=1.0, seeds=[13, 12, 11])
    assert torch.equal(swapped.flip(0), together)
    other, _ = generate(model, PROMPTS, 8, temperature=1.0, seeds=[11, 12, 99])
    assert torch.equal(other[:2], together[:2]) and not torch.equal(other[2], together[2])
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        generate(model, PROMPTS, 8, temperature=1.0, seeds=[1, 2])


def test_logprobs_at_the_sampling_temperature():
    model = tiny_tt_model()
    prompt = [3, 14, 15, 92, 65]
    tokens, logprobs = generate(
        model, [prompt], 6, temperature=0.7, seeds=[0], logprob_temperature=0.7
    )
    sequence = torch.tensor([prompt + tokens[0].tolist()])
    with torch.no_grad():
        tempered = torch.log_softmax(model(sequence).float() / 0.7, dim=-1)
    expected = tempered[0, len(prompt) - 1 : -1].gather(-1, tokens[0][:, None])[:, 0]
    assert (logprobs[0] - expected).abs().max() <= 1e-5


def test_every_process_stops_together():
    """Under FSDP each process must run as many forward passes as the others: generation
    goes on while stop_together says so, even when this process's rows have all stopped."""
    model = tiny_tt_model()
    free, _ = generate(model, [PROMPTS[0]], 20, temperature=0)
    stop = free[0, 1].item()
    asked = []
    alone, _ = generate(model, [PROMPTS[0]], 20, temperature=0, stop_tokens=[stop])
    kept_going, _ = generate(
        model, [PROMPTS[0]], 20, temperature=0, stop_tokens=[stop],
        stop_together=lambda done: asked.append(done) or False,
    )  # fmt: skip
    assert asked and all(asked)  # asked every few steps, always "all done here"
    assert torch.equal(kept_going, alone)  # the extra steps produced only trimmed padding


@pytest.mark.slow
def test_a_compiled_decode_step_gives_the_same_tokens():
    model = tiny_tt_model()
    eager, eager_lp = generate(model, PROMPTS, 10, temperature=0)
    compiled, compiled_lp = generate(model, PROMPTS, 10, temperature=0, compile=True)
    assert torch.equal(compiled, eager)
    torch.testing.assert_close(compiled_lp, eager_lp, atol=1e-5, rtol=0)
