"""``torch.profiler`` around a training loop, configured by a run's ``profiler`` section.

    profiler:
      enabled: true
      wait_steps: 1      # steps skipped first (start-up, allocator warm-up)
      warmup_steps: 1    # traced but discarded (the profiler's own start-up)
      active_steps: 2    # recorded
      num_cycles: 1

Each recorded cycle writes, under ``output_dir`` (default ``<run output_dir>/profile``):
``trace_step<N>.json``, a Chrome trace (open it in https://ui.perfetto.dev or
chrome://tracing), and ``ops_step<N>.txt``, the operators sorted by their own time, so a
step's breakdown (matrix products, attention, elementwise, optimizer) reads without a viewer.
In a multi-process run every rank writes its own files (``_rank<R>`` in the names).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig

from tt_recipes.config import ConfigKey

log = logging.getLogger("tt")

PROFILER_KEY = ConfigKey(
    keys={
        "enabled": ConfigKey(bool, default=False),
        "cpu": ConfigKey(bool, default=True, doc="record CPU operators"),
        "cuda": ConfigKey(bool, default=True, doc="record CUDA kernels (on a CUDA device)"),
        "output_dir": ConfigKey(str | None, default=None, doc="default <output_dir>/profile"),
        "wait_steps": ConfigKey(int, default=1, min=0, doc="steps before tracing starts"),
        "warmup_steps": ConfigKey(int, default=1, min=0, doc="traced steps discarded"),
        "active_steps": ConfigKey(int, default=2, min=1, doc="steps recorded per cycle"),
        "num_cycles": ConfigKey(int, default=1, min=1, doc="wait/warmup/active repetitions"),
        "record_shapes": ConfigKey(bool, default=False, doc="operator input shapes"),
        "profile_memory": ConfigKey(bool, default=False, doc="tensor allocations"),
        "with_stack": ConfigKey(bool, default=False, doc="Python stacks (large traces)"),
        "with_flops": ConfigKey(bool, default=False, doc="FLOP estimates of matmul/conv"),
    },
    default={"enabled": False},
    doc="torch.profiler traces of some training steps",
)


def output_dir(cfg: DictConfig) -> Path:
    """Where a run's traces go."""
    return Path(cfg.profiler.output_dir or Path(cfg.output_dir) / "profile")


@contextmanager
def profiled(
    cfg: DictConfig, device: torch.device, rank: int, world_size: int, step: Callable[[], int]
) -> Iterator[torch.profiler.profile | None]:
    """A ``torch.profiler.profile`` for the loop to step once per training step, or None when
    ``profiler.enabled`` is false. ``step()`` is the run's step, which names the files (a
    resumed run counts on from where it was). CPU operators are recorded (``cpu``), and CUDA
    kernels on a CUDA device (``cuda``)."""
    section = cfg.get("profiler")
    if section is None or not section.enabled:
        yield None
        return
    where = output_dir(cfg)
    where.mkdir(parents=True, exist_ok=True)
    suffix = f"_rank{rank}" if world_size > 1 else ""
    cuda = section.get("cuda", True) and device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] if section.get("cpu", True) else []
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    if not activities:
        raise ValueError(
            f"profiler.cpu is false and the run is on {device.type}, so there is nothing to "
            "record; set profiler.cpu: true (or run on a CUDA device with profiler.cuda: true)"
        )
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"

    def write(prof: torch.profiler.profile) -> None:
        last = step()
        trace = where / f"trace_step{last}{suffix}.json"
        prof.export_chrome_trace(str(trace))
        table = prof.key_averages(group_by_input_shape=section.record_shapes).table(
            sort_by=sort_by, row_limit=60
        )
        (where / f"ops_step{last}{suffix}.txt").write_text(table + "\n")
        log.info(f"Profiler: steps up to {last} traced in {trace} (open in ui.perfetto.dev)")

    first = step() + section.wait_steps + section.warmup_steps + 1
    log.info(
        f"Profiler on: {section.active_steps} step(s) from step {first}, "
        f"{section.num_cycles} cycle(s), written to {where}"
    )
    profiler = torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(
            wait=section.wait_steps,
            warmup=section.warmup_steps,
            active=section.active_steps,
            repeat=section.num_cycles,
        ),
        on_trace_ready=write,
        record_shapes=section.record_shapes,
        profile_memory=section.profile_memory,
        with_stack=section.with_stack,
        with_flops=section.with_flops,
    )
    with profiler:
        yield profiler
