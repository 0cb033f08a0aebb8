"""LoRA and DoRA linear layers with an optional NF4-quantized base weight (QLoRA / QDoRA).

State-dict layout of an adapted layer named ``q_proj``:

    q_proj.weight           frozen base weight (plain tensor, or torchao NF4Tensor when quantized)
    q_proj.bias             frozen base bias (only when the base Linear had one)
    q_proj.lora_a.weight    [rank, in_features]   trainable
    q_proj.lora_b.weight    [out_features, rank]  trainable, zero at init
    q_proj.magnitude        [out_features]        trainable, DoRA only

The base keys are those of the ``nn.Linear`` it replaces, so a full-model checkpoint loads before
or after ``apply_lora``. Loading a full-precision ``weight`` into a quantized layer re-quantizes it
(torchao's NF4 ``copy_``); loading a ``weight`` without a ``magnitude`` into a DoRA layer
re-derives the magnitude from the loaded weight.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from tt_peft._nf4 import dense, is_nf4, linear_nf4, to_nf4


def lora_scaling(rank: int, alpha: float, use_rslora: bool) -> float:
    """alpha / rank, or alpha / sqrt(rank) for rank-stabilized LoRA (rsLoRA)."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def check_lora_args(
    in_features: int, out_features: int, rank: int, alpha: float, dropout: float, where: str
) -> None:
    """Raise ``ValueError`` naming ``where`` (the layer) when a LoRA hyper-parameter is invalid."""
    if not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"rank must be a positive int, got {rank!r} for layer {where}")
    if rank > min(in_features, out_features):
        raise ValueError(
            f"rank {rank} is larger than layer {where} allows: it must be <= "
            f"min(in_features={in_features}, out_features={out_features})"
        )
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r} for layer {where}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r} for layer {where}")


