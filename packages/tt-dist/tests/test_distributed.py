"""Real multi-process runs under torchrun (gloo on CPU).

Tolerances: the 2-process and 1-process runs do the same fp32 math except for the order of
the gradient sum (reduce-scatter vs one batched matmul), a ~1e-7 relative difference. Mean
losses over 4 AdamW steps stay within LOSS_ATOL=1e-5; parameters within PARAM_ATOL=2e-5
(AdamW's update g/sqrt(v) amplifies that noise only on near-zero gradients, and each step
moves a weight by at most lr=1e-2, so 2e-5 is 0.2% of one step; measured: 3.5e-6).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import _ttdist_tiny as tiny
import pytest
import torch
import tt_dist

WORKER = Path(__file__).parent / "_ttdist_worker.py"
LOSS_ATOL, PARAM_ATOL = 1e-5, 2e-5
pytestmark = pytest.mark.timeout(180)


def _env() -> dict[str, str]:
    # one thread per process: several processes share 2 cores
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1"}


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def _launch(nproc: int, *worker_args: str) -> None:
    cmd = _torchrun("--standalone", f"--nproc_per_node={nproc}", str(WORKER), *worker_args)
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    # torch's report of collectives nobody waited for: their buffers may be written after
    # they are freed (this corrupted the heap when NF4 weights were gathered).
    assert "unwaited collective" not in result.stderr, result.stderr[-3000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _result(out: Path, name: str) -> tuple[list[float], dict[str, torch.Tensor]]:
    losses = json.loads((out / f"{name}.json").read_text())
    return losses, torch.load(out / f"{name}.pt", weights_only=True)


def _assert_same_weights(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=PARAM_ATOL, rtol=0, msg=key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """1 process x batch 4 for all steps, plus the initial weights the workers load."""
    out = tmp_path_factory.mktemp("reference")
    model = tiny.make_model()
    torch.save(model.state_dict(), out / "init.pt")
    losses = tiny.train(model, tiny.make_optimizer(model.parameters()), range(tiny.STEPS))
    assert len(set(losses)) == tiny.STEPS  # distinct batches, so matching is not trivial
    return out, losses, {k: v.clone() for k, v in model.state_dict().items()}


def _workdir(tmp_path: Path, reference) -> Path:
    (tmp_path / "init.pt").write_bytes((reference[0] / "init.pt").read_bytes())
    return tmp_path


def test_two_processes_match_one_then_resume_on_one(tmp_path, reference):
    _, ref_losses, ref_weights = reference
    out = _workdir(tmp_path, reference)
    _launch(2, "train_save", str(out))

    for name in ("fsdp", "oib"):  # plain AdamW; optimizer-in-backward + activation ckpt
        losses, weights = _result(out, name)
        assert losses == pytest.approx(ref_losses, abs=LOSS_ATOL, rel=0), name
        _assert_same_weights(weights, ref_weights)

    # the 2-process checkpoint from step 2 resumes in one process without a process group
    model = tiny.make_model(seed=123)  # different init: everything must come from the ckpt
    opt = tiny.make_optimizer(model.parameters())
    extra = tt_dist.load_distributed_state(out / "ckpt", model, opt)
    assert extra == {"step": 2}
    resumed = tiny.train(model, opt, range(2, tiny.STEPS))
    assert resumed == pytest.approx(ref_losses[2:], abs=LOSS_ATOL, rel=0)
    _assert_same_weights(model.state_dict(), ref_weights)


def test_one_process_checkpoint_resumes_on_two_nodes(tmp_path, reference):
    """Two torchrun launches (--nnodes 2, one process each) on a 127.0.0.1 rendezvous
    resume a checkpoint written by a single process and train together to the same result."""
    _, ref_losses, ref_weights = reference
    out = _workdir(tmp_path, reference)
    model = tiny.make_model()
    opt = tiny.make_optimizer(model.parameters())
    tiny.train(model, opt, range(2))
    tt_dist.save_distributed_state(out / "ckpt", model, opt, extra={"step": 2})

    port = _free_port()
    # static rendezvous: node 0 hosts the store at MASTER_ADDR:MASTER_PORT, node 1 joins it
    node_args = ["--nnodes=2", "--nproc_per_node=1", "--master_addr=127.0.0.1"]
    node_args += [f"--master_port={port}"]
    worker_args = [str(WORKER), "resume", str(out), str(out / "ckpt")]
    nodes = [
        subprocess.Popen(
            _torchrun(*node_args, f"--node_rank={rank}", *worker_args),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = [node.communicate(timeout=150)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(logs)[-6000:]
    losses, weights = _result(out, "resumed")
    assert losses == pytest.approx(ref_losses[2:], abs=LOSS_ATOL, rel=0)
    _assert_same_weights(weights, ref_weights)


def test_nf4_base_weights_load_shard_by_shard_from_meta(tmp_path, reference):
    """QLoRA under FSDP: each rank cuts its NF4 rows from the whole-tensor quantization (checked
    exactly in the worker), trains like one process with the same frozen NF4 weights, and
    gathers them whole again for export."""
    out = _workdir(tmp_path, reference)
    _launch(2, "nf4", str(out))
    model = tiny.quantize_fc1(tiny.make_model())
    trainable = [p for p in model.parameters() if p.requires_grad]
    ref_losses = tiny.train(model, tiny.make_optimizer(trainable), range(tiny.STEPS))
    losses, weights = _result(out, "nf4")
    assert losses == pytest.approx(ref_losses, abs=LOSS_ATOL, rel=0)
    want = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    _assert_same_weights(weights, want)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")  # a zombie is gone


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_workers_die_with_a_killed_launcher(tmp_path):
    """torchrun starts each worker in a session of its own: SIGKILL to the launcher's process
    group must not leave them running (they would go on writing checkpoints)."""
    cmd = _torchrun("--standalone", "--nproc_per_node=2", str(WORKER), "wait", str(tmp_path))
    launcher = subprocess.Popen(cmd, env=_env(), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    pid_files = [tmp_path / f"worker_{rank}.pid" for rank in (0, 1)]
    deadline = time.monotonic() + 120
    while not all(f.is_file() and f.read_text() for f in pid_files):
        assert launcher.poll() is None and time.monotonic() < deadline, "workers did not start"
        time.sleep(0.05)
    workers = [int(f.read_text()) for f in pid_files]
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers), "workers outlived the launcher"
