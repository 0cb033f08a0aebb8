"""Llama 3.2 Vision's image encoder: a tiled ViT whose output the decoder cross-attends to.

An image is resized onto a grid of up to ``max_num_tiles`` square tiles (tt_data does that);
each tile is cut into patches, and every patch of every tile becomes a token. A first stack of
layers sees all tiles of an image together (position embeddings per patch and per tile, chosen
by the image's aspect ratio); a second, gated "global" stack follows. The encoder's output per
patch is the global stack's output concatenated with the outputs of a few intermediate layers
of the first stack, projected to the decoder's width.

Shapes: ``images`` ``[b, n_images, max_num_tiles, channels, tile_size, tile_size]``,
``aspect_ratio_ids`` ``[b, n_images]`` (0: a padding image), ``aspect_ratio_mask``
``[b, n_images, max_num_tiles]`` (1: a real tile) -> ``[b, n_images * max_num_tiles *
n_patches, out_dim]``. The numerics follow transformers' ``MllamaVisionModel``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def supported_aspect_ratios(max_num_tiles: int) -> tuple[tuple[int, int], ...]:
    """Every (rows, cols) grid of tiles with at most ``max_num_tiles`` tiles, in the order
    Meta and transformers number them (aspect ratio id = index + 1; 0 is padding)."""
    return tuple(
        (w, h)
        for w in range(1, max_num_tiles + 1)
        for h in range(1, max_num_tiles + 1)
        if w * h <= max_num_tiles
    )


@dataclass
class VisionConfig:
    """Dimensions of the tiled image encoder (transformers' ``MllamaVisionConfig``).

    Args:
        dim: width of the encoder's tokens.
        n_layers: layers of the first (local) stack.
        n_global_layers: layers of the gated global stack.
        n_heads: attention heads of every layer.
        hidden_dim: inner width of each layer's MLP.
        tile_size: side of a square tile in pixels (``image_size``).
        patch_size: side of a square patch in pixels.
        max_num_tiles: tiles per image (images are padded to this many).
        intermediate_layers: local layers whose outputs join the encoder's output.
        aspect_ratios: the tile grids (rows, cols) an image may be cut into; None means
            every grid of at most ``max_num_tiles`` tiles.
        norm_eps: epsilon of the layers' LayerNorms.
        n_channels: image channels.
    """

    dim: int = 1280
    n_layers: int = 32
    n_global_layers: int = 8
    n_heads: int = 16
    hidden_dim: int = 5120
    tile_size: int = 560
    patch_size: int = 14
    max_num_tiles: int = 4
    intermediate_layers: tuple[int, ...] = (3, 7, 15, 23, 30)
    aspect_ratios: tuple[tuple[int, int], ...] | None = None
    norm_eps: float = 1e-5
    n_channels: int = 3

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "hidden_dim", "tile_size", "patch_size",
                     "max_num_tiles", "n_channels"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"VisionConfig: {name}={value!r} must be a positive integer")
        if self.n_global_layers < 0:
            raise ValueError(f"VisionConfig: n_global_layers={self.n_global_layers} must be >= 0")
        if self.dim % self.n_heads:
            raise ValueError(
                f"VisionConfig: dim={self.dim} must be a multiple of n_heads={self.n_heads}"
            )
        if self.tile_size % self.patch_size:
            raise ValueError(
                f"VisionConfig: tile_size={self.tile_size} must be a multiple of "
                f"patch_size={self.patch_size}"
            )
        self.intermediate_layers = tuple(int(i) for i in self.intermediate_layers)
        bad = [i for i in self.intermediate_layers if not 0 <= i < self.n_layers]
        if bad:
            raise ValueError(
                f"VisionConfig: intermediate_layers {bad} are not layers of the "
                f"{self.n_layers}-layer encoder"
            )
        if self.aspect_ratios is None:
            self.aspect_ratios = supported_aspect_ratios(self.max_num_tiles)
        self.aspect_ratios = tuple((int(w), int(h)) for w, h in self.aspect_ratios)
        too_big = [r for r in self.aspect_ratios if r[0] * r[1] > self.max_num_tiles]
        if too_big:
            raise ValueError(
                f"VisionConfig: aspect_ratios {too_big} need more than max_num_tiles="
                f"{self.max_num_tiles} tiles"
            )
        self.norm_eps = float(self.norm_eps)

    @property
    def n_patches(self) -> int:
        """Tokens per tile: its patches plus a class token."""
        return (self.tile_size // self.patch_size) ** 2 + 1

    @property
    def output_dim(self) -> int:
        """Width of a patch's output before the projection: the last layer's and each
        intermediate layer's outputs side by side."""
        return self.dim * (1 + len(self.intermediate_layers))


class VisionAttention(nn.Module):
    """Bidirectional multi-head attention over an image's tokens (no biases, no RoPE)."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` ``[b, n, dim]``, ``mask`` bool ``[b, n, n]`` (True: may attend)."""
        b, n, dim = x.shape
        q, k, v = (
            proj(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        return self.o_proj(out.transpose(1, 2).reshape(b, n, dim))


class VisionMLP(nn.Module):
    """``fc2(gelu(fc1(x)))`` with biases (exact GELU)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VisionEncoderLayer(nn.Module):
    """Pre-LayerNorm block; ``gated`` layers (the global stack) scale each branch by
    ``tanh(gate)`` before the residual add."""

    def __init__(self, cfg: VisionConfig, gated: bool) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = VisionAttention(cfg.dim, cfg.n_heads)
        self.mlp_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = VisionMLP(cfg.dim, cfg.hidden_dim)
        self.attn_gate = nn.Parameter(torch.zeros(1)) if gated else None
        self.mlp_gate = nn.Parameter(torch.zeros(1)) if gated else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.attn(self.attn_norm(x), mask)
        if self.attn_gate is not None:
            h = self.attn_gate.tanh() * h
        x = x + h
        h = self.mlp(self.mlp_norm(x))
        if self.mlp_gate is not None:
            h = self.mlp_gate.tanh() * h
        return x + h


class TileEmbedding(nn.Module):
    """One gated embedding per tile, looked up by the image's aspect ratio id."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.max_num_tiles, self.dim = cfg.max_num_tiles, cfg.dim
        self.embedding = nn.Embedding(len(cfg.aspect_ratios) + 1, cfg.max_num_tiles * cfg.dim)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, aspect_ratio_ids: torch.Tensor) -> torch.Tensor:
        """``x`` ``[images, tiles, n, dim]``, ``aspect_ratio_ids`` ``[images]``."""
        emb = self.embedding(aspect_ratio_ids).reshape(-1, self.max_num_tiles, 1, self.dim)
        return x + emb * self.gate.tanh()


class TilePositionEmbedding(nn.Module):
    """Per-patch position embeddings blended with per-(tile, patch) ones by a gate:
    ``(1 - tanh(gate)) * embedding + tanh(gate) * tile_embedding[aspect ratio]``."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.max_num_tiles, self.n_patches, self.dim = cfg.max_num_tiles, cfg.n_patches, cfg.dim
        self.embedding = nn.Parameter(torch.zeros(cfg.n_patches, cfg.dim))
        self.tile_embedding = nn.Embedding(
            len(cfg.aspect_ratios) + 1, cfg.max_num_tiles * cfg.n_patches * cfg.dim
        )
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, aspect_ratio_ids: torch.Tensor) -> torch.Tensor:
        """``x`` ``[images, tiles, n_patches, dim]``, ``aspect_ratio_ids`` ``[images]``."""
        gate = self.gate.tanh()
        x = x + (1 - gate) * self.embedding.view(1, 1, self.n_patches, self.dim)
        tiles = self.tile_embedding(aspect_ratio_ids).reshape(
            -1, self.max_num_tiles, self.n_patches, self.dim
        )
        return x + gate * tiles


class VisionEncoder(nn.Module):
    """Tiled ViT plus the projection to the decoder's width (``out_dim``).

    Tokens are padded to a multiple of 8 per tile, as the reference implementation does; the
    padding tokens and the tokens of padding tiles are masked out as keys for each other only
    (a real token still attends to them), which is what the published checkpoints were
    trained with.
    """

    def __init__(self, cfg: VisionConfig, out_dim: int) -> None:
        super().__init__()
        self.config = cfg
        self.patch_embedding = nn.Conv2d(
            cfg.n_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False
        )
        self.class_embedding = nn.Parameter(torch.zeros(cfg.dim))
        self.position_embedding = TilePositionEmbedding(cfg)
        self.pre_tile_embedding = TileEmbedding(cfg)
        self.post_tile_embedding = TileEmbedding(cfg)
        self.pre_norm = nn.LayerNorm(cfg.dim)
        self.post_norm = nn.LayerNorm(cfg.dim)
        self.layers = nn.ModuleList(VisionEncoderLayer(cfg, False) for _ in range(cfg.n_layers))
        self.global_layers = nn.ModuleList(
            VisionEncoderLayer(cfg, True) for _ in range(cfg.n_global_layers)
        )
        self.projection = nn.Linear(cfg.output_dim, out_dim)

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Initialise for training from scratch (transformers' scheme): N(0, std) weights,
        zero biases, unit LayerNorms; the gates of the position and tile embeddings start
        closed (0), the global layers' gates at N(0, std)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d)):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        nn.init.normal_(self.class_embedding, std=std)
        nn.init.normal_(self.position_embedding.embedding, std=std)
        for gate in (self.position_embedding.gate, self.pre_tile_embedding.gate,
                     self.post_tile_embedding.gate):  # fmt: skip
            nn.init.zeros_(gate)
        for layer in self.global_layers:
            nn.init.normal_(layer.attn_gate, std=std)
            nn.init.normal_(layer.mlp_gate, std=std)

    def forward(
        self,
        images: torch.Tensor,
        aspect_ratio_ids: torch.Tensor,
        aspect_ratio_mask: torch.Tensor,
    ) -> torch.Tensor:
        """See the module docstring for shapes; returns ``[b, n_images * tiles * n_patches,
        out_dim]`` in the encoder's dtype."""
        cfg = self.config
        self.check_images(images)
        b, n_images, tiles = images.shape[:3]
        n = b * n_images
        dtype = self.patch_embedding.weight.dtype
        x = self.patch_embedding(images.reshape(n * tiles, *images.shape[3:]).to(dtype))
        x = x.flatten(2).transpose(1, 2)  # [n * tiles, patches, dim]
        ratio_ids = aspect_ratio_ids.reshape(n)
        x = self.pre_tile_embedding(x.reshape(n, tiles, -1, cfg.dim), ratio_ids)
        x = x.reshape(n * tiles, -1, cfg.dim)
        cls = self.class_embedding.to(x.dtype).expand(n * tiles, 1, cfg.dim)
        x = torch.cat([cls, x], dim=1).reshape(n, tiles, cfg.n_patches, cfg.dim)
        x = self.pre_norm(self.position_embedding(x, ratio_ids))
        padded = -(-cfg.n_patches // 8) * 8
        x = F.pad(x, (0, 0, 0, padded - cfg.n_patches))  # [n, tiles, padded, dim]
        mask = self._attention_mask(aspect_ratio_mask.reshape(n, tiles), padded)
        x = x.reshape(n, tiles * padded, cfg.dim)
        outputs = []
        for layer in self.layers:
            x = layer(x, mask)
            outputs.append(x)
        x = self.post_norm(x).reshape(n, tiles, padded, cfg.dim)
        x = self.post_tile_embedding(x, ratio_ids).reshape(n, tiles * padded, cfg.dim)
        for layer in self.global_layers:
            x = layer(x, mask)
        # each patch: the global output, then the intermediate outputs interleaved per channel
        kept = torch.stack([outputs[i] for i in cfg.intermediate_layers], dim=-1)
        x = torch.cat(
            [
                x.reshape(n, tiles, padded, cfg.dim)[:, :, : cfg.n_patches],
                kept.reshape(n, tiles, padded, -1)[:, :, : cfg.n_patches],
            ],
            dim=-1,
        )
        return self.projection(x).reshape(b, n_images * tiles * cfg.n_patches, -1)

    def check_images(self, images: torch.Tensor) -> None:
        """Raise a ValueError unless ``images`` is ``[b, n_images, max_num_tiles, channels,
        tile_size, tile_size]``."""
        cfg = self.config
        expected = (cfg.max_num_tiles, cfg.n_channels, cfg.tile_size, cfg.tile_size)
        if images.dim() != 6 or tuple(images.shape[2:]) != expected:
            raise ValueError(
                f"VisionEncoder: images must be [batch, images, {cfg.max_num_tiles}, "
                f"{cfg.n_channels}, {cfg.tile_size}, {cfg.tile_size}] (tiles padded to "
                f"max_num_tiles), got {tuple(images.shape)}"
            )

    def _attention_mask(self, tile_mask: torch.Tensor, padded: int) -> torch.Tensor:
        """``[images, tiles * padded, tiles * padded]`` bool: False only where both the
        query and the key are padding (a padding tile's token or a padding token)."""
        images, tiles = tile_mask.shape
        real = tile_mask.bool()[:, :, None].expand(images, tiles, padded).clone()
        real[:, :, self.config.n_patches :] = False
        real = real.reshape(images, tiles * padded)
        return real[:, :, None] | real[:, None, :]
