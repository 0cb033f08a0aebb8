"""``tt run``: validate the config, then run the recipe in-process or under torchrun."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tt_recipes.registry import load_run

USAGE = "tt run [torchrun options] RECIPE --config CONFIG [overrides ...]"
DESCRIPTION = """\
Run RECIPE (a name from `tt ls`, a torchtune name such as lora_finetune_distributed, or a
path to a recipe .py file) with CONFIG (a bundled config name or a YAML file). The config is
loaded, overridden and validated before anything else happens.

Without torchrun options the recipe runs in this process. With any torchrun option
(--nproc_per_node, --nnodes, --rdzv_endpoint, --standalone, ...) it is launched through
torch.distributed.run, one process per rank; `python -m torch.distributed.run --help`
lists them all.

overrides: key.sub=value (typed by YAML: 3, 1e-4, true, null, [1, 2]),
key=dotted.path (sets the _component_ of a component key), ~key (deletes a key).
"""
EPILOG = """\
examples:
  tt run lora_finetune --config tiny/lora epochs=2 optimizer.lr=1e-4
  tt run --nproc_per_node 2 full_finetune --config my.yaml optimizer=torch.optim.SGD
  tt run ./my_recipe.py --config my.yaml ~profiler
"""


def add_run_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``run`` for ``tt --help``; its arguments are parsed by :func:`run_command`."""
    parser = subparsers.add_parser(
        "run",
        help="run a recipe with a config (in-process or under torchrun)",
        usage=USAGE,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def split_torchrun_args(argv: Sequence[str]) -> tuple[list[str], str, list[str]]:
    """Split ``argv`` into (torchrun options, recipe, the recipe's own arguments).

    torchrun's own parser does the split, so an option takes a value exactly when torchrun
    says it does.
    """
    if argv and not argv[0].startswith("-"):  # no torchrun options: spare the torch import
        return [], argv[0], list(argv[1:])
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()
    parser.prog, parser.usage = "tt run", USAGE
    parsed = parser.parse_args(list(argv))
    n_options = len(argv) - len(parsed.training_script_args) - 1
    return list(argv[:n_options]), parsed.training_script, list(parsed.training_script_args)


def _recipe_args(argv: Sequence[str], recipe: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"tt run {recipe}", usage=USAGE)
    parser.add_argument("--config", required=True, help="bundled config name or YAML path")
    parser.add_argument("overrides", nargs="*", help="key=value, key=dotted.path, ~key")
    return parser.parse_intermixed_args(list(argv))


def torchrun_command(
    torchrun_options: Sequence[str], recipe: str, config: str, overrides: Sequence[str]
) -> list[str]:
    """The command that runs ``tt run RECIPE ...`` in every worker torchrun starts."""
    recipe = str(Path(recipe).resolve()) if recipe.endswith(".py") else recipe
    return [
        sys.executable,
        "-m",
        "tt_cli.launch",  # torch.distributed.run, quiet about what the workers report
        *torchrun_options,
        "--module",
        "tt_cli",
        "run",
        recipe,
        "--config",
        config,
        *overrides,
    ]


def run_command(argv: Sequence[str]) -> int:
    """``tt run``: 0 when the recipe finished, 1 when it failed (ConfigError propagates)."""
    torchrun_options, recipe_ref, rest = split_torchrun_args(argv)
    args = _recipe_args(rest, recipe_ref)
    if not torchrun_options:  # (under torchrun, rank 0 says what loading the config said)
        from tt_recipes.console import setup_logging

        setup_logging()
    recipe, cfg, path = load_run(recipe_ref, args.config, args.overrides)
    if torchrun_options:
        command = torchrun_command(
            torchrun_options, recipe_ref, str(path.resolve()), args.overrides
        )
        return _supervise(subprocess.Popen(command))
    try:
        recipe.main(cfg)
    except Exception as e:
        raise RunFailed(recipe.spec.name, e) from e
    return 0


class RunFailed(Exception):
    """A recipe raised: the CLI names the recipe and the error in one line."""

    def __init__(self, recipe: str, error: Exception) -> None:
        super().__init__(f"{recipe} failed: {type(error).__name__}: {error}")
        self.error = error


def _supervise(torchrun: subprocess.Popen) -> int:
    """Wait for torchrun; a SIGTERM sent to ``tt`` is passed on to it, and after Ctrl-C (which
    the terminal sends to every process of the job) wait for the workers to stop cleanly.
    The workers' rank 0 prints what happened; exit 130/143 for an interrupt, else 0 or 1."""
    signalled: list[int] = []

    def forward(signum: int, frame: object) -> None:
        signalled.append(128 + signum)
        torchrun.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                code = torchrun.wait()
                break
            except KeyboardInterrupt:
                signalled.append(128 + signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if signalled:
        return signalled[0]
    return code if code in (0, 130, 143) else 1
