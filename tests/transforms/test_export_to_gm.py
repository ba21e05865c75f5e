"""export_to_gm: flat GraphModule with HF parameter names; export patches toggled from config."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.errors import ADError
from autodeploy_cli.pipeline.build import build
from autodeploy_cli.graph.core import count_ops


def test_graph_keeps_hf_names_and_routes_attention():
    result = build(resolve(), stop_after="export_to_gm")
    gm = result.model
    attrs = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    assert "model.layers.0.self_attn.q_proj.weight" in attrs and "lm_head.weight" in attrs
    assert count_ops(gm, torch.ops.auto_deploy.torch_attention) == 2
    assert count_ops(gm, torch.ops.aten.scaled_dot_product_attention) == 0
    assert "hf_attention_to_torch_attention" in result.ctx.facts.export_patches


def test_patch_can_be_disabled():
    cfg = resolve([], ["transforms.export_to_gm.patches.hf_attention_to_torch_attention=false",
                       "transforms.export_to_gm.patches.autocast_noop=false"])
    gm = build(cfg, stop_after="export_to_gm").model
    assert count_ops(gm, torch.ops.auto_deploy.torch_attention) == 0
    assert count_ops(gm, torch.ops.aten.scaled_dot_product_attention) == 2  # HF's default sdpa path


def test_unknown_patch_is_named():
    with pytest.raises(ADError, match=r"Unknown export patch `hf_attn`.*Registered patches:"):
        build(resolve([], ["transforms.export_to_gm.patches.hf_attn=false"]), stop_after="export_to_gm")
