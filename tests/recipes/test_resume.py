"""A run killed with SIGKILL after checkpoint k resumes mid-epoch with the losses of a run
that was never interrupted (CPU, same seed, same data): optimizer, schedule, RNG and data
position all come back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from recipe_testing import FAST_FULL, RESUMABLE, losses, records, run_recipe
from tt_recipes.checkpointing import complete_step_dirs

TWO_MODELS = str(Path(__file__).parent / "two_models_recipe.py")


def _start(
    output_dir: Path,
    recipe: str = "full_finetune",
    overrides: tuple[str, ...] = tuple(RESUMABLE),
    torchrun: tuple[str, ...] = (),
    config: str = "tiny/full",
) -> subprocess.Popen:
    """``tt run`` in its own process group (to be SIGKILLed), on one thread. A different thread
    count sums in another order: the RL resume comparisons run every part through here."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TT_DEBUG": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tt_cli",
            "run",
            *torchrun,
            recipe,
            "--config",
            config,
            f"output_dir={output_dir}",
            *overrides,
        ],  # fmt: skip
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: torchrun's workers die with it
    )


def _kill_after_checkpoint(proc: subprocess.Popen, output_dir: Path, step: int) -> None:
    deadline = time.monotonic() + 240
    while not (output_dir / f"step_{step}").is_dir():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {step}: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no checkpoint step_{step} within 240 s")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.timeout(600)
def test_sigkill_then_resume_gives_the_uninterrupted_losses(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    run_recipe("full_finetune", "tiny/full", [f"output_dir={reference}", *RESUMABLE])
    expected = losses(reference / "logs")
    assert sorted(expected) == list(range(1, 25))  # 2 epochs x 12 steps

    killed = tmp_path / "killed"
    proc = _start(killed)
    _kill_after_checkpoint(proc, killed, step=15)  # mid-way through epoch 2
    assert proc.returncode == -signal.SIGKILL
    saved = [int(p.name.split("_")[1]) for p in complete_step_dirs(killed)]
    assert 15 in saved and max(saved) < 24, f"unexpected checkpoints {saved}"

    run_recipe(
        "full_finetune",
        "tiny/full",
        [f"output_dir={killed}", *RESUMABLE, "resume_from_checkpoint=true"],
    )
    resumed = losses(killed / "logs")
    assert sorted(resumed) == sorted(expected)
    for step in expected:
        assert resumed[step] == expected[step], f"step {step}: {resumed[step]} != {expected[step]}"
    assert [p.name for p in complete_step_dirs(killed)][-1] == "step_24"


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="holds no complete step_N checkpoint"):
        run_recipe(
            "full_finetune",
            "tiny/full",
            [f"output_dir={tmp_path}", *FAST_FULL, "resume_from_checkpoint=true"],
        )


def _records(log_dir: Path, key: str) -> dict[int, float]:
    return {step: record[key] for step, record in records(log_dir, key).items()}


@pytest.mark.timeout(600)
def test_two_trained_models_resume_bit_identically_after_sigkill(tmp_path: Path) -> None:
    """Both models' weights and optimizers, both schedules, RNG and data position."""
    reference = tmp_path / "reference"
    run_recipe(TWO_MODELS, "tiny/full", [f"output_dir={reference}", *RESUMABLE])
    killed = tmp_path / "killed"
    proc = _start(killed, TWO_MODELS)
    _kill_after_checkpoint(proc, killed, step=15)
    assert (killed / "step_15" / "policy" / "config.json").is_file()
    assert (killed / "step_15" / "value" / "model.safetensors").is_file()
    run_recipe(
        TWO_MODELS, "tiny/full", [f"output_dir={killed}", *RESUMABLE, "resume_from_checkpoint=true"]
    )
    for key in ("loss", "value_loss"):
        expected, resumed = _records(reference / "logs", key), _records(killed / "logs", key)
        assert sorted(expected) == list(range(1, 25))
        for step in range(16, 25):
            assert resumed[step] == expected[step], f"{key} step {step}"


@pytest.mark.timeout(900)
def test_two_trained_models_from_two_processes_resume_on_one(tmp_path: Path) -> None:
    """Written by 2 processes (batch 4 each), resumed by 1 (batch 8): the same global batch.
    The resumed losses follow a 1-process run to 1e-5 relative (gradients summed in another
    order on 2 processes differ by ~1e-7; see test_distributed), not bit for bit."""
    one = tmp_path / "one"
    run_recipe(TWO_MODELS, "tiny/full", [f"output_dir={one}", *RESUMABLE])
    two = tmp_path / "two"
    overrides = (*RESUMABLE, "batch_size=4")
    proc = _start(two, TWO_MODELS, overrides, torchrun=("--nproc_per_node", "2"))
    _kill_after_checkpoint(proc, two, step=15)
    run_recipe(
        TWO_MODELS, "tiny/full", [f"output_dir={two}", *RESUMABLE, "resume_from_checkpoint=true"]
    )
    for key in ("loss", "value_loss"):
        expected, resumed = _records(one / "logs", key), _records(two / "logs", key)
        for step in range(16, 25):
            assert resumed[step] == pytest.approx(expected[step], rel=1e-5), f"{key} {step}"


