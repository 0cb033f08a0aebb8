"""Every metric logger writes what it was given: JSONL, wandb (offline), TensorBoard.

The wandb and tensorboard extras are installed in the tt-recipes test session on purpose:
these tests must run, not skip.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tt_recipes.metric_logging import (
    DiskLogger,
    StdoutLogger,
    TensorBoardLogger,
    WandBLogger,
    format_metrics,
)


def test_format_metrics_is_one_readable_line() -> None:
    line = format_metrics({"loss": 1.23456, "lr": 3e-4, "tokens_per_s": 1234.5}, step=7)
    assert line == "step 7 | loss 1.235 | lr 3.00e-04 | tokens_per_s 1234"


def test_stdout_logger_prints(capsys: pytest.CaptureFixture) -> None:
    StdoutLogger().log_dict({"loss": 2.0}, step=1)
    assert "step 1 | loss 2" in capsys.readouterr().out


def test_disk_logger_appends_jsonl_and_config(tmp_path: Path) -> None:
    logger = DiskLogger(str(tmp_path), print_to_stdout=False)
    logger.log_config({"lr": 0.1})
    logger.log_dict({"loss": 2.5}, step=1)
    logger.log_dict({"loss": 1.5, "lr": 0.1}, step=2)
    logger.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == [(1, 2.5), (2, 1.5)]
    assert json.loads((tmp_path / "config.json").read_text()) == {"lr": 0.1}


def test_disk_logger_writes_nothing_on_other_ranks(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "1")
    logger = DiskLogger(str(tmp_path / "logs"))
    logger.log_dict({"loss": 1.0}, step=1)
    logger.close()
    assert not (tmp_path / "logs").exists()


def test_wandb_logger_offline_writes_a_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandBLogger(project="tt-test", log_dir=str(tmp_path), print_to_stdout=False)
    logger.log_config({"lr": 0.1})
    logger.log_dict({"loss": 2.5}, step=1)
    logger.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), "no offline run file written"


def test_tensorboard_logger_writes_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), print_to_stdout=False)
    logger.log_dict({"loss": 2.5}, step=1)
    logger.log_dict({"loss": 1.5}, step=2)
    logger.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 2.5), (2, 1.5)]


def test_multi_logger_sends_every_call_to_each_logger_that_has_it(tmp_path: Path) -> None:
    from tt_recipes.metric_logging import MultiLogger

    class Minimal:  # a user's logger with log_dict alone
        def __init__(self) -> None:
            self.seen: list = []

        def log_dict(self, metrics, step) -> None:
            self.seen.append((dict(metrics), step))

    disk, minimal = DiskLogger(str(tmp_path), print_to_stdout=False), Minimal()
    both = MultiLogger([disk, minimal])
    both.log_config({"lr": 1e-3})
    both.log_dict({"loss": 0.5}, step=1)
    both.resumed(1, "step_1")
    both.close()
    assert minimal.seen == [({"loss": 0.5}, 1)]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"loss": 0.5, "step": 1} in [{k: r[k] for k in ("loss", "step") if k in r} for r in rows]
    with pytest.raises(ValueError, match="at least one logger"):
        MultiLogger([])


def test_validation_record_keeps_the_last_and_best_of_each_metric() -> None:
    from tt_recipes.metric_logging import ValidationRecord

    record = ValidationRecord()
    record.log_dict({"loss": 9.0, "val_loss": 0.5, "val_accuracy": 0.6}, step=10)
    record.log_dict({"val_loss": 0.3, "val_accuracy": 0.9}, step=20)
    record.log_dict({"val_loss": 0.4, "val_accuracy": 0.8}, step=30)
    assert record.lines() == [
        "val_loss 0.4 (best 0.3 at step 20)",
        "val_accuracy 0.8 (best 0.9 at step 20)",
    ]
