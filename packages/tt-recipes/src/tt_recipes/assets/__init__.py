"""Files shipped with tt-recipes (the tiny default's tokenizer).

Configs refer to them with the ``${tt_asset:NAME}`` interpolation, which resolves to the
absolute path of ``tt_recipes/assets/NAME``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

ASSET_DIR = Path(__file__).parent


def asset_path(name: str) -> str:
    """Absolute path of a bundled asset; an unknown name lists the existing ones."""
    path = ASSET_DIR / name
    if not path.exists():
        known = sorted(p.name for p in ASSET_DIR.iterdir() if not p.name.startswith(("_", ".")))
        raise FileNotFoundError(f"${{tt_asset:{name}}}: no bundled asset {name!r}; have {known}")
    return str(path)


if not OmegaConf.has_resolver("tt_asset"):
    OmegaConf.register_resolver("tt_asset", asset_path)
