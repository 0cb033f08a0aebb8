"""Sharding validation, weight loading, checkpoints and memory features in one process."""

import _ttdist_tiny as tiny
import pytest
import torch
import tt_dist
from torch import nn


def is_block(_name, module):
    return isinstance(module, tiny.Block)


# ---- shard_model: every option is validated before the model is touched ----


def test_cpu_offload_on_cpu_is_refused_with_reason():
    with pytest.raises(ValueError, match="fsdp_cpu_offload=True needs an accelerator"):
        tt_dist.shard_model(tiny.make_model(), block_classes=[tiny.Block], cpu_offload=True)


def test_mixed_precision_on_cpu_is_refused():
    with pytest.raises(ValueError, match="mixed_precision=True needs a CUDA device"):
        tt_dist.shard_model(tiny.make_model(), block_classes=[tiny.Block], mixed_precision=True)


def test_block_selection_errors():
    model = tiny.make_model()
    with pytest.raises(ValueError, match="give exactly one of block_classes"):
        tt_dist.shard_model(model)
    with pytest.raises(ValueError, match="give exactly one of block_classes"):
        tt_dist.shard_model(model, block_classes=[tiny.Block], is_block=is_block)
    with pytest.raises(ValueError, match=r"matched no submodule of TinyLM; .*'Block', 'Embedding'"):
        tt_dist.shard_model(model, block_classes=[nn.Conv1d])
    with pytest.raises(ValueError, match=r"'lm_head' names no module of TinyLM; .*'output'"):
        tt_dist.shard_model(model, block_classes=[tiny.Block], custom_sharded_layers=["lm_head"])


def test_shard_model_without_process_group_says_how_to_launch():
    assert not torch.distributed.is_initialized()
    with pytest.raises(RuntimeError, match="shard_model needs a process group"):
        tt_dist.shard_model(tiny.make_model(), block_classes=[tiny.Block])


def test_find_blocks_keeps_outermost_only():
    blocks = tt_dist.find_blocks(
        tiny.make_model(), lambda _n, m: isinstance(m, (tiny.Block, nn.Linear))
    )
    assert [name for name, _ in blocks] == ["layers.0", "layers.1", "output"]


# ---- load_full_state_dict (unsharded path; the sharded path runs in test_distributed) ----


def test_meta_model_loads_full_weights_and_matches_source():
    source = tiny.make_model()
    with torch.device("meta"):
        model = tiny.TinyLM()
    tt_dist.load_full_state_dict(model, source.state_dict(), "cpu", init_buffers=tiny.init_buffers)
    tokens = tiny.global_batch(0)[:, :-1]
    torch.testing.assert_close(model(tokens), source(tokens), rtol=0, atol=0)


def test_load_casts_to_model_dtype():
    source = tiny.make_model()
    model = tiny.make_model(seed=1).to(torch.bfloat16)
    tt_dist.load_full_state_dict(model, source.state_dict(), "cpu")
    assert model.output.weight.dtype == torch.bfloat16
    assert torch.equal(model.output.weight, source.output.weight.to(torch.bfloat16))


def test_meta_model_with_derived_buffer_needs_init_buffers():
    with torch.device("meta"):
        model = tiny.TinyLM()
    with pytest.raises(ValueError, match=r"non-persistent buffers \['pos_scale'\].*init_buffers"):
        tt_dist.load_full_state_dict(model, tiny.make_model().state_dict(), "cpu")


def test_key_and_shape_mismatches_are_named():
    model, full = tiny.make_model(), tiny.make_model().state_dict()
    full["extra.weight"] = full.pop("norm.weight")
    with pytest.raises(KeyError, match=r"missing \['norm.weight'\], unexpected \['extra.weight'\]"):
        tt_dist.load_full_state_dict(model, full, "cpu")
    full = tiny.make_model().state_dict()
    full["output.weight"] = torch.zeros(3, 3)
    with pytest.raises(
        ValueError, match=r"'output.weight': .*shape \(3, 3\), model expects \(64, 32\)"
    ):
        tt_dist.load_full_state_dict(model, full, "cpu")


def test_tied_weight_missing_from_file_is_skipped():
    model = tiny.make_model()
    model.output.weight = model.tok_embeddings.weight  # tied, as in HF files without lm_head
    full = {k: v for k, v in tiny.make_model(seed=5).state_dict().items() if k != "output.weight"}
    tt_dist.load_full_state_dict(model, full, "cpu")
    assert torch.equal(model.output.weight, full["tok_embeddings.weight"])