def test_a_resumed_log_has_every_step_once_and_marks_the_resume(tmp_path: Path) -> None:
    """A run killed after its checkpoint at step 9 had logged later steps; the resumed run
    logs them again, so the interrupted run's records after the checkpoint are dropped."""
    import json
    import shutil

    run_recipe("full_finetune", "tiny/full", [f"output_dir={tmp_path}", *RESUMABLE, "epochs=1"])
    log = tmp_path / "logs" / "metrics.jsonl"
    with log.open("a") as f:  # a record the resumed run must not keep
        f.write(json.dumps({"step": 13, "loss": 99.0}) + "\n")
    shutil.rmtree(tmp_path / "step_12")  # so the latest checkpoint is step_9
    run_recipe(
        "full_finetune",
        "tiny/full",
        [f"output_dir={tmp_path}", *RESUMABLE, "epochs=2", "resume_from_checkpoint=true"],
    )
    records = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == sorted(set(steps)), steps
    marks = [(r["step"], r["resumed_from"]) for r in records if "resumed_from" in r]
    assert marks == [(9, str(tmp_path / "step_9"))]
    assert 99.0 not in [r.get("loss") for r in records]
    assert steps[-1] == 24


def _run_rl(recipe: str, out: Path, overrides: list[str]) -> None:
    """``tt run <recipe> --config tiny/<recipe>`` as `_start` does it, waited for."""
    proc = _start(out, recipe, tuple(overrides), config=f"tiny/{recipe}")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]


def grpo_overrides(base: Path, out: Path) -> list[str]:
    """12 GRPO steps of 4 prompts x 4 completions from tiny/full, a checkpoint every 3."""
    return [
        f"output_dir={out}",
        f"checkpointer.checkpoint_dir={base}",
        "dataset.n=48",
        "batch_size=4",
        "num_generations=4",
        "max_new_tokens=4",
        "~dataset_val",
        "run_val_every_n_steps=null",
        "save_every_n_steps=3",
        "log_every_n_steps=1",
    ]


@pytest.mark.timeout(600)
def test_grpo_resumes_after_sigkill_with_the_same_rollouts_and_losses(
    tiny_full_run: Path, tmp_path: Path
) -> None:
    """Completions are seeded by (seed, step, prompt row, sample): the resumed run samples,
    scores and trains on exactly what the uninterrupted one did."""
    reference = tmp_path / "reference"
    _run_rl("grpo", reference, grpo_overrides(tiny_full_run, reference))
    killed = tmp_path / "killed"
    proc = _start(killed, "grpo", tuple(grpo_overrides(tiny_full_run, killed)), config="tiny/grpo")
    _kill_after_checkpoint(proc, killed, step=6)
    _run_rl("grpo", killed, [*grpo_overrides(tiny_full_run, killed), "resume_from_checkpoint=true"])
    for key in ("loss", "reward", "completions/mean_length"):
        expected, resumed = _records(reference / "logs", key), _records(killed / "logs", key)
        assert sorted(resumed) == sorted(expected) == list(range(1, 13))
        for step in range(7, 13):
            assert resumed[step] == expected[step], f"{key} step {step}"


def ppo_overrides(base: Path, out: Path) -> list[str]:
    """6 PPO steps of 4 prompts from tiny/full (verifiable reward), a checkpoint every 3."""
    return [
        f"output_dir={out}",
        f"checkpointer.checkpoint_dir={base}",
        "dataset.n=24",
        "batch_size=4",
        "max_new_tokens=4",
        "~dataset_val",
        "run_val_every_n_steps=null",
        "save_every_n_steps=3",
        "log_every_n_steps=1",
        "kl_target=0.1",  # the adaptive KL coefficient is part of the state too
    ]


@pytest.mark.timeout(600)
def test_ppo_resumes_after_sigkill_with_the_same_rollouts_losses_and_value_model(
    tiny_full_run: Path, tmp_path: Path
) -> None:
    """Both models, both optimizers, the KL controller, the RNG and the prompt position come
    back from a run SIGKILLed after its checkpoint at step 3."""
    import torch
    from safetensors.torch import load_file

    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    _run_rl("ppo", reference, ppo_overrides(tiny_full_run, reference))
    proc = _start(resumed, "ppo", tuple(ppo_overrides(tiny_full_run, resumed)), config="tiny/ppo")
    _kill_after_checkpoint(proc, resumed, step=3)
    assert proc.returncode == -signal.SIGKILL
    assert not (resumed / "step_6").exists()
    _run_rl("ppo", resumed, [*ppo_overrides(tiny_full_run, resumed), "resume_from_checkpoint=true"])
    for key in ("policy_loss", "value_loss", "score", "kl", "kl_coef"):
        expected, got = _records(reference / "logs", key), _records(resumed / "logs", key)
        assert sorted(got) == sorted(expected) == list(range(1, 7))
        for step in range(4, 7):
            assert got[step] == expected[step], f"{key} step {step}"
    for part in ("policy", "value"):
        want = load_file(reference / "step_6" / part / "model.safetensors")
        have = load_file(resumed / "step_6" / part / "model.safetensors")
        assert want.keys() == have.keys()
        for name in want:
            assert torch.equal(want[name], have[name]), f"{part} {name}"
