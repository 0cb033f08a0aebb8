"""Cross-package proof: tt_recipes.from_pretrained / save_pretrained against transformers.

Every model here is a random-init tiny ``LlamaForCausalLM`` written by transformers itself, so
the tt stack (tt_ckpt key maps and files, tt_models architecture, tt_recipes glue) is checked
against the reference implementation, not against its own output.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tt_ckpt import (
    CorruptFileError,
    MissingFilesError,
    ShapeMismatchError,
    load_meta_checkpoint,
    meta_params_to_hf_config,
    save_meta_checkpoint,
)
from tt_models import apply_rope, build_model, from_hf_config, generate, padded_mask_and_positions
from tt_recipes import from_pretrained, save_pretrained

VOCAB = 256
FP32_TOL = 1e-4
# bf16 keeps 8 bits of mantissa: against fp32 logits of magnitude ~3 here, a bf16 model
# (tt's and transformers' own alike) is off by ~0.02 on average and up to ~0.25 at worst.
# A wrong weight mapping moves logits by several units (test_tolerances_are_meaningful).
BF16_MAX_TOL = 0.3
BF16_MEAN_TOL = 0.03

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10_000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # Small, so that the scaled band covers frequencies the short test sequences exercise.
    "original_max_position_embeddings": 16,
}

# name -> (LlamaConfig overrides, save_pretrained kwargs)
VARIANTS = {
    "gqa-untied-single": ({}, {}),
    "gqa-tied-llama3-bias-sharded": (
        {"tie_word_embeddings": True, "attention_bias": True, "rope_parameters": LLAMA3_ROPE},
        {"max_shard_size": "40KB"},
    ),
    "mha-untied-llama3-bin": (
        {"num_key_value_heads": 4, "rope_parameters": LLAMA3_ROPE, "rms_norm_eps": 1e-5},
        {"safe_serialization": False},
    ),
}


def tiny_llama(seed: int = 0, **overrides) -> transformers.LlamaForCausalLM:
    """A 2-layer GQA Llama with weights large enough that logits are O(1)."""
    fields = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        **overrides,
    }
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields))
    with torch.no_grad():
        # HF's init (std 0.02, unit norms) makes logits tiny and hides swapped norm weights.
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.15)
    return model.eval()


def write_tokenizer(directory: Path) -> None:
    """Train a small BPE and save it as a transformers fast tokenizer in ``directory``."""
    text = " ".join(
        f"the model {w} reads token {i} and writes" for i, w in enumerate("abcdef" * 40)
    )
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    tokenizer.train_from_iterator([text], trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(directory)


@pytest.fixture(scope="module", params=list(VARIANTS))
def hf_checkpoint(request, tmp_path_factory) -> tuple[transformers.LlamaForCausalLM, Path]:
    overrides, save_kwargs = VARIANTS[request.param]
    model = tiny_llama(**overrides)
    directory = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(directory, **save_kwargs)
    return model, directory


@pytest.fixture(scope="module")
def untied_checkpoint(tmp_path_factory) -> tuple[transformers.LlamaForCausalLM, Path]:
    model = tiny_llama(seed=1, rope_parameters=LLAMA3_ROPE)
    directory = tmp_path_factory.mktemp("untied")
    model.save_pretrained(directory)
    write_tokenizer(directory)
    return model, directory


def random_tokens(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, seq), generator=generator)


def hf_logits(model: transformers.PreTrainedModel, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens).logits


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def mean_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


def assert_bf16_close(logits: torch.Tensor, reference: torch.Tensor) -> None:
    assert max_diff(logits, reference) <= BF16_MAX_TOL
    assert mean_diff(logits, reference) <= BF16_MEAN_TOL


# --- HF directory -> tt ----------------------------------------------------------------------


def test_from_pretrained_logits_match_transformers(hf_checkpoint):
    hf_model, directory = hf_checkpoint
    model = from_pretrained(directory)
    tokens = random_tokens(3, 40)
    with torch.no_grad():
        logits = model(tokens)
    assert logits.dtype == torch.float32
    assert logits.shape == (3, 40, VOCAB)
    assert max_diff(logits, hf_logits(hf_model, tokens)) <= FP32_TOL


def test_transformers_4_config_form_loads_the_same(untied_checkpoint, tmp_path):
    """Older config.json files spell RoPE as rope_theta + rope_scaling and dtype as torch_dtype."""
    hf_model, source = untied_checkpoint
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    config = json.loads((source / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    rope["type"] = rope.pop("rope_type")  # the pre-4.45 key name
    config["rope_scaling"] = rope
    config["torch_dtype"] = config.pop("dtype")
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = from_pretrained(tmp_path)
    tokens = random_tokens(2, 40, seed=7)
    with torch.no_grad():
        assert max_diff(model(tokens), hf_logits(hf_model, tokens)) <= FP32_TOL


def test_sharded_and_bin_fixtures_are_what_they_claim(hf_checkpoint):
    # Guards the parametrisation: each variant really exercises its file format.
    hf_model, directory = hf_checkpoint
    names = {p.name for p in directory.iterdir()}
    if "model.safetensors.index.json" in names:
        assert len([n for n in names if n.endswith(".safetensors")]) > 1
    else:
        assert names & {"model.safetensors", "pytorch_model.bin"}
    tied = hf_model.config.tie_word_embeddings
    assert (from_pretrained(directory).output is None) == tied


def test_left_padded_batch_matches_each_row_alone(hf_checkpoint):
    """A left-padded batch through tt gives, at real tokens, transformers' unpadded logits."""
    hf_model, directory = hf_checkpoint
    model = from_pretrained(directory)
    lengths = [24, 17, 5]
    rows = [random_tokens(1, n, seed=i)[0] for i, n in enumerate(lengths)]
    longest = max(lengths)
    tokens = torch.zeros(len(rows), longest, dtype=torch.long)
    real = torch.zeros(len(rows), longest, dtype=torch.bool)
    for i, row in enumerate(rows):
        tokens[i, longest - len(row) :] = row
        real[i, longest - len(row) :] = True
    mask, input_pos = padded_mask_and_positions(real)
    with torch.no_grad():
        logits = model(tokens, mask=mask, input_pos=input_pos)
    for i, row in enumerate(rows):
        expected = hf_logits(hf_model, row[None])[0]
        assert max_diff(logits[i, longest - len(row) :], expected) <= FP32_TOL