def test_nf4_parameters_on_meta_are_quantized_from_full_precision_weights():
    full = tiny.make_model(seed=3).state_dict()
    with torch.device("meta"):
        model = tiny.quantize_fc1(tiny.TinyLM())
    tt_dist.load_full_state_dict(model, full, "cpu", init_buffers=tiny.init_buffers)
    want = tiny.quantize_fc1(tiny.make_model(seed=3))
    for mine, ref in zip(model.layers, want.layers):
        assert type(mine.fc1.weight).__name__ == "NF4Tensor"
        assert not mine.fc1.weight.requires_grad
        assert torch.equal(tiny.dequantized(mine.fc1.weight), tiny.dequantized(ref.fc1.weight))
    x = tiny.global_batch(0)[:, :-1]
    torch.testing.assert_close(model(x), want(x), atol=0, rtol=0)


def test_nf4_in_the_file_but_not_in_the_model_is_refused():
    full = tiny.quantize_fc1(tiny.make_model()).state_dict()
    with pytest.raises(TypeError, match="'layers.0.fc1.weight' is NF4 in the full state dict"):
        tt_dist.load_full_state_dict(tiny.make_model(), full, "cpu")


def test_gather_full_state_dict_single_process_and_trainable_only():
    model = tiny.make_model()
    model.requires_grad_(False)
    model.output.weight.requires_grad_(True)
    full = tt_dist.gather_full_state_dict(model)
    assert set(full) == set(model.state_dict()) and full["norm.weight"].device.type == "cpu"
    assert set(tt_dist.gather_full_state_dict(model, trainable_only=True)) == {"output.weight"}


# ---- distributed checkpoint in one process ----


def trained(steps=2, seed=0):
    model = tiny.make_model(seed)
    opt = tiny.make_optimizer(model.parameters())
    tiny.train(model, opt, range(steps))
    return model, opt


def test_checkpoint_roundtrip_restores_model_optimizer_and_extra(tmp_path):
    model, opt = trained()
    tt_dist.save_distributed_state(tmp_path / "ck", model, opt, extra={"step": 2, "rng": [1.5]})
    fresh = tiny.make_model(seed=9)
    fresh_opt = tiny.make_optimizer(fresh.parameters())
    extra = tt_dist.load_distributed_state(tmp_path / "ck", fresh, fresh_opt)
    assert extra == {"step": 2, "rng": [1.5]}
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    saved, loaded = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    for index, state in saved.items():
        assert torch.equal(loaded[index]["exp_avg_sq"], state["exp_avg_sq"])
    assert not (tmp_path / "ck.tmp").exists()


def test_trainable_only_checkpoint_skips_frozen_weights_and_leaves_them_on_load(tmp_path):
    model = tiny.make_model()
    frozen = [n for n, _ in model.named_parameters()][:2]
    for name, param in model.named_parameters():
        param.requires_grad = name not in frozen
    opt = tiny.make_optimizer([p for p in model.parameters() if p.requires_grad])
    tiny.train(model, opt, range(2))
    tt_dist.save_distributed_state(tmp_path / "ck", model, opt, trainable_only=True)
    fresh = tiny.make_model(seed=9)
    for name, param in fresh.named_parameters():
        param.requires_grad = name not in frozen
    before = {n: t.clone() for n, t in fresh.state_dict().items()}
    fresh_opt = tiny.make_optimizer([p for p in fresh.parameters() if p.requires_grad])
    tt_dist.load_distributed_state(tmp_path / "ck", fresh, fresh_opt, trainable_only=True)
    for key, value in fresh.state_dict().items():
        expected = before[key] if key in frozen else model.state_dict()[key]
        assert torch.equal(value, expected), key


