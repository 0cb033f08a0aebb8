"""Key maps between Hugging Face and tt_models state-dict naming, as data.

A family is a ``KeyMap``: rename rules (HF pattern, tt pattern), tensors that HF stores fused
and tt stores split (split on load, concatenated on save), HF keys to drop on load, and the tt
tensor shapes as expressions over config.json keys (checked on load and save). Patterns use
``{i}``-style placeholders that match a decimal index (layer number). Adding a family such as
qwen2 or mistral is adding a ``KeyMap`` to ``FAMILIES`` (keyed by transformers' ``model_type``);
nothing imports tt_models.

Example::

    sd_tt = hf_to_tt(sd_hf, "llama")   # "model.layers.0.self_attn.q_proj.weight"
                                        #   -> "layers.0.attn.q_proj.weight"
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from tt_ckpt.errors import CheckpointError, ShapeMismatchError, UnknownFamilyError, UnknownKeyError

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class FusedTensor:
    """A tensor HF stores fused and tt stores as parts (e.g. Phi-3 ``qkv_proj``).

    ``sizes`` are config expressions (``"num_key_value_heads*head_dim"``) giving each part's
    length along ``dim``; ``None`` splits into equal parts.
    """

    hf: str
    tt: tuple[str, ...]
    sizes: tuple[str, ...] | None = None
    dim: int = 0


@dataclass(frozen=True)
class KeyMap:
    """Everything that differs between families when renaming a state dict."""

    family: str
    rules: tuple[tuple[str, str], ...]  # (HF pattern, tt pattern)
    fused: tuple[FusedTensor, ...] = ()
    ignored_hf: tuple[str, ...] = ()  # non-persistent buffers found in old checkpoints
    tt_shapes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (tt pattern, config expressions)
    naming: str = "Hugging Face"  # what the non-tt side is called in error messages
    # (HF pattern, tt pattern) of module names in a transformers model in memory, where they
    # differ from the files' (PEFT adapters name those modules); None: ``rules``.
    module_rules: tuple[tuple[str, str], ...] | None = None
    _compiled: dict = field(default_factory=dict, init=False, repr=False, compare=False)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = _PLACEHOLDER.split(pattern)
    # split() alternates literal text and placeholder names.
    regex = "".join(
        re.escape(part) if n % 2 == 0 else f"(?P<{part}>\\d+)" for n, part in enumerate(parts)
    )
    return re.compile(regex)


def _compiled(pattern: str, cache: dict) -> re.Pattern[str]:
    if pattern not in cache:
        cache[pattern] = _pattern_regex(pattern)
    return cache[pattern]


def _match(patterns: list[str] | tuple[str, ...], key: str, cache: dict):
    """Return (index, groups) of the first pattern that matches ``key`` entirely, or None."""
    for index, pattern in enumerate(patterns):
        found = _compiled(pattern, cache).fullmatch(key)
        if found:
            return index, found.groupdict()
    return None


def _linear(hf_module: str, tt_module: str, out: str, in_: str) -> tuple:
    """Rules and shapes of a linear layer's weight and optional bias."""
    rules = tuple((f"{hf_module}.{p}", f"{tt_module}.{p}") for p in ("weight", "bias"))
    shapes = ((f"{tt_module}.weight", (out, in_)), (f"{tt_module}.bias", (out,)))
    return rules, shapes


