"""CUDA-only paths: mixed precision, CPU offload, activation offloading (CI has no GPU).

Each test prints the peak GPU memory with and without the feature (run with -s to see it).
"""

import socket

import _ttdist_tiny as tiny
import pytest
import torch
import torch.nn.functional as F
import tt_dist
from torch import nn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
DIM, LAYERS, VOCAB, BATCH, SEQ = 1024, 4, 512, 8, 256


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(DIM, 4 * DIM), nn.Linear(4 * DIM, DIM)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(x)))


def make_model():
    torch.manual_seed(0)
    layers = [nn.Embedding(VOCAB, DIM), *[Block() for _ in range(LAYERS)], nn.Linear(DIM, VOCAB)]
    return nn.Sequential(*layers)


@pytest.fixture
def one_gpu_group(monkeypatch):
    """A one-process NCCL group, enough to run FSDP2 on one GPU."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for name, value in {**env, "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    info = tt_dist.init_distributed()
    yield info
    tt_dist.destroy_distributed()


def step_peak_memory(model, offload_activations=False) -> tuple[float, float]:
    """(loss, peak MiB) of one forward + backward on a fixed batch."""
    torch.manual_seed(1)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with tt_dist.activation_offloading(offload_activations, device="cuda"):
        logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
    loss.backward()
    torch.cuda.synchronize()
    return loss.item(), torch.cuda.max_memory_allocated() / 2**20


def sharded(**options):
    model = make_model().cuda()
    return tt_dist.shard_model(model, block_classes=[Block], **options)


def test_mixed_precision_computes_in_bf16_and_keeps_fp32_params(one_gpu_group):
    fp32_loss, fp32_peak = step_peak_memory(sharded(mixed_precision=False))
    model = sharded()  # None -> bf16 params, fp32 reduce on CUDA
    bf16_loss, bf16_peak = step_peak_memory(model)
    print(f"\nmixed precision peak MiB: fp32 {fp32_peak:.0f}, bf16 {bf16_peak:.0f}")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    assert bf16_loss == pytest.approx(fp32_loss, rel=2e-2)
    assert bf16_peak < fp32_peak


def test_cpu_offload_keeps_sharded_state_on_cpu(one_gpu_group):
    loss, peak = step_peak_memory(sharded(mixed_precision=False))
    model = sharded(mixed_precision=False, cpu_offload=True)
    offloaded_loss, offloaded_peak = step_peak_memory(model)
    print(f"\nCPU offload peak MiB: without {peak:.0f}, with {offloaded_peak:.0f}")
    assert all(p.to_local().device.type == "cpu" for p in model.parameters())
    assert offloaded_loss == pytest.approx(loss, rel=1e-5)
    assert offloaded_peak < peak


def test_activation_offloading_same_gradients_less_memory():
    model = make_model().cuda()
    loss, peak = step_peak_memory(model)
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    offloaded_loss, offloaded_peak = step_peak_memory(model, offload_activations=True)
    print(f"\nactivation offloading peak MiB: without {peak:.0f}, with {offloaded_peak:.0f}")
    assert offloaded_loss == loss
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, want[name], msg=name)
    assert offloaded_peak < peak


def test_nf4_shards_load_onto_the_gpu_from_meta(one_gpu_group):
    full = tiny.make_model(seed=3).state_dict()
    with torch.device("meta"):
        model = tiny.quantize_fc1(tiny.TinyLM())
    tt_dist.shard_model(model, block_classes=[tiny.Block], mixed_precision=False)
    torch.cuda.reset_peak_memory_stats()
    tt_dist.load_full_state_dict(model, full, "cuda", init_buffers=tiny.init_buffers)
    want = tiny.quantize_fc1(tiny.make_model(seed=3).cuda())
    for mine, ref in zip(model.layers, want.layers):
        local = mine.fc1.weight.to_local()
        assert local.quantized_data.device.type == "cuda"
        assert torch.equal(tiny.dequantized(local), tiny.dequantized(ref.fc1.weight))
    x = tiny.global_batch(0)[:, :-1].cuda()
    torch.testing.assert_close(model(x), want(x), atol=0, rtol=0)
