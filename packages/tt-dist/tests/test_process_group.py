import pytest
import torch
import tt_dist

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_torchrun(monkeypatch):
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for name, value in {**env, "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_single_process_without_torchrun_creates_no_group(no_torchrun):
    info = tt_dist.init_distributed(device="cpu")
    assert info == tt_dist.DistInfo(0, 1, 0, torch.device("cpu"), None)
    assert not info.is_distributed
    assert not torch.distributed.is_initialized()
    assert (tt_dist.get_rank(), tt_dist.get_world_size(), tt_dist.is_rank_zero()) == (0, 1, True)
    tt_dist.destroy_distributed()  # a no-op without a group


def test_incomplete_torchrun_environment_names_missing_vars(no_torchrun, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match=r"\['RANK'\] are set but .*'WORLD_SIZE'"):
        tt_dist.init_distributed()


def test_bad_rank_value_is_named(fake_torchrun):
    fake_torchrun.setenv("RANK", "one")
    with pytest.raises(ValueError, match=r"RANK='one'.*non-negative integer"):
        tt_dist.init_distributed()


def test_rank_not_below_world_size(fake_torchrun):
    fake_torchrun.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 must be smaller than WORLD_SIZE=2"):
        tt_dist.init_distributed()


def test_unknown_backend_and_nccl_on_cpu_are_refused(fake_torchrun):
    with pytest.raises(
        ValueError, match=r"unknown backend 'mpi'; valid: \['auto', 'nccl', 'gloo'\]"
    ):
        tt_dist.init_distributed(backend="mpi", device="cpu")
    with pytest.raises(ValueError, match="'nccl' needs a CUDA device"):
        tt_dist.init_distributed(backend="nccl", device="cpu")
    assert not torch.distributed.is_initialized()


def test_get_device_resolves_and_rejects():
    assert tt_dist.get_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert tt_dist.get_device("auto").type == expected
    with pytest.raises(ValueError, match=r"unknown device 'tpu'; valid: 'auto', 'cpu'"):
        tt_dist.get_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on CPU-only machines")
def test_cuda_requested_without_cuda():
    with pytest.raises(RuntimeError, match="'cuda:0' was requested but CUDA is not available"):
        tt_dist.get_device("cuda:0")


def test_rank_zero_print_and_log(capsys, caplog):
    import logging

    tt_dist.rank_zero_print("hello", 3)
    assert capsys.readouterr().out == "hello 3\n"
    with caplog.at_level(logging.INFO):
        tt_dist.rank_zero_log(logging.getLogger("tt_dist_test"), "logged")
    assert caplog.messages == ["logged"]
