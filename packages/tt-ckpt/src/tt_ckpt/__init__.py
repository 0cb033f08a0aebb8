"""tt_ckpt: checkpoint reading and writing.

Hugging Face directories (config.json + safetensors, sharded or not, or pytorch_model*.bin),
Meta ``consolidated.*.pth`` + ``params.json``, key maps between those namings and tt_models'
(as data, not by import), hub download, training-state files and atomic directory writes.
"""

from tt_ckpt.errors import (
    CheckpointError,
    CorruptFileError,
    DownloadError,
    MissingFilesError,
    MissingShardError,
    ShapeMismatchError,
    UnknownFamilyError,
    UnknownKeyError,
)
from tt_ckpt.hf import (
    TEXT_TOWERS,
    copy_auxiliary_files,
    load_hf_checkpoint,
    parse_size,
    read_hf_config,
    save_hf_checkpoint,
)
from tt_ckpt.hub import download, hub_repo_id
from tt_ckpt.keymaps import (
    FAMILIES,
    FusedTensor,
    KeyMap,
    check_shapes,
    get_keymap,
    hf_to_tt,
    tt_module_to_hf,
    tt_to_hf,
)
from tt_ckpt.meta import load_meta_checkpoint, meta_params_to_hf_config, save_meta_checkpoint
from tt_ckpt.state import atomic_directory, load_training_state, save_training_state

__all__ = [
    "FAMILIES",
    "CheckpointError",
    "CorruptFileError",
    "DownloadError",
    "FusedTensor",
    "KeyMap",
    "MissingFilesError",
    "MissingShardError",
    "ShapeMismatchError",
    "UnknownFamilyError",
    "UnknownKeyError",
    "atomic_directory",
    "check_shapes",
    "TEXT_TOWERS",
    "copy_auxiliary_files",
    "download",
    "hub_repo_id",
    "get_keymap",
    "hf_to_tt",
    "load_hf_checkpoint",
    "load_meta_checkpoint",
    "load_training_state",
    "meta_params_to_hf_config",
    "parse_size",
    "read_hf_config",
    "save_hf_checkpoint",
    "save_meta_checkpoint",
    "save_training_state",
    "tt_module_to_hf",
    "tt_to_hf",
]
