"""Load a Hugging Face model directory into a tt model, and write one back.

This is the glue between tt_models (architecture) and tt_ckpt (files and key names): the
config.json picks the architecture, the weights are loaded without a random-init pass (the
model is built on the meta device and the checkpoint tensors are assigned), and saving writes
a directory ``transformers.AutoModelForCausalLM.from_pretrained`` loads.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tt_ckpt import load_hf_checkpoint, read_hf_config, save_hf_checkpoint
from tt_models import (
    TransformerDecoder,
    TransformerScorer,
    build_model,
    from_hf_config,
    to_hf_config,
)

SEQUENCE_CLASSIFICATION = "ForSequenceClassification"


def from_pretrained(
    checkpoint_dir: str | Path,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    files: list[str] | None = None,
) -> TransformerDecoder:
    """Build the model a HF directory describes and load its weights (eval mode).

    ``files`` names the weight files to read (default: discovered from the index or the
    ``*.safetensors`` / ``pytorch_model*.bin`` present).

    ``dtype`` defaults to the checkpoint's own (``dtype``/``torch_dtype`` in config.json,
    else fp32). A directory written by the ``quantize`` recipe comes back quantized.

    Example::

        model = from_pretrained("checkpoints/Llama-3.2-1B-Instruct", dtype="bf16")
    """
    config = read_hf_config(checkpoint_dir)
    dtype = resolve_dtype(dtype) or _checkpoint_dtype(config)
    from tt_recipes.quantization import CONFIG_FIELD, load_quantized

    if CONFIG_FIELD in config:  # written by the quantize recipe
        return load_quantized(checkpoint_dir, config, dtype, device)
    model = build_model(from_hf_config(config), device="meta", dtype=dtype)
    _, state_dict = load_hf_checkpoint(checkpoint_dir, dtype=dtype, device=device, files=files)
    load_weights(model, state_dict, source=str(checkpoint_dir))
    return model.eval()


def scorer_from_pretrained(
    checkpoint_dir: str | Path,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    *,
    new_head: bool = False,
) -> TransformerScorer:
    """A reward or value model from a HF directory (eval mode).

    A ``*ForSequenceClassification`` checkpoint (what ``tt run reward_model`` saves) comes back
    with its ``score`` head. With ``new_head`` a causal LM checkpoint also does: its decoder
    under a freshly initialised one-score head (the start of a reward model's training).

    Raises:
        ValueError: the checkpoint holds no score head and ``new_head`` is False.
    """
    config = read_hf_config(checkpoint_dir)
    dtype = resolve_dtype(dtype) or _checkpoint_dtype(config)
    has_head = any(a.endswith(SEQUENCE_CLASSIFICATION) for a in config.get("architectures") or [])
    if not has_head and not new_head:
        raise ValueError(
            f"{checkpoint_dir} holds no score head (config.json architectures "
            f"{config.get('architectures')}); a reward or value model needs a "
            f"*{SEQUENCE_CLASSIFICATION} checkpoint, which `tt run reward_model` writes"
        )
    decoder_config = from_hf_config({**config, "tie_word_embeddings": True})  # no LM head
    with torch.device("meta"):
        scorer = TransformerScorer(
            build_model(decoder_config, device="meta", dtype=dtype),
            num_labels=_num_labels(config) if has_head else 1,
        )
    _, state_dict = load_hf_checkpoint(checkpoint_dir, dtype=dtype, device=device)
    state_dict.pop("output.weight", None)
    score = state_dict.pop("score.weight", None)
    load_weights(scorer.decoder, state_dict, source=str(checkpoint_dir))
    if score is None:  # a new head, initialised as transformers does (std 0.02)
        score = torch.empty(scorer.num_labels, decoder_config.dim, dtype=dtype, device=device)
        torch.nn.init.normal_(score, std=0.02)
    scorer.score.weight = torch.nn.Parameter(score.to(device=device, dtype=dtype))
    return scorer.eval()


def _num_labels(config: dict) -> int:
    return config.get("num_labels") or len(config.get("id2label") or {0: 0})


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Assign checkpoint tensors to a (meta or materialised) model, naming missing/extra keys."""
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {source} does not fit the model built from its config.json: "
            f"missing tensors {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected tensors {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    still_meta = [name for name, t in model.state_dict().items() if t.is_meta]
    if still_meta:
        raise ValueError(f"checkpoint {source} left tensors uninitialised: {still_meta[:8]}")


def save_pretrained(
    model: TransformerDecoder,
    output_dir: str | Path,
    source_dir: str | Path | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    max_shard_size: int | str = "5GB",
    state_dict: dict[str, torch.Tensor] | None = None,
    config_updates: dict | None = None,
) -> Path:
    """Write ``model`` as a HF directory (config.json + safetensors, tokenizer files copied
    from ``source_dir``). ``state_dict`` overrides the model's own (e.g. a gathered FSDP one);
    ``config_updates`` are written into config.json last (e.g. the tokenizer's token ids).

    A ``TransformerScorer`` is written as transformers' ``*ForSequenceClassification`` of its
    family (``AutoModelForSequenceClassification`` loads it and gives the same scores)."""
    dtype = resolve_dtype(dtype) or next(model.parameters()).dtype
    config = to_hf_config(model.config, dtype=dtype)
    weights = state_dict if state_dict is not None else model.state_dict()
    if isinstance(model, TransformerScorer):
        config, weights = _as_sequence_classification(config, weights, model.num_labels)
    if source_dir is not None and (Path(source_dir) / "config.json").is_file():
        config = _keep_source_fields(config, read_hf_config(source_dir))
    # a vision model's token ids belong to its text decoder's config
    config.get("text_config", config).update(config_updates or {})
    return save_hf_checkpoint(
        weights,
        config,
        output_dir,
        source_dir=source_dir,
        dtype=dtype,
        max_shard_size=max_shard_size,
    )


def _keep_source_fields(config: dict, source: dict) -> dict:
    """``config`` over the source's config.json, whose fields tt does not model (token ids,
    architectures' extras) are kept; a nested ``text_config`` is merged the same way."""
    known = {k: v for k, v in config.items() if v is not None}  # None: tt does not know it
    merged = {**source, **known}
    if isinstance(config.get("text_config"), dict) and isinstance(source.get("text_config"), dict):
        merged["text_config"] = _keep_source_fields(config["text_config"], source["text_config"])
    return merged


def _as_sequence_classification(
    config: dict, weights: dict[str, torch.Tensor], num_labels: int
) -> tuple[dict, dict[str, torch.Tensor]]:
    architecture = config["architectures"][0].replace("ForCausalLM", SEQUENCE_CLASSIFICATION)
    config = {
        **config,
        "architectures": [architecture],
        "num_labels": num_labels,
        "id2label": {str(i): f"LABEL_{i}" for i in range(num_labels)},
        "label2id": {f"LABEL_{i}": i for i in range(num_labels)},
        "tie_word_embeddings": False,
    }
    decoder = {
        k.removeprefix("decoder."): v for k, v in weights.items() if k.startswith("decoder.")
    }
    decoder.pop("output.weight", None)
    return config, {**decoder, "score.weight": weights["score.weight"]}


_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``"bf16"``/``"fp32"``/``torch.bfloat16``/None -> torch dtype or None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}") from None


def _checkpoint_dtype(config: dict) -> torch.dtype:
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return resolve_dtype(name) if name in _DTYPES else torch.float32
