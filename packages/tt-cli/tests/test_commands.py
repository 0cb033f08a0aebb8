"""ls, cp, cat, validate, run and download called in-process through tt_cli.main.main."""

from __future__ import annotations

import json
import sys

import pytest
import tt_ckpt
from tt_cli import run as tt_run
from tt_cli.main import main
from tt_recipes import registry


def test_ls_lists_recipes_configs_and_aliases(toy_registry, capsys):
    assert main(["ls"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "RECIPE  CONFIG                                        ALIASES",
        "toy     tiny/toy (torchtune: tiny/toy_single_device)  toy_distributed",
    ]


def test_ls_recipe_shows_its_keys(toy_registry, capsys):
    assert main(["ls", "toy"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("toy: Builds a model and optimizer")
    assert out[3].split() == ["output_dir", "str", "(required)", "where", "result.json", "goes"]
    assert out[4].split() == ["batch_size", "int", "4"]
    assert out[8].split() == ["optimizer", "component", "(required)"]


def test_cp_copies_and_refuses_to_overwrite_without_force(toy_registry, tmp_path, capsys):
    dest = tmp_path / "mine.yaml"
    assert main(["cp", "tiny/toy", str(dest)]) == 0
    assert dest.read_text() == (toy_registry / "tiny" / "toy.yaml").read_text()
    dest.write_text("edited: true\n")
    assert main(["cp", "tiny/toy", str(dest)]) == 2
    assert capsys.readouterr().err == (
        f"tt: error: '{dest}' already exists; pass -f to overwrite it\n"
    )
    assert dest.read_text() == "edited: true\n"
    assert main(["cp", "-f", "tiny/toy", str(dest)]) == 0
    assert dest.read_text().startswith("output_dir:")


def test_cp_into_a_directory_and_unknown_name(toy_registry, tmp_path, capsys):
    assert main(["cp", "tiny/toy", str(tmp_path)]) == 0
    assert (tmp_path / "toy.yaml").is_file()
    assert main(["cp", "tiny/tyo", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "tt: error: 'tiny/tyo' is not a bundled config (did you mean 'tiny/toy'?); "
        "bundled configs: tiny/toy (`tt ls` lists them); a torchtune YAML file runs in tt as "
        "it is (--config path/to/file.yaml)\n"
    )


def test_cp_and_validate_take_torchtunes_config_name(toy_registry, tmp_path, capsys):
    assert main(["cp", "tiny/toy_single_device", str(tmp_path)]) == 0
    assert capsys.readouterr().out == (
        f"copied tiny/toy (torchtune's tiny/toy_single_device) to {tmp_path / 'toy.yaml'}\n"
    )
    assert (tmp_path / "toy.yaml").read_text() == (toy_registry / "tiny" / "toy.yaml").read_text()
    assert main(["validate", "tiny/toy_single_device"]) == 0
    assert "valid config for recipe 'toy'" in capsys.readouterr().out


def test_cat_prints_the_config(toy_registry, capsys):
    assert main(["cat", "tiny/toy"]) == 0
    assert capsys.readouterr().out == (toy_registry / "tiny" / "toy.yaml").read_text()


def test_validate_bundled_config_knows_its_recipe(toy_registry, capsys):
    assert main(["validate", "tiny/toy", "--recipe", "toy", "epochs=2"]) == 0
    assert main(["validate", "tiny/toy", "epochs=2"]) == 0
    assert capsys.readouterr().out == "OK: tiny/toy is a valid config for recipe 'toy'\n" * 2


def test_validate_user_file_needs_a_recipe(toy_registry, toy_yaml, capsys):
    assert main(["validate", str(toy_yaml)]) == 2
    assert capsys.readouterr().err == (
        f"tt: error: cannot tell which recipe '{toy_yaml}' is for: pass --recipe NAME "
        "(one of: toy) or a recipe .py path\n"
    )


def test_run_in_process_by_torchtune_alias(toy_registry, toy_yaml, tmp_path):
    out = tmp_path / "alias-run"
    assert main(["run", "toy_distributed", "--config", str(toy_yaml), f"output_dir={out}"]) == 0
    assert json.loads((out / "result.json").read_text())["lr"] == 0.01


def fake_popen(launched: list, code: int):
    """Stands in for subprocess.Popen: records the command, 'exits' with ``code``."""

    class Process:
        def __init__(self, command):
            launched.append(command)

        def wait(self):
            return code

    return Process


def test_run_with_torchrun_options_launches_torchrun(toy_registry, toy_yaml, monkeypatch):
    launched = []
    monkeypatch.setattr(tt_run.subprocess, "Popen", fake_popen(launched, 0))
    argv = ["--nproc_per_node", "2", "--standalone", "toy", "--config", str(toy_yaml), "epochs=2"]
    assert main(["run", *argv]) == 0
    assert launched == [
        [sys.executable, "-m", "tt_cli.launch", "--nproc_per_node", "2", "--standalone",
         "--module", "tt_cli", "run", "toy", "--config", str(toy_yaml.resolve()), "epochs=2"]
    ]  # fmt: skip


def test_failed_launch_exits_1_and_bad_config_never_launches(toy_registry, toy_yaml, monkeypatch):
    launched = []
    monkeypatch.setattr(tt_run.subprocess, "Popen", fake_popen(launched, 3))
    assert main(["run", "--nproc_per_node=2", "toy", "--config", str(toy_yaml)]) == 1
    assert main(["run", "--nproc_per_node=2", "toy", "--config", str(toy_yaml), "lr=1"]) == 2
    assert len(launched) == 1


@pytest.mark.parametrize(
    ("argv", "split"),
    [
        (["r.py", "--config", "c", "a=1"], ([], "r.py", ["--config", "c", "a=1"])),
        (
            ["--nnodes", "1", "--nproc_per_node=2", "--rdzv_endpoint", "localhost:29500", "r"],
            (
                ["--nnodes", "1", "--nproc_per_node=2", "--rdzv_endpoint", "localhost:29500"],
                "r",
                [],
            ),
        ),
        (["--standalone", "r", "--config", "c"], (["--standalone"], "r", ["--config", "c"])),
    ],
)
def test_split_torchrun_args(argv, split):
    assert tt_run.split_torchrun_args(argv) == split


def test_torchrun_command_makes_recipe_file_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmd = tt_run.torchrun_command(["--nproc_per_node", "2"], "my.py", "/c.yaml", ["x=1"])
    assert cmd[-5:] == ["run", str(tmp_path / "my.py"), "--config", "/c.yaml", "x=1"]


def test_download_passes_arguments_and_token_from_env(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(tt_ckpt, "download", lambda *a, **k: calls.append((a, k)) or tmp_path)
    monkeypatch.setenv("HF_TOKEN", "env-token")
    argv = [
        "download",
        "acme/m",
        "--output-dir",
        str(tmp_path),
        "--ignore-patterns",
        "*.pth",
        "original/*",
    ]
    assert main(argv) == 0
    assert main([*argv[:4], "--hf-token", "flag-token"]) == 0
    assert calls == [
        (
            ("acme/m", str(tmp_path)),
            {"token": "env-token", "ignore_patterns": ["*.pth", "original/*"]},
        ),
        (("acme/m", str(tmp_path)), {"token": "flag-token", "ignore_patterns": None}),
    ]
    assert capsys.readouterr().out == f"downloaded acme/m to {tmp_path}\n" * 2


def test_download_defaults_to_checkpoints_and_takes_a_revision(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(tt_ckpt, "download", lambda *a, **k: calls.append((a, k)) or tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert main(["download", "acme/model-1B", "--revision", "v2"]) == 0
    assert calls == [
        (
            ("acme/model-1B", "checkpoints/model-1B"),
            {"token": None, "ignore_patterns": None, "revision": "v2"},
        )
    ]


def test_download_error_is_printed_and_exits_1(monkeypatch, tmp_path, capsys):
    def fail(*args, **kwargs):
        raise tt_ckpt.DownloadError("Downloading 'acme/m' failed: unauthorised. Set HF_TOKEN.")

    monkeypatch.setattr(tt_ckpt, "download", fail)
    assert main(["download", "acme/m", "--output-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        "tt download: Downloading 'acme/m' failed: unauthorised. Set HF_TOKEN.\n"
    )


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([], ["ls", "cp", "cat", "validate", "run", "download", "exit codes: 0 ok"]),
        (["ls"], ["RECIPE", "config keys"]),
        (["cp"], ["-f, --force", "dest"]),
        (["cat"], ["bundled config name or YAML path"]),
        (["validate"], ["--recipe", "overrides"]),
        (["run"], ["[torchrun options] RECIPE --config CONFIG", "~key", "--nproc_per_node"]),
        (["download"], ["--output-dir", "--hf-token", "$HF_TOKEN", "--ignore-patterns"]),
    ],
)
def test_help_is_complete(command, expected, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert all(text in out for text in expected), out


def test_every_bundled_config_passes_tt_validate(capsys, tmp_path, monkeypatch):
    """Where the model or run a config starts from is not there yet, validate says so (and
    exits 2); once the directories exist the config is valid."""
    import re

    monkeypatch.chdir(tmp_path)
    for name in registry.CONFIGS:
        if main(["validate", name]) != 0:
            err = capsys.readouterr().err
            missing = re.findall(r"key '[\w.]+': '([^']+)' does not exist", err)
            lines = [line for line in err.splitlines() if line.strip()]
            assert missing and all("does not exist" in line for line in lines), err
            for path in missing:
                (tmp_path / path).mkdir(parents=True, exist_ok=True)
        assert main(["validate", name]) == 0, capsys.readouterr().err
    assert registry.config_files() == sorted(registry.CONFIGS)


def _metrics(run_dir, rows):
    (run_dir / "logs").mkdir(parents=True)
    lines = (
        [json.dumps({"config": {"lr": 1}})] + [json.dumps(r) for r in rows] + ['{"step": 9, "lo']
    )
    (run_dir / "logs" / "metrics.jsonl").write_text("\n".join(lines))  # the last line cut short


def test_plot_draws_each_logged_metric_of_several_runs(tmp_path, capsys):
    from tt_cli.plot import read_curves

    a, b = tmp_path / "a", tmp_path / "b"
    _metrics(
        a, [{"step": s, "loss": 3.0 / s, "lr": 1e-3, "tokens_per_s": 900.0} for s in (1, 2, 3)]
    )
    _metrics(
        b, [{"step": s, "loss": 2.0 / s, "val_loss": 1.0 / s, "reward": 0.1 * s} for s in (1, 2)]
    )
    assert read_curves(a / "logs" / "metrics.jsonl")["loss"] == ([1, 2, 3], [3.0, 1.5, 1.0])
    out = tmp_path / "compare.png"
    assert main(["plot", str(a), str(b), "-o", str(out)]) == 0
    assert capsys.readouterr().out == (
        f"wrote {out}: training loss, validation loss, learning rate, tokens/s, reward of 2 run(s)\n"
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(a)]) == 0 and (a / "curves.png").is_file()  # default place


def test_plot_of_a_directory_without_metrics_is_a_usage_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "no metrics.jsonl under" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nope")]) == 2
