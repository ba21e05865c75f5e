"""Triton fused MoE (kernels/triton/moe.py) against the torch backend of the same op: both paths (pairwise decode
GEMVs, aligned grouped GEMMs), every activation / bias / gating / routing-on-input form, ignored ids and expert
parallelism by slicing; on a GPU (marked gpu): Qwen3-30B-A3B expert shapes in bf16 at 1, 16 and 256 tokens, and
CUDA-graph capture + replay of the op with new routing (no host sync anywhere)."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.ops import load_ops
from kernels.triton import moe as tm
from tests.ops.test_moe_fused import CASES, experts, routing

load_ops()
AD = torch.ops.auto_deploy
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SMALL = {"pairwise": tm.MoeConfig(True, block_n=8, block_k=16, down_block_n=4),  # ragged blocks at h=24, i=20
         "pairwise_one_k": tm.MoeConfig(True, block_n=8, block_k=16, down_block_n=4, down_block_k=32),  # no K loop
         "grouped": tm.MoeConfig(False, block_n=16, block_k=16, block_m=16)}


def _on(device, *ts):
    return [None if t is None else t.to(device) for t in ts]


@pytest.mark.parametrize("path", ["pairwise", "pairwise_one_k", "grouped"])
@pytest.mark.parametrize("act,gated,bias,on_input", CASES)
def test_matches_torch_backend(device, path, act, gated, bias, on_input):
    (w13, w2, b13, b2), _, _ = experts(6, 24, 20, gated, bias, seed=5)
    tokens = 7 if path == "grouped" else 3
    x = torch.randn(tokens, 24, generator=torch.Generator().manual_seed(2))
    ids, weights = routing(tokens, 6, 2)
    want = AD.torch_moe_fused(x, ids, weights, w13, w2, b13, b2, act=act, gated=gated, routing_on_input=on_input)
    args = _on(device, x, ids, weights, w13, w2, b13, b2)
    got = tm.fused_moe(*args, act=act, gated=gated, routing_on_input=on_input, config=SMALL[path])
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", ["pairwise", "grouped"])
def test_expert_parallel_slices(device, path):
    (w13, w2, b13, b2), _, _ = experts(8, 24, 20, True, True, seed=7)
    x = torch.randn(5, 24, generator=torch.Generator().manual_seed(3))
    ids, weights = routing(5, 8, 2, drop=False)
    full = AD.torch_moe_fused(x, ids, weights, w13, w2, b13, b2)
    parts = []
    for lo, hi in ((0, 5), (5, 8)):
        args = _on(device, x, ids - lo, weights, w13[lo:hi], w2[lo:hi], b13[lo:hi], b2[lo:hi])
        parts.append(tm.fused_moe(*args, config=SMALL[path]).cpu())
    torch.testing.assert_close(parts[0] + parts[1], full, rtol=1e-5, atol=1e-5)


def test_op_dispatches_with_default_configs(device):
    (w13, w2, _, _), lists, _ = experts(4, 16, 8, True, False, seed=9)
    for tokens in (1, 6):  # 2 pairs <= 4 / 2: pairwise; 12 pairs: grouped
        x = torch.randn(tokens, 16, generator=torch.Generator().manual_seed(tokens))
        ids, weights = routing(tokens, 4, 2)
        want = AD.torch_moe(x, ids, weights, *lists)
        got = AD.triton_moe_fused(*_on(device, x, ids, weights, w13, w2))
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)


def test_pick_config():
    decode = tm.pick_config(num_pairs=8, num_experts=128, tokens=1, inter=768, hidden=2048)
    assert decode.pairwise and 8 * (768 // decode.block_n) >= 512 and 2048 // decode.down_block_n >= 512
    assert decode.down_block_k == 1024 and decode.down_block_n * decode.down_block_k <= 4096  # one tile per expert
    assert not tm.pick_config(128, 128, 16, 768, 2048).pairwise  # 16 tokens x top-8: grouped, BLOCK_M 16
    assert tm.pick_config(128, 128, 16, 768, 2048).block_m == 16
    assert tm.pick_config(2048 * 8, 128, 2048, 768, 2048).block_m == 64  # prefill
    assert tm.pick_config(2, 8, 1, 14336, 4096).pairwise  # Mixtral decode


# --- GPU: real sizes, bf16 ------------------------------------------------------------------------------------
def _qwen3_layer(tokens: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    bf = dict(device="cuda", dtype=torch.bfloat16)
    n, h, i, k = 128, 2048, 768, 8
    w13 = torch.randn(n, 2 * i, h, generator=g, **bf) / h ** 0.5
    w2 = torch.randn(n, h, i, generator=g, **bf) / i ** 0.5
    x = torch.randn(tokens, h, generator=g, **bf)
    logits = torch.randn(tokens, n, generator=g, device="cuda")
    weights, ids = torch.topk(torch.softmax(logits, -1), k)
    return x, ids, weights / weights.sum(-1, keepdim=True), w13, w2


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("tokens", [1, 16, 256])
def test_gpu_bf16_qwen3_30b_shapes(tokens):
    x, ids, weights, w13, w2 = _qwen3_layer(tokens)
    ref32 = AD.torch_moe_fused(x.float(), ids, weights, w13.float(), w2.float())
    ref = AD.torch_moe_fused(x, ids, weights, w13, w2)
    got = AD.triton_moe_fused(x, ids, weights, w13, w2)
    assert _rel(ref, ref32) < 2e-2
    assert _rel(got, ref32) < 2e-2 and _rel(got, ref) < 3e-2  # within bf16 rounding of the reference


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("op,tokens", [("triton", 1), ("triton", 16), ("triton", 256), ("torch", 1),
                                       ("torch", 16)])
def test_gpu_cuda_graph_capture_and_replay(op, tokens):
    fn = getattr(AD, f"{op}_moe_fused")
    x, ids, weights, w13, w2 = _qwen3_layer(tokens)
    static = [x.clone(), ids.clone(), weights.clone()]
    fn(*static, w13, w2)  # warm up (compiles the kernels) outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static, w13, w2)
    for seed in (1, 2):  # new tokens and new routing, copied into the captured buffers
        x2, ids2, w2_, _, _ = _qwen3_layer(tokens, seed=seed)
        for buf, new in zip(static, (x2, ids2, w2_)):
            buf.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, fn(x2, ids2, w2_, w13, w2), rtol=0, atol=0)
