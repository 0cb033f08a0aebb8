"""``tt plot RUN [RUN ...]``: a run's curves from its metrics.jsonl, several runs overlaid.

Reads what the DiskLogger wrote (``<output_dir>/logs/metrics.jsonl``, or any metrics.jsonl
under the directory) and draws one panel per metric present: training loss, validation loss,
learning rate, tokens/s and, for RL runs, rewards and reward-model scores. matplotlib is an
optional extra (``pip install tt-cli[plot]``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tt_recipes.config import ConfigError

# Panels in the order drawn: (metric key, title); a panel is drawn when any run logged it.
PANELS = (
    ("loss", "training loss"),
    ("val_loss", "validation loss"),
    ("lr", "learning rate"),
    ("tokens_per_s", "tokens/s"),
    ("reward", "reward"),
    ("score", "reward-model score"),
    ("val_reward", "validation reward"),
    ("val_accuracy", "validation accuracy"),
)


def metrics_file(run_dir: Path) -> Path:
    """The metrics.jsonl of a run directory (its logs/ first)."""
    if run_dir.is_file() and run_dir.suffix == ".jsonl":
        return run_dir
    candidates = [run_dir / "logs" / "metrics.jsonl", *sorted(run_dir.rglob("metrics.jsonl"))]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no metrics.jsonl under '{run_dir}': give the output_dir of a run that logged with "
        "tt_recipes.metric_logging.DiskLogger (the default metric_logger)"
    )


def read_curves(path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """metric -> (steps, values) from one metrics.jsonl; lines that are not metrics (the
    config, resume markers, a line cut short by a crash) are skipped."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                steps, values = curves.setdefault(key, ([], []))
                steps.append(record["step"])
                values.append(float(value))
    return curves


def plot_runs(run_dirs: Sequence[Path], output: Path) -> list[str]:
    """Draw the runs' curves into ``output`` (PNG); returns the panels drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ConfigError(
            "tt plot needs matplotlib: pip install 'tt-cli[plot]' (or pip install matplotlib)"
        ) from e
    runs = {str(d): read_curves(metrics_file(d)) for d in run_dirs}
    panels = [(key, title) for key, title in PANELS if any(key in c for c in runs.values())]
    if not panels:
        raise ConfigError(
            f"the runs logged none of the metrics tt plots ({', '.join(k for k, _ in PANELS)})"
        )
    columns = min(2, len(panels))
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.2 * rows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels):
        for name, curves in runs.items():
            if key in curves:
                ax.plot(*curves[key], label=name, marker="o" if len(curves[key][0]) < 20 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        if key in ("loss", "val_loss") and all(
            min(c[key][1]) > 0 for c in runs.values() if key in c
        ):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return [title for _, title in panels]
