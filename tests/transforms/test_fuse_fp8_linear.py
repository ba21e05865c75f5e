"""fuse_fp8_linear: FP8 linears become the Triton backend's ops (GEMV at one token, scaled_mm otherwise), taking in
the norm / SiLU-and-mul before them; weights are padded to multiples of 16; the torch backend keeps the references."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # Triton kernels run through the interpreter on CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

from autodeploy_cli.config.loader import resolve  # noqa: E402
from autodeploy_cli.graph.core import canonicalize, count_ops  # noqa: E402
from autodeploy_cli.pipeline.build import build  # noqa: E402
from autodeploy_cli.pipeline.registry import build_options, get_transform_class  # noqa: E402
from tests.transforms.fusion_helpers import assert_same_function, logits  # noqa: E402

AD = torch.ops.auto_deploy
FUSED = ("fuse_silu_mul", "fuse_add_rmsnorm", "fuse_rmsnorm")


def _fp8_graph(model_dir, gemms: bool = True):
    over = [f"model={model_dir}", "skip_loading_weights=true", "device=cpu", "dtype=float32",
            "quant_config.quant_algo=FP8", f"transforms.fuse_gemms.on_cpu={str(gemms).lower()}",
            *[f"transforms.{n}.backend=triton" for n in FUSED]]
    result = build(resolve([], over), stop_after="optimize_linear")
    return result.model, result.ctx


def _apply(gm, ctx, **opts):
    t = get_transform_class("fuse_fp8_linear")(build_options("fuse_fp8_linear", {"stage": "post_load_fusion",
                                                                                  **opts}))
    info = t.apply(gm, ctx)
    canonicalize(gm)
    return info


def _copy(gm):
    import copy

    return copy.deepcopy(gm)


def test_fuses_prologues_and_picks_the_triton_ops(tiny_dir):
    gm, ctx = _fp8_graph(tiny_dir("llama"))
    ref, fast = _copy(gm), _copy(gm)
    info = _apply(gm, ctx, backend="triton", gemv_act_quant=True)
    op = lambda name: count_ops(gm, getattr(AD, f"triton_quant_fp8_{name}").default)  # noqa: E731
    # per layer: qkv takes the norm (layer 0 plain, layer 1 with the residual add), gate|up the add+norm,
    # down the SiLU-and-mul, o_proj alone
    assert (op("rmsnorm_linear"), op("add_rmsnorm_linear"), op("silu_mul_linear"), op("linear")) == (1, 3, 2, 2)
    assert info.num_matches == 8 and count_ops(gm, AD.torch_quant_fp8_linear.default) == 0
    assert count_ops(gm, AD.triton_silu_and_mul.default) == 0 and count_ops(gm, AD.triton_fused_add_rmsnorm) == 1
    assert_same_function(ref, gm)  # many tokens: the activation quantizer + scaled_mm
    torch.testing.assert_close(logits(gm, 1, 1), logits(ref, 1, 1), rtol=1e-5, atol=1e-5)  # one token: the GEMV
    assert _apply(gm, ctx, backend="triton").num_matches == 0  # applied twice: nothing new
    # the default GEMV keeps one-token activations unquantized (prefill is the same path as above): close
    _apply(fast, ctx, backend="triton")
    one, want = logits(fast, 1, 1), logits(ref, 1, 1)
    assert ((one - want).norm() / want.norm()).item() < 0.05


def test_pads_k_and_n_to_16(tiny_dir):
    gm, ctx = _fp8_graph(tiny_dir("llama", intermediate_size=40), gemms=False)  # down_proj K = 40, gate/up N = 40
    ref = _copy(gm)
    _apply(gm, ctx, backend="triton", fuse_norm=False, fuse_silu_mul=False, gemv_act_quant=True)
    assert gm.get_parameter("model.layers.0.mlp.down_proj.weight").shape == (64, 48)
    assert gm.get_parameter("model.layers.0.mlp.up_proj.weight").shape == (48, 64)
    assert gm.get_buffer("model.layers.0.mlp.up_proj.weight_scale").shape == (48,)
    assert_same_function(ref, gm)
    torch.testing.assert_close(logits(gm, 1, 1), logits(ref, 1, 1), rtol=1e-5, atol=1e-5)


def test_torch_backend_and_graphs_without_fp8_stay(tiny_dir):
    gm, ctx = _fp8_graph(tiny_dir("llama"))
    info = _apply(gm, ctx, backend="torch")
    assert info.num_matches == 0 and "reference ops stay" in info.note
    assert count_ops(gm, AD.torch_quant_fp8_linear.default) == 8
    plain = build(resolve([], [f"model={tiny_dir('llama')}", "skip_loading_weights=true", "device=cpu"]),
                  stop_after="optimize_linear")
    assert _apply(plain.model, plain.ctx, backend="triton").num_matches == 0