class LoRALinear(nn.Module):
    """A frozen linear map plus a trainable low-rank update: ``W x + b + s * B A dropout(x)``.

    ``s`` is ``alpha / rank`` (``alpha / sqrt(rank)`` with ``use_rslora``). ``A`` is
    Kaiming-uniform initialised and ``B`` is zero, so a fresh layer equals its base.
    Build one from an existing layer with :meth:`from_linear`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        bias: bool = False,
        use_rslora: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        name: str = "<LoRALinear>",
    ) -> None:
        super().__init__()
        check_lora_args(in_features, out_features, rank, alpha, dropout, name)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.alpha, self.use_rslora = rank, alpha, use_rslora
        self.scaling = lora_scaling(rank, alpha, use_rslora)
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, **factory), requires_grad=False
        )
        self.bias = (
            nn.Parameter(torch.zeros(out_features, **factory), requires_grad=False)
            if bias
            else None
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_a = nn.Linear(in_features, rank, bias=False, **factory)
        self.lora_b = nn.Linear(rank, out_features, bias=False, **factory)
        # Read by forward; toggled by tt_peft.disable_adapters.
        self.adapters_disabled = False
        self.reset_adapter_parameters()

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
        quantize_base: bool = False,
        name: str = "<LoRALinear>",
    ) -> LoRALinear:
        """Wrap ``linear``'s weight and bias (shared, not copied) with fresh adapters.

        With ``quantize_base`` the weight is stored as NF4; adapters keep the weight's dtype.
        """
        weight = linear.weight
        layer = cls(
            linear.in_features,
            linear.out_features,
            rank,
            alpha,
            dropout=dropout,
            bias=linear.bias is not None,
            use_rslora=use_rslora,
            device=weight.device,
            dtype=weight.dtype,
            name=name,
        )
        base = to_nf4(weight, name) if quantize_base else weight.detach()
        layer.weight = nn.Parameter(base, requires_grad=False)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        layer.after_base_weight_set()
        return layer

    def reset_adapter_parameters(self) -> None:
        """A: Kaiming-uniform (as nn.Linear), B: zeros, so the update starts at zero."""
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)

    def after_base_weight_set(self) -> None:
        """Hook for subclasses that derive state from the base weight (DoRA's magnitude)."""

    @property
    def is_quantized(self) -> bool:
        """True when the base weight is an NF4 tensor."""
        return is_nf4(self.weight)

    @property
    def adapter_dtype(self) -> torch.dtype:
        """The dtype adapters compute in (the base weight's dtype at construction)."""
        return self.lora_a.weight.dtype

    def adapter_param_names(self) -> tuple[str, ...]:
        """Names (relative to this layer) of the trainable adapter parameters."""
        return ("lora_a.weight", "lora_b.weight")

    def base_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` without the bias; dequantizes an NF4 weight on the fly."""
        if self.is_quantized:
            return linear_nf4(x, self.weight)
        return F.linear(x, self.weight)

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen layer alone: ``W x + b``."""
        out = self.base_matmul(x)
        return out if self.bias is None else out + self.bias

    def lora_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``s * B A x`` computed in the adapter dtype (x is cast to it, as peft does)."""
        return self.lora_b(self.lora_a(x.to(self.adapter_dtype))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``s * B @ A``: the update the adapter adds to ``W``. Shape [out_features, in_features]."""
        return (self.lora_b.weight @ self.lora_a.weight) * self.scaling

    def base_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The base weight as a plain tensor (dequantized when NF4)."""
        return dense(self.weight.detach(), dtype)

    def merged_weight(self) -> torch.Tensor:
        """``W + s B A`` in the adapter dtype (an NF4 base is dequantized)."""
        return self.base_weight(self.adapter_dtype) + self.delta_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_forward(x)
        if self.adapters_disabled:
            return out
        return self.add_lora(out, self.dropout(x))

    def add_lora(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``out + s * B A x``, with ``s`` applied to the rank-sized ``A x`` and the addition
        fused into B's product (``addmm``): one pass over the [tokens, out_features] result
        instead of three (product, scaling, sum); 1.54 -> 1.25 s per bf16 LoRA step of an
        88M model on 2 CPU cores (bench/README.md)."""
        hidden = self.lora_a(x.to(self.adapter_dtype)) * self.scaling
        if hidden.dtype != out.dtype:  # e.g. an fp32 adapter on a bf16 base: peft's casts
            return out + self.lora_b(hidden).to(out.dtype)
        fused = torch.addmm(
            out.reshape(-1, self.out_features),
            hidden.reshape(-1, self.rank),
            self.lora_b.weight.t(),
        )
        return fused.view(out.shape)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the merged weight (and the base bias)."""
        weight = self.merged_weight().detach()
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        base = "nf4" if self.is_quantized else str(self.weight.dtype)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:g}, base={base}"
        )


class DoRALinear(LoRALinear):
    """Weight-decomposed LoRA: ``m * (W + s B A) / ||W + s B A||_row`` applied to ``x``, plus bias.

    ``magnitude`` (``m``, one value per output feature) starts as the row norms of the base
    weight, so a fresh layer equals its base. The norm is detached from the graph, as in the
    DoRA paper (section 4.3) and peft.
    """

    def __init__(self, in_features: int, out_features: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(in_features, out_features, *args, **kwargs)
        device, dtype = self.lora_a.weight.device, self.lora_a.weight.dtype
        self.magnitude = nn.Parameter(torch.ones(out_features, device=device, dtype=dtype))
        self.register_load_state_dict_pre_hook(_derive_missing_magnitude)

    def adapter_param_names(self) -> tuple[str, ...]:
        return ("lora_a.weight", "lora_b.weight", "magnitude")

    def after_base_weight_set(self) -> None:
        self.initialize_magnitude()

    @torch.no_grad()
    def initialize_magnitude(self) -> None:
        """Set ``magnitude`` to the row norms of ``W + s B A`` (the current weight)."""
        self.magnitude.copy_(self.weight_norm())

    def weight_norm(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Detached row norms of ``W + s B A`` in the adapter dtype. Shape [out_features]."""
        base = self.base_weight(self.adapter_dtype) if weight is None else weight
        merged = base.to(self.adapter_dtype) + self.delta_weight().detach()
        return torch.linalg.norm(merged, dim=1).detach()

    def merged_weight(self) -> torch.Tensor:
        merged = self.base_weight(self.adapter_dtype) + self.delta_weight()
        return (self.magnitude / self.weight_norm()).unsqueeze(1) * merged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base_no_bias = self.base_matmul(x)
        out = base_no_bias if self.bias is None else base_no_bias + self.bias
        if self.adapters_disabled:
            return out
        x_drop = self.dropout(x)
        # Without active dropout the base product is reused; with it, peft's formula applies the
        # magnitude rescale to W @ dropout(x), and we keep that formula for identical results.
        dropout_active = self.training and isinstance(self.dropout, nn.Dropout)
        base_drop = self.base_matmul(x_drop) if dropout_active else base_no_bias
        scale = (self.magnitude / self.weight_norm()).to(out.dtype)  # [out_features]
        lora = self.lora_forward(x_drop).to(out.dtype)
        return out + (scale - 1) * base_drop + scale * lora


def _derive_missing_magnitude(
    layer: DoRALinear, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
) -> None:
    # A full-precision checkpoint loaded after apply_lora carries the base weight but no
    # magnitude; derive it from the incoming weight so the layer still starts equal to it.
    weight_key, magnitude_key = prefix + "weight", prefix + "magnitude"
    if weight_key in state_dict and magnitude_key not in state_dict:
        if isinstance(state_dict[weight_key], DTensor):
            # A shard (FSDP loading one rank's rows): row norms need the adapters' shards too,
            # so the sharded loader sets the magnitude itself after the adapters are ready.
            return
        incoming = state_dict[weight_key].to(layer.magnitude.device)
        if layer.is_quantized and not is_nf4(incoming):
            # the layer will hold the NF4 round trip of the incoming weight; norm that instead
            incoming = to_nf4(incoming, f"{prefix}weight")
        state_dict[magnitude_key] = layer.weight_norm(dense(incoming))
