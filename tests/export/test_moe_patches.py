"""The MoE export patches: transformers' experts in every layout (hf_experts_to_torch_moe) and Llama-4's MoE block
(llama4_moe_to_torch_moe) compute exactly what HF computes, through auto_deploy::torch_moe."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from autodeploy_cli.export.library.hf_experts_to_torch_moe import activation_name, experts_layout, moe_forward
from autodeploy_cli.export.library.llama4_moe_to_torch_moe import llama4_moe_forward
from tests.tiny_models import tiny_hf_config


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)  # biases too (HF initialises them to zero)
    return module


def _experts(family: str):
    """A tiny family's experts module with random weights, on HF's eager experts path."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_hf_config(family)
    cfg._experts_implementation = "eager"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    experts = next(m for n, m in model.named_modules() if n.endswith("experts") and hasattr(m, "down_proj"))
    return _randomize(experts), cfg


def _routing(n_tokens: int, n_experts: int, k: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    weights, ids = torch.topk(torch.softmax(torch.randn(n_tokens, n_experts, generator=g), -1), k)
    return ids, weights


@pytest.mark.parametrize("family,layout", [
    ("mixtral", dict(act="silu", gated=True, transposed=False, bias=False, interleaved=False)),
    ("gpt_oss", dict(act="swiglu_oai", gated=True, transposed=True, bias=True, interleaved=True)),
    ("nemotron_h_moe", dict(act="relu2", gated=False, transposed=False, bias=False, interleaved=False)),
])
def test_moe_forward_equals_hf_eager_experts(family, layout):
    experts, cfg = _experts(family)
    got_layout = experts_layout(experts)
    assert {k: got_layout[k] for k in layout} == layout
    x = torch.randn(9, cfg.hidden_size)
    n_exp = experts.num_experts
    ids, weights = _routing(9, n_exp, cfg.num_experts_per_tok)
    with torch.no_grad():
        want = experts(x, ids, weights)  # HF eager
        got = moe_forward(experts, x, ids, weights)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert want.abs().max() > 0.1


def test_unknown_gate_keeps_hf_batched_mm():
    experts, cfg = _experts("mixtral")
    custom = copy.deepcopy(experts)

    class CustomGate(type(experts)):
        def _apply_gate(self, gate_up):
            gate, up = gate_up.chunk(2, dim=-1)
            return torch.tanh(gate) * up

    custom.__class__ = CustomGate  # its own gate: not expressible as a torch_moe activation
    assert experts_layout(custom) is None
    x = torch.randn(5, cfg.hidden_size)
    ids, weights = _routing(5, experts.num_experts, 2)
    custom.config._experts_implementation = "batched_mm"  # a deep copy: the tiny model's config is untouched
    with torch.no_grad():
        want = custom(x, ids, weights)
        got = moe_forward(custom, x, ids, weights)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name,expected", [("silu", "silu"), ("gelu", "gelu"), ("gelu_pytorch_tanh", "gelu_tanh"),
                                           ("gelu_new", "gelu_tanh"), ("relu2", "relu2"), ("relu", "relu"),
                                           ("swish", "silu"), ("quick_gelu", None), ("tanh", None)])
def test_activation_names(name, expected):
    from transformers.activations import ACT2FN

    assert activation_name(ACT2FN[name]) == expected


def test_llama4_moe_forward_equals_hf():
    from transformers import AutoModelForCausalLM

    cfg = tiny_hf_config("llama4_text", num_local_experts=4, num_experts_per_tok=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    block = _randomize(model.model.layers[0].feed_forward)
    x = torch.randn(2, 5, cfg.hidden_size)
    with torch.no_grad():
        want, want_logits = block(x)
        got, got_logits = llama4_moe_forward(block, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_logits, want_logits)