def test_greedy_generate_matches_transformers(untied_checkpoint):
    hf_model, directory = untied_checkpoint
    model = from_pretrained(directory)
    prompts = [random_tokens(1, n, seed=10 + n)[0].tolist() for n in (9, 4, 13)]
    new_tokens = 12
    tokens, logprobs = generate(model, prompts, new_tokens, temperature=0)
    assert tokens.shape == (3, new_tokens)
    for i, prompt in enumerate(prompts):
        expected = hf_model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,  # no early stop on eos: tt gets no stop_tokens either
            pad_token_id=0,
        )[0, len(prompt) :]
        assert tokens[i].tolist() == expected.tolist()
    # Greedy picks the argmax, so its log-probability is the row's largest: <= 0 and finite.
    assert torch.isfinite(logprobs).all() and (logprobs <= 0).all()


def test_bf16_load_gives_bf16_params_and_close_logits(untied_checkpoint):
    hf_model, directory = untied_checkpoint
    model = from_pretrained(directory, dtype="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    tokens = random_tokens(2, 32)
    with torch.no_grad():
        logits = model(tokens)
    assert logits.dtype == torch.bfloat16
    reference = hf_logits(hf_model, tokens)
    assert reference.abs().max() > 1.0  # the tolerances are meaningful at this scale
    assert_bf16_close(logits, reference)
    # No less accurate than transformers' own bf16 model (+25% slack for rounding luck).
    hf_bf16 = hf_logits(copy.deepcopy(hf_model).to(torch.bfloat16), tokens)
    assert mean_diff(logits, reference) <= 1.25 * mean_diff(hf_bf16, reference)


def test_dtype_argument_accepts_torch_dtype_and_rejects_unknown_names(untied_checkpoint):
    _, directory = untied_checkpoint
    model = from_pretrained(directory, dtype=torch.bfloat16)
    assert model.tok_embeddings.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"dtype 'fp8' is not one of .*'bf16'"):
        from_pretrained(directory, dtype="fp8")