def test_checkpoint_overwrite_replaces_previous(tmp_path):
    model, opt = trained(steps=1)
    tt_dist.save_distributed_state(tmp_path / "ck", model, opt, extra={"step": 1})
    tiny.train(model, opt, range(1, 2))
    tt_dist.save_distributed_state(tmp_path / "ck", model, opt, extra={"step": 2})
    assert tt_dist.load_distributed_state(tmp_path / "ck", tiny.make_model(3))["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_checkpoint_errors(tmp_path):
    model, opt = trained(steps=1)
    with pytest.raises(TypeError, match=r"extra\['when'\] is a object; extra state may hold only"):
        tt_dist.save_distributed_state(tmp_path / "ck", model, opt, extra={"when": object()})
    with pytest.raises(FileNotFoundError, match="no distributed checkpoint at .*nowhere"):
        tt_dist.load_distributed_state(tmp_path / "nowhere", model, opt)
    tt_dist.save_distributed_state(tmp_path / "model_only", model)
    with pytest.raises(ValueError, match="holds no optimizer state but an optimizer was given"):
        tt_dist.load_distributed_state(tmp_path / "model_only", model, opt)
    with pytest.raises(TypeError, match=r"torch.optim.Optimizer\(s\), got \['str'\]"):
        tt_dist.save_distributed_state(tmp_path / "ck", model, ["adam"])


def test_several_trained_models_save_and_load_by_name(tmp_path):
    policy, policy_opt = trained(seed=0)
    value, value_opt = trained(seed=1)
    models = {
        "policy": tt_dist.TrainedModel(policy, policy_opt),
        "value": tt_dist.TrainedModel(value, value_opt),
    }
    tt_dist.save_distributed_state(tmp_path / "ck", models, extra={"step": 2})
    fresh = {name: tiny.make_model(seed=9) for name in models}
    fresh_opts = {name: tiny.make_optimizer(m.parameters()) for name, m in fresh.items()}
    loaded = {n: tt_dist.TrainedModel(fresh[n], fresh_opts[n]) for n in models}
    assert tt_dist.load_distributed_state(tmp_path / "ck", loaded) == {"step": 2}
    for name, part in models.items():
        for key, tensor in part.model.state_dict().items():
            assert torch.equal(fresh[name].state_dict()[key], tensor), (name, key)
        want = part.optimizer.state_dict()["state"][0]["exp_avg"]
        assert torch.equal(fresh_opts[name].state_dict()["state"][0]["exp_avg"], want)
    with pytest.raises(ValueError, match="holds no weights of model 'critic'"):
        tt_dist.load_distributed_state(
            tmp_path / "ck", {"critic": tt_dist.TrainedModel(tiny.make_model())}
        )


def test_a_failed_save_leaves_no_temporary_directory(tmp_path, monkeypatch):
    import errno

    import torch.distributed.checkpoint as dcp

    model, opt = trained(steps=1)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dcp, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        tt_dist.save_distributed_state(tmp_path / "ck", model, opt)
    assert list(tmp_path.iterdir()) == []


class _RunsCode:
    """Pickles as a call of os.system: what a hostile checkpoint would hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_whose_metadata_names_code_is_refused(tmp_path):
    import pickle

    model, opt = trained(steps=1)
    tt_dist.save_distributed_state(tmp_path / "ck", model, opt)
    marker = tmp_path / "ran"
    (tmp_path / "ck" / ".metadata").write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(tt_dist.UnsafeCheckpointError, match=r"names posix\.system"):
        tt_dist.load_distributed_state(tmp_path / "ck", model, opt)
    assert not marker.exists()


def test_a_checkpoint_value_that_is_not_plain_data_is_refused(tmp_path):
    """DCP stores non-tensor values (an optimizer's lr) as pickles and loads them with
    weights_only=False; tt loads them with weights_only=True."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, opt = trained(steps=1)
    model_sd, optim_sd = get_state_dict(model, [opt])
    marker = tmp_path / "ran"
    optim_sd["param_groups"][0]["lr"] = _RunsCode(marker)  # written by someone else's code
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp_path / "ck"))
    torch.save({}, tmp_path / "ck" / "extra.pt")
    with pytest.raises(tt_dist.UnsafeCheckpointError, match=r"optim.*not plain data.*posix"):
        tt_dist.load_distributed_state(tmp_path / "ck", model, opt)
    assert not marker.exists()


# ---- activation checkpointing, activation offloading, optimizer in backward ----


def grads_after_backward(model):
    tiny.loss_on(model, tiny.global_batch(0)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_activation_checkpointing_gives_identical_gradients_and_keys():
    plain, ckpt = tiny.make_model(), tiny.make_model()
    assert tt_dist.apply_activation_checkpointing(ckpt, is_block) == 2
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    want, got = grads_after_backward(plain), grads_after_backward(ckpt)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
    with pytest.raises(RuntimeError, match="already applied to block 'layers.0'"):
        tt_dist.apply_activation_checkpointing(ckpt, is_block)


def test_activation_checkpointing_recomputes_blocks_in_backward():
    model, calls = tiny.make_model(), []
    model.layers[0].fc1.register_forward_hook(lambda *_: calls.append(1))
    tt_dist.apply_activation_checkpointing(model, is_block)
    grads_after_backward(model)
    assert len(calls) == 2  # forward, then the recomputation during backward


def test_activation_offloading_is_a_noop_on_cpu_with_one_notice(capsys):
    want = grads_after_backward(tiny.make_model())
    for _ in range(2):
        model = tiny.make_model()
        with tt_dist.activation_offloading(True, device="cpu"):
            loss = tiny.loss_on(model, tiny.global_batch(0))
        loss.backward()
        for name, param in model.named_parameters():
            torch.testing.assert_close(param.grad, want[name], rtol=0, atol=0)
    out = capsys.readouterr().out
    assert out.count("activation offloading is a no-op on cpu") == 1


def test_offloaded_activations_give_identical_gradients():
    want = grads_after_backward(tiny.make_model())
    model = tiny.make_model()
    offloader = tt_dist.ActivationOffloader("cpu", min_bytes=0)
    with offloader:
        loss = tiny.loss_on(model, tiny.global_batch(0))
    # per block at least: layer norm input, fc1 input, gelu input, fc2 input (weights: none)
    assert offloader.offloaded >= 4 * len(model.layers)
    loss.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, want[name], rtol=0, atol=0, msg=name)


