"""The pass manager: stage order, config-added transforms, logs, failures and skip_on_error."""

from __future__ import annotations

import logging

import pytest

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.pipeline.build import build
from autodeploy_cli.pipeline.interface import BaseTransform, TransformInfo
from autodeploy_cli.pipeline.registry import ordered_entries
from autodeploy_cli.pipeline.runner import TransformFailed


@pytest.fixture
def extra_transforms(scratch_transforms):
    class Boom(BaseTransform):
        def apply(self, gm, ctx):
            raise RuntimeError("kaboom")

    class Noop(BaseTransform):
        def apply(self, gm, ctx):
            return TransformInfo.untouched(note="looked, found nothing")

    scratch_transforms("tst_boom", Boom)
    scratch_transforms("tst_noop", Noop)


def test_entries_sorted_by_stage_and_added_one_lands_at_end_of_its_stage(extra_transforms):
    cfg = resolve([], ["transforms.tst_noop.stage=post_export"])
    names = [n for n, _ in ordered_entries(cfg.transforms)]
    post = [n for n in names if n.startswith("cleanup_") or n == "tst_noop"]
    assert post[-1] == "tst_noop"
    assert names.index("export_to_gm") < names.index("tst_noop") < names.index("load_weights")
    assert names[0] == "build_model" and names[-1] == "compile_model"


def test_failure_names_transform_stage_and_predecessors(extra_transforms):
    cfg = resolve([], ["transforms.tst_boom.stage=post_export"])
    with pytest.raises(TransformFailed) as e:
        build(cfg)
    msg = str(e.value)
    assert "Transform `tst_boom` (stage post_export) failed: RuntimeError: kaboom." in msg
    assert "Transforms applied before it: build_model, export_to_gm, cleanup_noop_slice" in msg
    assert "skip_on_error=true" in msg


def test_skip_on_error_logs_and_reports_skip(extra_transforms):
    cfg = resolve([], ["transforms.tst_boom.stage=post_export", "transforms.tst_boom.skip_on_error=true"])
    result = build(cfg)
    row = next(r for r in result.report["transforms"] if r["name"] == "tst_boom")
    assert row["skipped"] is True and row["error"] == "RuntimeError: kaboom"
    assert result.report["transforms"][-1]["name"] == "compile_model"  # the pipeline went on


def test_log_lines_follow_the_contract(monkeypatch, capfd):
    monkeypatch.setenv("AUTO_DEPLOY_LOG_LEVEL", "INFO")
    build(resolve([], ["transforms.cleanup_noop_slice.enabled=false"]))
    err = capfd.readouterr().err
    assert "[stage=post_export, transform=cleanup_noop_slice] [SUMMARY] disabled" in err
    assert "[stage=export, transform=export_to_gm] [APPLY] applying transform..." in err
    assert "[stage=post_export, transform=cleanup_input_constraints] [PRE-CLEANUP]" in err
    assert "[stage=post_export, transform=cleanup_input_constraints] [POST-CLEANUP]" in err
    import re

    assert re.search(r"\[stage=weight_load, transform=load_weights\] \[SUMMARY\] matches=\d+ \| time: "
                     r"\d+\.\d{3}s \(pre=\d+\.\d{3}s, apply=\d+\.\d{3}s, post=\d+\.\d{3}s\)", err)
    logging.getLogger("autodeploy").setLevel(logging.WARNING)


def test_report_has_every_entry_in_order_and_graph_sizes():
    cfg = resolve()
    result = build(cfg)
    expected = [n for n, _ in ordered_entries(cfg.transforms)]
    assert [r["name"] for r in result.report["transforms"]] == expected
    assert [r["position"] for r in result.report["transforms"]] == list(range(1, len(expected) + 1))
    nodes = result.report["graph_nodes"]
    assert nodes["after_export"] > 0 and 0 < nodes["final"] <= nodes["after_export"]


