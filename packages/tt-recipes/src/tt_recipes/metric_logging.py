"""Metric loggers: stdout, JSONL on disk, Weights & Biases, TensorBoard, MLflow, Comet.

Every logger has ``log_dict(metrics, step)``, ``log_samples(samples, step)`` (a few example
records, e.g. RL's prompt / completion / reward), ``log_config(config)``, ``resumed(step,
checkpoint)`` and ``close()``; recipes log through one of them. Loggers only write on rank 0.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def format_metrics(metrics: Mapping[str, float], step: int) -> str:
    """One human-readable line: ``step 20 | loss 1.2345 | lr 3.0e-04 | ...``."""
    parts = [f"step {step}"]
    for key, value in metrics.items():
        if isinstance(value, float):
            text = (
                f"{value:.2e}"
                if key == "lr" or (value != 0 and abs(value) < 1e-3)
                else f"{value:.4g}"
            )
        else:
            text = str(value)
        parts.append(f"{key} {text}")
    return " | ".join(parts)


class MetricLogger(Protocol):
    def log_dict(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_config(self, config: Mapping[str, Any]) -> None: ...
    def log_samples(self, samples: list[Mapping[str, Any]], step: int) -> None: ...
    def resumed(self, step: int, checkpoint: str) -> None: ...
    def close(self) -> None: ...


class MultiLogger:
    """Several loggers at once, e.g. a DiskLogger and a WandBLogger::

        metric_logger:
          _component_: tt_recipes.metric_logging.MultiLogger
          loggers:
            - {_component_: tt_recipes.metric_logging.DiskLogger, log_dir: ${output_dir}/logs}
            - {_component_: tt_recipes.metric_logging.TensorBoardLogger, log_dir: ${output_dir}/tb}

    Each call goes to every logger that has the method (a user's own logger may lack some).
    """

    def __init__(self, loggers: list[Any]) -> None:
        if not loggers:
            raise ValueError("MultiLogger needs at least one logger in loggers")
        self.loggers = list(loggers)

    def _each(self, method: str, *args: Any) -> None:
        for logger in self.loggers:
            call = getattr(logger, method, None)
            if call is not None:
                call(*args)

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        self._each("log_dict", metrics, step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self._each("log_config", config)

    def log_samples(self, samples: list[Mapping[str, Any]], step: int) -> None:
        self._each("log_samples", samples, step)

    def resumed(self, step: int, checkpoint: str) -> None:
        self._each("resumed", step, checkpoint)

    def close(self) -> None:
        self._each("close")


class ValidationRecord:
    """Remembers the validation metrics a run logs, for its end-of-run summary: the last value
    of each and the best (lowest for losses and KL, highest otherwise) with its step."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.best: dict[str, tuple[float, int]] = {}

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            if not name.startswith("val_") or not isinstance(value, (int, float)):
                continue
            self.last[name] = float(value)
            lower = "loss" in name or "kl" in name
            best = self.best.get(name)
            if best is None or (value < best[0] if lower else value > best[0]):
                self.best[name] = (float(value), step)

    def lines(self) -> list[str]:
        return [
            f"{name} {value:.4g} (best {self.best[name][0]:.4g} at step {self.best[name][1]})"
            for name, value in self.last.items()
        ]


def format_sample(sample: Mapping[str, Any], width: int = 60) -> str:
    """``prompt 'What is 2 + 2?' | completion '4' | reward 1``, texts cut to ``width``."""
    parts = []
    for key, value in sample.items():
        if isinstance(value, float):
            text = f"{value:.4g}"
        else:
            value = str(value)
            text = repr(value if len(value) <= width else value[:width] + "...")
        parts.append(f"{key} {text}")
    return " | ".join(parts)


def format_samples(samples: list[Mapping[str, Any]]) -> str:
    """Samples in full, one paragraph each: the text a dashboard's sample panel shows."""
    return "\n\n".join(format_sample(sample, width=10_000) for sample in samples)


class StdoutLogger:
    """Prints one line per log call (through tqdm.write so a progress bar stays intact)."""

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        if not _is_rank_zero():
            return
        from tqdm import tqdm

        tqdm.write(format_metrics(metrics, step), file=sys.stdout)

    def log_samples(self, samples: list[Mapping[str, Any]], step: int) -> None:
        if not _is_rank_zero():
            return
        from tqdm import tqdm

        for sample in samples:
            tqdm.write(f"step {step} sample | {format_sample(sample)}", file=sys.stdout)

    def log_config(self, config: Mapping[str, Any]) -> None:
        pass

    def resumed(self, step: int, checkpoint: str) -> None:
        pass

    def close(self) -> None:
        pass


class DiskLogger:
    """Appends one JSON object per log call to ``<log_dir>/metrics.jsonl`` and also prints."""

    def __init__(self, log_dir: str, filename: str = "metrics.jsonl", print_to_stdout: bool = True):
        self.path = Path(log_dir) / filename
        self._stdout = StdoutLogger() if print_to_stdout else None
        self._file = None
        if _is_rank_zero():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        if self._file is not None:
            record = {"step": step, "time": time.time(), **metrics}
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._stdout is not None:
            self._stdout.log_dict(metrics, step)

    def log_samples(self, samples: list[Mapping[str, Any]], step: int) -> None:
        if self._file is not None:
            record = {"step": step, "time": time.time(), "samples": list(samples)}
            self._file.write(json.dumps(record, default=str) + "\n")
            self._file.flush()
        if self._stdout is not None:
            self._stdout.log_samples(samples, step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        if _is_rank_zero():
            (self.path.parent / "config.json").write_text(json.dumps(config, indent=2, default=str))

    def resumed(self, step: int, checkpoint: str) -> None:
        """Drop what the interrupted run logged after ``step`` (the resumed run logs those
        steps again) and mark where it resumed: every step appears once."""
        if self._file is None:
            return
        self._file.close()
        kept = [
            line
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        kept.append(json.dumps({"step": step, "time": time.time(), "resumed_from": checkpoint}))
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("\n".join(kept) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)
        self._file = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class WandBLogger:
    """Weights & Biases; ``mode="offline"`` (or WANDB_MODE=offline) logs without network."""

    def __init__(
        self,
        project: str = "tt",
        log_dir: str | None = None,
        mode: str | None = None,
        name: str | None = None,
        print_to_stdout: bool = True,
        **init_kwargs: Any,
    ):
        try:
            import wandb
        except ImportError as e:
            raise ImportError(
                "metric_logger WandBLogger needs wandb: pip install 'tt-recipes[wandb]'"
            ) from e
        self._stdout = StdoutLogger() if print_to_stdout else None
        self._run = None
        if _is_rank_zero():
            if log_dir is not None:
                Path(log_dir).mkdir(parents=True, exist_ok=True)
            self._run = wandb.init(
                project=project, dir=log_dir, mode=mode, name=name, **init_kwargs
            )

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        if self._run is not None:
            self._run.log(dict(metrics), step=step)
        if self._stdout is not None:
            self._stdout.log_dict(metrics, step)

    def log_samples(self, samples: list[Mapping[str, Any]], step: int) -> None:
        if self._run is not None and samples:
            import wandb

            columns = list(samples[0])
            table = wandb.Table(
                columns=columns, data=[[s.get(c) for c in columns] for s in samples]
            )
            self._run.log({"samples": table}, step=step)
        if self._stdout is not None:
            self._stdout.log_samples(samples, step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        if self._run is not None:
            self._run.config.update(dict(config), allow_val_change=True)

    def resumed(self, step: int, checkpoint: str) -> None:
        pass  # a new W&B run; steps before this one are in the interrupted run

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


class TensorBoardLogger:
    """TensorBoard event files under ``log_dir``."""

    def __init__(self, log_dir: str, print_to_stdout: bool = True):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                "metric_logger TensorBoardLogger needs tensorboard: "
                "pip install 'tt-recipes[tensorboard]'"
            ) from e
        self._stdout = StdoutLogger() if print_to_stdout else None
        self._writer = SummaryWriter(log_dir=log_dir) if _is_rank_zero() else None

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        if self._writer is not None:
            for key, value in metrics.items():
                self._writer.add_scalar(key, value, global_step=step)
            self._writer.flush()
        if self._stdout is not None:
            self._stdout.log_dict(metrics, step)

    def log_samples(self, samples: list[Mapping[str, Any]], step: int) -> None:
        if self._writer is not None:
            text = format_samples(samples)
            self._writer.add_text("samples", text, global_step=step)
        if self._stdout is not None:
            self._stdout.log_samples(samples, step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        if self._writer is not None:
            self._writer.add_text("config", json.dumps(config, indent=2, default=str))

    def resumed(self, step: int, checkpoint: str) -> None:
        if self._writer is not None:
            self._writer.add_text("resumed_from", checkpoint, global_step=step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``config`` as ``{"a.b": "value"}``: trackers whose parameters are flat strings."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flat_params(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return flat


class MLflowLogger:
    """An MLflow run in ``experiment_name`` at ``tracking_uri`` (else MLflow's own default:
    ``MLFLOW_TRACKING_URI``). ``run_id`` continues an existing run, as after a resume."""

    def __init__(
        self,
        experiment_name: str | None = None,
        tracking_uri: str | None = None,
        run_id: str | None = None,
        run_name: str | None = None,
        print_to_stdout: bool = True,
    ):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise ImportError(
                "metric_logger MLflowLogger needs mlflow: pip install 'tt-recipes[mlflow]'"
            ) from e
        self._stdout = StdoutLogger() if print_to_stdout else None
        self._client, self._run_id = None, None
        if not _is_rank_zero():
            return
        self._client = MlflowClient(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
        self._run_id = run_id or os.environ.get("MLFLOW_RUN_ID")
        if self._run_id is None:
            name = experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME", "tt")
            experiment = self._client.get_experiment_by_name(name)
            experiment_id = (
                experiment.experiment_id if experiment else self._client.create_experiment(name)
            )
            self._run_id = self._client.create_run(experiment_id, run_name=run_name).info.run_id

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        if self._client is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
            self._client.log_batch(self._run_id, metrics=batch)
        if self._stdout is not None:
            self._stdout.log_dict(metrics, step)

    def log_samples(self, samples: list[Mapping[str, Any]], step: int) -> None:
        if self._client is not None and samples:
            text = format_samples(samples)
            self._client.log_text(self._run_id, text, f"samples/step_{step}.txt")
        if self._stdout is not None:
            self._stdout.log_samples(samples, step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        if self._client is not None:
            from mlflow.entities import Param

            # A run's parameters cannot change (a resumed run keeps its first values).
            logged = self._client.get_run(self._run_id).data.params
            flat = flat_params(config)
            changed = sorted(k for k, v in flat.items() if logged.get(k, v) != v)
            if changed:
                logger.warning(
                    "MLflow run %s keeps its first values of %s; the config now differs",
                    self._run_id,
                    ", ".join(changed),
                )
            params = [Param(k, v) for k, v in flat.items() if k not in logged]
            for start in range(0, len(params), 100):  # MLflow takes 100 params per batch
                self._client.log_batch(self._run_id, params=params[start : start + 100])
            self._client.log_dict(self._run_id, dict(config), "config.json")

    def resumed(self, step: int, checkpoint: str) -> None:
        if self._client is not None:
            self._client.set_tag(self._run_id, f"resumed_at_step_{step}", checkpoint)

    def close(self) -> None:
        if self._client is not None:
            self._client.set_terminated(self._run_id)
            self._client = None


class CometLogger:
    """A Comet experiment (``comet_ml.start``); ``online=False`` writes it to a local archive
    (``offline_directory``, or COMET_OFFLINE_DIRECTORY) for ``comet upload`` later."""

    def __init__(
        self,
        api_key: str | None = None,
        workspace: str | None = None,
        project: str | None = None,
        experiment_key: str | None = None,
        mode: str | None = None,
        online: bool | None = None,
        experiment_name: str | None = None,
        tags: list[str] | None = None,
        log_code: bool = True,
        print_to_stdout: bool = True,
        **config_kwargs: Any,
    ):
        # comet_ml sends its own errors to Comet's Sentry from half the processes that import
        # it (offline runs included); off unless the user turns it on.
        os.environ.setdefault("COMET_ERROR_TRACKING_ENABLE", "false")
        try:
            import comet_ml
        except ImportError as e:
            raise ImportError(
                "metric_logger CometLogger needs comet_ml: pip install 'tt-recipes[comet]'"
            ) from e
        self._stdout = StdoutLogger() if print_to_stdout else None
        self._experiment = None
        if _is_rank_zero():
            config = comet_ml.ExperimentConfig(
                log_code=log_code, tags=tags, name=experiment_name, **config_kwargs
            )
            self._experiment = comet_ml.start(
                api_key=api_key, workspace=workspace, project=project,
                experiment_key=experiment_key, mode=mode, online=online,
                experiment_config=config,
            )  # fmt: skip

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        if self._experiment is not None:
            self._experiment.log_metrics(dict(metrics), step=step)
        if self._stdout is not None:
            self._stdout.log_dict(metrics, step)

    def log_samples(self, samples: list[Mapping[str, Any]], step: int) -> None:
        if self._experiment is not None and samples:
            text = format_samples(samples)
            self._experiment.log_text(text, step=step)
        if self._stdout is not None:
            self._stdout.log_samples(samples, step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        if self._experiment is not None:
            self._experiment.log_parameters(flat_params(config))

    def resumed(self, step: int, checkpoint: str) -> None:
        if self._experiment is not None:
            self._experiment.log_other(f"resumed_at_step_{step}", checkpoint)

    def close(self) -> None:
        if self._experiment is not None:
            self._experiment.end()
            self._experiment = None