def test_an_offloaded_activation_is_a_copy_and_the_graph_keeps_nothing_on_device():
    x = torch.randn(4, 8, requires_grad=True)
    with tt_dist.ActivationOffloader("cpu", min_bytes=0):
        hidden = x * 2
        out = hidden.sin()  # sin saves its input
    saved = out.grad_fn._saved_self  # unpacks: what backward will read
    assert torch.equal(saved, hidden) and saved.data_ptr() != hidden.data_ptr()


def test_parameters_are_not_offloaded():
    linear = torch.nn.Linear(8, 8)
    offloader = tt_dist.ActivationOffloader("cpu", min_bytes=0)
    with offloader:
        linear(torch.randn(4, 8, requires_grad=True)).sum()  # saves its input and weight.t()
        linear.requires_grad_(False)
        linear(torch.randn(4, 8, requires_grad=True)).sum()  # frozen (LoRA): saves weight.t()
    assert offloader.offloaded == 1  # the first call's input


def test_small_tensors_stay_on_device():
    x = torch.randn(4, 8, requires_grad=True)
    offloader = tt_dist.ActivationOffloader("cpu", min_bytes=4 * 8 * 4 + 1)
    with offloader:
        hidden = x * 2
        out = hidden.sin()
    assert offloader.offloaded == 0
    assert out.grad_fn._saved_self.data_ptr() == hidden.data_ptr()


def test_backward_prefetches_the_previous_activation_and_a_retained_graph_reruns():
    x = torch.randn(16, 16, requires_grad=True)
    offloader = tt_dist.ActivationOffloader("cpu", min_bytes=0)
    calls: list[int] = []
    copy_back = offloader._copy_back
    offloader._copy_back = lambda entry: calls.append(entry.index) or copy_back(entry)
    with offloader:
        out = x.sin().sin().sin().sum()  # each sin saves its input: a chain of 3
    assert offloader.offloaded == 3
    out.backward(retain_graph=True)
    # backward asks for 2 (copied), prefetching 1; asks for 1 (ready), prefetching 0; asks for 0
    assert calls == [2, 1, 0]
    first = x.grad.clone()
    x.grad = None
    out.backward()  # the CPU copies live as long as the graph: a second backward works
    torch.testing.assert_close(x.grad, first, rtol=0, atol=0)


def test_optimizer_in_backward_equals_a_normal_step():
    ref, model = tiny.make_model(), tiny.make_model()
    ref_losses = tiny.train(ref, tiny.make_optimizer(ref.parameters()), range(3))
    oib = tt_dist.optimizer_in_backward(model, tiny.make_optimizer)
    assert tiny.train(model, oib, range(3)) == ref_losses
    for name, param in model.named_parameters():
        torch.testing.assert_close(param, ref.get_parameter(name), rtol=0, atol=1e-7)
        assert param.grad is None, f"{name}: gradient should be freed right after its step"


def test_optimizer_in_backward_state_lr_and_refusals():
    model = tiny.make_model()
    oib = tt_dist.optimizer_in_backward(model, tiny.make_optimizer)
    tiny.train(model, oib, range(1))
    oib.set_lr(0.5)
    assert {g["lr"] for o in oib.optimizers for g in o.param_groups} == {0.5}
    other = tt_dist.optimizer_in_backward(tiny.make_model(), tiny.make_optimizer)
    other.load_state_dict(oib.state_dict())
    assert other.optimizers[0].state_dict()["state"][0]["step"] == 1
    with pytest.raises(ValueError, match=r"holds 3 parameter states, this model has \d+"):
        other.load_state_dict({str(i): {} for i in range(3)})
    with pytest.raises(
        ValueError, match="gradient_accumulation_steps=4: the optimizer steps and frees"
    ):
        tt_dist.optimizer_in_backward(model, tiny.make_optimizer, gradient_accumulation_steps=4)
    with pytest.raises(ValueError, match="TinyLM has no parameter with requires_grad=True"):
        tt_dist.optimizer_in_backward(model.requires_grad_(False), tiny.make_optimizer)
