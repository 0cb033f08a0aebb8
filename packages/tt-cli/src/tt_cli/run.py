"""``tt run``: validate the config, then run the recipe in-process or under torchrun."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tt_recipes.config import prepare_config
from tt_recipes.registry import load_recipe, resolve_config

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
        "torch.distributed.run",
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
    recipe = load_recipe(recipe_ref)
    path, _ = resolve_config(args.config)
    cfg = prepare_config(recipe.spec, path, args.overrides, source=args.config)
    if torchrun_options:
        command = torchrun_command(
            torchrun_options, recipe_ref, str(path.resolve()), args.overrides
        )
        return 0 if subprocess.call(command) == 0 else 1
    recipe.main(cfg)
    return 0
