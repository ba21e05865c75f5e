"""Learned position tables must cover max_seq_len: checked on the exported graph, before anything is built."""

from __future__ import annotations

import torch
from torch import fx

from autodeploy_cli.errors import ADError
from autodeploy_cli.graph.attention_mask import evaluate_subgraph
from autodeploy_cli.graph.match import ancestors, val


def check_position_tables(gm: fx.GraphModule, max_seq_len: int) -> None:
    """Learned absolute positions (GPT-2, OPT, GPT-Neo, BioGPT) look up a table of N rows with position_ids: a
    sequence longer than the table would index past it at run time. Evaluate each position lookup at position
    max_seq_len - 1 (the graph's own index arithmetic, e.g. OPT's offset 2) and refuse what does not fit."""
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    if "position_ids" not in names:
        return
    last = torch.tensor([[max_seq_len - 1]])
    inputs = [last if n == "position_ids" else torch.zeros(1, 1, dtype=torch.long) for n in names]
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not torch.ops.aten.embedding.default:
            continue
        idx = node.args[1]
        if not isinstance(idx, fx.Node) or not any(a.name == "position_ids" for a in ancestors(idx)):
            continue
        rows = getattr(val(node.args[0]), "shape", (None,))[0]
        index = evaluate_subgraph(gm, idx, inputs)
        if isinstance(rows, int) and index is not None and int(index.max()) >= rows:
            raise ADError(
                f"The model's learned position table ({node.args[0].name}) has {rows} rows, and position "
                f"{max_seq_len - 1} (max_seq_len={max_seq_len}) would look up row {int(index.max())}: the model "
                f"takes at most {max_seq_len - (int(index.max()) - rows + 1)} tokens per sequence. Set "
                f"`max_seq_len` to that or lower.")
