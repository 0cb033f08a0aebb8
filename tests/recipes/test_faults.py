"""Faults a run meets, through the real `tt` command: a full disk during each kind of save,
Ctrl-C (SIGINT) and SIGTERM in the middle of a step and in the middle of a save, on 1 and
2 processes. Each ends with one clear last line and the right exit code, leaves no temporary
files, and the previous checkpoint resumes with exactly the losses of an uninterrupted run.
Faults are injected by tests/faults/sitecustomize.py in every process the test starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from recipe_testing import RESUMABLE, losses, run_recipe

FAULTS = Path(__file__).parents[1] / "faults"
RUN = RESUMABLE  # 24 steps in 2 epochs, a checkpoint every 3, each step logged


def tt(*args: str, fault: str | None = None, after: int = 0, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(FAULTS)}
    if fault:
        env.update(TT_FAULT=fault, TT_FAULT_AFTER=str(after), TT_FAULT_SECONDS="30")
    return subprocess.Popen(
        [sys.executable, "-m", "tt_cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **popen,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def last_line(err: str) -> str:
    return [line for line in err.splitlines() if line.strip()][-1]


def leftovers(root: Path) -> list[str]:
    """Hidden temporary files or directories a save left behind."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if p.name != ".metadata")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    out = tmp_path_factory.mktemp("reference")
    run_recipe("full_finetune", "tiny/full", [f"output_dir={out}", *RUN])
    return losses(out / "logs")


def resume_and_compare(out: Path, reference: dict[int, float], first: int, rel: float = 0) -> None:
    run_recipe(
        "full_finetune", "tiny/full", [f"output_dir={out}", *RUN, "resume_from_checkpoint=true"]
    )
    resumed = losses(out / "logs")
    for step in range(first + 1, 25):
        assert resumed[step] == pytest.approx(reference[step], rel=rel, abs=0), step
    assert leftovers(out) == []


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["state", "model"])
def test_a_full_disk_during_a_checkpoint(tmp_path: Path, reference: dict, kind: str) -> None:
    """The first checkpoint (step 3) is written, the second (step 6) meets a full disk."""
    out = tmp_path / "run"
    proc = tt("run", "full_finetune", "--config", "tiny/full", f"output_dir={out}", *RUN,
              fault=f"full_{kind}", after=1)  # fmt: skip
    code, err = finish(proc)
    assert code == 1, err
    line = last_line(err)
    assert line.startswith(
        f"tt: full_finetune failed: CheckpointSaveError: no space left on device while saving {out / 'step_6'}"
    ), err
    assert f"the last complete checkpoint is {out / 'step_3'}" in line
    assert "MiB are free there" in line and "resume with resume_from_checkpoint=true" in line
    assert "Traceback" not in err and "set TT_DEBUG" not in err, err
    assert leftovers(out) == [] and sorted(p.name for p in out.glob("step_*")) == ["step_3"]
    resume_and_compare(out, reference, first=3)


def test_a_full_disk_while_saving_an_adapter(tiny_full_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    proc = tt("run", "lora_finetune", "--config", "tiny/lora", f"output_dir={out}",
              f"checkpointer.checkpoint_dir={tiny_full_run}", "dataset.n=96", "batch_size=16",
              "~dataset_val", "run_val_every_n_steps=null", "save_every_n_steps=null",
              fault="full_adapter")  # fmt: skip
    code, err = finish(proc)
    assert code == 1, err
    assert "no space left on device while saving" in last_line(err), err
    assert "no checkpoint was saved yet" in last_line(err)
    assert leftovers(out) == [] and not list(out.glob("step_*"))


def test_a_full_disk_while_saving_a_quantized_model(tiny_full_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8"
    proc = tt("run", "quantize", "--config", "tiny/quantize", f"checkpoint_dir={tiny_full_run}",
              f"output_dir={out}", fault="full_quantized")  # fmt: skip
    code, err = finish(proc)
    assert code == 1, err
    assert f"no space left on device while saving {out}: it needs about" in last_line(err), err
    assert not out.exists() and leftovers(tmp_path) == []


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.02)


def logged_steps(out: Path) -> int:
    log = out / "logs" / "metrics.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


INTERRUPTS = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated (SIGTERM)")}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("nproc", [1, 2])
@pytest.mark.parametrize("when", ["mid-step", "mid-save"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_stops_cleanly_and_the_run_resumes_exactly(
    tmp_path: Path, reference: dict, nproc: int, when: str, signum: int
) -> None:
    """SIGINT goes to the whole process group (what Ctrl-C in a terminal does); SIGTERM to
    the `tt` process only (what a scheduler does), which passes it on to torchrun."""
    out = tmp_path / "run"
    torchrun = ["--nproc_per_node", "2"] if nproc == 2 else []
    batch = ["batch_size=4"] if nproc == 2 else []  # the same global batch of 8
    mid_save = when == "mid-save"
    proc = tt("run", *torchrun, "full_finetune", "--config", "tiny/full", f"output_dir={out}",
              *RUN, *batch, fault="slow_state" if mid_save else None, after=1)  # fmt: skip
    if mid_save:  # the second save (step 6) stalls with its shards half-written
        wait_for(lambda: (out / ".step_6.state.tmp").exists(), proc, "save of step 6")
    else:
        wait_for(lambda: logged_steps(out) >= 8, proc, "step 8")
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    code, err = finish(proc)
    expected_code, how = INTERRUPTS[signum]
    assert code == expected_code, err
    line = last_line(err)
    assert line.startswith(f"tt: {how} at step "), err
    assert "the last complete checkpoint is" in line and "resume_from_checkpoint=true" in line
    assert leftovers(out) == [], leftovers(out)
    saved = sorted(int(p.name[5:]) for p in out.glob("step_*"))
    assert saved and saved[-1] < 24
    # checkpoints of 2 processes resume on 1 to float tolerance (see test_distributed)
    resume_and_compare(out, reference, first=saved[-1], rel=1e-5 if nproc == 2 else 0)