# (HF norm module, tt norm module) of each layer in Llama-like decoders.
_LLAMA_NORMS = (("input_layernorm", "attn_norm"), ("post_attention_layernorm", "mlp_norm"))
# Gemma 2 normalises each branch's input and output; its post_attention_layernorm is the
# attention *output* norm, not the MLP input norm it is in Llama.
_GEMMA2_NORMS = (
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "attn_post_norm"),
    ("pre_feedforward_layernorm", "mlp_norm"),
    ("post_feedforward_layernorm", "mlp_post_norm"),
)
_Q_OUT, _KV_OUT = "num_attention_heads*head_dim", "num_key_value_heads*head_dim"
_LINEARS = (
    ("q_proj", "self_attn", "attn", _Q_OUT, "hidden_size"),
    ("k_proj", "self_attn", "attn", _KV_OUT, "hidden_size"),
    ("v_proj", "self_attn", "attn", _KV_OUT, "hidden_size"),
    ("o_proj", "self_attn", "attn", "hidden_size", _Q_OUT),
    ("gate_proj", "mlp", "mlp", "intermediate_size", "hidden_size"),
    ("up_proj", "mlp", "mlp", "intermediate_size", "hidden_size"),
    ("down_proj", "mlp", "mlp", "hidden_size", "intermediate_size"),
)
# Qwen3 normalises each query/key head (weights of size head_dim).
_QK_NORMS = (("self_attn.q_norm", "attn.q_norm"), ("self_attn.k_norm", "attn.k_norm"))


def _decoder_tables(
    norms: tuple = _LLAMA_NORMS, head_norms: tuple = (), linears: tuple = _LINEARS
) -> tuple[tuple, tuple]:
    """Rules and shapes of a Llama-like decoder with these per-layer norms and linears."""
    rules = [
        ("model.embed_tokens.weight", "tok_embeddings.weight"),
        ("model.norm.weight", "norm.weight"),
        ("lm_head.weight", "output.weight"),
        # the head of *ForSequenceClassification models (reward and value models)
        ("score.weight", "score.weight"),
    ]
    shapes = [
        ("tok_embeddings.weight", ("vocab_size", "hidden_size")),
        ("output.weight", ("vocab_size", "hidden_size")),
        ("norm.weight", ("hidden_size",)),
    ]
    sized_norms = [(*n, "hidden_size") for n in norms] + [(*n, "head_dim") for n in head_norms]
    for hf_norm, tt_norm, size in sized_norms:
        rules.append((f"model.layers.{{i}}.{hf_norm}.weight", f"layers.{{i}}.{tt_norm}.weight"))
        shapes.append((f"layers.{{i}}.{tt_norm}.weight", (size,)))
    for name, hf_parent, tt_parent, out, in_, *tt_name in linears:
        tt = tt_name[0] if tt_name else name  # a 6th entry: the tt name, when it differs
        lin_rules, lin_shapes = _linear(
            f"model.layers.{{i}}.{hf_parent}.{name}", f"layers.{{i}}.{tt_parent}.{tt}", out, in_
        )
        rules += lin_rules
        shapes += lin_shapes
    return tuple(rules), tuple(shapes)


def _llama_like(family: str, **tables) -> KeyMap:
    rules, shapes = _decoder_tables(**tables)
    return KeyMap(family=family, rules=rules, ignored_hf=_ROTARY_BUFFERS, tt_shapes=shapes)


_ROTARY_BUFFERS = ("model.layers.{i}.self_attn.rotary_emb.inv_freq",)


def _moe_linears(block: str, names: dict[str, str], n_experts: str, width: str) -> tuple:
    """Attention, the router and each expert ``{e}`` of a mixture-of-experts decoder layer:
    ``block`` is the HF module holding them, ``names`` maps HF expert projections to tt's,
    ``n_experts``/``width`` the config.json keys of the expert count and expert width."""
    sizes = {"gate_proj": (width, "hidden_size"), "up_proj": (width, "hidden_size"),
             "down_proj": ("hidden_size", width)}  # fmt: skip
    experts = tuple(
        (hf, f"{block}.experts.{{e}}", "mlp.experts.{e}", *sizes[tt], tt)
        for hf, tt in names.items()
    )
    router = ("gate", block, "mlp", n_experts, "hidden_size", "router")
    return (*_LINEARS[:4], router, *experts)


