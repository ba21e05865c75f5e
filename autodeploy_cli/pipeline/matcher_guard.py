"""Pattern matchers never crash the build: one that raises leaves the graph exactly as it was before it ran.

A matcher meets every architecture's graph; a node shape or constant it did not expect is a reason not to match,
not a reason to stop. The runner snapshots the graph (node structure and the parameter/buffer references, no
tensor copies) before each pattern_matcher transform; if the transform raises, the snapshot is put back and the
failure becomes a miss ("not matched because ...") in the coverage report. Whatever the matcher would have
converted stays in its source form, where the coverage rows, `--verify` and `require_cached_forms` see it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from torch import fx

from autodeploy_cli.errors import first_line

# transform name fragment -> the coverage kind its misses belong to
_KINDS = (("moe", "moe"), ("rope", "rope"), ("rmsnorm", "rmsnorm"), ("norm", "rmsnorm"), ("attention", "attention"),
          ("sdpa", "attention"), ("repeat_kv", "attention"), ("mla", "attention"))


@dataclass
class Snapshot:
    graph: fx.Graph
    tensors: list  # (module, parameters dict, buffers dict): references only


def snapshot(gm: fx.GraphModule) -> Snapshot:
    graph = fx.Graph(owning_module=gm, tracer_cls=gm.graph._tracer_cls)
    graph._codegen = copy.copy(gm.graph._codegen)
    out = graph.graph_copy(gm.graph, {})
    graph.output(out, type_expr=getattr(next(iter(reversed(gm.graph.nodes))), "type", None))
    tensors = [(m, dict(m._parameters), dict(m._buffers)) for m in gm.modules()]
    return Snapshot(graph, tensors)


def restore(gm: fx.GraphModule, snap: Snapshot) -> None:
    for module, params, buffers in snap.tensors:
        module._parameters.clear()
        module._parameters.update(params)
        module._buffers.clear()
        module._buffers.update(buffers)
    gm.graph = snap.graph
    gm.recompile()


def miss_kind(transform: str) -> str:
    return next((kind for frag, kind in _KINDS if frag in transform), "attention")


def record_failure(misses: dict, transform: str, error: Exception) -> str:
    """Record a matcher's failure as a miss of its kind; returns the one-line reason."""
    first = first_line(error, default="")[:200]
    reason = (f"not matched because `{transform}` met a graph it did not expect ({type(error).__name__}: {first}); "
              "the graph was left unchanged")
    entry: dict[str, Any] = {"where": "", "node": transform, "layer": None, "reason": reason, "chain": ""}
    misses.setdefault(miss_kind(transform), []).append(entry)
    return reason
