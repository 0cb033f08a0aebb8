"""The real `tt` entry point in a subprocess: exit codes and one-paragraph errors."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "batch_sise=3",
            "key 'batch_sise' is unknown (did you mean 'batch_size'?); recipe 'toy' reads: "
            "output_dir, batch_size, epochs, fail, model, optimizer",
        ),
        (
            "optimizer.lrr=0.5",
            "key 'optimizer.lrr': toy_recipe.Optimizer takes no argument 'lrr' "
            "(did you mean 'lr'?); it takes: params, lr, momentum",
        ),
        (
            "model.norm=toy_recipe.Nrom",
            "key 'model.norm._component_': cannot import 'toy_recipe.Nrom': 'toy_recipe' has "
            "no attribute 'Nrom' (did you mean 'toy_recipe.Norm'?)",
        ),
        ("epochs=three", "key 'epochs': expected int, got str 'three'"),
        ("model.dim=1.5", "key 'model.dim': toy_recipe.Model expects int, got float 1.5"),
    ],
)
def test_validate_failures_exit_2_with_file_key_and_suggestion(
    run_tt, toy_yaml, recipe_file, override, message
):
    result = run_tt("validate", str(toy_yaml), "--recipe", recipe_file, override)
    assert result.returncode == 2
    assert result.stderr == f"tt: error: {toy_yaml}: {message}\n"
    assert result.stdout == ""


def test_validate_ok_exits_0(run_tt, toy_yaml, recipe_file):
    result = run_tt("validate", str(toy_yaml), "--recipe", recipe_file, "epochs=2")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"OK: {toy_yaml} is a valid config for recipe 'toy'\n"


def test_run_applies_overrides_and_exits_0(run_tt, toy_yaml, recipe_file, tmp_path):
    out = tmp_path / "run-out"
    result = run_tt(
        "run", recipe_file, "--config", str(toy_yaml), f"output_dir={out}", "epochs=3",
        "optimizer.lr=0.5", "~model.norm",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "result.json").read_text()) == {
        "dim": 8, "eps": None, "optimizer": "Optimizer", "lr": 0.5, "params": [8], "epochs": 3,
    }  # fmt: skip


def test_recipe_failure_exits_1_without_traceback(run_tt, toy_yaml, recipe_file):
    result = run_tt("run", recipe_file, "--config", str(toy_yaml), "fail=true")
    assert result.returncode == 1
    assert result.stderr == (
        "tt: toy failed: RuntimeError: the toy recipe was asked to fail\n"
        "(set TT_DEBUG=1 to see the traceback)\n"
    )


def test_tt_debug_shows_the_traceback(run_tt, toy_yaml, recipe_file):
    result = run_tt(
        "run", recipe_file, "--config", str(toy_yaml), "fail=true", env={"TT_DEBUG": "1"}
    )
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert 'raise RuntimeError("the toy recipe was asked to fail")' in result.stderr


def test_bad_config_stops_run_before_the_recipe_starts(run_tt, toy_yaml, recipe_file, tmp_path):
    out = tmp_path / "never"
    result = run_tt("run", recipe_file, "--config", str(toy_yaml), f"output_dir={out}", "lr=1")
    assert result.returncode == 2 and not out.exists()
    assert "key 'lr' is unknown" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("frobnicate",), "invalid choice: 'frobnicate'"),
        (("run",), "`tt run` needs a recipe and --config"),
        (("ls", "a", "b"), "unrecognized arguments: b"),
        (("validate", "x.yaml", "--recipe", "toy", "batch_size"), "config file 'x.yaml' does not"),
    ],
)
def test_usage_errors_exit_2(run_tt, args, message):
    result = run_tt(*args)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_download_offline_is_one_paragraph_and_exit_1(run_tt, tmp_path):
    result = run_tt(
        "download", "acme/tiny-model", "--output-dir", str(tmp_path / "m"),
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("tt download: Downloading 'acme/tiny-model'")
    assert "HF_HUB_OFFLINE" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