_QWEN3_MOE_LINEARS = _moe_linears(
    "mlp", {p: p for p in ("gate_proj", "up_proj", "down_proj")}, "num_experts",
    "moe_intermediate_size",
)  # fmt: skip
# Qwen2-MoE: Qwen3-MoE's experts beside a shared expert and its sigmoid gate (one output).
_QWEN2_MOE_LINEARS = (
    *_QWEN3_MOE_LINEARS,
    *(
        (p, "mlp.shared_expert", "mlp.shared_expert", *shape)
        for p, shape in (
            ("gate_proj", ("shared_expert_intermediate_size", "hidden_size")),
            ("up_proj", ("shared_expert_intermediate_size", "hidden_size")),
            ("down_proj", ("hidden_size", "shared_expert_intermediate_size")),
        )
    ),
    ("shared_expert_gate", "mlp", "mlp", "1", "hidden_size", "shared_gate"),
)
# Mixtral's experts: w1 gates, w3 is the up projection, w2 the down projection.
_MIXTRAL_LINEARS = _moe_linears(
    "block_sparse_moe", {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"},
    "num_local_experts", "intermediate_size",
)  # fmt: skip
# Phi-3 stores q/k/v as one qkv_proj and gate/up as one gate_up_proj (gate first).
_PHI3_FUSED = (
    FusedTensor(
        hf="model.layers.{i}.self_attn.qkv_proj.weight",
        tt=tuple(f"layers.{{i}}.attn.{p}_proj.weight" for p in "qkv"),
        sizes=(_Q_OUT, _KV_OUT, _KV_OUT),
    ),
    FusedTensor(
        hf="model.layers.{i}.mlp.gate_up_proj.weight",
        tt=("layers.{i}.mlp.gate_proj.weight", "layers.{i}.mlp.up_proj.weight"),
    ),
)
_PHI3_RULES, _PHI3_SHAPES = _decoder_tables(
    linears=tuple(lin for lin in _LINEARS if lin[0] in ("o_proj", "down_proj"))
)
_, _ALL_LINEAR_SHAPES = _decoder_tables()


def _mllama_rules() -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """Llama 3.2 Vision (``MllamaForConditionalGeneration``): tt's ``decoder.*`` (cross-
    attention layers' keys under ``cross_attn``) and ``encoder.*`` (the image encoder and its
    projection), as the Hub's files name them (what transformers writes and tt saves), and as
    transformers 5 names them in memory (they load too; PEFT adapters use them)."""
    decoder_layer = [
        ("input_layernorm.weight", "attn_norm.weight"),
        ("post_attention_layernorm.weight", "mlp_norm.weight"),
        *((f"self_attn.{p}_proj.weight", f"attn.{p}_proj.weight") for p in "qkvo"),
        *((f"cross_attn.{p}_proj.weight", f"cross_attn.{p}_proj.weight") for p in "qkvo"),
        *((f"cross_attn.{p}_norm.weight", f"cross_attn.{p}_norm.weight") for p in "qk"),
        ("cross_attn_attn_gate", "attn_gate"),
        ("cross_attn_mlp_gate", "mlp_gate"),
        *((f"mlp.{p}_proj.weight", f"mlp.{p}_proj.weight") for p in ("gate", "up", "down")),
    ]
    encoder_layer = [
        *((f"input_layernorm.{w}", f"attn_norm.{w}") for w in ("weight", "bias")),
        *((f"post_attention_layernorm.{w}", f"mlp_norm.{w}") for w in ("weight", "bias")),
        *((f"self_attn.{p}_proj.weight", f"attn.{p}_proj.weight") for p in "qkvo"),
        *((f"mlp.fc{n}.{w}", f"mlp.fc{n}.{w}") for n in (1, 2) for w in ("weight", "bias")),
    ]
    encoder = [
        ("patch_embedding.weight", "patch_embedding.weight"),
        ("class_embedding", "class_embedding"),
        *((f"gated_positional_embedding.{p}", f"position_embedding.{p}")
          for p in ("gate", "embedding", "tile_embedding.weight")),
        *((f"{hf}_tile_positional_embedding.{p}", f"{hf}_tile_embedding.{p}")
          for hf in ("pre", "post") for p in ("gate", "embedding.weight")),
        *((f"layernorm_{hf}.{w}", f"{hf}_norm.{w}") for hf in ("pre", "post")
          for w in ("weight", "bias")),
        *((f"transformer.layers.{{i}}.{hf}", f"layers.{{i}}.{tt}") for hf, tt in encoder_layer),
        *((f"global_transformer.layers.{{i}}.{hf}", f"global_layers.{{i}}.{tt}")
          for hf, tt in encoder_layer),
        *((f"global_transformer.layers.{{i}}.gate_{hf}", f"global_layers.{{i}}.{tt}_gate")
          for hf, tt in (("attn", "attn"), ("ffn", "mlp"))),
    ]  # fmt: skip
    rules: dict[str, list[tuple[str, str]]] = {"files": [], "memory": []}
    for layout, text, vision, projector, head in (
        ("files", "language_model.model.", "vision_model.", "multi_modal_projector.",
         "language_model."),
        ("memory", "model.language_model.", "model.vision_model.", "model.multi_modal_projector.",
         ""),
    ):  # fmt: skip
        rules[layout] += [
            (f"{text}embed_tokens.weight", "decoder.tok_embeddings.weight"),
            (f"{text}norm.weight", "decoder.norm.weight"),
            (f"{head}lm_head.weight", "decoder.output.weight"),
            *(
                (f"{text}layers.{{i}}.{hf}", f"decoder.layers.{{i}}.{tt}")
                for hf, tt in decoder_layer
            ),
            *((f"{vision}{hf}", f"encoder.{tt}") for hf, tt in encoder),
            *((f"{projector}{w}", f"encoder.projection.{w}") for w in ("weight", "bias")),
        ]
    return tuple(rules["files"]), tuple(rules["memory"])


_MLLAMA_TEXT = ("text_config.intermediate_size", "text_config.hidden_size")
_MLLAMA_FILES, _MLLAMA_MEMORY = _mllama_rules()
MLLAMA = KeyMap(
    family="mllama",
    rules=_MLLAMA_FILES + _MLLAMA_MEMORY,
    module_rules=_MLLAMA_MEMORY,
    ignored_hf=("language_model.model.layers.{i}.self_attn.rotary_emb.inv_freq",),
    # only what every Hub config.json states (the 90B's leaves the rest to defaults)
    tt_shapes=(
        ("decoder.norm.weight", ("text_config.hidden_size",)),
        ("decoder.layers.{i}.mlp.gate_proj.weight", _MLLAMA_TEXT),
        ("decoder.layers.{i}.mlp.up_proj.weight", _MLLAMA_TEXT),
        ("decoder.layers.{i}.mlp.down_proj.weight", _MLLAMA_TEXT[::-1]),
    ),
)

LLAMA = _llama_like("llama")
PHI3 = KeyMap(
    family="phi3",
    rules=_PHI3_RULES,
    fused=_PHI3_FUSED,
    ignored_hf=_ROTARY_BUFFERS,
    # Shapes of the split parts are checked like any other tt tensor.
    tt_shapes=_ALL_LINEAR_SHAPES,
)

# One entry per transformers model_type, so that load_hf_checkpoint picks the map from
# config.json. Mistral, Qwen2 (q/k/v biases are covered by the bias rules) and Gemma share
# Llama's names.
FAMILIES: dict[str, KeyMap] = {
    "llama": LLAMA,
    "mistral": _llama_like("mistral"),
    "qwen2": _llama_like("qwen2"),
    "qwen3": _llama_like("qwen3", head_norms=_QK_NORMS),
    "gemma": _llama_like("gemma"),
    "gemma2": _llama_like("gemma2", norms=_GEMMA2_NORMS),
    "gemma3_text": _llama_like("gemma3_text", norms=_GEMMA2_NORMS, head_norms=_QK_NORMS),
    "qwen3_moe": _llama_like("qwen3_moe", head_norms=_QK_NORMS, linears=_QWEN3_MOE_LINEARS),
    "qwen2_moe": _llama_like("qwen2_moe", linears=_QWEN2_MOE_LINEARS),
    "mixtral": _llama_like("mixtral", linears=_MIXTRAL_LINEARS),
    "phi3": PHI3,
    "mllama": MLLAMA,
}


def get_keymap(family: str | KeyMap, *, source: str = "") -> KeyMap:
    """Return the ``KeyMap`` of a family name (a ``KeyMap`` is returned as is)."""
    if isinstance(family, KeyMap):
        return family
    if family not in FAMILIES:
        raise UnknownFamilyError(family, sorted(FAMILIES), source=source)
    return FAMILIES[family]


def _fill(pattern: str, groups: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: groups[m.group(1)], pattern)


# config.json keys that files spell either way (transformers 5 writes Qwen3-MoE's num_experts
# as num_local_experts; the Hub's files have num_experts).
CONFIG_ALIASES = {"num_experts": "num_local_experts"}


def config_value(config: Mapping, name: str) -> int:
    """Read one dimension from a config.json dict, deriving ``head_dim``/kv heads if absent.
    ``"text_config.hidden_size"`` reads a nested config (a vision model's)."""
    if "." in name:
        section, name = name.split(".", 1)
        nested = config.get(section)
        if not isinstance(nested, Mapping):
            raise CheckpointError(
                f"config has no {section!r} object, which is needed to read {name!r}."
            )
        return config_value(nested, name)
    if name == "head_dim" and config.get("head_dim") is None:
        return config_value(config, "hidden_size") // config_value(config, "num_attention_heads")
    if name == "num_key_value_heads" and config.get(name) is None:
        return config_value(config, "num_attention_heads")
    if name not in config and CONFIG_ALIASES.get(name) in config:
        return int(config[CONFIG_ALIASES[name]])
    if name not in config:
        raise CheckpointError(
            f"config has no {name!r}, which is needed to know tensor sizes; config keys: "
            f"{sorted(config)}."
        )
    return int(config[name])


def eval_size(expression: str, config: Mapping) -> int:
    """Evaluate ``"a*b*2"`` where each factor is an integer or a config key."""
    result = 1
    for factor in expression.split("*"):
        factor = factor.strip()
        result *= int(factor) if factor.isdigit() else config_value(config, factor)
    return result


def _split_sizes(
    spec: FusedTensor, tensor: torch.Tensor, config: Mapping | None, key: str, source: str | None
) -> list[int]:
    total = tensor.shape[spec.dim]
    if spec.sizes is None:
        if total % len(spec.tt):
            raise CheckpointError(
                f"fused tensor {key!r} has size {total} along dim {spec.dim}, which does not "
                f"split into {len(spec.tt)} equal parts {list(spec.tt)}."
            )
        return [total // len(spec.tt)] * len(spec.tt)
    if config is None:
        raise CheckpointError(
            f"splitting fused tensor {key!r} needs the model config (sizes {list(spec.sizes)}); "
            f"pass config=."
        )
    sizes = [eval_size(expr, config) for expr in spec.sizes]
    if sum(sizes) != total:
        raise ShapeMismatchError(
            key,
            tuple(tensor.shape),
            tuple(sum(sizes) if d == spec.dim else s for d, s in enumerate(tensor.shape)),
            source=source,
            reason=f"the config (parts {dict(zip(spec.sizes, sizes))})",
        )
    return sizes


def hf_to_tt(
    state_dict: Mapping[str, torch.Tensor],
    family: str | KeyMap = "llama",
    *,
    config: Mapping | None = None,
    source: str | None = None,
) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face state dict to tt naming, splitting fused tensors.

    ``config`` (config.json dict) is needed only to split unequal fused tensors; ``source``
    (the file name) is quoted in errors.
    """
    keymap = get_keymap(family)
    cache = keymap._compiled
    hf_patterns = [hf for hf, _ in keymap.rules]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if _match(keymap.ignored_hf, key, cache):
            continue
        fused = _match([spec.hf for spec in keymap.fused], key, cache)
        if fused:
            spec = keymap.fused[fused[0]]
            parts = torch.split(
                tensor, _split_sizes(spec, tensor, config, key, source), dim=spec.dim
            )
            out.update((_fill(p, fused[1]), t) for p, t in zip(spec.tt, parts))
            continue
        found = _match(hf_patterns, key, cache)
        if found is None:
            raise UnknownKeyError(key, family=keymap.family, naming=keymap.naming, source=source)
        out[_fill(keymap.rules[found[0]][1], found[1])] = tensor
    return out


def _fused_part(keymap: KeyMap, key: str):
    """Return (spec, part index, groups) if ``key`` is a part of a fused HF tensor."""
    for spec in keymap.fused:
        found = _match(spec.tt, key, keymap._compiled)
        if found:
            return spec, found[0], found[1]
    return None


def tt_to_hf(
    state_dict: Mapping[str, torch.Tensor],
    family: str | KeyMap = "llama",
) -> dict[str, torch.Tensor]:
    """Rename a tt state dict to Hugging Face naming, concatenating fused tensors."""
    keymap = get_keymap(family)
    tt_patterns = [tt for _, tt in keymap.rules]
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, tuple[FusedTensor, dict, dict[int, torch.Tensor]]] = {}
    for key, tensor in state_dict.items():
        part = _fused_part(keymap, key)
        if part:
            spec, index, names = part
            hf_key = _fill(spec.hf, names)
            out.setdefault(hf_key, tensor)  # placeholder keeps the key order
            groups.setdefault(hf_key, (spec, names, {}))[2][index] = tensor
            continue
        found = _match(tt_patterns, key, keymap._compiled)
        if found is None:
            raise UnknownKeyError(key, family=keymap.family, naming="tt")
        out[_fill(keymap.rules[found[0]][0], found[1])] = tensor
    for hf_key, (spec, names, parts) in groups.items():
        missing = [_fill(p, names) for n, p in enumerate(spec.tt) if n not in parts]
        if missing:
            raise CheckpointError(
                f"cannot build {hf_key!r} for family {keymap.family!r}: it fuses "
                f"{[_fill(p, names) for p in spec.tt]}, but {missing} are not in the state dict."
            )
        out[hf_key] = torch.cat([parts[n] for n in range(len(spec.tt))], dim=spec.dim)
    return out


def tt_module_to_hf(name: str, family: str | KeyMap = "llama") -> str:
    """Map a tt module name to the HF module name in a transformers model (in memory), e.g.
    for PEFT adapter target keys.

    ``tt_module_to_hf("layers.0.attn.q_proj", "llama") == "model.layers.0.self_attn.q_proj"``
    """
    keymap = get_keymap(family)
    weight_key = f"{name}.weight"
    part = _fused_part(keymap, weight_key)
    if part:
        raise CheckpointError(
            f"tt module {name!r} is part of the fused HF tensor {_fill(part[0].hf, part[2])!r} "
            f"in family {keymap.family!r}, so it has no HF module of its own to name: fused HF "
            f"modules cannot take per-projection adapters. Target modules that HF keeps "
            f"separate instead (in Phi-3: o_proj, down_proj)."
        )
    rules = keymap.module_rules or keymap.rules
    found = _match([tt for _, tt in rules], weight_key, keymap._compiled)
    if found is None:
        raise UnknownKeyError(name, family=keymap.family, naming="tt module")
    return _fill(rules[found[0]][0], found[1]).removesuffix(".weight")


def check_shapes(
    state_dict_tt: Mapping[str, torch.Tensor],
    config: Mapping,
    family: str | KeyMap = "llama",
    *,
    source: str | None = None,
) -> None:
    """Raise ``ShapeMismatchError`` for the first tt tensor whose shape the config contradicts."""
    keymap = get_keymap(family)
    patterns = [pattern for pattern, _ in keymap.tt_shapes]
    for key, tensor in state_dict_tt.items():
        found = _match(patterns, key, keymap._compiled)
        if found is None:
            continue
        expressions = keymap.tt_shapes[found[0]][1]
        expected = tuple(eval_size(expr, config) for expr in expressions)
        if tuple(tensor.shape) != expected:
            reason = f"the config ({' x '.join(expressions)})"
            raise ShapeMismatchError(
                key, tuple(tensor.shape), expected, source=source, reason=reason
            )
