"""Test sessions: one isolated venv per package, an integration session, and lint.

Each package session installs ONLY that package (plus the tt packages it declares and the
test tools) into a fresh venv, so an undeclared dependency fails there instead of being
hidden by the workspace venv. Versions are pinned to uv.lock through a constraints file.

    uv run nox                 # everything
    uv run nox -s tt-peft      # one package
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
TEST_TOOLS = ["pytest", "pytest-timeout", "hypothesis", "transformers", "peft"]
# Test-only extras of one package: tt-dist handles torchao NF4 tensors without importing
# torchao, and its tests build them.
TEST_ONLY = {"tt-dist": ["torchao"]}

# package -> (tt packages it depends on, extras to install)
PACKAGES: dict[str, tuple[list[str], list[str]]] = {
    "tt-models": ([], []),
    "tt-peft": ([], ["nf4"]),
    "tt-data": ([], []),
    "tt-ckpt": ([], []),
    "tt-dist": ([], []),
    "tt-recipes": (
        ["tt-models", "tt-peft", "tt-data", "tt-ckpt", "tt-dist"],
        ["tensorboard", "wandb", "eval", "mlflow", "comet"],
    ),
    "tt-cli": (["tt-models", "tt-peft", "tt-data", "tt-ckpt", "tt-dist", "tt-recipes"], ["plot"]),
}


def _constraints(session: nox.Session) -> str:
    """Export uv.lock as a constraints file so every session tests the locked versions."""
    path = Path(session.create_tmp()) / "constraints.txt"
    text = subprocess.run(
        [
            "uv",
            "export",
            "--frozen",
            "--no-hashes",
            "--no-emit-workspace",
            "--all-groups",
            "--all-extras",
            "--format",
            "requirements-txt",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path.write_text(text)
    return str(path)


def _install(session: nox.Session, packages: list[str], extras: dict[str, list[str]]) -> None:
    args = []
    for pkg in packages:
        extra = extras.get(pkg, [])
        spec = f"packages/{pkg}" + (f"[{','.join(extra)}]" if extra else "")
        args += ["-e", spec]
    test_only = [dep for pkg in packages for dep in TEST_ONLY.get(pkg, [])]
    session.install("-c", _constraints(session), *args, *TEST_TOOLS, *test_only)


def _make_package_session(name: str) -> None:
    deps, extras = PACKAGES[name]

    @nox.session(name=name, python="3.11")
    def _session(session: nox.Session) -> None:
        _install(session, [*deps, name], {name: extras})
        session.run("pytest", f"packages/{name}/tests", *session.posargs)


for _name in PACKAGES:
    _make_package_session(_name)


# Bit-exact resume tests compare a resumed run with an uninterrupted one, which needs kernels
# that give the same bits twice. MKL's AVX2 code path (an AVX2-only CPU, or
# MKL_ENABLE_INSTRUCTIONS=AVX2) varies with memory alignment unless conditional numerical
# reproducibility is on; AUTO keeps the CPU's own code path.
REPRODUCIBLE_KERNELS = {"MKL_CBWR": "AUTO,STRICT"}


TORCHTUNE_CONFIGS = "torchtune==0.6.1"


@nox.session(python="3.11")
def integration(session: nox.Session) -> None:
    """Everything installed together; runs the cross-package tests in tests/."""
    extras = {k: v[1] for k, v in PACKAGES.items()}
    extras["tt-recipes"] = [*extras["tt-recipes"], "bnb"]  # torchtune configs' paged AdamW
    _install(session, list(PACKAGES), extras)
    # torchtune's shipped configs, which tests/torchtune runs through tt. Without its
    # dependencies: tt never imports torchtune (its own torchao pin is older than tt's), the
    # tests read the YAML files and its recipe registry file.
    session.install("--no-deps", TORCHTUNE_CONFIGS)
    session.run(
        "pytest",
        "tests",
        "--ignore=tests/torchtune_reference",
        *session.posargs,
        env=REPRODUCIBLE_KERNELS,
    )


# torchtune 0.6.1 importable, to compare its data pipeline with tt's token for token. It needs
# the torchao of its time (0.10), older than the one tt locks, so the tt packages that depend
# on torchao come in without their dependencies (the tests use tt_data and the config system).
TORCHTUNE_REFERENCE = ["torchtune==0.6.1", "torchao==0.10.0", "torchdata==0.11.0"]


@nox.session(name="torchtune-reference", python="3.11")
def torchtune_reference(session: nox.Session) -> None:
    """tt's tokens and labels against torchtune 0.6.1's for the same rows and config."""
    constraints = Path(_constraints(session))
    lines = constraints.read_text().splitlines(keepends=True)
    pinned_here = ("torchao==", "torchdata==")
    constraints.write_text("".join(line for line in lines if not line.startswith(pinned_here)))
    session.install("-c", str(constraints), "-e", "packages/tt-data", "pytest", "pytest-timeout",
                    *TORCHTUNE_REFERENCE)  # fmt: skip
    others = ["tt-models", "tt-peft", "tt-ckpt", "tt-dist", "tt-recipes"]
    session.install("--no-deps", *[arg for pkg in others for arg in ("-e", f"packages/{pkg}")])
    session.install("-c", str(constraints), "omegaconf", "tqdm", "safetensors")
    session.run("pytest", "tests/torchtune_reference", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