def test_a_matcher_that_raises_leaves_the_graph_unchanged_and_is_a_miss(scratch_transforms):
    """Pattern matchers never crash the build: a half-done rewrite is undone and the failure becomes a miss."""
    from autodeploy_cli.graph.core import op_name

    class HalfDone(BaseTransform):
        def apply(self, gm, ctx):
            node = next(n for n in gm.graph.nodes if n.op == "call_function" and "linear" in str(n.target))
            node.target = __import__("torch").ops.aten.relu.default  # a rewrite already under way ...
            gm.register_buffer("leftover", __import__("torch").zeros(1))
            raise ValueError("unexpected constant 0.5")  # ... when the matcher meets something it did not expect

    scratch_transforms("tst_half_done_attention", HalfDone)
    base = ["transforms.tst_half_done_attention.stage=pattern_matcher", "device=cpu", "dtype=float32"]
    before = build(resolve([], base[1:]), stop_after="match_rmsnorm_pattern")
    result = build(resolve([], base), stop_after="tst_half_done_attention")
    ops = lambda gm: [op_name(n) for n in gm.graph.nodes if n.op == "call_function"]  # noqa: E731
    assert ops(result.model) == ops(before.model)
    assert "leftover" not in dict(result.model.named_buffers())
    row = next(r for r in result.report["transforms"] if r["name"] == "tst_half_done_attention")
    assert row["note"] == "matcher failed: graph unchanged" and not row["skipped"]
    miss = result.ctx.misses["attention"][-1]
    assert miss["reason"] == ("not matched because `tst_half_done_attention` met a graph it did not expect "
                              "(ValueError: unexpected constant 0.5); the graph was left unchanged")
    full = build(resolve([], base), verify=True)  # and the build goes on to the end, correct
    assert full.verify_failure is None and full.report["transforms"][-1]["name"] == "compile_model"


def test_a_failed_matcher_after_a_matching_one_keeps_that_ones_changes(scratch_transforms):
    """The guard's snapshot is shared only across matchers that left the graph untouched: a matcher that raises
    after one that changed the graph returns the graph to just before itself, not to an older copy."""
    import torch

    class Marks(BaseTransform):
        def apply(self, gm, ctx):
            gm.register_buffer("marker", torch.zeros(1))
            return TransformInfo(num_matches=1, is_clean=True, has_valid_shapes=True)

    class Fails(BaseTransform):
        def apply(self, gm, ctx):
            gm.register_buffer("leftover", torch.zeros(1))
            raise ValueError("unexpected")

    scratch_transforms("tst_marks_rope", Marks)
    scratch_transforms("tst_fails_rope", Fails)
    over = ["transforms.tst_marks_rope.stage=pattern_matcher", "transforms.tst_fails_rope.stage=pattern_matcher",
            "device=cpu", "dtype=float32"]
    result = build(resolve([], over), stop_after="tst_fails_rope")
    names = [r["name"] for r in result.report["transforms"]]
    assert names.index("tst_marks_rope") < names.index("tst_fails_rope")
    buffers = dict(result.model.named_buffers())
    assert "marker" in buffers and "leftover" not in buffers


def test_cyclic_gc_is_paused_for_graph_stages_only_and_restored(scratch_transforms):
    import gc

    seen = {}

    class Probe(BaseTransform):
        def apply(self, gm, ctx):
            seen[self.options.stage] = gc.isenabled()
            return TransformInfo.untouched()

    scratch_transforms("tst_probe_graph", Probe)
    scratch_transforms("tst_probe_load", Probe)
    over = ["transforms.tst_probe_graph.stage=pattern_matcher", "transforms.tst_probe_load.stage=weight_load",
            "device=cpu", "dtype=float32"]
    build(resolve([], over), stop_after="tst_probe_load")
    assert seen == {"pattern_matcher": False, "weight_load": True} and gc.isenabled()
    gc.disable()  # a caller's own setting is left as it was
    try:
        build(resolve([], over), stop_after="tst_probe_graph")
        assert not gc.isenabled()
    finally:
        gc.enable()
