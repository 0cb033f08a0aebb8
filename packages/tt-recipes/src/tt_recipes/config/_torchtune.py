"""Reading torchtune configs: their components, keys and layouts rewritten into tt's form.

A config is read as torchtune's when any ``_component_`` in it names ``torchtune.*``. Each
torchtune construct becomes the tt one that does the same thing, and :func:`from_torchtune`
says what it rewrote (``tt validate`` prints it). A torchtune key or component whose meaning
tt does not have is an error that says so; nothing is dropped silently. The tables below are
the one place these names live; each entry is tested.

Runs before anything heavy is imported (no torch): names and values only.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tt_recipes.config._components import COMPONENT_KEY
from tt_recipes.config._errors import ConfigError

PREFIX = "torchtune."
# Llama 3.2 Vision: the transform that is its tokenizer and image tiling, the collator tt
# needs no config for, and the datasets tt has.
VISION_TRANSFORM = "torchtune.models.llama3_2_vision.llama3_2_vision_transform"
VISION_COLLATE = "torchtune.data.padded_collate_tiled_images_and_mask"
VISION_DATASETS = {"torchtune.datasets.multimodal.the_cauldron_dataset": "tt_data.the_cauldron"}
VISION_TILES = 4  # max_num_tiles of both Llama 3.2 Vision models
# A vision builder's *_trainable argument -> (tt's freeze name, torchtune's default in a full
# builder, in a LoRA builder); the fusion part always trains in tt.
VISION_PARTS = {
    "decoder_trainable": ("decoder", False, "frozen"),
    "encoder_trainable": ("encoder", True, "lora"),
    "fusion_trainable": ("fusion", True, "lora"),
}

# torchtune component -> (tt component, {torchtune argument: tt argument}). Arguments not in
# the map keep their names (tt's builders take torchtune's argument names where they mean
# the same); the signature check then catches any tt does not take.
COMPONENTS: dict[str, tuple[str, dict[str, str]]] = {
    # datasets
    "torchtune.datasets.alpaca_dataset": ("tt_data.alpaca", {}),
    "torchtune.datasets.alpaca_cleaned_dataset": ("tt_data.alpaca_cleaned", {}),
    "torchtune.datasets.slimorca_dataset": ("tt_data.slimorca", {}),
    "torchtune.datasets.samsum_dataset": ("tt_data.samsum", {}),
    "torchtune.datasets.grammar_dataset": ("tt_data.grammar", {}),
    "torchtune.datasets.stack_exchange_paired_dataset": ("tt_data.stack_exchange_paired", {}),
    "torchtune.datasets.hh_rlhf_helpful_dataset": ("tt_data.hh_rlhf_helpful", {}),
    "torchtune.datasets.wikitext_dataset": ("tt_data.wikitext", {}),
    "torchtune.datasets.cnn_dailymail_articles_dataset": ("tt_data.cnn_dailymail", {}),
    "torchtune.datasets.instruct_dataset": ("tt_data.instruct_dataset", {}),
    "torchtune.datasets.chat_dataset": ("tt_data.chat_dataset", {}),
    "torchtune.datasets.preference_dataset": ("tt_data.preference_dataset", {}),
    "torchtune.datasets.text_completion_dataset": ("tt_data.text_completion_dataset", {}),
    # training pieces
    "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup": (
        "tt_recipes.lr_schedulers.cosine_with_warmup",
        {},
    ),
    "torchtune.training.metric_logging.DiskLogger": ("tt_recipes.metric_logging.DiskLogger", {}),
    "torchtune.training.metric_logging.StdoutLogger": (
        "tt_recipes.metric_logging.StdoutLogger",
        {},
    ),
    "torchtune.training.metric_logging.WandBLogger": ("tt_recipes.metric_logging.WandBLogger", {}),
    "torchtune.training.metric_logging.MLFlowLogger": (
        "tt_recipes.metric_logging.MLflowLogger",
        {},
    ),
    # torchtune drops log_dir for Comet; it is where an offline experiment's archive goes
    "torchtune.training.metric_logging.CometLogger": (
        "tt_recipes.metric_logging.CometLogger",
        {"log_dir": "offline_directory"},
    ),
    "torchtune.training.metric_logging.TensorBoardLogger": (
        "tt_recipes.metric_logging.TensorBoardLogger",
        {},
    ),
    "torchtune.modules.loss.CEWithChunkedOutputLoss": (
        "tt_recipes.losses.ChunkedCrossEntropy",
        {"num_output_chunks": "num_chunks"},
    ),
    "torchtune.rlhf.loss.DPOLoss": ("tt_recipes.losses.DPOLoss", {}),
    "torchtune.rlhf.loss.PPOLoss": ("tt_recipes.rl.losses.PPOLoss", {}),
}

# torchtune datasets built on chat conversations: their train_on_input is tt's
# masking_strategy (the instruction-style builders take train_on_input as torchtune does).
CHAT_DATASETS = (
    "torchtune.datasets.chat_dataset",
    "torchtune.datasets.slimorca_dataset",
    "torchtune.datasets.preference_dataset",
    "torchtune.datasets.stack_exchange_paired_dataset",
    "torchtune.datasets.hh_rlhf_helpful_dataset",
)
# torchtune builder defaults that differ from tt's: set when the config leaves them out.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "torchtune.datasets.alpaca_dataset": {"train_on_input": True},
    "torchtune.datasets.alpaca_cleaned_dataset": {"train_on_input": True},
}
# torchtune's samsum and grammar builders format nothing: a prompt template comes from the
# tokenizer's prompt_template, if any. tt's builders hold their template themselves.
UNTEMPLATED_DATASETS = (
    "torchtune.datasets.samsum_dataset",
    "torchtune.datasets.grammar_dataset",
)
# chat_dataset's conversation_style -> the column tt's conversation transform reads.
CONVERSATION_COLUMNS = {"sharegpt": "conversations", "openai": "messages"}

# torchtune's quantizers -> tt's torchao scheme, with the arguments fixed by the class.
QUANTIZERS: dict[str, dict[str, Any]] = {
    "torchtune.training.quantization.Int8DynActInt4WeightQATQuantizer": {
        "bits": 4,
        "int8_activations": True,
    },
    "torchtune.training.quantization.Int8DynActInt4WeightQuantizer": {
        "bits": 4,
        "int8_activations": True,
    },
}
QUANTIZER_COMPONENT = "tt_recipes.quantization.intx_weight_config"

# Tokenizer builders, by the argument that holds their file: tt's from_pretrained picks the
# backend from the file (SentencePiece, Meta's tiktoken ranks) or from the directory of a
# Hugging Face tokenizer's vocab.json.
TOKENIZERS: dict[str, str] = {
    "torchtune.models.llama2.llama2_tokenizer": "path",
    "torchtune.models.llama3.llama3_tokenizer": "path",
    "torchtune.models.mistral.mistral_tokenizer": "path",
    "torchtune.models.gemma.gemma_tokenizer": "path",
    "torchtune.models.phi3.phi3_mini_tokenizer": "path",
    "torchtune.models.qwen2.qwen2_tokenizer": "path",
    "torchtune.models.qwen2_5.qwen2_5_tokenizer": "path",
    "torchtune.models.phi4.phi4_tokenizer": "vocab_path",
}
# Tokenizer arguments that name the second file of a vocab.json + merges.txt pair: tt reads
# the directory's tokenizer.json, which holds both.
TOKENIZER_SIBLING_FILES = ("merges_file", "merges_path")
TOKENIZER_COMPONENT = "tt_data.tokenizers.from_pretrained"
# What tt's tokenizer needs to give the ids torchtune's gives, beyond the file.
TORCHTUNE_QWEN2 = {"chat_format": "torchtune_qwen2", "eos_token": "<|im_end|>"}
TOKENIZER_OPTIONS: dict[str, dict[str, Any]] = {
    "torchtune.models.llama3.llama3_tokenizer": {"append_end_of_text": True},
    "torchtune.models.qwen2.qwen2_tokenizer": TORCHTUNE_QWEN2,
    "torchtune.models.qwen2_5.qwen2_5_tokenizer": TORCHTUNE_QWEN2,
    "torchtune.models.phi3.phi3_mini_tokenizer": {"chat_format": "torchtune_phi3"},
}
# SentencePiece tokenizers: torchtune's default prompt_template of each, and the tt chat_format
# that lays turns out as torchtune does with a template (None: no template).
SENTENCEPIECE_TEMPLATES: dict[str, str | None] = {
    "torchtune.models.llama2.llama2_tokenizer": "torchtune.models.llama2.Llama2ChatTemplate",
    "torchtune.models.mistral.mistral_tokenizer": "torchtune.models.mistral.MistralChatTemplate",
    "torchtune.models.gemma.gemma_tokenizer": None,
}
CHAT_FORMATS: dict[str | None, str] = {
    None: "torchtune_plain",
    "torchtune.models.llama2.Llama2ChatTemplate": "torchtune_llama2",
    "torchtune.models.mistral.MistralChatTemplate": "torchtune_mistral",
}
# torchtune's tag templates ({role: (text before, text after)}), which tt's tokenizers apply
# as torchtune does when laying out turns as torchtune does (every tokenizer but Phi-4's).
PROMPT_TEMPLATES: dict[str, dict[str, tuple[str, str]]] = {
    "torchtune.data.GrammarErrorCorrectionTemplate": {
        "user": ("Correct this to standard English: ", "\n---\nCorrected: ")
    },
    "torchtune.data.SummarizeTemplate": {
        "user": ("Summarize this dialogue:\n", "\n---\nSummary:\n")
    },
    "torchtune.data.QuestionAnswerTemplate": {"user": ("Question: ", "\n\nAnswer: ")},
}
# Tokenizers whose ids are compared with torchtune's in tests/torchtune_reference.
TOKENS_CHECKED = (*TOKENIZER_OPTIONS, *SENTENCEPIECE_TEMPLATES)
# Tokenizers whose torchtune ids tt does not copy, and why (said when a config uses one).
TOKENS_DIFFER = {
    "torchtune.models.phi4.phi4_tokenizer": (
        "tt tokenizes with Phi-4's own tokenizer.json and chat template; torchtune's "
        "phi4_tokenizer splits words with GPT-2's pattern rather than Phi-4's and leaves a "
        "final answer without <|im_end|>, so its ids differ from the model's own"
    ),
}

CHECKPOINTERS = (
    "torchtune.training.FullModelHFCheckpointer",
    "torchtune.training.FullModelMetaCheckpointer",
)

# LoRA builder arguments -> tt's peft section.
LORA_ARGS = {
    "lora_rank": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "use_dora": "use_dora",
    "quantize_base": "quantize_base",
}
LORA_DEFAULTS = {"rank": 8, "alpha": 16.0, "dropout": 0.0}  # torchtune's builder defaults
# torchtune's module names -> tt's (HF names).
LORA_MODULES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj"}
MLP_MODULES = ["gate_proj", "up_proj", "down_proj"]

# Keys whose torchtune value only restates what tt always does: accepted at that value.
SAME_AS_TT = {"enable_kv_cache": True, "low_cpu_ram": False, "tensor_parallel_dim": 1}

Problems = list[str]
Notes = list[str]


def is_torchtune_config(cfg: DictConfig) -> bool:
    """Whether any ``_component_`` of ``cfg`` names a torchtune class or function."""
    return any(path.startswith(PREFIX) for path in _components(_raw(cfg)))


def from_torchtune(
    cfg: DictConfig, recipe_keys: Mapping[str, Any], source: str
) -> tuple[DictConfig, Notes]:
    """``cfg`` (a torchtune config) in tt's form for a recipe reading ``recipe_keys``, and a
    line per rewrite. Raises ConfigError listing every construct tt has no meaning for."""
    values = _raw(cfg)
    problems: Problems = []
    notes: Notes = []
    for rewrite in (_ppo, _vision_data, _model, _checkpointers, _tokenizer, _losses, _quantizer,
                    _profiler, _prompt, _top_level_keys):  # fmt: skip
        rewrite(values, recipe_keys, notes, problems)
    _rename_components(values, notes, problems)
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    return OmegaConf.create(values), notes


def _raw(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=False)


def _components(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        own = [value[COMPONENT_KEY]] if isinstance(value.get(COMPONENT_KEY), str) else []
        return own + [p for v in value.values() for p in _components(v)]
    if isinstance(value, list):
        return [p for v in value for p in _components(v)]
    return []


def _component(values: Mapping[str, Any], key: str) -> str | None:
    node = values.get(key)
    return node.get(COMPONENT_KEY) if isinstance(node, Mapping) else None


# ---------------------------------------------------------------------------------------------
# Sections


# torchtune PPO keys -> tt's names for the same thing.
PPO_RENAMES = {"max_generated_tokens": "max_new_tokens", "lmbda": "lam", "kl_coeff": "kl_coef"}


def _ppo(values: dict, keys: Mapping[str, Any], notes: Notes, problems: Problems) -> None:
    """torchtune's PPO: a policy builder, one reward-and-value builder and four checkpointers,
    text-completion prompts, counts in trajectories; tt's: directories and steps."""
    if "policy_model" not in values and "reward_and_value_model" not in values:
        return
    for key in ("policy_model", "reward_and_value_model"):
        if values.pop(key, None) is not None:
            notes.append(f"{key}: the architecture in its checkpoint's config.json")
    _same_model_as_policy(values, "ref_policy_checkpointer", notes, problems)
    for key, target in (("reward_checkpointer", "reward_model"),
                        ("value_checkpointer", "value_model")):  # fmt: skip
        node = values.pop(key, None)
        if isinstance(node, Mapping):
            values[target] = {"checkpoint_dir": node.get("checkpoint_dir")}
            notes.append(f"{key} -> {target}.checkpoint_dir")
    for old, new in PPO_RENAMES.items():
        if old in values:
            values[new] = values.pop(old)
    batch = values.get("batch_size", 1)
    if "num_steps" in values:  # trajectories in all; tt counts steps of batch_size prompts
        values["max_steps_per_epoch"] = max(1, values.pop("num_steps") // batch)
        values.setdefault("epochs", 1)
        notes.append(f"num_steps -> max_steps_per_epoch {values['max_steps_per_epoch']}")
    minibatch = values.pop("ppo_batch_size", batch)
    if minibatch <= 0 or batch % minibatch:
        problems.append(f"key 'ppo_batch_size': {minibatch} must divide batch_size {batch}")
    else:
        values["num_minibatches"] = batch // minibatch
    if values.pop("forward_batch_size", batch) != batch:
        problems.append(
            "key 'forward_batch_size': tt scores a step's responses in one batch; set it to "
            "batch_size"
        )
    if "optimizer" in values and "value_optimizer" not in values:
        values["value_optimizer"] = dict(values["optimizer"])  # torchtune: one for both models
        notes.append("optimizer: also the value model's (value_optimizer)")
    dataset = values.get("dataset")
    if isinstance(dataset, dict) and dataset.get(COMPONENT_KEY) == (
        "torchtune.datasets.text_completion_dataset"
    ):
        if dataset.pop("add_eos", True):
            problems.append("key 'dataset.add_eos': a PPO prompt must not end with eos")
        dataset[COMPONENT_KEY] = "tt_data.prompt_dataset"
        dataset["column_map"] = {"prompt": dataset.pop("column", "text")}
        dataset["chat"] = False
        notes.append("dataset: text completions -> tt_data.prompt_dataset (chat: false)")


def _model(values: dict, keys: Mapping[str, Any], notes: Notes, problems: Problems) -> None:
    """A torchtune model builder restates the checkpoint's architecture, which tt reads from
    its config.json; a LoRA builder's arguments become the ``peft`` section."""
    for key in ("model", "teacher_model"):
        path = _component(values, key)
        if path is None or not path.startswith(PREFIX):
            continue
        node = values.pop(key)
        builder = path.rsplit(".", 1)[1]
        if builder.startswith(("lora_", "qlora_")) and key == "teacher_model":
            problems.append(f"key '{key}': a teacher with adapters ({path}) is not supported")
            continue
        if "llama3_2_vision" in builder:
            node = _vision_parts(values, node, builder, keys, notes, problems)
        if builder.startswith(("lora_", "qlora_")):
            values["peft"] = _peft(node, builder, problems)
            notes.append(f"{key}: {builder}'s LoRA arguments -> peft")
        elif key == "model" and len(node) > 1:
            args = ", ".join(k for k in node if k != COMPONENT_KEY)
            problems.append(
                f"key '{key}': tt builds the architecture from the checkpoint's config.json "
                f"and has no use for {path}'s arguments ({args})"
            )
            continue
        notes.append(f"{key}: {path} -> the architecture in the checkpoint's config.json")


def _peft(node: Mapping[str, Any], builder: str, problems: Problems) -> dict[str, Any]:
    peft: dict[str, Any] = dict(LORA_DEFAULTS)
    targets: list[str] = []
    for name in node.get("lora_attn_modules", ["q_proj", "v_proj"]):
        if name in LORA_MODULES:
            targets.append(LORA_MODULES[name])
        else:
            problems.append(
                f"key 'model.lora_attn_modules': {name!r} is not one of {sorted(LORA_MODULES)}"
            )
    if node.get("apply_lora_to_mlp", False):
        targets += MLP_MODULES
        if "llama3_2_vision" in builder:  # the image encoder's MLPs too
            targets += ["fc1", "fc2"]
    if node.get("apply_lora_to_output", False):
        targets.append("output")
    peft["target_modules"] = targets
    known = {COMPONENT_KEY, "lora_attn_modules", "apply_lora_to_mlp", "apply_lora_to_output"}
    for name, value in node.items():
        if name in LORA_ARGS:
            peft[LORA_ARGS[name]] = value
        elif name not in known:
            problems.append(f"key 'model.{name}': tt's LoRA has no {builder} argument {name!r}")
    if builder.startswith("qlora_"):
        peft["quantize_base"] = True
    return peft


def _vision_parts(
    values: dict,
    node: Mapping[str, Any],
    builder: str,
    keys: Mapping[str, Any],
    notes: Notes,
    problems: Problems,
) -> dict[str, Any]:
    """A Llama 3.2 Vision builder's ``*_trainable`` arguments -> tt's ``freeze``; returns the
    builder's other arguments. torchtune's parts train fully (True), not at all (False /
    "frozen") or through adapters ("lora"); in tt a LoRA run trains adapters alone and the
    fusion layers (cross-attention, projection) always train."""
    node = dict(node)
    if "tasks" in keys:  # evaluate
        problems.append(
            f"key 'model': tt's evaluate scores text with lm-eval's text interface; image "
            f"tasks ({values.get('tasks')}) need a multimodal one tt does not have yet"
        )
    lora = builder.startswith(("lora_", "qlora_"))
    node.pop("image_size", None)  # the tiling's, read from the transform (_vision_data)
    freeze = []
    for arg, (part, full_default, lora_default) in VISION_PARTS.items():
        value = node.pop(arg, lora_default if lora else full_default)
        trains = value in (True, "full", "lora")
        if value not in (True, False, "full", "lora", "frozen"):
            problems.append(f"key 'model.{arg}': {value!r} is not True/False/full/lora/frozen")
        elif part == "fusion" and not trains:
            problems.append(f"key 'model.{arg}': tt always trains the fusion layers")
        elif lora and value in (True, "full"):
            problems.append(
                f"key 'model.{arg}': {value!r}: a tt LoRA run trains adapters only (use "
                "full_finetune to train every weight)"
            )
        elif not lora and value == "lora":
            problems.append(f"key 'model.{arg}': 'lora' needs a lora_ builder")
        elif not trains:
            freeze.append(part)
    if "freeze" in keys:  # a training recipe
        values["freeze"] = freeze
        notes.append(f"model: {builder}'s trainable parts -> freeze: {freeze}")
    return node


def _vision_data(values: dict, keys: Mapping[str, Any], notes: Notes, problems: Problems):
    """Llama 3.2 Vision's transform is its tokenizer (Llama 3's, with the image token) and
    its image tiling, which tt's image datasets take; its collator is tt's own."""
    if values.get("collate_fn") == VISION_COLLATE:
        del values["collate_fn"]
        notes.append("collate_fn: tt batches images for the model itself")
    tokenizer = values.get("tokenizer")
    tile_size = 560
    if isinstance(tokenizer, dict) and tokenizer.get(COMPONENT_KEY) == VISION_TRANSFORM:
        tile_size = tokenizer.pop("image_size", tile_size)
        tokenizer[COMPONENT_KEY] = "torchtune.models.llama3.llama3_tokenizer"
        notes.append("tokenizer: llama3_2_vision_transform -> the Llama 3 tokenizer + tiling")
    for key in ("dataset", "dataset_val"):
        node = values.get(key)
        path = node.get(COMPONENT_KEY) if isinstance(node, dict) else None
        if path is None or ".multimodal." not in path:
            continue
        if path not in VISION_DATASETS:
            problems.append(f"key '{key}': tt has no equivalent of {path} yet")
            continue
        if node.pop("packed", False):
            problems.append(f"key '{key}.packed': tt packs text datasets only")
        if "new_system_prompt" in node:
            node["system_prompt"] = node.pop("new_system_prompt")
        node[COMPONENT_KEY] = VISION_DATASETS[path]
        node["image_transform"] = {COMPONENT_KEY: "tt_data.TiledImageTransform",
                                   "tile_size": tile_size, "max_num_tiles": VISION_TILES}  # fmt: skip
        notes.append(f"{key}: {path} -> {VISION_DATASETS[path]} ({tile_size}-pixel tiles)")


def _checkpointers(values: dict, keys: Mapping[str, Any], notes: Notes, problems: Problems):
    _same_model_as_policy(values, "ref_checkpointer", notes, problems)
    for key, target in (("checkpointer", None), ("teacher_checkpointer", "teacher")):
        path = _component(values, key)
        if path is None or not path.startswith(PREFIX):
            continue
        node = dict(values.pop(key))
        if path not in CHECKPOINTERS:
            problems.append(f"key '{key}': tt has no equivalent of {path} yet")
            continue
        checkpoint = _checkpoint_fields(node, key, path, problems)
        if target is not None:
            values[target] = {"checkpoint_dir": checkpoint["checkpoint_dir"]}
            notes.append(f"{key} -> {target} (its files: the directory's index names them)")
        elif "checkpointer" in keys:
            values[key] = checkpoint
            notes.append(f"{key}: {path} -> checkpointer")
        else:  # generate, evaluate, quantize read one model directory
            values["checkpoint_dir"] = checkpoint["checkpoint_dir"]
            if checkpoint.get("checkpoint_files"):
                notes.append(f"{key}.checkpoint_files: the directory's index names them")
            notes.append(f"{key}.checkpoint_dir -> checkpoint_dir")


def _same_model_as_policy(values: dict, key: str, notes: Notes, problems: Problems) -> None:
    """A reference model's checkpointer: tt's reference is the policy's starting point."""
    node = values.pop(key, None)
    if node is None:
        return
    policy = (values.get("checkpointer") or {}).get("checkpoint_dir")
    if _same_dir(node.get("checkpoint_dir"), policy):
        notes.append(f"{key}: the reference is the starting model (checkpointer.checkpoint_dir)")
    else:
        problems.append(
            f"key '{key}.checkpoint_dir': tt's reference model is the model training starts "
            f"from ({policy!r}), not {node.get('checkpoint_dir')!r}"
        )


def _same_dir(a: Any, b: Any) -> bool:
    return isinstance(a, str) and isinstance(b, str) and a.rstrip("/") == b.rstrip("/")


def _checkpoint_fields(
    node: dict[str, Any], key: str, path: str, problems: Problems
) -> dict[str, Any]:
    out: dict[str, Any] = {"checkpoint_dir": node.pop("checkpoint_dir", None)}
    files = node.pop("checkpoint_files", None)
    if isinstance(files, Mapping):
        files = _expand_filename_format(files, key, problems)
    if path.endswith("MetaCheckpointer"):
        # tt reads Meta's consolidated.*.pth with its params.json from the directory itself.
        files = None
    out["checkpoint_files"] = files
    if "output_dir" in node:
        out["output_dir"] = node.pop("output_dir")
    node.pop(COMPONENT_KEY)
    node.pop("model_type", None)  # tt reads the family from config.json / params.json
    for name in ("recipe_checkpoint", "adapter_checkpoint"):
        if node.pop(name, None) is not None:
            problems.append(
                f"key '{key}.{name}': tt resumes from the latest step_N of output_dir "
                "(resume_from_checkpoint: true), not from a named file; set it to null"
            )
    if node.pop("safe_serialization", True) is False:
        problems.append(f"key '{key}.safe_serialization': tt saves safetensors only")
    for name in node:
        problems.append(f"key '{key}.{name}': tt's checkpointer has no {name!r}")
    return out


def _expand_filename_format(files: Mapping[str, Any], key: str, problems: Problems) -> list | None:
    fmt, last = files.get("filename_format"), files.get("max_filename")
    if not isinstance(fmt, str) or not isinstance(last, str) or not last.isdigit():
        problems.append(
            f"key '{key}.checkpoint_files': expected a list of files or "
            f"{{filename_format, max_filename}}, got {dict(files)}"
        )
        return None
    return [fmt.format(str(i).zfill(len(last)), last) for i in range(1, int(last) + 1)]


def _tokenizer(values: dict, keys: Mapping[str, Any], notes: Notes, problems: Problems):
    path = _component(values, "tokenizer")
    if path is None or not path.startswith(PREFIX):
        return
    if path not in TOKENIZERS:
        problems.append(f"key 'tokenizer': tt has no equivalent of {path} yet")
        return
    node = dict(values["tokenizer"])
    file = node.pop(TOKENIZERS[path], None)
    out: dict[str, Any] = {COMPONENT_KEY: TOKENIZER_COMPONENT}
    if isinstance(file, str) and file.endswith(".json"):
        file = str(PurePosixPath(file).parent)  # the Hugging Face tokenizer's directory
    out["path"] = file
    for name in TOKENIZER_SIBLING_FILES:
        node.pop(name, None)
    node.pop(COMPONENT_KEY)
    if "max_seq_len" in node:
        out["max_seq_len"] = node.pop("max_seq_len")
    out.update(TOKENIZER_OPTIONS.get(path, {}))
    template = node.pop("prompt_template", SENTENCEPIECE_TEMPLATES.get(path))
    named = isinstance(template, str) or template is None
    if path in SENTENCEPIECE_TEMPLATES and named and template in CHAT_FORMATS:
        out["chat_format"] = CHAT_FORMATS[template]
    elif template is not None:
        tags = PROMPT_TEMPLATES.get(template) if named else template
        if tags is None or path not in TOKENS_CHECKED:
            problems.append(
                f"key 'tokenizer.prompt_template': tt cannot give {template}'s tokens with "
                f"{path} (tt applies torchtune's tag templates {sorted(PROMPT_TEMPLATES)} or "
                "a {role: [before, after]} mapping); set it to one of those or null"
            )
        else:
            out["prompt_template"] = {role: list(pair) for role, pair in dict(tags).items()}
            if path in SENTENCEPIECE_TEMPLATES:
                out["chat_format"] = "torchtune_plain"
    for name in node:
        problems.append(f"key 'tokenizer.{name}': tt's tokenizers take no {name!r}")
    values["tokenizer"] = out
    differs = f" ({TOKENS_DIFFER[path]})" if path in TOKENS_DIFFER else ""
    notes.append(f"tokenizer: {path} -> {TOKENIZER_COMPONENT}{differs}")


def _losses(values: dict, keys: Mapping[str, Any], notes: Notes, problems: Problems):
    """torchtune's distillation loss is two components and a ratio; tt's is one KDLoss."""
    kd = values.pop("kd_loss", None)
    if kd is None:
        return
    if kd.get(COMPONENT_KEY) != "torchtune.modules.loss.ForwardKLWithChunkedOutputLoss":
        problems.append(f"key 'kd_loss': tt has no equivalent of {kd.get(COMPONENT_KEY)} yet")
        return
    ce = values.get("loss") or {}
    chunks = ce.get("num_output_chunks", kd.get("num_output_chunks", 8))
    values["loss"] = {
        COMPONENT_KEY: "tt_recipes.losses.KDLoss",
        "kd_ratio": values.pop("kd_ratio", 0.5),
        "num_chunks": chunks,
    }
    notes.append("loss + kd_loss + kd_ratio -> loss: tt_recipes.losses.KDLoss")


def _quantizer(values: dict, keys: Mapping[str, Any], notes: Notes, problems: Problems):
    path = _component(values, "quantizer")
    if path is None or not path.startswith(PREFIX):
        if "quantizer" in values and values["quantizer"] is None and "checkpoint_dir" in values:
            del values["quantizer"]  # generate/evaluate: null means full precision, as in tt
        return
    if path not in QUANTIZERS:
        problems.append(f"key 'quantizer': tt has no equivalent of {path} yet")
        return
    node = dict(values["quantizer"])
    values["quantizer"] = {
        COMPONENT_KEY: QUANTIZER_COMPONENT,
        **QUANTIZERS[path],
        "group_size": node.pop("groupsize", 256),
    }
    node.pop(COMPONENT_KEY)
    for name in node:
        problems.append(f"key 'quantizer.{name}': tt's {QUANTIZER_COMPONENT} takes no {name!r}")
    notes.append(f"quantizer: {path} -> {QUANTIZER_COMPONENT}")


# torchtune's profiler arguments that tt's profiler section names the same way.
PROFILER_KEYS = ("enabled", "output_dir", "cpu", "cuda", "profile_memory", "with_stack",
                 "record_shapes", "with_flops", "wait_steps", "warmup_steps", "active_steps",
                 "num_cycles")  # fmt: skip


def _profiler(values: dict, keys: Mapping[str, Any], notes: Notes, problems: Problems):
    path = _component(values, "profiler")
    if path != "torchtune.training.setup_torch_profiler":
        if path is not None and path.startswith(PREFIX):
            problems.append(f"key 'profiler': tt has no equivalent of {path}")
        return
    node = dict(values.pop("profiler"))
    node.pop(COMPONENT_KEY)
    values["profiler"] = {k: node.pop(k) for k in PROFILER_KEYS if k in node}
    for name in node:
        problems.append(f"key 'profiler.{name}': tt's profiler has no {name!r}")
    notes.append(f"profiler: {path} -> profiler")


def _prompt(values: dict, keys: Mapping[str, Any], notes: Notes, problems: Problems):
    """torchtune's generate takes ``prompt: {system, user}``; tt takes chat messages."""
    prompt = values.get("prompt")
    if not isinstance(prompt, Mapping):
        return
    messages = []
    for role in ("system", "user"):
        content = prompt.get(role)
        if isinstance(content, Mapping):  # generate_v2: {text: ..., image: ...}
            image, content = content.get("image"), content.get("text")
            if content is None:
                problems.append(f"key 'prompt.{role}': expected text or {{text: ...}}")
            elif image is not None:  # the image first in the turn, as Meta's format has it
                content = [{"type": "image", "image": image}, {"type": "text", "text": content}]
        if content is not None:
            messages.append({"role": role, "content": content})
    for name in prompt:
        if name not in ("system", "user"):
            problems.append(f"key 'prompt.{name}': a prompt has a system and a user turn")
    values["prompt"] = messages
    notes.append("prompt: {system, user} -> chat messages")


def _top_level_keys(values: dict, keys: Mapping[str, Any], notes: Notes, problems: Problems):
    for name, value in SAME_AS_TT.items():
        if name in values:
            if values[name] == value:
                del values[name]
            else:
                problems.append(_unsupported_value(name, values[name], value))
    if "seed" in values and values["seed"] is None:
        values["seed"] = random.randrange(2**31)  # torchtune draws a seed for null too
        notes.append(f"seed: null -> {values['seed']} (drawn; pin it to repeat the run)")
    fsdp = values.pop("fsdp", None)
    if isinstance(fsdp, Mapping):
        for name, value in fsdp.items():
            if name == "cpu_offload":
                values["fsdp_cpu_offload"] = value
            else:
                problems.append(f"key 'fsdp.{name}': tt's FSDP has no {name!r}")
        notes.append("fsdp.cpu_offload -> fsdp_cpu_offload")
    if "max_seq_length" in values:  # eleuther_eval
        values["max_seq_len"] = values.pop("max_seq_length")
        notes.append("max_seq_length -> max_seq_len")
    if values.get("tensor_parallel_plan") is not None and "tensor_parallel_dim" not in values:
        values.pop("tensor_parallel_plan")  # used only with tensor_parallel_dim > 1
        notes.append("tensor_parallel_plan: unused without tensor parallelism")
    for name, why in UNSUPPORTED_KEYS.items():
        if name in values:
            problems.append(f"key '{name}': {why}")
    # Keys torchtune's generate, eleuther_eval and quantize configs carry but never read.
    for name in ("output_dir", "seed", "resume_from_checkpoint"):
        if name in values and name not in keys:
            if values.pop(name) is True:  # resume_from_checkpoint: true
                problems.append(f"key '{name}': this recipe saves no state to resume from")
            else:
                notes.append(f"{name}: unused by this recipe (by torchtune's too)")


UNSUPPORTED_KEYS = {
    "ac_mode": "tt has no selective activation checkpointing; use "
    "enable_activation_checkpointing: true (every block)",
    "ac_option": "tt has no selective activation checkpointing",
    "memory_efficient_fsdp_wrap": "tt shards every block (FSDP2), which needs no wrap policy",
    "collate_fn": "each tt recipe picks the collator its data needs; remove the key",
}


def _unsupported_value(name: str, value: Any, only: Any) -> str:
    return f"key '{name}': tt supports only {name}: {only} (got {value!r})"


def _dataset_args(node: dict[str, Any], path: str, where: str, problems: Problems) -> None:
    """A torchtune dataset builder's arguments in tt's words (same rows, same tokens)."""
    if path.endswith("text_completion_dataset"):
        # torchtune's text packs cut documents at the pack boundary by default; tt's never do.
        split = node.pop("split_across_pack", True)
        if split and node.get("packed"):
            problems.append(
                f"key '{where}.split_across_pack': tt packs whole documents only; torchtune "
                "splits them across packs by default, so set split_across_pack: false"
            )
    for name, value in DATASET_DEFAULTS.get(path, {}).items():
        node.setdefault(name, value)
    if "new_system_prompt" in node:
        node["system_prompt"] = node.pop("new_system_prompt")
    if path in CHAT_DATASETS and "train_on_input" in node:
        on_input = node.pop("train_on_input")
        node["masking_strategy"] = "train_on_all" if on_input else "train_on_assistant"
    column = node.pop("conversation_column", None)
    if column is not None:
        style = node.get("conversation_style")
        node["column_map"] = {CONVERSATION_COLUMNS.get(style, "conversations"): column}
    if path in UNTEMPLATED_DATASETS:
        node.setdefault("prompt_template", None)
    if path.endswith("text_completion_dataset") and "column" in node:
        node["column_map"] = {"text": node.pop("column")}


def _rename_components(value: Any, notes: Notes, problems: Problems, where: str = "") -> None:
    """Every remaining ``torchtune.*`` component: renamed by the table, or a problem."""
    if isinstance(value, dict):
        path = value.get(COMPONENT_KEY)
        if isinstance(path, str) and path.startswith(PREFIX):
            if path.startswith("torchtune.datasets."):
                _dataset_args(value, path, where, problems)
            if path in COMPONENTS:
                target, renames = COMPONENTS[path]
                for old, new in renames.items():
                    if old in value:
                        value[new] = value.pop(old)
                value[COMPONENT_KEY] = target
                notes.append(f"{where or 'config'}: {path} -> {target}")
            else:
                problems.append(f"key '{where}': tt has no equivalent of {path} yet")
        for name, item in value.items():
            _rename_components(item, notes, problems, f"{where}.{name}" if where else name)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _rename_components(item, notes, problems, f"{where}[{i}]")
