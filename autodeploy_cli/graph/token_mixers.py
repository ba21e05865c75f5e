"""Finding what in a graph mixes tokens without a cached form: what would make a cached graph generate wrong tokens.

The runtime runs every step over a flattened batch ([1, T]: the new tokens of all scheduled sequences back to back)
and keeps each sequence's history only in caches. So an op that combines different tokens is correct only in a
cached form that reads the batch metadata (which token belongs to which sequence, what is already cached). What is
left after cache_init and is not such a form would mix sequences in a batch and forget the history in decode:

  canonical mixer ops that no cached form replaced: torch_attention, torch_mla, and the state-space families
      (torch_ssm*, torch_causal_conv*, torch_delta_rule*), each with the transform that caches it;
  raw ATen mixers: a tensor with two sequence-length dims (attention scores the matchers did not convert), a
      convolution sliding over the sequence (short causal convolutions, LFM2-style), a running sum/product along
      it (scans, linear attention), positions made from the sequence length (arange(seq)) instead of position_ids.

"The sequence length" is the symbol of the graph input `input_ids`'s dim 1; every dim whose size involves it is a
token dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import fx

from autodeploy_cli.graph.core import is_op, op_name
from autodeploy_cli.graph.match import arg, layer_index, module_path, val

aten = torch.ops.aten

# canonical prefill-only mixer (auto_deploy op name or prefix) -> the transform that gives it a cached form
CACHED_FORMS = {
    "torch_attention": "insert_cached_attention",
    "torch_mla": "insert_cached_mla_attention",
    "torch_ssm": "insert_cached_ssm_attention",
    "torch_causal_conv": "insert_cached_causal_conv",
    "torch_delta_rule": "insert_cached_delta_rule",
}
_HELPER_WORDS = ("prepare", "metadata", "repeat_kv", "cache", "paged", "state")  # not mixers themselves
_CONV_OPS = (aten.convolution.default, aten.conv1d.default, aten.conv2d.default, aten._convolution.default)
_SCORE_OPS = (aten.matmul.default, aten.bmm.default, aten.baddbmm.default, aten.softmax.int, aten._softmax.default,
              aten._safe_softmax.default, aten.einsum.default)
_SDPA_OPS = (aten.scaled_dot_product_attention.default, aten._scaled_dot_product_flash_attention.default,
             aten._scaled_dot_product_efficient_attention.default)
_SCAN_OPS = (aten.cumsum.default, aten.cumprod.default, aten.logcumsumexp.default, aten.cummax.default,
             aten.cummin.default)


@dataclass(frozen=True)
class Mixer:
    kind: str  # canonical | scores | conv | scan | positions
    node: fx.Node
    detail: str  # what it is, for the message
    needs: str  # what would make it deployable

    @property
    def layer(self) -> Optional[int]:
        return layer_index(self.node)

    @property
    def where(self) -> str:
        return module_path(self.node) or self.node.name


def _symbols(x: Any) -> set:
    expr = getattr(getattr(x, "node", None), "expr", None)
    return set(getattr(expr, "free_symbols", ()) or ())


def seq_symbols(gm: fx.GraphModule) -> set:
    """The symbols of the token dimension (input_ids' dim 1; the runtime's T)."""
    for node in gm.graph.nodes:
        if node.op == "placeholder" and node.name == "input_ids":
            shape = getattr(val(node), "shape", ())
            return _symbols(shape[1]) if len(shape) > 1 else set()
    return set()


def _token_dims(x: Any, seq: set) -> list[int]:
    shape = getattr(val(x), "shape", None)
    return [i for i, d in enumerate(shape or ()) if _symbols(d) & seq]


def _cache_inputs(gm: fx.GraphModule, cache_names: set) -> set:
    return {n for n in gm.graph.nodes if n.op == "placeholder" and n.name in cache_names}


def _canonical(node: fx.Node, caches: set) -> Optional[Mixer]:
    name = op_name(node)
    if not name.startswith("auto_deploy."):
        return None
    op = name.split(".", 1)[1]
    family = next((f for f in CACHED_FORMS if op == f or op.startswith(f + "_")), None)
    if family is None or any(w in op for w in _HELPER_WORDS) or set(node.all_input_nodes) & caches:
        return None
    t = CACHED_FORMS[family]
    return Mixer("canonical", node, f"the canonical op `auto_deploy::{op}` has no cached form in this build",
                 f"the transform that caches it, `transforms.{t}` (enabled, and registered in this version of ad)")


def _raw(node: fx.Node, seq: set) -> Optional[Mixer]:
    if is_op(node, _CONV_OPS):
        x = node.args[0]
        if any(d >= 2 for d in _token_dims(x, seq)):
            return Mixer("conv", node, f"a convolution sliding over the tokens (`{op_name(node)}`, a short causal "
                         "convolution) whose state no cache keeps",
                         "a canonical causal-conv op with a cached form (the state-space mixers' "
                         "`insert_cached_causal_conv`)")
        return None
    if is_op(node, _SCAN_OPS):
        dim = arg(node, 1, "dim")
        dims = _token_dims(node.args[0], seq)
        r = len(getattr(val(node.args[0]), "shape", ()) or ())
        if isinstance(dim, int) and r and dim % r in dims:
            return Mixer("scan", node, f"a running {op_name(node).split('.')[1]} along the tokens (a scan or "
                         "linear-attention state) that no cache keeps",
                         "a canonical state op for this mixer with a cached form (SSM / delta-rule state slots)")
        return None
    if is_op(node, aten.arange.default) or is_op(node, aten.arange.start) or is_op(node, aten.arange.start_step):
        if _token_dims(node, seq):
            return Mixer("positions", node, "positions computed from the number of tokens (`arange(seq)`) instead "
                         "of the graph input position_ids: in a batch they would run across the sequences, and a "
                         "decode step would restart them at 0",
                         "an export patch that makes the model read position_ids")
        return None
    if is_op(node, _SDPA_OPS) or (is_op(node, _SCORE_OPS) and len(_token_dims(node, seq)) >= 2):
        return Mixer("scores", node, f"attention outside the canonical attention op (`{op_name(node)}` over "
                     "[.., seq, seq] scores): the pattern matchers did not convert it",
                     "a matcher or export patch for this attention form (see the attention coverage row for why it "
                     "was not matched)")
    return None


def _live(gm: fx.GraphModule) -> set:
    from autodeploy_cli.graph.match import ancestors

    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    return set(ancestors(out))


def find_uncached_mixers(gm: fx.GraphModule, cache_names: set) -> list[Mixer]:
    """Every live node that mixes tokens without a cached form (unconverted attention: its first node per module)."""
    seq, caches, live = seq_symbols(gm), _cache_inputs(gm, cache_names), _live(gm)
    found: list[Mixer] = []
    flagged: set = set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or node not in live:
            continue
        m = _canonical(node, caches) or (_raw(node, seq) if seq else None)
        if m is None:
            continue
        if m.kind == "scores" and (m.where, m.layer) in flagged:
            continue  # the rest of an unmatched attention block: reported once per module
        flagged.add((m.where, m.layer))
        found.append(m)
    return found