# --- tt -> HF directory ------------------------------------------------------------------------


def test_save_pretrained_round_trips_through_transformers(untied_checkpoint, tmp_path):
    hf_model, source = untied_checkpoint
    model = from_pretrained(source)
    out = save_pretrained(model, tmp_path / "out", source_dir=source, max_shard_size="50KB")

    names = {p.name for p in out.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json"} <= names
    assert len([n for n in names if n.endswith(".safetensors")]) > 1
    assert (out / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    saved_config = json.loads((out / "config.json").read_text())
    assert saved_config["rope_parameters"]["rope_type"] == "llama3"
    assert saved_config["eos_token_id"] == 2  # kept from the source config.json

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = random_tokens(2, 30, seed=3)
    with torch.no_grad():
        tt_logits = model(tokens)
    assert max_diff(hf_logits(reloaded, tokens), tt_logits) <= FP32_TOL
    assert max_diff(hf_logits(reloaded, tokens), hf_logits(hf_model, tokens)) <= FP32_TOL

    text = "the model reads token 7"
    source_tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    out_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert out_tokenizer(text)["input_ids"] == source_tokenizer(text)["input_ids"]


def test_save_pretrained_tied_bf16_writes_no_lm_head(tmp_path):
    hf_model = tiny_llama(seed=2, tie_word_embeddings=True, attention_bias=True)
    hf_model.save_pretrained(tmp_path / "src")
    model = from_pretrained(tmp_path / "src")
    out = save_pretrained(model, tmp_path / "out", dtype="bf16")

    tensors = load_file(out / "model.safetensors")
    assert "lm_head.weight" not in tensors
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    # With no dtype given, from_pretrained keeps the checkpoint's own.
    assert from_pretrained(out).tok_embeddings.weight.dtype == torch.bfloat16
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens = random_tokens(2, 20)
    # Written in bf16, so compare with the fp32 source at bf16 accuracy.
    assert_bf16_close(hf_logits(reloaded, tokens), hf_logits(hf_model, tokens))


# --- Meta format -----------------------------------------------------------------------------

META_PARAMS = {
    "dim": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "vocab_size": VOCAB,
    "multiple_of": 64,  # 2/3 * 4 * 64 = 170 -> 192, unused: the MLP width is read from weights
    "norm_eps": 1e-6,
    "rope_theta": 10_000.0,
}


def test_meta_checkpoint_round_trip_gives_equal_logits(tmp_path):
    hf_model = tiny_llama(seed=4)
    hf_model.save_pretrained(tmp_path / "hf")
    model = from_pretrained(tmp_path / "hf")
    save_meta_checkpoint(model.state_dict(), META_PARAMS, tmp_path / "meta")

    params, state_dict = load_meta_checkpoint(tmp_path / "meta")
    assert params == META_PARAMS
    config = meta_params_to_hf_config(params, state_dict)
    assert config["intermediate_size"] == 128 and not config["tie_word_embeddings"]
    loaded = build_model(from_hf_config(config), device="meta")
    loaded.load_state_dict(state_dict, strict=True, assign=True)
    tokens = random_tokens(2, 24)
    with torch.no_grad():
        assert max_diff(loaded(tokens), hf_logits(hf_model, tokens)) <= FP32_TOL


def from_pretrained_tiny(tmp_path: Path) -> torch.nn.Module:
    tiny_llama(seed=5).save_pretrained(tmp_path / "hf")
    return from_pretrained(tmp_path / "hf")


def interleaved_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Meta's RoPE: rotate consecutive pairs (x0, x1), (x2, x3) ... as complex numbers.

    x: [s, n_heads, head_dim]; an independent reference for the layout in consolidated.*.pth.
    """
    head_dim = x.shape[-1]
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    rotation = torch.polar(torch.ones(len(positions), head_dim // 2), positions[:, None] * freqs)
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], head_dim // 2, 2))
    return torch.view_as_real(pairs * rotation[:, None]).flatten(-2)


def test_meta_file_holds_q_k_in_metas_interleaved_layout(tmp_path):
    """Attention scores from the saved wq/wk with Meta's RoPE equal tt's with rotate-half."""
    model = from_pretrained_tiny(tmp_path)
    save_meta_checkpoint(model.state_dict(), META_PARAMS, tmp_path / "meta")
    meta = torch.load(tmp_path / "meta" / "consolidated.00.pth", weights_only=True)
    torch.manual_seed(0)
    x = torch.randn(10, META_PARAMS["dim"])  # [s, dim], stands in for a normed hidden state
    positions = torch.arange(10).float()
    head_dim = META_PARAMS["dim"] // META_PARAMS["n_heads"]

    def scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        k = k.repeat_interleave(META_PARAMS["n_heads"] // META_PARAMS["n_kv_heads"], dim=1)
        return torch.einsum("qhd,khd->hqk", q, k)

    q_meta = (x @ meta["layers.0.attention.wq.weight"].T).reshape(10, -1, head_dim)
    k_meta = (x @ meta["layers.0.attention.wk.weight"].T).reshape(10, -1, head_dim)
    expected = scores(*(interleaved_rope(t, positions, 10_000.0) for t in (q_meta, k_meta)))

    attn = model.layers[0].attn
    cos, sin = model.rope(torch.arange(10)[None])
    q_tt = (x @ attn.q_proj.weight.T).reshape(1, 10, -1, head_dim).transpose(1, 2)
    k_tt = (x @ attn.k_proj.weight.T).reshape(1, 10, -1, head_dim).transpose(1, 2)
    q_tt, k_tt = (apply_rope(t, cos, sin)[0].transpose(0, 1) for t in (q_tt, k_tt))
    assert torch.allclose(scores(q_tt, k_tt), expected, atol=1e-4)


# --- errors through the glue -------------------------------------------------------------------


def test_directory_without_config_json_names_directory_and_contents(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(MissingFilesError) as error:
        from_pretrained(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message
    assert "config.json" in message
    assert "model.safetensors" in message  # what the directory holds instead


def test_truncated_safetensors_names_the_file(tmp_path):
    tiny_llama().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="truncated or corrupt") as error:
        from_pretrained(tmp_path)
    assert str(weights) in str(error.value)


def test_wrong_shape_tensor_names_file_and_tensor(tmp_path):
    tiny_llama().save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    key = "model.layers.1.self_attn.k_proj.weight"
    shard = tmp_path / index["weight_map"][key]
    tensors = load_file(shard)
    tensors[key] = tensors[key][:16]  # 1 key/value head's rows instead of 2
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(ShapeMismatchError) as error:
        from_pretrained(tmp_path)
    message = str(error.value)
    assert str(shard) in message
    assert "k_proj" in message and "layers.1" in message
    assert "[16, 64]" in message and "[32, 64]" in message


def test_missing_tensor_is_named(tmp_path):
    tiny_llama().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    tensors = load_file(weights)
    del tensors["model.layers.0.mlp.up_proj.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    # The glue raises ValueError here (not a tt_ckpt CheckpointError): tt_ckpt does not check
    # completeness, the model's load_state_dict does.
    with pytest.raises(
        ValueError, match=r"missing tensors \['layers\.0\.mlp\.up_proj\.weight'\]"
    ) as error:
        from_pretrained(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_tolerances_are_meaningful():
    # A wrong mapping (e.g. swapped norms) must move logits far beyond the bf16 tolerance.
    base, other = tiny_llama(seed=0), tiny_llama(seed=0)
    with torch.no_grad():
        layer = other.model.layers[0]
        weight = layer.input_layernorm.weight.clone()
        layer.input_layernorm.weight.copy_(layer.post_attention_layernorm.weight)
        layer.post_attention_layernorm.weight.copy_(weight)
    tokens = random_tokens(2, 16)
    assert max_diff(hf_logits(base, tokens), hf_logits(other, tokens)) > 10 * BF16_MAX_TOL
