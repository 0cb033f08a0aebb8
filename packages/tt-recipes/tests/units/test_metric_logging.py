"""Every metric logger writes what it was given: JSONL, wandb (offline), TensorBoard, MLflow
(a local file store), Comet (an offline archive).

The wandb, tensorboard, mlflow and comet extras are installed in the tt-recipes test session on purpose:
these tests must run, not skip.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
from tt_recipes.metric_logging import (
    CometLogger,
    DiskLogger,
    MLflowLogger,
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


def test_mlflow_logger_writes_metrics_params_and_samples(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # no database in a test
    uri = (tmp_path / "mlruns").as_uri()
    logger = MLflowLogger(experiment_name="tt-test", tracking_uri=uri, print_to_stdout=False)
    logger.log_config({"optimizer": {"lr": 0.1}, "seed": 3, "output_dir": "/o"})
    logger.log_dict({"loss": 2.5, "lr": 0.1}, step=1)
    logger.log_dict({"loss": 1.5, "lr": 0.1}, step=2)
    logger.log_samples([{"prompt": "1+1=", "completion": "2"}], step=2)
    run_id = logger._run_id
    logger.close()
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]
    assert history == [(1, 2.5), (2, 1.5)] and run.info.status == "FINISHED"
    assert run.data.params == {"optimizer.lr": "0.1", "seed": "3", "output_dir": "/o"}
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert artifacts == {"config.json", "samples"}
    resumed = MLflowLogger(tracking_uri=uri, run_id=run_id, print_to_stdout=False)
    resumed.log_config({"optimizer": {"lr": 0.2}, "seed": 3, "output_dir": "/o", "epochs": 2})
    assert "keeps its first values of optimizer.lr" in caplog.text
    resumed.resumed(2, "/o/step_2")
    resumed.log_dict({"loss": 1.0}, step=3)
    resumed.close()
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3]
    run = client.get_run(run_id)
    assert run.data.tags["resumed_at_step_2"] == "/o/step_2"
    assert (run.data.params["optimizer.lr"], run.data.params["epochs"]) == ("0.1", "2")


def test_comet_logger_offline_archives_metrics_and_params(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COMET_ERROR_TRACKING_ENABLE", raising=False)
    logger = CometLogger(project="tt-test", online=False, offline_directory=str(tmp_path),
                         log_code=False, print_to_stdout=False, display_summary_level=0)  # fmt: skip
    logger.log_config({"optimizer": {"lr": 0.1}})
    logger.log_dict({"loss": 2.5}, step=1)
    logger.log_dict({"loss": 1.5}, step=2)
    logger.close()
    (archive,) = tmp_path.glob("*.zip")
    with zipfile.ZipFile(archive) as z:
        messages = [json.loads(line) for line in z.read("messages.json").splitlines()]
    metrics = [m["payload"]["metric"] for m in messages if m["type"] == "metric_msg"]
    losses = [(m["step"], m["metricValue"]) for m in metrics if m["metricName"] == "loss"]
    assert losses == [(1, 2.5), (2, 1.5)]
    # comet_ml's own error reports to Sentry stay off unless the user turns them on
    assert os.environ["COMET_ERROR_TRACKING_ENABLE"] == "false"
    params = [m["payload"]["param"] for m in messages if m["type"] == "parameter_msg"]
    assert {"paramName": "optimizer.lr", "paramValue": "0.1"} in [
        {k: p[k] for k in ("paramName", "paramValue")} for p in params
    ]
