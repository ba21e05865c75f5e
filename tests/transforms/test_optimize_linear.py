"""optimize_linear: norms and SiLU-and-mul fuse into the linear that reads them; one-token steps run a GEMV."""

from __future__ import annotations

import pytest
import torch

from tests.transforms.fusion_helpers import apply, assert_same_function, loaded, logits, ops
from transforms.gather_logits_before_lm_head import find_lm_head

AD = torch.ops.auto_deploy


def _fused_graph(tiny_dir, backend):
    gm, ctx = loaded(tiny_dir)
    apply("fuse_gemms", gm, ctx, on_cpu=True)
    for name in ("fuse_silu_mul", "fuse_add_rmsnorm", "fuse_rmsnorm"):
        apply(name, gm, ctx, backend=backend)
    return gm, ctx


def _layers(gm, backend) -> int:
    return ops(gm, getattr(AD, f"{backend}_silu_and_mul").default)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fuses_norms_and_silu_into_linears(tiny_dir, backend):
    ref, _ = loaded(tiny_dir)
    gm, ctx = _fused_graph(tiny_dir, backend)
    layers = _layers(gm, backend)
    assert layers >= 2
    info = apply("optimize_linear", gm, ctx, backend=backend)
    op = lambda name: ops(gm, getattr(AD, f"{backend}_{name}").default)  # noqa: E731
    # per layer: SiLU-and-mul -> down_proj; norm -> qkv (layer 0: plain norm, later: residual add + norm);
    # residual add + norm -> gate|up. The final norm stays apart from the LM head.
    assert (op("silu_mul_linear"), op("rmsnorm_linear"), op("add_rmsnorm_linear")) == (layers, 1, 2 * layers - 1)
    assert op("silu_and_mul") == 0 and op("fused_add_rmsnorm") == 1
    plain = 2 * layers + 1 if backend == "triton" else 0  # o_proj per layer + the LM head swapped to the GEMV op
    assert info.num_matches == layers + 1 + 2 * layers - 1 + (layers + 1 if backend == "triton" else 0)
    assert ops(gm, torch.ops.aten.linear.default) == (0 if backend == "triton" else layers + 1)
    assert plain == 0 or ops(gm, AD.triton_linear.default) == layers + 1
    assert_same_function(ref, gm)
    # one token: the GEMV path (Triton kernel through the interpreter on CPU)
    torch.testing.assert_close(logits(gm, 1, 1), logits(ref, 1, 1), rtol=1e-5, atol=1e-5)
    assert apply("optimize_linear", gm, ctx, backend=backend).num_matches == 0


def test_lm_head_is_still_found_for_the_logits_gather(tiny_dir):
    gm, ctx = _fused_graph(tiny_dir, "triton")
    apply("optimize_linear", gm, ctx, backend="triton")
    head = find_lm_head(gm)
    assert head is not None and head.target == AD.triton_linear.default


def test_options_turn_each_fusion_off(tiny_dir):
    gm, ctx = _fused_graph(tiny_dir, "torch")
    layers = _layers(gm, "torch")
    info = apply("optimize_linear", gm, ctx, backend="torch", fuse_norm=False)
    assert info.num_matches == layers and ops(gm, AD.torch_rmsnorm_linear.default) == 0
    info = apply("optimize_linear", gm, ctx, backend="torch", fuse_silu_mul=False)
    assert info.num_matches == 2 * layers


def test_untouched_without_fusable_linears(tiny_dir):
    gm, ctx = loaded(tiny_dir)
    info = apply("optimize_linear", gm, ctx, backend="torch")
    assert info.num_matches == 0 and "no linear layer" in info.note
