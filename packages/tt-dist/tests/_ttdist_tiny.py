"""A tiny language model, data and training loop shared by the tests and the torchrun worker."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

VOCAB, DIM, SEQ, GLOBAL_BATCH, STEPS = 64, 32, 8, 4, 4
LR = 1e-2


class Block(nn.Module):
    """Pre-norm residual MLP block: enough structure for FSDP units and checkpointing."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(DIM)
        self.fc1 = nn.Linear(DIM, 2 * DIM)
        self.fc2 = nn.Linear(2 * DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList([Block(), Block()])
        self.norm = nn.LayerNorm(DIM)
        self.output = nn.Linear(DIM, VOCAB, bias=False)
        # stands in for a RoPE cache: derived, so not in the state dict
        self.register_buffer("pos_scale", torch.empty(SEQ, 1), persistent=False)
        init_buffers(self)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok_embeddings(tokens) * self.pos_scale[: tokens.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.output(self.norm(x))


def init_buffers(model: TinyLM) -> None:
    model.pos_scale.copy_(torch.linspace(1.0, 1.5, SEQ, device=model.pos_scale.device)[:, None])


def make_model(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM()


def quantize_fc1(model: TinyLM) -> TinyLM:
    """QLoRA-style frozen NF4 base weights on every block's fc1 (torchao; works on meta too).

    fc1 is [64, 32]: 32 blocks of 64 values, 2 second-level scale groups of 16 blocks, so
    FSDP can split it over 2 ranks."""
    from torchao.quantization import to_nf4

    for block in model.layers:
        weight = to_nf4(block.fc1.weight.detach(), 64, 16)
        block.fc1.weight = nn.Parameter(weight, requires_grad=False)
    return model


def dequantized(weight: torch.Tensor) -> torch.Tensor:
    return weight.get_original_weight()


def make_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=LR, weight_decay=0.01)


def global_batch(step: int) -> torch.Tensor:
    """The same [GLOBAL_BATCH, SEQ + 1] tokens for a step in every process."""
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ + 1), generator=gen)


def loss_on(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def train(model: nn.Module, optimizer, steps: range, rank: int = 0, world: int = 1) -> list[float]:
    """Data parallel: rank r takes rows r*b..(r+1)*b of each global batch; returns mean losses."""
    losses = []
    for step in steps:
        loss = loss_on(model, global_batch(step).chunk(world)[rank])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        reported = loss.detach().clone()
        if world > 1:
            dist.all_reduce(reported, op=dist.ReduceOp.AVG)
        losses.append(reported.item())
    return losses
