"""A model directory, checkpoint or training state someone sent is data: nothing in it is
imported or run, whatever field names code. Each test plants a payload that would create a
marker file (a shell command, a module that runs on import, a pickle that calls os.system)
where a loader reads, and checks that loading fails with a message saying why, and that the
marker does not exist and the module was never imported. docs/SECURITY.md is the rule."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import tt_models
from tt_recipes import from_pretrained, save_pretrained
from tt_recipes.assets import asset_path

EVIL_MODULE = "tt_evil_payload"


class RunsCode:
    """Pickles as a call of os.system."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "payload_ran"


@pytest.fixture
def evil_module(tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable module that creates the marker when imported."""
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / f"{EVIL_MODULE}.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\ndef payload(**kw): pass\n"
    )
    monkeypatch.syspath_prepend(str(code_dir))
    return code_dir


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = tt_models.transformer_decoder(
        vocab_size=512, dim=64, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=128
    )
    return save_pretrained(model, tmp_path / "model", source_dir=asset_path("tiny_tokenizer"))


def edit_config(directory: Path, **fields) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(fields)
    path.write_text(json.dumps(config))


def assert_nothing_ran(marker: Path) -> None:
    assert not marker.exists(), "the payload ran"
    assert EVIL_MODULE not in sys.modules, f"{EVIL_MODULE} was imported"


def quantization_payloads(marker: Path) -> dict[str, object]:
    touch = f"touch {marker}"
    return {
        "subprocess.run": {"_component_": "subprocess.run", "args": ["touch", str(marker)]},
        "os.system": {"_component_": "os.system", "command": touch},
        "a module of its own": {"_component_": f"{EVIL_MODULE}.payload"},
        "nested in an allowed scheme": {
            "_component_": "torchao.quantization.Int8WeightOnlyConfig",
            "group_size": {"_component_": "os.system", "command": touch},
        },
        "a bare string": "os.system",
        "a list": ["os.system", touch],
    }


@pytest.mark.parametrize(
    "payload",
    [
        "subprocess.run",
        "os.system",
        "a module of its own",
        "nested in an allowed scheme",
        "a bare string",
        "a list",
    ],
)
def test_a_quantization_field_naming_code_is_refused_before_any_import(
    model_dir: Path, marker: Path, evil_module: Path, payload: str
) -> None:
    edit_config(model_dir, tt_quantization=quantization_payloads(marker)[payload])
    (model_dir / "quantized_model.pt").write_bytes(b"")  # what a quantized directory holds
    with pytest.raises(ValueError, match=r"config.json tt_quantization"):
        from_pretrained(model_dir)
    assert_nothing_ran(marker)


def test_through_the_tt_command_it_is_one_line_and_exit_1(
    model_dir: Path, marker: Path, evil_module: Path, tmp_path: Path
) -> None:
    edit_config(
        model_dir, tt_quantization={"_component_": "os.system", "command": f"touch {marker}"}
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{evil_module}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "tt_cli", "run", "generate", "--config", "tiny/generate",
         f"checkpoint_dir={model_dir}", "max_new_tokens=2"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "quantization scheme 'os.system' is not one tt saves and restores" in result.stderr
    assert not marker.exists()


def test_fields_transformers_would_run_code_from_are_ignored(
    model_dir: Path, marker: Path, evil_module: Path
) -> None:
    """auto_map / architectures name code for transformers' trust_remote_code; tt builds the
    model from model_type and the dimensions only."""
    edit_config(
        model_dir,
        auto_map={"AutoModelForCausalLM": f"{EVIL_MODULE}.Model"},
        architectures=[f"{EVIL_MODULE}.Model"],
    )
    model = from_pretrained(model_dir)
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 512)
    assert_nothing_ran(marker)


def test_an_unknown_model_type_is_refused_not_looked_up(
    model_dir: Path, marker: Path, evil_module: Path
) -> None:
    edit_config(model_dir, model_type=EVIL_MODULE)
    with pytest.raises(ValueError, match=rf"model_type='{EVIL_MODULE}' is not supported"):
        from_pretrained(model_dir)
    assert_nothing_ran(marker)


def test_a_pickled_weights_file_that_calls_code_is_refused(model_dir: Path, marker: Path) -> None:
    (model_dir / "model.safetensors").unlink()
    torch.save({"payload": RunsCode(f"touch {marker}")}, model_dir / "pytorch_model.bin")
    with pytest.raises(Exception, match=r"pytorch_model.bin.*weights_only"):
        from_pretrained(model_dir)
    assert not marker.exists()


def test_a_quantized_weights_file_that_calls_code_is_refused(model_dir: Path, marker: Path) -> None:
    edit_config(
        model_dir, tt_quantization={"_component_": "torchao.quantization.Int8WeightOnlyConfig"}
    )
    torch.save({"payload": RunsCode(f"touch {marker}")}, model_dir / "quantized_model.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        from_pretrained(model_dir)
    assert not marker.exists()


def test_an_index_pointing_outside_the_directory_is_refused(
    model_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "elsewhere.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
    index = {"metadata": {}, "weight_map": {"model.norm.weight": "../elsewhere.safetensors"}}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(Exception, match=r"names '../elsewhere.safetensors', not a file name in"):
        from_pretrained(model_dir)


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
        "{% for m in messages %}{{ m.__class__.__init__.__globals__['os'].system('touch MARKER') }}{% endfor %}",
    ],
)
def test_a_chat_template_cannot_reach_python(model_dir: Path, marker: Path, template: str) -> None:
    """Chat templates render in jinja's immutable sandbox, as in transformers."""
    import jinja2
    from tt_data import Message
    from tt_data.tokenizers import from_pretrained as load_tokenizer

    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["chat_template"] = template.replace("MARKER", str(marker))
    path.write_text(json.dumps(config))
    tokenizer = load_tokenizer(model_dir)
    with pytest.raises(jinja2.exceptions.SecurityError):
        tokenizer.tokenize_messages([Message(role="user", content="hi")])
    assert not marker.exists()


def test_a_training_state_whose_pickles_name_code_is_refused_on_resume(
    tmp_path: Path, marker: Path
) -> None:
    """resume_from_checkpoint reads torch.distributed.checkpoint files, whose metadata is a
    pickle: tt unpickles only DCP's own classes from it."""
    out = tmp_path / "run"
    overrides = [f"output_dir={out}", "dataset.n=320", "batch_size=16", "~dataset_val",
                 "run_val_every_n_steps=null", "save_every_n_steps=null"]  # fmt: skip
    run = [sys.executable, "-m", "tt_cli", "run", "full_finetune", "--config", "tiny/full"]
    subprocess.run([*run, *overrides, "epochs=1"], check=True, capture_output=True, cwd=tmp_path)
    metadata = out / "step_20" / "training_state" / ".metadata"
    metadata.write_bytes(pickle.dumps(RunsCode(f"touch {marker}")))
    result = subprocess.run(
        [*run, *overrides, "resume_from_checkpoint=true", "epochs=2"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "names posix.system, which a torch.distributed.checkpoint written by tt" in result.stderr
    assert not marker.exists()
