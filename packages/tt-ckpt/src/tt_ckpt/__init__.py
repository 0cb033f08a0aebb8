"""tt_ckpt: checkpoint reading and writing.

Hugging Face directories (config.json + safetensors, sharded or not, or pytorch_model*.bin),
Meta ``consolidated.*.pth`` + ``params.json``, key maps between those namings and tt_models'
(as data, not by import), hub download and training-state files.
"""
