"""Which modules a ``target_modules`` specification selects (peft's matching rule).

* a single ``str`` is a regular expression that must match the WHOLE module name
  (``r".*\\.(q_proj|v_proj)"``), as in peft;
* a list entry starting with ``"re:"`` is such a full-match regex (``"re:layers\\.0\\..*_proj"``);
* any other list entry matches a module whose name equals it or ends with ``"." + entry``
  (``"q_proj"`` matches ``model.layers.0.self_attn.q_proj``; ``"mlp.up_proj"`` also works).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

REGEX_PREFIX = "re:"


def _entry_matches(entry: str, name: str) -> bool:
    if entry.startswith(REGEX_PREFIX):
        return re.fullmatch(entry[len(REGEX_PREFIX) :], name) is not None
    return name == entry or name.endswith("." + entry)


def normalize_targets(target_modules: str | Sequence[str]) -> list[str]:
    """A list of entries: a bare string becomes one ``re:`` entry; empty input is rejected."""
    if isinstance(target_modules, str):
        return [REGEX_PREFIX + target_modules]
    entries = list(target_modules)
    if not entries or not all(isinstance(e, str) and e for e in entries):
        raise ValueError(
            f"target_modules must be a regex string or a non-empty list of non-empty module "
            f"names / 're:' regexes, got {target_modules!r}"
        )
    return entries


def match_targets(entries: Sequence[str], names: Sequence[str], what: str) -> list[str]:
    """The names selected by ``entries``; every entry must select at least one name.

    ``what`` describes ``names`` for the error (e.g. "Linear modules of LlamaForCausalLM").
    """
    unmatched = [e for e in entries if not any(_entry_matches(e, n) for n in names)]
    if unmatched:
        short = sorted({n.rsplit(".", 1)[-1] for n in names})
        example = f" (e.g. {names[0]!r})" if names else ""
        raise ValueError(
            f"target_modules entries {unmatched} match none of the {len(names)} {what}; "
            f"available names end in: {short}{example}. A plain entry matches a module name "
            f"or its dotted suffix; prefix a full-match regex with 're:'"
        )
    return [n for n in names if any(_entry_matches(e, n) for e in entries)]
