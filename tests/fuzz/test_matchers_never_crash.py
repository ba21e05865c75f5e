"""Every pattern matcher on the graphs of many architectures, and on mutated graphs: no matcher raises.

(1) The exported graphs of 18 tiny architectures (conformance families, the older dense forms, MLA, a short-conv
hybrid and GPT-1), some with the attention export patch: each pattern_matcher transform's `apply` runs
directly, in pipeline order, and must return normally.
(2) Generated mutations of those graphs: a Python constant in some node's arguments replaced by another number, a
negative or out-of-range dim, None or a bool; a mutated graph that still propagates shapes goes through every
matcher's `apply`, which must return (matching or recording a miss), never raise. Hypothesis prints the failing
mutation; the seed is derived from the test name (reproducible).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import fx

from autodeploy_cli.graph.core import canonicalize, shape_prop
from autodeploy_cli.pipeline.interface import PassContext
from autodeploy_cli.pipeline.registry import build_options, get_transform_class
from tests.transforms.pattern_helpers import PATTERN_STAGE, export_tiny

ARCHS = [("llama", "eager", False), ("llama", "sdpa", True), ("phi3", "eager", False), ("gemma2", "eager", False),
         ("gemma3", "sdpa", False), ("qwen3_moe", "eager", False), ("deepseek_v3", "eager", True),
         ("bloom", "eager", False), ("mpt", "eager", False), ("falcon", "sdpa", False),
         ("falcon_alibi", "eager", False), ("gpt2", "eager", False), ("gpt_neo", "eager", False),
         ("xglm", "eager", False), ("gpt_neox", "sdpa", False), ("gpt_neox_japanese", "eager", False),
         ("lfm2", "eager", False), ("openai-gpt", "eager", False)]


def _matchers():
    return [(name, get_transform_class(name)(build_options(name, {"stage": "pattern_matcher"})))
            for name in PATTERN_STAGE]


def run_matchers_directly(gm: fx.GraphModule) -> dict[str, int]:
    """Each matcher's apply on `gm` in order (cleanup + shape propagation before each, as the runner does, but
    without the runner's guard: an exception propagates)."""
    ctx = PassContext(config=None, factory=None, device=torch.device("cpu"), model=gm)
    counts, fresh = {}, False
    for name, transform in _matchers():
        if transform.options.requires_shape_prop and not fresh:
            canonicalize(gm)
            shape_prop(gm)
            fresh = True
        info = transform.apply(gm, ctx)
        fresh = fresh and info.num_matches == 0
        counts[name] = info.num_matches
    return counts


@pytest.mark.parametrize("family,attn,patch", ARCHS, ids=[f"{f}-{a}{'-patch' if p else ''}" for f, a, p in ARCHS])
def test_every_matcher_on_every_architecture(family, attn, patch):
    gm = export_tiny(family, attn, patch=patch).gm
    counts = run_matchers_directly(gm)
    assert all(isinstance(n, int) and n >= 0 for n in counts.values())


# --- mutations ------------------------------------------------------------------------------------------------------
_SEEDS = [("llama", "eager"), ("gemma2", "eager"), ("bloom", "eager"), ("mpt", "eager"), ("qwen3_moe", "eager"),
          ("gpt_neox", "sdpa")]


@functools.lru_cache(maxsize=None)
def _seed_graph(i: int) -> fx.GraphModule:
    family, attn = _SEEDS[i]
    return export_tiny(family, attn).gm


def _constant_slots(gm: fx.GraphModule) -> list[tuple[fx.Node, int]]:
    """(node, position) of every Python number among the call nodes' positional arguments."""
    return [(n, i) for n in gm.graph.nodes if n.op == "call_function"
            for i, a in enumerate(n.args) if isinstance(a, (int, float)) and not isinstance(a, bool)]


REPLACEMENTS = st.one_of(st.sampled_from([0, 1, -1, 2, 3, -3, 7, 0.5, 2.0, -1e9, 1e-6, None, True, False]),
                         st.integers(-8, 64), st.floats(-100, 100, allow_nan=False))


@settings(max_examples=12, deadline=None, derandomize=True, print_blob=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, len(_SEEDS) - 1), picks=st.lists(st.tuples(st.integers(0, 10_000), REPLACEMENTS),
                                                            min_size=1, max_size=3))
def test_matchers_survive_mutated_constants(seed, picks):
    with_meta = copy.deepcopy(_seed_graph(seed))
    slots = _constant_slots(with_meta)
    for index, value in picks:
        node, pos = slots[index % len(slots)]
        args = list(node.args)
        args[pos] = value
        node.args = tuple(args)
    try:
        canonicalize(with_meta)
        shape_prop(with_meta)
    except Exception:  # noqa: BLE001 - an invalid program: not what this test is about
        assume(False)
    run_matchers_directly(with_meta)  # must not raise
