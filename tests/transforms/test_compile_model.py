"""compile_model: torch-simple keeps the GraphModule; torch-compile wraps it and gives the same logits."""

from __future__ import annotations

import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.pipeline.build import build


def test_auto_is_torch_simple_on_cpu():
    result = build(resolve([], []))  # default: compile_backend auto, attn_backend auto
    assert isinstance(result.model, torch.fx.GraphModule)
    assert result.report["transforms"][-1]["note"] == "torch-simple"
    assert result.ctx.facts.compile_backend == "torch-simple"
    assert result.ctx.facts.attention_backend == "torch"


def test_torch_simple_is_identity():
    result = build(resolve([], ["compile_backend=torch-simple"]))
    assert isinstance(result.model, torch.fx.GraphModule)
    assert result.report["transforms"][-1]["note"] == "torch-simple"


def test_torch_compile_gives_the_same_logits_as_torch_simple():
    """The compiled graph (dynamo + aot_eager: the same lowering inductor starts from, without the C++ build) equals
    the uncompiled one on the probe prefill and on a decode step after it."""
    import torch._dynamo

    torch._dynamo.reset()
    base = ["max_seq_len=64", "attn_page_size=4"]
    plain = build(resolve([], [*base, "compile_backend=torch-simple"]))
    compiled = build(resolve([], [*base, "compile_backend=torch-compile",
                                  "transforms.compile_model.dynamo_backend=aot_eager"]))
    assert not isinstance(compiled.model, torch.fx.GraphModule)  # wrapped by torch.compile
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [3, 1, 4, 1, 5, 9, 2]])
    want = plain.ctx.probe(ids, None)
    got = compiled.ctx.probe(ids, None)
    assert want.shape == got.shape == (2, 7, 320)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
