"""quantize_fp8_linear_from_config: linears the quant config covers become FP8 ops; load hooks fill them."""

from __future__ import annotations

import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.graph.core import count_ops
from autodeploy_cli.ops import load_ops
from autodeploy_cli.pipeline.build import build
from autodeploy_cli.pipeline.registry import build_options, get_transform_class
from tests.quant_models import edit_checkpoint, fp8_reference, hf_block_fp8_dir, modelopt_dir

load_ops()
AD = torch.ops.auto_deploy
LINEAR = torch.ops.aten.linear.default
FP8_OPS = (AD.torch_quant_fp8_linear.default, AD.torch_quant_fp8_block_linear.default)


def _through(model: str, *over: str, stop: str = "load_weights"):
    cfg = resolve([], [f"model={model}", "device=cpu", "dtype=float32", *over])
    return build(cfg, stop_after=stop)


def _logits(gm, seq: int, batch: int):
    g = torch.Generator().manual_seed(seq)
    ids = torch.randint(0, 300, (batch, seq), generator=g)
    with torch.no_grad():
        return gm(ids, torch.arange(seq).expand(batch, seq))


def _hf_logits(model, seq: int, batch: int):
    g = torch.Generator().manual_seed(seq)
    ids = torch.randint(0, 300, (batch, seq), generator=g)
    with torch.no_grad():
        return model(input_ids=ids, position_ids=torch.arange(seq).expand(batch, seq)).logits


def _same(gm, ref):
    for seq, batch in ((5, 2), (9, 1)):  # a second input shape too
        torch.testing.assert_close(_logits(gm, seq, batch), _hf_logits(ref, seq, batch), rtol=1e-5, atol=1e-5)


def _apply_again(result):
    t = get_transform_class("quantize_fp8_linear_from_config")(
        build_options("quantize_fp8_linear_from_config", {"stage": "pattern_matcher"}))
    return t.apply(result.model, result.ctx)


def test_on_the_fly_fp8_of_every_block_linear(tiny_dir):
    model = str(tiny_dir("llama"))
    result = _through(model, "skip_loading_weights=true", "quant_config.quant_algo=FP8")
    row = next(r for r in result.records if r.name == "quantize_fp8_linear_from_config")
    gm, ctx = result.model, result.ctx
    assert row.num_matches == 14 and count_ops(gm, AD.torch_quant_fp8_linear.default) == 14  # 2 layers x 7
    assert count_ops(gm, LINEAR) == 1  # the LM head stays
    assert gm.get_parameter("model.layers.0.mlp.down_proj.weight").dtype == torch.float8_e4m3fn
    assert gm.get_buffer("model.layers.0.mlp.down_proj.weight_scale").shape == (64,)  # per output channel
    reference = fp8_reference(ctx.factory.materialize(), ctx.factory.quant_scheme())
    _same(gm, reference)
    assert _apply_again(result).num_matches == 0  # applied twice: nothing new


def test_exclude_modules_wildcards_and_per_tensor_scales(tiny_dir):
    result = _through(str(tiny_dir("llama")), "skip_loading_weights=true", "quant_config.quant_algo=FP8",
                      "quant_config.weight_granularity=tensor", 'quant_config.exclude_modules=[lm_head,"*.mlp.*"]')
    gm = result.model
    assert count_ops(gm, AD.torch_quant_fp8_linear.default) == 8 and count_ops(gm, LINEAR) == 7  # 3 MLP x 2 + head
    assert gm.get_buffer("model.layers.1.self_attn.o_proj.weight_scale").shape == ()
    _same(gm, fp8_reference(result.ctx.factory.materialize(), result.ctx.factory.quant_scheme()))


def test_untouched_without_a_quant_config(tiny_dir):
    result = _through(str(tiny_dir("llama")), "skip_loading_weights=true", stop="quantize_fp8_linear_from_config")
    row = next(r for r in result.records if r.name == "quantize_fp8_linear_from_config")
    assert row.num_matches == 0 and "not quantized" in row.note
    assert not any(n.target in FP8_OPS for n in result.model.graph.nodes)


def test_modelopt_checkpoint_tensors_load_as_stored(tmp_path):
    d = modelopt_dir(tmp_path / "mo")
    result = _through(str(d))
    gm, ctx = result.model, result.ctx
    assert count_ops(gm, AD.torch_quant_fp8_linear.default) == 14
    ckpt = ctx.factory.checkpoint()
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        assert torch.equal(gm.get_parameter(name).view(torch.uint8), ckpt[name].view(torch.uint8))
    for name in ("model.layers.0.self_attn.q_proj.weight_scale", "model.layers.0.self_attn.q_proj.input_scale"):
        assert torch.equal(gm.get_buffer(name), ckpt[name].reshape(()))
    _same(gm, fp8_reference(ctx.factory.materialize(), ctx.factory.quant_scheme(), ckpt))


def test_checkpoint_tensors_decide_what_runs_in_fp8(tmp_path):
    d = modelopt_dir(tmp_path / "mo")
    q = "model.layers.0.self_attn.q_proj"

    def store_q_unquantized(t):  # the file covers q_proj, the checkpoint holds it in bf16 without scales
        t[f"{q}.weight"] = (t[f"{q}.weight"].float() * t.pop(f"{q}.weight_scale")).to(torch.bfloat16)
        t.pop(f"{q}.input_scale")

    edit_checkpoint(d, store_q_unquantized)
    # and the user keeps every down_proj unquantized: FP8 in the checkpoint, dequantized at load
    result = _through(str(d), 'quant_config.exclude_modules=[lm_head,"*.down_proj"]')
    gm, ckpt = result.model, result.ctx.factory.checkpoint()
    assert count_ops(gm, AD.torch_quant_fp8_linear.default) == 14 - 1 - 2
    down = "model.layers.1.mlp.down_proj"
    want = ckpt[f"{down}.weight"].float() * ckpt[f"{down}.weight_scale"]
    torch.testing.assert_close(gm.get_parameter(f"{down}.weight"), want)
    assert gm.get_parameter(f"{q}.weight").dtype == torch.float32


def test_block_fp8_checkpoint(tmp_path):
    d = hf_block_fp8_dir(tmp_path / "hfb")
    result = _through(str(d))
    gm, ctx = result.model, result.ctx
    assert count_ops(gm, AD.torch_quant_fp8_block_linear.default) == 14
    assert gm.get_buffer("model.layers.0.mlp.gate_proj.weight_scale").shape == (3, 2)  # 96 x 64 in 32 x 32 blocks
    _same(gm, fp8_reference(ctx.factory.materialize(), ctx.factory.quant_scheme(), ctx.factory.checkpoint()))


def test_fp8_moe_experts_are_refused_by_name(tmp_path):
    import pytest

    from autodeploy_cli.errors import ADError

    d = modelopt_dir(tmp_path / "mo")
    expert = "model.layers.0.mlp.experts.0.up_proj.weight"
    edit_checkpoint(d, lambda t: t.update({expert: torch.zeros(4, 4, dtype=torch.float8_e4m3fn)}))
    with pytest.raises(ADError, match=f"MoE experts in FP8 \\(e.g. `{expert}`"):
        _through(str(d), stop="quantize_fp8_linear_from_config")
