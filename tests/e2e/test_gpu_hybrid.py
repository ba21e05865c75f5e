"""GPU (-m gpu): the default pipeline (triton mixers and attention, decode CUDA graphs) builds and runs Nemotron-H-8B
(registry architecture, random bf16 weights). Decode steps replayed from CUDA graphs give the same tokens as the
same steps run eagerly, and the prefill logits stay within bf16 tolerance of HF eager."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.runtime.engine import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
MODEL = "nvidia/Nemotron-H-8B-Base-8K"


def test_nemotron_h_8b_default_pipeline_builds_and_runs():
    from autodeploy_cli.llm import build_engine

    cfg = resolve([], ["skip_loading_weights=true", "dtype=bfloat16", "max_seq_len=1024", "max_batch_size=8"],
                  model=MODEL)
    engine = build_engine(cfg)
    facts = engine.build_result.ctx.facts
    assert (facts.attention_backend, facts.compile_backend) == ("triton", "torch-cudagraph")
    ops = engine.build_result.report["canonical_ops"]
    assert {k.split(".", 1)[-1]: v for k, v in ops.items() if "cached" in k} == {
        "triton_cached_ssm": 24, "triton_cached_causal_conv1d": 24}
    prompts = [[(7 * i + 13 * j) % 50000 + 100 for j in range(n)] for i, n in enumerate((100, 37, 260, 5))]
    sp = SamplingParams(max_tokens=24, ignore_eos=True, detokenize=False)  # registry architecture: no tokenizer
    graphed = engine.generate(prompts, sp)
    assert engine.model.replays > 0 and all(len(c.token_ids) == 24 for c in graphed)
    sizes, engine.model.batch_sizes = engine.model.batch_sizes, []  # every step eager now
    try:
        eager = engine.generate(prompts, sp)
    finally:
        engine.model.batch_sizes = sizes
    assert [c.token_ids for c in graphed] == [c.token_ids for c in eager]

    hf = engine.build_result.ctx.factory.materialize()
    ids = torch.tensor([prompts[0]], device="cuda")
    with torch.no_grad():
        want = hf(input_ids=ids).logits.float()
    got = engine.iface.run_prefill(engine.model, ids.cpu(), gather="all").float()
    rel = ((got - want).abs().max() / want.abs().max()).item()
    assert rel < 3e-2, rel
