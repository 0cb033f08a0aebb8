"""dpo on the tiny model trained by tiny/full: it starts at ln 2 (policy = reference), learns
a preference from a JSONL file, splits batches like SFT does, and refuses what it cannot train
on. (The arithmetic preference on the fully trained tiny model runs in the integration test of
the tiny default.)"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from recipe_testing import losses, preference_file_overrides, records, run_recipe
from tt_recipes import from_pretrained
from tt_recipes.checkpointing import complete_step_dirs

FAST_DPO = [
    "epochs=1",
    "batch_size=32",
    "log_every_n_steps=1",
    "save_every_n_steps=null",
    "run_val_every_n_steps=20",
]


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return preference_file_overrides(tmp_path_factory.mktemp("pairs"), train_pairs=1280)


def run_dpo(out: Path, checkpoint: Path, *overrides: str) -> dict[int, dict[str, float]]:
    run_recipe(
        "dpo",
        "tiny/dpo",
        [f"output_dir={out}", f"checkpointer.checkpoint_dir={checkpoint}", *FAST_DPO, *overrides],
    )
    return records(out / "logs", "loss")


@pytest.mark.parametrize("peft", ["lora", "qlora", "full"])
def test_dpo_starts_at_ln2_and_learns_the_preference(
    tiny_full_run: Path, tmp_path: Path, pair_files: list[str], peft: str
) -> None:
    overrides = {
        "lora": [],
        "qlora": ["peft.quantize_base=true"],  # the reference is the NF4 base
        "full": ["peft=null", "optimizer.lr=1e-4"],
    }[peft]
    train = run_dpo(tmp_path, tiny_full_run, *pair_files, *overrides)
    first = train[1]
    # the adapters start at zero / the copy equals the policy: every pair scores z = 0
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/margin"] == pytest.approx(0.0, abs=1e-6)
    last = [train[s] for s in sorted(train)[-10:]]
    # measured: ~0.27 and ~1.2 (LoRA and full)
    assert sum(r["loss"] for r in last) / 10 < 0.45, "the DPO loss did not fall"
    assert sum(r["rewards/margin"] for r in last) / 10 > 0.5, "the margin did not grow"
    val = records(tmp_path / "logs", "val_loss")
    assert val[40]["val_loss"] < val[20]["val_loss"] < math.log(2)
    assert val[40]["val_rewards/accuracy"] > 0.9
    (step_dir,) = complete_step_dirs(tmp_path)
    assert (step_dir / "adapter").is_dir() == (peft != "full")
    trained = from_pretrained(step_dir).state_dict()
    start = from_pretrained(complete_step_dirs(tiny_full_run)[-1]).state_dict()
    assert any(not torch.equal(trained[k], start[k]) for k in start), "no weight changed"


def test_dpo_micro_batches_give_the_updates_of_the_whole_batch(
    tiny_full_run: Path, tmp_path: Path, pair_files: list[str]
) -> None:
    """The loss is averaged over all pairs of the step, however they are split."""
    common = [
        *pair_files,
        "max_steps_per_epoch=3",
        "~dataset_val",
        "run_val_every_n_steps=null",
        "optimizer._component_=torch.optim.SGD",
        "~optimizer.weight_decay",
        "~optimizer.betas",
        "optimizer.lr=1.0",
        "clip_grad_norm=null",
    ]
    run_dpo(tmp_path / "a", tiny_full_run, *common, "batch_size=8")
    run_dpo(tmp_path / "b", tiny_full_run, *common, "batch_size=2", "gradient_accumulation_steps=4")
    a, b = losses(tmp_path / "a" / "logs"), losses(tmp_path / "b" / "logs")
    assert a.keys() == b.keys() == {1, 2, 3}
    assert a[3] != pytest.approx(math.log(2), abs=1e-3), "the policy did not move"
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("peft", ["lora", "full"])
def test_dpo_resumes_with_the_losses_of_an_uninterrupted_run(
    tiny_full_run: Path, tmp_path: Path, pair_files: list[str], peft: str
) -> None:
    """Resuming rebuilds the reference from the starting model, not from the checkpoint."""
    common = [
        *pair_files,
        "max_steps_per_epoch=6",
        "batch_size=8",
        "save_every_n_steps=3",
        "~dataset_val",
        "run_val_every_n_steps=null",
        *(["peft=null", "optimizer.lr=1e-4"] if peft == "full" else []),
    ]
    uninterrupted = run_dpo(tmp_path, tiny_full_run, *common)
    shutil.rmtree(tmp_path / "step_6")  # as if the run had died after saving step 3
    resumed = run_dpo(tmp_path, tiny_full_run, *common, "resume_from_checkpoint=true")
    assert sorted(resumed) == list(range(1, 7))
    assert resumed[6]["loss"] < resumed[1]["loss"]
    for step in (4, 5, 6):  # the resumed run's records come last in the log
        assert resumed[step]["loss"] == pytest.approx(uninterrupted[step]["loss"], rel=1e-6)


def test_dpo_refuses_sft_data_and_a_missing_starting_model(
    tiny_full_run: Path, tmp_path: Path
) -> None:
    with pytest.raises(
        ValueError, match=r"recipe needs preference pairs, but the dataset.s samples"
    ):
        run_dpo(tmp_path, tiny_full_run, "dataset._component_=tt_data.synthetic_arithmetic")
    with pytest.raises(ValueError, match="dpo starts from a trained model"):
        run_recipe(
            "dpo", "tiny/dpo", [f"output_dir={tmp_path}", "checkpointer.checkpoint_dir=null"]
        )
