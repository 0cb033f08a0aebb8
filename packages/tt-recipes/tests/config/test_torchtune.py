"""torchtune configs read as tt's: every entry of the translation tables, and the errors for
what tt does not have. (tests/torchtune runs torchtune's own shipped files.)"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from tt_recipes.config import ConfigError, apply_overrides, resolve_component
from tt_recipes.config._torchtune import (
    CHAT_FORMATS,
    COMPONENTS,
    DATASET_DEFAULTS,
    PROMPT_TEMPLATES,
    QUANTIZER_COMPONENT,
    QUANTIZERS,
    SENTENCEPIECE_TEMPLATES,
    TOKENIZER_COMPONENT,
    TOKENIZER_OPTIONS,
    TOKENIZERS,
    UNTEMPLATED_DATASETS,
    from_torchtune,
    is_torchtune_config,
)
from tt_recipes.registry import load_recipe

TRAINING = load_recipe("lora_finetune").spec.keys
GENERATE = load_recipe("generate").spec.keys
CHECKPOINTER = {
    "_component_": "torchtune.training.FullModelHFCheckpointer",
    "checkpoint_dir": "/m",
    "checkpoint_files": ["model.safetensors"],
    "recipe_checkpoint": None,
    "output_dir": "${output_dir}",
    "model_type": "LLAMA3_2",
}


def translate(keys=TRAINING, **values):
    cfg, notes = from_torchtune(OmegaConf.create(values), keys, "tt.yaml")
    return OmegaConf.to_container(cfg, resolve=False), notes


def problems(keys=TRAINING, **values) -> list[str]:
    with pytest.raises(ConfigError) as e:
        translate(keys, **values)
    return str(e.value).splitlines()


def test_a_config_is_torchtunes_when_a_component_names_torchtune():
    assert is_torchtune_config(OmegaConf.create({"loss": {"_component_": "torchtune.x.Y"}}))
    assert is_torchtune_config(OmegaConf.create({"a": [{"b": {"_component_": "torchtune.z"}}]}))
    assert not is_torchtune_config(OmegaConf.create({"loss": {"_component_": "tt_recipes.x"}}))


@pytest.mark.parametrize("torchtune_path", sorted(COMPONENTS))
def test_every_component_alias_names_an_importable_tt_component(torchtune_path):
    target, renames = COMPONENTS[torchtune_path]
    node = {"_component_": torchtune_path, **{old: 3 for old in renames}}
    out, notes = translate(dataset=node)
    # torchtune's samsum and grammar apply no template of their own
    extra = {"prompt_template": None} if torchtune_path in UNTEMPLATED_DATASETS else {}
    extra.update(DATASET_DEFAULTS.get(torchtune_path, {}))  # alpaca's train_on_input: True
    assert out["dataset"] == {"_component_": target, **{new: 3 for new in renames.values()},
                              **extra}  # fmt: skip
    assert f"dataset: {torchtune_path} -> {target}" in notes
    assert callable(resolve_component(target))


@pytest.mark.parametrize("torchtune_path", sorted(TOKENIZERS))
def test_every_tokenizer_reads_its_file_or_directory(torchtune_path):
    file_arg = TOKENIZERS[torchtune_path]
    hf = file_arg != "path" or "qwen" in torchtune_path
    file = "/m/vocab.json" if hf else "/m/original/tokenizer.model"
    node = {"_component_": torchtune_path, file_arg: file, "max_seq_len": 512}
    if hf:
        node["merges_path" if file_arg == "vocab_path" else "merges_file"] = "/m/merges.txt"
    out, _ = translate(tokenizer=node)
    expected = "/m" if hf else file  # a vocab.json + merges.txt pair: the directory's tokenizer
    options = dict(TOKENIZER_OPTIONS.get(torchtune_path, {}))
    if torchtune_path in SENTENCEPIECE_TEMPLATES:  # torchtune's default template, as laid out
        options["chat_format"] = CHAT_FORMATS[SENTENCEPIECE_TEMPLATES[torchtune_path]]
    assert out["tokenizer"] == {"_component_": TOKENIZER_COMPONENT, "path": expected,
                                "max_seq_len": 512, **options}  # fmt: skip
    assert callable(resolve_component(TOKENIZER_COMPONENT))


def test_prompt_templates_tt_cannot_apply_are_refused_with_the_reason():
    node = {"_component_": "torchtune.models.llama3.llama3_tokenizer", "path": "/t",
            "prompt_template": "torchtune.data.ChatMLTemplate"}  # fmt: skip
    valid = sorted(PROMPT_TEMPLATES)
    assert problems(tokenizer=node) == [
        "tt.yaml: key 'tokenizer.prompt_template': tt cannot give torchtune.data.ChatMLTemplate's "
        f"tokens with torchtune.models.llama3.llama3_tokenizer (tt applies torchtune's tag "
        f"templates {valid} or a {{role: [before, after]}} mapping); set it to one of those or null"
    ]
    phi4 = {"_component_": "torchtune.models.phi4.phi4_tokenizer", "vocab_path": "/p/vocab.json",
            "prompt_template": "torchtune.data.SummarizeTemplate"}  # fmt: skip
    assert "tokens with torchtune.models.phi4.phi4_tokenizer" in problems(tokenizer=phi4)[0]


def test_tag_templates_become_the_tokenizers_prompt_template():
    llama3 = {"_component_": "torchtune.models.llama3.llama3_tokenizer", "path": "/t",
              "prompt_template": "torchtune.data.SummarizeTemplate"}  # fmt: skip
    out = translate(tokenizer=llama3)[0]["tokenizer"]
    assert out["prompt_template"] == {"user": ["Summarize this dialogue:\n", "\n---\nSummary:\n"]}
    custom = {"user": ["Q: ", " A:"]}
    gemma = {"_component_": "torchtune.models.gemma.gemma_tokenizer", "path": "/g.model",
             "prompt_template": custom}  # fmt: skip
    out = translate(tokenizer=gemma)[0]["tokenizer"]
    assert (out["prompt_template"], out["chat_format"]) == (custom, "torchtune_plain")


def test_a_lora_builder_becomes_the_peft_section_in_tt_module_names():
    model = {"_component_": "torchtune.models.llama3_2.lora_llama3_2_1b",
             "lora_attn_modules": ["q_proj", "v_proj", "output_proj"], "apply_lora_to_mlp": True,
             "apply_lora_to_output": True, "lora_rank": 64, "lora_alpha": 128,
             "lora_dropout": 0.05, "use_dora": True}  # fmt: skip
    out, notes = translate(model=model, checkpointer=CHECKPOINTER)
    assert "model" not in out  # the architecture comes from the checkpoint's config.json
    assert out["peft"] == {
        "rank": 64, "alpha": 128, "dropout": 0.05, "use_dora": True,
        "target_modules": ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                           "output"],
    }  # fmt: skip
    assert any("LoRA arguments -> peft" in n for n in notes)


def test_a_qlora_builder_quantizes_the_base_with_torchtunes_defaults():
    out, _ = translate(model={"_component_": "torchtune.models.qwen2_5.qlora_qwen2_5_0_5b"})
    assert out["peft"] == {"rank": 8, "alpha": 16.0, "dropout": 0.0, "quantize_base": True,
                           "target_modules": ["q_proj", "v_proj"]}  # fmt: skip


def test_lora_builder_arguments_tt_has_not_are_named():
    model = {"_component_": "torchtune.models.llama3.lora_llama3_8b",
             "lora_attn_modules": ["q_proj", "w9"], "max_seq_len": 64}  # fmt: skip
    assert problems(model=model) == [
        "tt.yaml: key 'model.lora_attn_modules': 'w9' is not one of ['k_proj', 'output_proj', "
        "'q_proj', 'v_proj']",
        "tt.yaml: key 'model.max_seq_len': tt's LoRA has no lora_llama3_8b argument 'max_seq_len'",
    ]


def test_the_checkpointer_keeps_its_directories_and_expands_a_filename_format():
    node = {**CHECKPOINTER, "checkpoint_files": {"filename_format": "model-{}-of-{}.safetensors",
                                                 "max_filename": "00003"}}  # fmt: skip
    out, _ = translate(checkpointer=node)
    assert out["checkpointer"] == {
        "checkpoint_dir": "/m",
        "checkpoint_files": [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)],
        "output_dir": "${output_dir}",
    }


def test_a_meta_checkpointer_reads_the_directory_and_a_reader_recipe_takes_checkpoint_dir():
    node = {**CHECKPOINTER, "_component_": "torchtune.training.FullModelMetaCheckpointer",
            "checkpoint_files": ["consolidated.00.pth"]}  # fmt: skip
    out, _ = translate(checkpointer=node)
    assert out["checkpointer"]["checkpoint_files"] is None
    out, notes = translate(GENERATE, checkpointer=CHECKPOINTER, output_dir="./", seed=1234)
    assert out == {"checkpoint_dir": "/m", "seed": 1234}  # generate reads no output_dir
    assert "output_dir: unused by this recipe (by torchtune's too)" in notes


def test_checkpointer_fields_with_no_tt_meaning_are_errors():
    node = {**CHECKPOINTER, "recipe_checkpoint": "recipe_state.pt", "adapter_checkpoint": "a.pt",
            "safe_serialization": False, "shard_size": 3}  # fmt: skip
    assert [line.split(":")[1] for line in problems(checkpointer=node)] == [
        " key 'checkpointer.recipe_checkpoint'",
        " key 'checkpointer.adapter_checkpoint'",
        " key 'checkpointer.safe_serialization'",
        " key 'checkpointer.shard_size'",
    ]


def test_distillation_losses_become_one_kd_loss_and_the_teacher_checkpointer_the_teacher():
    values = {
        "loss": {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"},
        "kd_loss": {"_component_": "torchtune.modules.loss.ForwardKLWithChunkedOutputLoss"},
        "kd_ratio": 0.25,
        "teacher_model": {"_component_": "torchtune.models.llama3_1.llama3_1_8b"},
        "teacher_checkpointer": {**CHECKPOINTER, "checkpoint_dir": "/teacher"},
    }
    out, _ = translate(**values)
    assert out == {
        "loss": {"_component_": "tt_recipes.losses.KDLoss", "kd_ratio": 0.25, "num_chunks": 8},
        "teacher": {"checkpoint_dir": "/teacher"},
    }


def test_a_dpo_reference_checkpointer_must_be_the_starting_model():
    out, _ = translate(checkpointer=CHECKPOINTER, ref_checkpointer={**CHECKPOINTER,
                       "checkpoint_dir": "/m/"})  # fmt: skip
    assert "ref_checkpointer" not in out
    assert problems(
        checkpointer=CHECKPOINTER, ref_checkpointer={**CHECKPOINTER, "checkpoint_dir": "/other"}
    )[0].startswith(  # fmt: skip
        "tt.yaml: key 'ref_checkpointer.checkpoint_dir': tt's reference model is the model "
        "training starts from ('/m'), not '/other'"
    )


@pytest.mark.parametrize("torchtune_path", sorted(QUANTIZERS))
def test_quantizers_become_tts_torchao_scheme(torchtune_path):
    out, _ = translate(quantizer={"_component_": torchtune_path, "groupsize": 128})
    assert out["quantizer"] == {"_component_": QUANTIZER_COMPONENT, **QUANTIZERS[torchtune_path],
                                "group_size": 128}  # fmt: skip
    resolve_component(QUANTIZER_COMPONENT)(**{k: v for k, v in out["quantizer"].items()
                                              if k != "_component_"})  # fmt: skip


def test_the_profiler_maps_key_for_key_and_unknown_keys_are_named():
    node = {"_component_": "torchtune.training.setup_torch_profiler", "enabled": True,
            "cpu": True, "cuda": False, "wait_steps": 5, "active_steps": 2}  # fmt: skip
    out, _ = translate(profiler=node)
    assert out["profiler"] == {"enabled": True, "cpu": True, "cuda": False, "wait_steps": 5,
                               "active_steps": 2}  # fmt: skip
    assert problems(profiler={**node, "xpu": True}) == [
        "tt.yaml: key 'profiler.xpu': tt's profiler has no 'xpu'"
    ]


def test_a_system_and_user_prompt_becomes_chat_messages():
    out, _ = translate(GENERATE, prompt={"system": None, "user": {"text": "Tell a joke."}},
                       loss={"_component_": "torchtune.rlhf.loss.DPOLoss"})  # fmt: skip
    assert out["prompt"] == [{"role": "user", "content": "Tell a joke."}]
    out, _ = translate(GENERATE, prompt={"system": "Be brief.", "user": "Hi"},
                       loss={"_component_": "torchtune.rlhf.loss.DPOLoss"})  # fmt: skip
    assert out["prompt"] == [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Hi"}]  # fmt: skip
    out, _ = translate(GENERATE, prompt={"user": {"image": "cat.png", "text": "What is it?"}},
                       loss={"_component_": "torchtune.rlhf.loss.DPOLoss"})  # fmt: skip
    assert out["prompt"] == [{"role": "user", "content": [
        {"type": "image", "image": "cat.png"}, {"type": "text", "text": "What is it?"}]}]  # fmt: skip


def test_keys_that_restate_tt_are_accepted_only_at_that_value():
    marker = {"loss": {"_component_": "torchtune.rlhf.loss.DPOLoss"}}
    out, _ = translate(**marker, enable_kv_cache=True, low_cpu_ram=False, tensor_parallel_dim=1)
    assert set(out) == {"loss"}
    assert problems(**marker, enable_kv_cache=False) == [
        "tt.yaml: key 'enable_kv_cache': tt supports only enable_kv_cache: True (got False)"
    ]
    assert problems(**marker, tensor_parallel_dim=2)[0].startswith(
        "tt.yaml: key 'tensor_parallel_dim': tt supports only tensor_parallel_dim: 1"
    )


def test_other_top_level_keys():
    marker = {"loss": {"_component_": "torchtune.rlhf.loss.DPOLoss"}}
    out, notes = translate(**marker, seed=None, fsdp={"cpu_offload": True})
    assert isinstance(out["seed"], int) and any("drawn" in n for n in notes)
    assert out["fsdp_cpu_offload"] is True and "fsdp" not in out
    assert problems(**marker, ac_mode="selective", collate_fn="x") == [
        "tt.yaml: key 'ac_mode': tt has no selective activation checkpointing; use "
        "enable_activation_checkpointing: true (every block)",
        "tt.yaml: key 'collate_fn': each tt recipe picks the collator its data needs; remove "
        "the key",
    ]


def test_an_unknown_torchtune_component_is_named():
    assert problems(lr_scheduler={"_component_": "torchtune.training.lr_schedulers.new_one"}) == [
        "tt.yaml: key 'lr_scheduler': tt has no equivalent of "
        "torchtune.training.lr_schedulers.new_one yet"
    ]


VISION = "torchtune.models.llama3_2_vision."
VISION_TRANSFORM = {"_component_": VISION + "llama3_2_vision_transform", "path": "/m/t.model",
                    "image_size": 448, "max_seq_len": 8192}  # fmt: skip
CAULDRON = {"_component_": "torchtune.datasets.multimodal.the_cauldron_dataset",
            "subset": "ocrvqa", "packed": False}  # fmt: skip


def test_llama3_2_vision_lora_config():
    """torchtune's default LoRA split: the decoder frozen, adapters in the encoder and the
    fusion layers (encoder MLPs too with apply_lora_to_mlp); its transform's tile size goes to
    the dataset's tiling, its collator is tt's own."""
    out, notes = translate(
        model={"_component_": VISION + "lora_llama3_2_vision_11b", "decoder_trainable": "frozen",
               "encoder_trainable": "lora", "fusion_trainable": "lora", "image_size": 448,
               "lora_attn_modules": ["q_proj", "output_proj"], "apply_lora_to_mlp": True,
               "lora_rank": 8, "lora_alpha": 16},
        tokenizer=VISION_TRANSFORM, dataset=CAULDRON,
        collate_fn="torchtune.data.padded_collate_tiled_images_and_mask",
    )  # fmt: skip
    assert out["freeze"] == ["decoder"]
    assert out["peft"]["target_modules"] == [
        "q_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "fc1", "fc2",
    ]  # fmt: skip
    assert out["dataset"] == {
        "_component_": "tt_data.the_cauldron", "subset": "ocrvqa",
        "image_transform": {"_component_": "tt_data.TiledImageTransform", "tile_size": 448,
                            "max_num_tiles": 4},
    }  # fmt: skip
    assert out["tokenizer"]["_component_"] == "tt_data.tokenizers.from_pretrained"
    assert "collate_fn" not in out and "image_size" not in out["tokenizer"]
    assert any("freeze: ['decoder']" in note for note in notes)


def test_llama3_2_vision_full_builder_defaults_and_parts_tt_cannot_train_so():
    full = load_recipe("full_finetune").spec.keys
    out, _ = translate(full, model={"_component_": VISION + "llama3_2_vision_11b"})
    assert out["freeze"] == ["decoder"]  # torchtune's default: decoder_trainable=False
    out, _ = translate(full, model={"_component_": VISION + "llama3_2_vision_90b",
                                    "decoder_trainable": True, "encoder_trainable": False})  # fmt: skip
    assert out["freeze"] == ["encoder"]
    assert problems(full, model={"_component_": VISION + "llama3_2_vision_11b",
                                 "fusion_trainable": False}) == [
        "tt.yaml: key 'model.fusion_trainable': tt always trains the fusion layers"
    ]  # fmt: skip
    assert problems(model={"_component_": VISION + "lora_llama3_2_vision_11b",
                           "lora_attn_modules": ["q_proj"], "encoder_trainable": "full"}) == [
        "tt.yaml: key 'model.encoder_trainable': 'full': a tt LoRA run trains adapters only "
        "(use full_finetune to train every weight)"
    ]  # fmt: skip
    assert problems(dataset={**CAULDRON, "packed": True}) == [
        "tt.yaml: key 'dataset.packed': tt packs text datasets only"
    ]


def test_llama3_2_vision_evaluation_on_image_tasks_is_named():
    evaluate = load_recipe("evaluate").spec.keys
    assert problems(evaluate, model={"_component_": VISION + "llama3_2_vision_11b"},
                    tasks=["mmmu_val_science"]) == [
        "tt.yaml: key 'model': tt's evaluate scores text with lm-eval's text interface; image "
        "tasks (['mmmu_val_science']) need a multimodal one tt does not have yet"
    ]  # fmt: skip


def test_overrides_use_the_torchtune_key_names_and_apply_before_the_translation():
    cfg = OmegaConf.create({"model": {"_component_": "torchtune.models.llama3_2.lora_llama3_2_1b",
                                      "lora_rank": 64}})  # fmt: skip
    cfg = apply_overrides(cfg, ["model.lora_rank=4"])
    out, _ = from_torchtune(cfg, TRAINING, "tt.yaml")
    assert out.peft.rank == 4


def test_torchtunes_ppo_layout_becomes_tts_directories_and_steps():
    values = {
        "policy_model": {"_component_": "torchtune.models.mistral.mistral_7b"},
        "reward_and_value_model": {"_component_": "torchtune.models.mistral._component_builders."
                                                  "mistral_classifier", "num_classes": 1},
        "checkpointer": CHECKPOINTER,
        "ref_policy_checkpointer": {**CHECKPOINTER, "output_dir": "${output_dir}/policy"},
        "value_checkpointer": {**CHECKPOINTER, "checkpoint_dir": "/rm"},
        "reward_checkpointer": {**CHECKPOINTER, "checkpoint_dir": "/rm"},
        "dataset": {"_component_": "torchtune.datasets.text_completion_dataset",
                    "source": "trl-internal-testing/sentiment-trl-style", "column": "prompt",
                    "add_eos": False},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-6},
        "loss": {"_component_": "torchtune.rlhf.loss.PPOLoss", "epsilon": 0.2},
        "batch_size": 128, "num_steps": 10_000, "ppo_batch_size": 32, "forward_batch_size": 128,
        "max_generated_tokens": 58, "lmbda": 0.95, "kl_coeff": 0.01,
    }  # fmt: skip
    out, _ = translate(load_recipe("ppo").spec.keys, **values)
    assert out["reward_model"] == {"checkpoint_dir": "/rm"}
    assert out["value_model"] == {"checkpoint_dir": "/rm"}
    assert out["dataset"] == {"_component_": "tt_data.prompt_dataset", "chat": False,
                              "source": "trl-internal-testing/sentiment-trl-style",
                              "column_map": {"prompt": "prompt"}}  # fmt: skip
    assert out["value_optimizer"] == out["optimizer"]
    assert out["loss"] == {"_component_": "tt_recipes.rl.losses.PPOLoss", "epsilon": 0.2}
    assert (out["max_steps_per_epoch"], out["epochs"], out["num_minibatches"]) == (78, 1, 4)
    assert (out["max_new_tokens"], out["lam"], out["kl_coef"]) == (58, 0.95, 0.01)
    assert not {"policy_model", "reward_and_value_model", "ref_policy_checkpointer",
                "num_steps", "ppo_batch_size", "forward_batch_size"} & set(out)  # fmt: skip
    assert problems(
        load_recipe("ppo").spec.keys, **{**values, "forward_batch_size": 16, "ppo_batch_size": 48}
    ) == [  # fmt: skip
        "tt.yaml: key 'ppo_batch_size': 48 must divide batch_size 128",
        "tt.yaml: key 'forward_batch_size': tt scores a step's responses in one batch; set it "
        "to batch_size",
    ]


def test_sentencepiece_tokenizers_take_torchtunes_template_default_or_null():
    node = {"_component_": "torchtune.models.llama2.llama2_tokenizer", "path": "/t.model"}
    assert translate(tokenizer=node)[0]["tokenizer"]["chat_format"] == "torchtune_llama2"
    plain = translate(tokenizer={**node, "prompt_template": None})[0]["tokenizer"]
    assert plain["chat_format"] == "torchtune_plain"
    mistral = {**node, "prompt_template": "torchtune.models.mistral.MistralChatTemplate"}
    assert translate(tokenizer=mistral)[0]["tokenizer"]["chat_format"] == "torchtune_mistral"
    phi3, _ = translate(tokenizer={"_component_": "torchtune.models.phi3.phi3_mini_tokenizer",
                                   "path": "/p.model"})  # fmt: skip
    assert phi3["tokenizer"] == {"_component_": "tt_data.tokenizers.from_pretrained",
                                 "path": "/p.model", "chat_format": "torchtune_phi3"}  # fmt: skip


def test_qwen_tokenizers_read_the_vocab_directory_with_torchtunes_layout_and_eos():
    for path in ("torchtune.models.qwen2.qwen2_tokenizer",
                 "torchtune.models.qwen2_5.qwen2_5_tokenizer"):  # fmt: skip
        out, notes = translate(tokenizer={"_component_": path, "path": "/q/vocab.json",
                                          "merges_file": "/q/merges.txt", "max_seq_len": 64})  # fmt: skip
        assert out["tokenizer"] == {"_component_": "tt_data.tokenizers.from_pretrained",
                                    "path": "/q", "max_seq_len": 64,
                                    "chat_format": "torchtune_qwen2",
                                    "eos_token": "<|im_end|>"}  # fmt: skip
        assert notes == [f"tokenizer: {path} -> tt_data.tokenizers.from_pretrained"]
    _, notes = translate(tokenizer={"_component_": "torchtune.models.phi4.phi4_tokenizer",
                                    "vocab_path": "/p/vocab.json", "merges_path": "/p/merges.txt"})  # fmt: skip
    assert "Phi-4's own tokenizer.json and chat template" in notes[0]


def test_packed_text_completion_must_not_split_documents_as_torchtunes_default_does():
    node = {"_component_": "torchtune.datasets.text_completion_dataset", "source": "json",
            "packed": True}  # fmt: skip
    assert problems(load_recipe("full_finetune").spec.keys, dataset=node) == [
        "tt.yaml: key 'dataset.split_across_pack': tt packs whole documents only; torchtune "
        "splits them across packs by default, so set split_across_pack: false"
    ]
    out, _ = translate(dataset={**node, "split_across_pack": False})
    assert out["dataset"] == {"_component_": "tt_data.text_completion_dataset",
                              "source": "json", "packed": True}  # fmt: skip
