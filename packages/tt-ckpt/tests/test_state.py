from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch
from tt_ckpt import (
    CheckpointError,
    CorruptFileError,
    MissingFilesError,
    atomic_directory,
    load_training_state,
    save_training_state,
)


def test_training_state_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() | {"lr_lambdas": [None]},
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "data": {"epoch": 1, "position": 123},
    }
    save_training_state(tmp_path / "step_1" / "state.pt", state)
    loaded = load_training_state(tmp_path / "step_1" / "state.pt")
    assert loaded["data"] == {"epoch": 1, "position": 123}
    assert torch.equal(loaded["torch_rng"], state["torch_rng"])
    assert tuple(loaded["python_rng"][1]) == state["python_rng"][1]
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(loaded["optimizer"])
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(fresh.state_dict()["state"][0][key], state["optimizer"]["state"][0][key])
    assert [p.name for p in (tmp_path / "step_1").iterdir()] == ["state.pt"]  # no temp file


def test_training_state_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "state.pt"
    save_training_state(path, {"ratio": Fraction(1, 3)})  # pickles, but is not allow-listed
    with pytest.raises(CheckpointError, match=r"state.pt holds objects that torch.load\(weights"):
        load_training_state(path)


def test_training_state_must_be_a_dict(tmp_path):
    with pytest.raises(TypeError, match=r"state must be a dict, got list"):
        save_training_state(tmp_path / "s.pt", [1, 2])


def test_load_training_state_errors(tmp_path):
    with pytest.raises(MissingFilesError, match=r"the training-state file s.pt.*empty"):
        load_training_state(tmp_path / "s.pt")
    save_training_state(tmp_path / "s.pt", {"step": torch.arange(100)})
    data = (tmp_path / "s.pt").read_bytes()
    (tmp_path / "s.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=r"cannot read .*s.pt"):
        load_training_state(tmp_path / "s.pt")


def test_atomic_directory_success_renames(tmp_path):
    final = tmp_path / "out" / "step_1"
    with atomic_directory(final) as tmp:
        assert tmp.parent == final.parent and tmp != final and not final.exists()
        (tmp / "a.txt").write_text("new")
    assert (final / "a.txt").read_text() == "new"
    assert [p.name for p in final.parent.iterdir()] == ["step_1"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_directory_error_leaves_nothing(tmp_path, error):
    final = tmp_path / "step_1"
    with pytest.raises(type(error)):
        with atomic_directory(final) as tmp:
            (tmp / "half.txt").write_text("half")
            raise error
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_replaces_existing_only_on_success(tmp_path):
    final = tmp_path / "step_1"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("crash mid-save")
    assert [p.name for p in final.iterdir()] == ["old.txt"]
    with atomic_directory(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["step_1"]


def test_atomic_directory_over_a_file(tmp_path):
    (tmp_path / "step_1").write_text("a file")
    with pytest.raises(CheckpointError, match=r"step_1: a file with that name exists"):
        with atomic_directory(tmp_path / "step_1"):
            pass
    assert [p.name for p in tmp_path.iterdir()] == ["step_1"]
