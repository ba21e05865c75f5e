"""Deciding how every weight of the meta graph is split: the sources in priority order claim linears, regions are
proven, MoE experts and the vocabulary are split; the result is a `ShardPlan` with one report row per decision.

Sources (`sharding_source`, the first to claim a linear wins):
  manual     `manual_config.tp_plan`: {pattern: style}, a pattern matching a weight name as `*pattern*` (`*` is
             any text); colwise / rowwise / gather as named; `mamba` waits for SSM layers (ad has none yet);
             local_colwise / local_rowwise apply to shared experts ("shared" in the name) as colwise / rowwise;
             sequence_parallel is not supported (noted)
  factory    the HF config's `base_model_tp_plan`, same rules; HF's own styles (colwise_gather_output,
             rowwise_split_input, packed_*, replicated_*) leave the linear to the next source
  heuristic  column -> row for every provable region, lm_head vocabulary-parallel, the rest replicated (or gathered
             with `shard_all_unprocessed`)
`simple_shard_only`: every linear gathered, whatever the sources say.
A colwise/rowwise claim becomes a split only inside a proven region whose openers are all colwise and whose closer
is rowwise; otherwise the linear is gathered and the report says why (never a wrong result).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from torch import fx

from autodeploy_cli.graph.core import op_name
from autodeploy_cli.graph.match import val
from transforms._sharding.plan import EmbeddingEdit, LinearEdit, MoeEdit, ShardPlan, WeightSplit
from transforms._sharding.regions import Region, find_region, gather_split, linear_weight, own_weight, prove

# MoE ops whose arguments are (x, selected_experts, routing_weights, *per-expert weight lists) and which ignore
# expert ids outside [0, len(list)) (the contract EP relies on)
MOE_OPS = ("auto_deploy.torch_moe",)
VOCAB_GRANULE = 64  # padded vocabulary rows per rank are a multiple of this when the vocabulary does not split


@dataclass
class Claim:
    style: str  # colwise | rowwise | gather | replicated
    source: str  # manual | factory | heuristic
    key: str = ""  # the plan entry that matched


def plan_regex(key: str) -> re.Pattern:
    """AutoDeploy's rule: the key is wrapped as *key*, `*` matches any text, everything else literally."""
    return re.compile(".*".join(re.escape(part) for part in f"*{key}*".split("*")))


def lm_head(gm: fx.GraphModule) -> Optional[fx.Node]:
    """The linear producing the graph output (through element-wise ops)."""
    from transforms.gather_logits_before_lm_head import find_lm_head

    node = find_lm_head(gm)
    return node if node is not None and linear_weight(node) is not None else None


