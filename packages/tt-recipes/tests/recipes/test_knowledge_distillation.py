"""knowledge_distillation with the tiny model trained by tiny/full as the teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
from recipe_testing import records, run_recipe

FAST_KD = [
    "dataset.n=1920",  # 60 steps of 32
    "~dataset_val",
    "run_val_every_n_steps=null",
    "log_every_n_steps=1",
    "save_every_n_steps=null",
]


def run_kd(out: Path, teacher: Path, *overrides: str) -> dict[int, dict[str, float]]:
    run_recipe(
        "knowledge_distillation",
        "tiny/kd",
        [f"output_dir={out}", f"teacher.checkpoint_dir={teacher}", *FAST_KD, *overrides],
    )
    return records(out / "logs", "kl")


def test_a_student_that_is_the_teacher_starts_at_zero_kl(tiny_full_run: Path, tmp_path: Path):
    steps = run_kd(tmp_path, tiny_full_run, f"checkpointer.checkpoint_dir={tiny_full_run}",
                   "~model", "max_steps_per_epoch=2")  # fmt: skip
    assert steps[1]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert steps[1]["loss"] == pytest.approx(0.5 * steps[1]["ce"], rel=1e-5)


def test_a_small_student_learns_the_teachers_distributions(tiny_full_run: Path, tmp_path: Path):
    steps = run_kd(tmp_path, tiny_full_run)
    first, last = steps[1], steps[max(steps)]
    # measured: KL 5.0 -> 0.06 and CE 6.3 -> 1.1 over 60 steps
    assert last["kl"] < 0.1 * first["kl"], (first, last)
    assert last["ce"] < 0.3 * first["ce"], (first, last)


def test_teacher_and_student_vocabularies_must_match(tiny_full_run: Path, tmp_path: Path):
    with pytest.raises(ValueError, match=r"has a vocabulary of 512 tokens, the student 640"):
        run_kd(tmp_path, tiny_full_run, "model.vocab_size=640")
