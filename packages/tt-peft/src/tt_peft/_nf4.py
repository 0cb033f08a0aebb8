"""NF4 (4-bit NormalFloat) base weights through torchao, imported only when used."""

from __future__ import annotations

import math
from typing import Any

import torch

_BLOCK_SIZE = 64  # elements sharing one absmax scaler (QLoRA paper default)
_MAX_SCALER_BLOCK = 256  # scalers sharing one second-level quantization factor


def _nf4_module() -> Any:
    try:
        from torchao.quantization.quantize_.workflows.nf4 import nf4_tensor
    except ImportError as err:  # pragma: no cover - exercised only without torchao
        raise ImportError(
            "quantize_base=True (QLoRA/QDoRA) needs torchao's NF4 tensor; "
            "install the extra: pip install 'tt-peft[nf4]'"
        ) from err
    return nf4_tensor


def is_nf4(tensor: torch.Tensor) -> bool:
    """True when ``tensor`` is a torchao ``NF4Tensor`` (checked without importing torchao)."""
    return type(tensor).__name__ == "NF4Tensor"


def to_nf4(weight: torch.Tensor, where: str) -> torch.Tensor:
    """Quantize a 2-D weight to NF4; ``where`` names the layer for error messages."""
    nf4_tensor = _nf4_module()
    numel = weight.numel()
    if numel % _BLOCK_SIZE != 0:
        raise ValueError(
            f"cannot NF4-quantize {where}: weight shape {tuple(weight.shape)} has {numel} "
            f"elements, which is not a multiple of the NF4 block size {_BLOCK_SIZE}"
        )
    # torchao needs the number of blocks to be a multiple of the scaler block size; small layers
    # have fewer than 256 blocks, so use the largest power-of-two divisor that fits.
    scaler_block_size = math.gcd(numel // _BLOCK_SIZE, _MAX_SCALER_BLOCK)
    return nf4_tensor.to_nf4(weight.detach().contiguous(), _BLOCK_SIZE, scaler_block_size)


def linear_nf4(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for an NF4 weight, dequantizing on the fly (no grad to the weight)."""
    return _nf4_module().linear_nf4(x, weight)


def dense(weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A plain tensor for ``weight``: NF4 weights are dequantized, others returned as they are."""
    if is_nf4(weight):
        weight = weight.get_original_weight()
    return weight if dtype is None else weight.to(dtype)


def nf4_nbytes(weight: torch.Tensor) -> int:
    """Bytes held by an NF4 weight: packed 4-bit codes, scalers and lookup table."""
    names, _ = weight.__tensor_flatten__()
    return sum(getattr(weight, name).nbytes for name in names)
