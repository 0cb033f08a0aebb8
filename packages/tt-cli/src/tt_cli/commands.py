"""``tt ls``, ``tt cp``, ``tt cat``, ``tt validate`` and ``tt download``."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from tt_recipes import registry
from tt_recipes.config import ConfigError, ConfigKey, RecipeSpec
from tt_recipes.config._errors import did_you_mean
from tt_recipes.config._types import type_name


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    )


def cmd_ls(args: argparse.Namespace) -> int:
    """Recipes with their bundled configs and aliases, or one recipe's config keys."""
    if args.recipe:
        recipe = registry.load_recipe(args.recipe)
        print(f"{recipe.spec.name}: {recipe.spec.description}\n")
        print(_table([["KEY", "TYPE", "DEFAULT", "DESCRIPTION"], *_key_rows(recipe.spec)]))
        return 0
    rows = [["RECIPE", "CONFIG", "ALIASES"]]
    for name in registry.available_recipes():
        spec = registry.load_recipe(name).spec
        configs = sorted(c for c, r in registry.CONFIGS.items() if r == name) or ["-"]
        aliases = ", ".join([*spec.aliases, *registry.aliases_of(name)]) or "-"
        shown = [_with_torchtune_names(config) for config in configs]
        rows.append([name, shown[0], aliases])
        rows.extend(["", config, ""] for config in shown[1:])
    print(_table(rows) if len(rows) > 1 else "no recipes installed")
    return 0


def _with_torchtune_names(config: str) -> str:
    names = registry.torchtune_names_of(config)
    return f"{config} (torchtune: {', '.join(names)})" if names else config


def _key_rows(spec: RecipeSpec) -> list[list[str]]:
    rows = []

    def add(prefix: str, keys: dict[str, ConfigKey]) -> None:
        for name, key in keys.items():
            kind = "component" if key.component else type_name(key.type) if key.type else "any"
            default = "(required)" if key.required else repr(key.default)
            rows.append([prefix + name, kind, default, key.doc])
            if key.keys:
                add(f"{prefix}{name}.", dict(key.keys))

    add("", dict(spec.keys))
    return rows


def _bundled(name: str) -> Path:
    if name not in registry.CONFIGS and name not in registry.TORCHTUNE_CONFIGS:
        raise ConfigError(
            f"{name!r} is not a bundled config{did_you_mean(name, registry.CONFIGS)}; bundled "
            f"configs: {', '.join(sorted(registry.CONFIGS)) or 'none yet'} (`tt ls` lists them); "
            "a torchtune YAML file runs in tt as it is (--config path/to/file.yaml)"
        )
    return registry.bundled_config_path(registry.TORCHTUNE_CONFIGS.get(name, name))


def cmd_cp(args: argparse.Namespace) -> int:
    """Copy a bundled config to a file or directory; refuse to overwrite without -f."""
    source = _bundled(args.config)
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists() and not args.force:
        raise ConfigError(f"'{dest}' already exists; pass -f to overwrite it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    tt_name = registry.TORCHTUNE_CONFIGS.get(args.config)
    what = f"{tt_name} (torchtune's {args.config})" if tt_name else args.config
    print(f"copied {what} to {dest}")
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    """Print a bundled config (or a YAML file)."""
    path, _ = registry.resolve_config(args.config)
    sys.stdout.write(path.read_text())
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Load, override and validate a config against its recipe; print OK."""
    from tt_recipes.console import setup_logging

    setup_logging()  # a torchtune config's rewrites are logged
    path, bundled_recipe = registry.resolve_config(args.config)
    recipe_ref = args.recipe or bundled_recipe
    if recipe_ref is None:
        raise ConfigError(
            f"cannot tell which recipe '{args.config}' is for: pass --recipe NAME (one of: "
            f"{', '.join(registry.available_recipes()) or 'none installed'}) or a recipe .py path"
        )
    recipe, _, _ = registry.load_run(
        recipe_ref, args.config, args.overrides, check_environment=not args.skip_environment
    )
    print(f"OK: {args.config} is a valid config for recipe '{recipe.spec.name}'")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Download a hub repo through tt_ckpt.download; a failure prints one paragraph, exit 1."""
    import tt_ckpt

    token = args.hf_token or os.environ.get("HF_TOKEN")
    output_dir = args.output_dir or str(Path("checkpoints") / args.repo_id.split("/")[-1])
    extra = {"revision": args.revision} if args.revision else {}
    try:
        path = tt_ckpt.download(
            args.repo_id, output_dir, token=token, ignore_patterns=args.ignore_patterns, **extra
        )
    except tt_ckpt.DownloadError as e:
        print(f"tt download: {e}", file=sys.stderr)
        return 1
    print(f"downloaded {args.repo_id} to {path}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Draw the runs' curves into a PNG; print where it is and what it shows."""
    from tt_cli.plot import plot_runs

    runs = [Path(run) for run in args.runs]
    for run in runs:
        if not run.exists():
            raise ConfigError(f"run directory '{run}' does not exist")
    first = runs[0] if runs[0].is_dir() else runs[0].parent
    output = Path(args.output) if args.output else first / "curves.png"
    panels = plot_runs(runs, output)
    print(f"wrote {output}: {', '.join(panels)} of {len(runs)} run(s)")
    return 0
