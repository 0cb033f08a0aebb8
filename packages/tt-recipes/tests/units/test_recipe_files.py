"""Recipe files compose library modules and never import each other: shared machinery lives
in tt_recipes modules whose names say what they hold (trainer, checkpointing, adapters...)."""

from __future__ import annotations

import ast
from pathlib import Path

import tt_recipes.recipes

RECIPES_DIR = Path(tt_recipes.recipes.__file__).parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # a relative import inside tt_recipes.recipes
                names.add("tt_recipes.recipes." + (node.module or ""))
            elif node.module == "tt_recipes":
                names |= {f"tt_recipes.{alias.name}" for alias in node.names}
            else:
                names.add(node.module or "")
    return names


def test_no_recipe_imports_another_recipe() -> None:
    files = sorted(p for p in RECIPES_DIR.glob("*.py") if p.name != "__init__.py")
    assert len(files) >= 8
    offenders = {
        path.name: sorted(m for m in imported_modules(path) if m.startswith("tt_recipes.recipes"))
        for path in files
    }
    assert not {name: mods for name, mods in offenders.items() if mods}, offenders


def test_the_check_sees_every_import_form(tmp_path: Path) -> None:
    path = tmp_path / "r.py"
    path.write_text(
        "from tt_recipes.recipes import dpo\nimport tt_recipes.recipes.dpo\n"
        "from . import lora_finetune\nfrom tt_recipes import recipes\n"
    )
    assert imported_modules(path) == {
        "tt_recipes.recipes",
        "tt_recipes.recipes.dpo",
        "tt_recipes.recipes.",
    }
