"""Benchmark: host memory per rank while 2 processes load a QLoRA model from a checkpoint.

Two ways to get from a bf16 HF checkpoint to an FSDP2-sharded QLoRA model (NF4 base weights on
every linear layer of the blocks, LoRA adapters), both with the recipes' own functions:

    whole : every rank loads the whole model (``training.build_model``), quantizes it
            (``tt_recipes.adapters.add_adapters``) and shards it after (``training.shard``);
            what ``lora_finetune`` did before NF4 shards could be loaded from meta.
    meta  : ``training.load_sharded_model``: the model is built on the meta device, quantized
            and sharded there, then each rank quantizes one weight at a time from the
            memory-mapped checkpoint and keeps only its rows.

Each worker samples its own ``/proc/self/status`` every 5 ms. Reported per rank: the peak of
RssAnon (anonymous memory: what the process itself allocated; the mmapped checkpoint's pages
are page cache shared by both ranks and are not in it), the peak of VmRSS (both), and RssAnon
once loading is done. Both a bf16 checkpoint (the ``whole`` path then uses the mmapped
tensors as they are, without a private copy) and an fp32 one (the ``whole`` path casts: a
private bf16 copy of the whole model per rank, as it would on a GPU) are measured.

    uv run python bench/sharded_load_memory.py            # ~1 GB checkpoint, writes JSON
    uv run python bench/sharded_load_memory.py --quick    # small model, no JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "sharded_load_memory_cpu.json"
# ~0.5B parameters (bf16 checkpoint of ~1 GB), Llama-shaped with GQA.
MODEL = {"vocab_size": 32_000, "dim": 2048, "n_layers": 8, "n_heads": 16, "n_kv_heads": 4,
         "hidden_dim": 5632}  # fmt: skip
QUICK_MODEL = {"vocab_size": 4_000, "dim": 512, "n_layers": 2, "n_heads": 8, "n_kv_heads": 4,
               "hidden_dim": 1536}  # fmt: skip
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MIB = 2**20


class MemorySampler(threading.Thread):
    """Peak RssAnon and VmRSS of this process, sampled every 5 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = {"RssAnon": 0, "VmRSS": 0}
        self._done = threading.Event()

    @staticmethod
    def now() -> dict[str, int]:
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("RssAnon", "VmRSS"):
                fields[name] = int(value.split()[0]) * 1024
        return fields

    def run(self) -> None:
        while not self._done.is_set():
            for name, value in self.now().items():
                self.peak[name] = max(self.peak[name], value)
            time.sleep(0.005)

    def stop(self) -> None:
        self._done.set()
        self.join()


def worker(mode: str, checkpoint: str, out: str) -> None:
    import tt_dist
    from omegaconf import OmegaConf
    from tt_recipes import training
    from tt_recipes.adapters import add_adapters

    info = tt_dist.init_distributed()
    cfg = OmegaConf.create(
        {
            "checkpointer": {"checkpoint_dir": checkpoint, "checkpoint_files": None},
            "enable_activation_checkpointing": False,
            "fsdp_reshard_after_forward": True,
            "fsdp_cpu_offload": False,
            "custom_sharded_layers": None,
            "seed": 0,
            "peft": {"rank": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": TARGETS,
                     "use_dora": False, "use_rslora": False, "quantize_base": True},
        }
    )  # fmt: skip
    sampler = MemorySampler()
    before = sampler.now()["RssAnon"]
    sampler.start()
    start = time.perf_counter()
    if mode == "whole":
        model = add_adapters(training.build_model(cfg, info.device, torch.bfloat16), cfg)
        training.shard(model, cfg)
    else:
        model = training.load_sharded_model(cfg, info.device, torch.bfloat16, add_adapters)
    seconds = time.perf_counter() - start
    after = sampler.now()["RssAnon"]
    sampler.stop()
    result = {
        "rank": info.rank,
        "load_seconds": round(seconds, 2),
        "peak_rss_anon_mib": round((sampler.peak["RssAnon"] - before) / MIB),
        "peak_vm_rss_mib": round(sampler.peak["VmRSS"] / MIB),
        "rss_anon_after_load_mib": round((after - before) / MIB),
    }
    Path(out).with_suffix(f".rank{info.rank}.json").write_text(json.dumps(result))
    del model
    tt_dist.destroy_distributed()


def make_checkpoint(directory: Path, shape: dict, dtype: torch.dtype) -> int:
    import tt_models
    from tt_recipes import save_pretrained

    torch.manual_seed(0)
    model = tt_models.transformer_decoder(**shape, dtype=dtype)
    save_pretrained(model, directory, config_updates={"eos_token_id": 2, "pad_token_id": 0})
    return sum(p.numel() for p in model.parameters())


def launch(mode: str, checkpoint: Path, out: Path) -> list[dict]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={port}", __file__, "--worker", mode, str(checkpoint), str(out)]  # fmt: skip
    # glibc otherwise keeps freed large blocks in the heap after its mmap threshold adapts,
    # which makes RssAnon track allocation history instead of live memory.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{mode} workers failed:\n{done.stdout[-3000:]}{done.stderr[-6000:]}")
    return [json.loads(out.with_suffix(f".rank{r}.json").read_text()) for r in (0, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model, no JSON")
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "CHECKPOINT", "OUT"))
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    shape = QUICK_MODEL if args.quick else MODEL
    runs, sizes = {}, {}
    for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = Path(tmp) / "model"
            params = make_checkpoint(checkpoint, shape, dtype)
            size = sum(f.stat().st_size for f in checkpoint.glob("*.safetensors"))
            sizes[dtype_name] = round(size / MIB)
            print(f"{dtype_name} checkpoint: {params / 1e6:.0f}M parameters, {size / MIB:.0f} MiB")
            for mode in ("whole", "meta"):
                name = f"{dtype_name}_checkpoint/{mode}"
                runs[name] = launch(mode, checkpoint, Path(tmp) / mode)
                for rank in runs[name]:
                    print(f"{name:>22} rank {rank['rank']}: {rank}")
    if args.quick:
        return
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "bench/sharded_load_memory.py",
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU (gloo)",
                "torch": torch.__version__,
                "load_average_1min": os.getloadavg()[0],
                "model": shape,
                "parameters": params,
                "checkpoint_mib": sizes,
                "training_dtype": "bf16",
                "qlora_targets": TARGETS,
                "processes": 2,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
