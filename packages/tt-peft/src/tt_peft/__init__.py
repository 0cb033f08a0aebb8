"""tt_peft: LoRA, DoRA, QLoRA and QDoRA adapters for any ``torch.nn.Module``.

Works on tt_models models and on transformers models alike; adapters are saved in the PEFT
format (``adapter_config.json`` + ``adapter_model.safetensors``) so ``peft`` loads them.
"""