class Planner:
    def __init__(self, gm: fx.GraphModule, rank: int, world_size: int, opts: Any, hf_config: Any):
        self.gm, self.opts, self.hf = gm, opts, hf_config
        self.rank, self.ws = rank, world_size
        self.plan = ShardPlan(rank, world_size)
        self.order = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.linears = [n for n in gm.graph.nodes if linear_weight(n) is not None]
        self.claims: dict[fx.Node, Claim] = {}
        self.head = lm_head(gm)
        self.regions = [r for r in (find_region(n, self.order) for n in self.linears) if r is not None]

    def run(self) -> ShardPlan:
        self._run()
        self.plan.notes = list(dict.fromkeys(self.plan.notes))
        return self.plan

    def _run(self) -> None:
        dims = set(self.opts.sharding_dims)
        if self.opts.simple_shard_only:  # every linear column-split + all-gather, whatever the sources say
            for node in self.linears:
                self.claims[node] = Claim("gather", "heuristic", "simple_shard_only")
        for source in [] if self.opts.simple_shard_only else self.opts.sharding_source:
            if source == "manual":
                self._claim_plan((self.opts.manual_config or {}).get("tp_plan") or {}, "manual")
            elif source == "factory":
                self._claim_plan(dict(getattr(self.hf, "base_model_tp_plan", None) or {}), "factory")
            elif source == "heuristic" and "tp" in dims:
                if self.claims and not self.opts.support_partial_config:
                    self.plan.notes.append("support_partial_config is false: linears no plan entry names are kept "
                                           "whole (no heuristic)")
                else:
                    self._heuristic()
        self._assemble()
        if "ep" in dims:
            self._moe()
        heuristic_tp = "tp" in dims and "heuristic" in self.opts.sharding_source
        self._embeddings(heuristic_tp and (self.opts.support_partial_config or not self._plan_claimed()))
        for dim in sorted(dims - {"tp", "ep"}):
            self.plan.notes.append(f"sharding_dims `{dim}`: nothing to shard here ("
                                   + ("ad has no SSM layers yet)" if dim == "ssm" else "no batched matmuls of weights)"))

    def _plan_claimed(self) -> bool:
        return any(c.source != "heuristic" for c in self.claims.values())

    # --- sources ------------------------------------------------------------------------------------------------
    def _claim_plan(self, tp_plan: dict, source: str) -> None:
        entries = [(key, str(style), plan_regex(str(key))) for key, style in tp_plan.items()]
        used: set[str] = set()
        for node in self.linears:
            if node in self.claims:
                continue
            name = str(linear_weight(node).target)
            for key, style, regex in entries:
                if not regex.match(name):
                    continue
                used.add(key)
                claim = self._style(style, name, key, source)
                if claim is not None:
                    self.claims[node] = claim
                break
        for key, style, _ in entries:
            if key in used or source != "manual":
                continue
            if style == "mamba":
                self.plan.notes.append(f"manual tp_plan `{key}: mamba` waits for SSM layers (ad has none yet; this "
                                       "model has no linear it matches)")
            else:
                self.plan.notes.append(f"manual tp_plan `{key}: {style}` matches no linear of this model")

    def _style(self, style: str, name: str, key: str, source: str) -> Optional[Claim]:
        if style in ("colwise", "rowwise", "gather"):
            return Claim(style, source, key)
        if style == "mamba":
            self.plan.notes.append(f"`{key}: mamba` matches a linear that is no SSM in_proj (ad has no SSM layers "
                                   "yet): the entry waits for them; the linear is left to the next source")
            return None
        if style.startswith("local"):
            if "shared" in name and style in ("local_colwise", "local_rowwise"):
                return Claim(style[len("local_"):], source, key)
            self.plan.notes.append(f"`{key}: {style}`: local styles apply to shared experts only; the linears it "
                                   "matches are left to the next source")
            return None
        if "sequence" in style:
            self.plan.notes.append(f"`{key}: {style}`: sequence parallelism is not supported; the linears it "
                                   "matches are left to the next source")
            return None
        if source == "factory":  # HF's own styles (colwise_gather_output, rowwise_split_input, packed_*, ...)
            self.plan.notes.append(f"factory plan `{key}: {style}` is no AutoDeploy style: the linears it matches "
                                   "are left to the next source")
            return None
        return Claim("gather", source, key)  # AutoDeploy: anything else falls back to simple shard

    def _heuristic(self) -> None:
        for region in self.regions:
            members = [(o, "colwise") for o in region.openers] + [(region.closer, "rowwise")]
            if all(self.claims[n].style == style for n, style in members if n in self.claims):
                for n, style in members:
                    self.claims.setdefault(n, Claim(style, "heuristic"))
        if self.head is not None:
            self.claims.setdefault(self.head, Claim("gather", "heuristic", "vocabulary"))
        if self.opts.shard_all_unprocessed:
            for node in self.linears:
                self.claims.setdefault(node, Claim("gather", "heuristic", "shard_all_unprocessed"))

    # --- assembly -----------------------------------------------------------------------------------------------
    def _assemble(self) -> None:
        done: dict[fx.Node, str] = {}
        why: dict[fx.Node, str] = {}
        for region in self.regions:
            members = [*region.openers, region.closer]
            claims = [self.claims.get(n) for n in members]
            if any(n in done for n in members) or any(c is None for c in claims):
                continue
            if claims[-1].style != "rowwise" or any(c.style != "colwise" for c in claims[:-1]):
                continue
            config_source = any(c.source != "heuristic" for c in claims)
            if prove(region, self.ws, self.rank, self._head_dim() if config_source else None):
                self._accept(region)
                done.update({n: "region" for n in members})
            else:
                why.update({n: region.reason for n in members if n not in why})
        for node in self.linears:
            if node in done:
                continue
            claim = self.claims.get(node)
            if claim is None or claim.style == "replicated":
                self._decide(node, "replicated", claim, "no source splits it" if claim is None else "plan: kept whole")
                continue
            fallback = claim.style in ("colwise", "rowwise")
            reason = why.get(node, "no column -> row block pairs it") if fallback else ""
            if not (own_weight(node) or self._tied_head(node)):
                self._decide(node, "replicated", claim, "its weight is shared with another op", fallback=fallback)
                continue
            granule = VOCAB_GRANULE if node is self.head else 1
            for split in gather_split(node, self.ws, self.rank, granule):
                self.plan.add_split(split)
            full = int(val(linear_weight(node)).shape[0])
            self.plan.linears.append(LinearEdit(node.name, "gather", full))
            self._decide(node, "gather", claim, reason or ("vocabulary-parallel lm_head, logits gathered"
                                                           if node is self.head else "column split + all-gather"),
                         fallback=fallback)

    def _head_dim(self) -> Optional[int]:
        manual = (self.opts.manual_config or {}).get("head_dim")
        if manual:
            return int(manual)
        if self.hf is None:
            return None
        text = getattr(self.hf, "get_text_config", lambda: self.hf)()
        hd = getattr(text, "head_dim", None)
        return int(hd) if hd else None

    def _tied_head(self, node: fx.Node) -> bool:
        w = linear_weight(node)
        return node is self.head and all(u is node or op_name(u) == "aten.embedding" for u in w.users)

    def _accept(self, region: Region) -> None:
        for split in region.splits:
            self.plan.add_split(split)
        self.plan.args += region.edits
        for n in region.openers:
            self.plan.linears.append(LinearEdit(n.name, "colwise", int(val(n).shape[-1])))
            self._decide(n, "colwise", self.claims[n], f"opens the block closed by `{region.closer.name}`")
        self.plan.linears.append(LinearEdit(region.closer.name, "rowwise", int(val(region.closer).shape[-1])))
        what = "attention" if region.attention else "MLP"
        self._decide(region.closer, "rowwise", self.claims[region.closer],
                     f"closes the {what} block of {', '.join(f'`{o.name}`' for o in region.openers)}: one all-reduce")

    def _decide(self, node: fx.Node, style: str, claim: Optional[Claim], why: str, fallback: bool = False) -> None:
        w = linear_weight(node)
        split = self.plan.splits.get(str(w.target))
        row = {"node": node.name, "weight": str(w.target), "style": style,
               "source": claim.source if claim else None, "why": why}
        if claim is not None and claim.key:
            row["plan_entry"] = claim.key
        if split is not None:
            row["local_shape"] = list(split.local_shape)
        if fallback:
            row["fallback"] = f"wanted {claim.style}"
        self.plan.decisions.append(row)

    # --- experts and vocabulary ---------------------------------------------------------------------------------
    def _moe(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op != "call_function" or op_name(node) not in MOE_OPS:
                continue
            w1, w2, w3 = (list(node.args[i]) for i in (3, 4, 5))
            n_exp = len(w1)
            row = {"node": node.name, "weight": f"{n_exp} experts", "source": "heuristic"}
            if n_exp >= self.ws:
                per = n_exp // self.ws
                lo, hi = self.rank * per, (n_exp if self.rank == self.ws - 1 else (self.rank + 1) * per)
                self.plan.moe.append(MoeEdit(node.name, "ep", lo, hi))
                row.update(style="expert-parallel", why=f"experts [{lo}, {hi}) on this rank, ids of others ignored; "
                           "one all-reduce")
            else:
                inter = int(val(w1[0]).shape[0])
                if inter % self.ws:
                    row.update(style="replicated", why=f"{n_exp} experts < {self.ws} ranks and their {inter} "
                               "features do not split")
                    self.plan.decisions.append(row)
                    continue
                per = inter // self.ws
                block = [(self.rank * per, (self.rank + 1) * per)]
                for gate, down, up in zip(w1, w2, w3):
                    for w, dim in ((gate, 0), (up, 0), (down, 1)):
                        self.plan.add_split(WeightSplit(str(w.target), dim, block, tuple(val(w).shape)))
                self.plan.moe.append(MoeEdit(node.name, "tp", 0, n_exp))
                row.update(style="expert-tensor-parallel", why=f"{n_exp} experts < {self.ws} ranks: every expert "
                           "split (gate/up by rows, down by columns); one all-reduce")
            self.plan.decisions.append(row)

    def _embeddings(self, allowed: bool) -> None:
        for node in self.gm.graph.nodes:
            if op_name(node) != "aten.embedding" or node.args[0].op != "get_attr":
                continue
            w = node.args[0]
            name, shape = str(w.target), tuple(val(w).shape)
            tied = name in self.plan.splits  # the lm_head shares it and was split: the lookup must follow
            if not tied and (not allowed or len(w.users) > 1):
                self.plan.decisions.append({"node": node.name, "weight": name, "style": "replicated",
                                            "source": None, "why": "embedding kept whole"})
                continue
            per = -(-shape[0] // self.ws)
            if shape[0] % self.ws:
                per = -(-per // VOCAB_GRANULE) * VOCAB_GRANULE
            start = min(self.rank * per, shape[0])
            if not tied:
                self.plan.add_split(WeightSplit(name, 0, [(start, min(start + per, shape[0]))], shape, per))
            self.plan.embeddings.append(EmbeddingEdit(node.name, self.rank * per, per))
            self.plan.decisions.append({"node": node.name, "weight": name, "style": "vocab-parallel",
                                        "source": "heuristic", "local_shape": [per, shape[1]],
                                        "why": f"rows [{self.rank * per}, {self.rank * per + per}) of {shape[0]}: "
                                               "masked lookup + all-reduce" + (" (tied to lm_head)" if tied else "")})


