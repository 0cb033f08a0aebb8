"""Launched by torchrun from test_distributed.py: `worker.py SCENARIO OUT_DIR [CKPT_DIR]`.

train_save: meta init -> shard -> load full weights -> 2 steps -> DCP save -> 2 more steps;
            then the same with optimizer-in-backward and activation checkpointing.
resume:     sharded model restored from CKPT_DIR, trained to the end.
wait:       write this worker's pid to OUT_DIR/worker_RANK.pid and idle (killed by the test).
nf4:        meta init with NF4 fc1 weights -> shard -> load full-precision weights; each rank
            checks its NF4 shard against the whole-tensor quantization, then trains; the
            gathered full state dict holds the whole NF4 weights.
Rank 0 writes losses and the gathered final weights to OUT_DIR.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import _ttdist_tiny as tiny  # noqa: E402
import tt_dist  # noqa: E402


def sharded_model(out: Path, nf4: bool = False) -> torch.nn.Module:
    with torch.device("meta"):
        model = tiny.TinyLM()
    if nf4:
        tiny.quantize_fc1(model)
    tt_dist.shard_model(
        model, block_classes=[tiny.Block], shard_embeddings=True, custom_sharded_layers=["output"]
    )
    full = torch.load(out / "init.pt", mmap=True, weights_only=True)
    tt_dist.load_full_state_dict(model, full, "cpu", init_buffers=tiny.init_buffers)
    world = tt_dist.get_world_size()
    for name, param in model.named_parameters():
        # each rank materialised only its torch.chunk share of dim 0, never the full tensor
        rows = -(-param.shape[0] // world)
        assert param.to_local().shape[0] <= rows, (name, param.to_local().shape, rows)
    return model


def check_nf4_shards(out: Path, model: torch.nn.Module, rank: int, world: int) -> None:
    """Each rank's NF4 shard equals its rows of the whole tensor quantized in one process,
    and owns storage for those rows only (not a view of the whole quantized tensor)."""
    whole = tiny.make_model()
    whole.load_state_dict(torch.load(out / "init.pt", weights_only=True))
    tiny.quantize_fc1(whole)
    for mine, ref in zip(model.layers, whole.layers):
        local = mine.fc1.weight.to_local()
        want = ref.fc1.weight.chunk(world)[rank]
        assert type(local).__name__ == "NF4Tensor", type(local)
        assert torch.equal(tiny.dequantized(local), tiny.dequantized(want))
        codes = local.quantized_data
        assert codes.untyped_storage().nbytes() == codes.numel() * codes.element_size()


def check_gathered_nf4(out: Path, model: torch.nn.Module) -> None:
    """The full state dict gathers each NF4 weight whole (equal to quantizing it whole)."""
    full = tt_dist.gather_full_state_dict(model)
    if not tt_dist.is_rank_zero():
        assert full == {}
        return
    whole = tiny.make_model()
    whole.load_state_dict(torch.load(out / "init.pt", weights_only=True))
    tiny.quantize_fc1(whole)
    for index, ref in enumerate(whole.layers):
        gathered = full[f"layers.{index}.fc1.weight"]
        assert type(gathered).__name__ == "NF4Tensor", type(gathered)
        assert torch.equal(tiny.dequantized(gathered), tiny.dequantized(ref.fc1.weight))


def save_result(
    out: Path, name: str, model: torch.nn.Module, losses: list[float], trainable_only=False
) -> None:
    full = tt_dist.gather_full_state_dict(model, trainable_only=trainable_only)
    if tt_dist.is_rank_zero():
        torch.save(full, out / f"{name}.pt")
        (out / f"{name}.json").write_text(json.dumps(losses))


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    info = tt_dist.init_distributed()
    if scenario == "wait":  # for the test that kills the launcher: say who we are, then idle
        (out / f"worker_{info.rank}.pid").write_text(str(os.getpid()))
        time.sleep(120)
        return
    rank, world = info.rank, info.world_size
    model = sharded_model(out, nf4=scenario == "nf4")
    opt = tiny.make_optimizer([p for p in model.parameters() if p.requires_grad])
    if scenario == "train_save":
        losses = tiny.train(model, opt, range(2), rank, world)
        tt_dist.save_distributed_state(out / "ckpt", model, opt, extra={"step": 2})
        losses += tiny.train(model, opt, range(2, tiny.STEPS), rank, world)
        save_result(out, "fsdp", model, losses)
        model = sharded_model(out)
        tt_dist.apply_activation_checkpointing(model, lambda _n, m: isinstance(m, tiny.Block))
        oib = tt_dist.optimizer_in_backward(model, tiny.make_optimizer)
        save_result(out, "oib", model, tiny.train(model, oib, range(tiny.STEPS), rank, world))
    elif scenario == "resume":
        step = tt_dist.load_distributed_state(sys.argv[3], model, opt)["step"]
        save_result(
            out, "resumed", model, tiny.train(model, opt, range(step, tiny.STEPS), rank, world)
        )
    elif scenario == "nf4":
        check_nf4_shards(out, model, rank, world)
        losses = tiny.train(model, opt, range(tiny.STEPS), rank, world)
        save_result(out, "nf4", model, losses, trainable_only=True)
        check_gathered_nf4(out, model)
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    tt_dist.destroy_distributed()


if __name__ == "__main__":
    main()
