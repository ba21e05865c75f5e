"""The fixed-order pass manager.

For each entry (sorted by stage): [PRE-CLEANUP] -> [APPLY] -> [POST-CLEANUP] -> [SUMMARY], plus timing, graph dumps
and the verification hook. Transforms only implement `apply`.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from autodeploy_cli.errors import ADError
from autodeploy_cli.log import get_logger, log_prefix
from autodeploy_cli.pipeline import matcher_guard
from autodeploy_cli.pipeline.dump import GraphDumper
from autodeploy_cli.graph.core import canonicalize, is_graph_module, num_call_nodes, shape_prop
from autodeploy_cli.pipeline.interface import PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import get_transform_class


@dataclass
class TransformRecord:
    """One row of the build report."""

    position: int
    name: str
    stage: str
    enabled: bool
    skipped: bool = False
    num_matches: int = 0
    time_s: float = 0.0
    pre_s: float = 0.0
    apply_s: float = 0.0
    post_s: float = 0.0
    note: str = ""
    error: str = ""
    nodes_after: Optional[int] = None
    verify: Optional[dict] = None  # filled by the verification hook


class TransformFailed(ADError):
    """A transform raised; the message names it, its stage and what ran before it."""


# called after each enabled transform: (record, ctx) -> None
AfterHook = Callable[[TransformRecord, PassContext], None]

# stages that only build and rewrite the meta-device graph: no device memory that a pending garbage cycle could hold
_GRAPH_ONLY_STAGES = ("factory", "export", "post_export", "pattern_matcher", "sharding")


class _CyclicGcPause:
    """Python's cyclic GC off while the graph-only stages run: export and the matchers create millions of objects
    (fake tensors, sympy expressions, nodes), and each full collection walks all of them (measured 4 s of a 34 s
    8B build on CPU). Back on, in the state it was, before the first stage that allocates device memory."""

    def __init__(self) -> None:
        self.paused = False

    def set(self, stage: str) -> None:
        if stage in _GRAPH_ONLY_STAGES and not self.paused and gc.isenabled():
            gc.disable()
            self.paused = True
        elif stage not in _GRAPH_ONLY_STAGES:
            self.resume()

    def resume(self) -> None:
        if self.paused:
            gc.enable()
            self.paused = False


@dataclass
class PipelineRunner:
    entries: list[tuple[str, TransformOptions]]
    dumper: Optional[GraphDumper] = None
    after_hooks: list[AfterHook] = field(default_factory=list)

    def run(self, ctx: PassContext) -> list[TransformRecord]:
        records: list[TransformRecord] = []
        applied: list[str] = []
        state = {"is_clean": False, "has_valid_shapes": False}
        gc_pause = _CyclicGcPause()
        try:
            for position, (name, opts) in enumerate(self.entries, start=1):
                gc_pause.set(opts.stage)
                self._entry(position, name, opts, ctx, records, applied, state)
        finally:
            gc_pause.resume()
        return records

    def _entry(self, position: int, name: str, opts: TransformOptions, ctx: PassContext,
               records: list[TransformRecord], applied: list[str], state: dict) -> None:
        log = get_logger()
        rec = TransformRecord(position=position, name=name, stage=opts.stage, enabled=opts.enabled)
        with log_prefix(f"[stage={opts.stage}, transform={name}]"):
            if not opts.enabled:
                log.info("[SUMMARY] disabled")
                rec.note = "disabled"
            else:
                self._run_one(name, opts, ctx, rec, state, applied)
        if is_graph_module(ctx.model):
            rec.nodes_after = num_call_nodes(ctx.model)  # type: ignore[arg-type]
        records.append(rec)
        if rec.enabled and not rec.skipped:
            applied.append(name)
            for hook in self.after_hooks:
                try:
                    hook(rec, ctx)
                except ADError:
                    raise
                except Exception as e:  # noqa: BLE001 - name the transform the hook was checking
                    raise TransformFailed(
                        f"Checking the graph after transform `{name}` (stage {opts.stage}) failed: "
                        f"{type(e).__name__}: {e}. Transforms applied: {', '.join(applied)}. Run with "
                        "AUTO_DEPLOY_LOG_LEVEL=DEBUG for the full traceback."
                    ) from e
        if self.dumper is not None:
            status = "disabled" if not rec.enabled else ("skipped" if rec.skipped else f"matches={rec.num_matches}")
            self.dumper.write(position, opts.stage, name, ctx.model, status)

    def _cleanup(self, phase: str, want_shapes: bool, want_clean: bool, ctx: PassContext, state: dict) -> bool:
        """Canonicalize (and propagate shapes) when asked and needed; True if it changed the graph."""
        log = get_logger()
        gm = ctx.model
        if not is_graph_module(gm):
            log.info(f"[{phase}] skipped (no graph)")
            return False
        if want_shapes and not (state["is_clean"] and state["has_valid_shapes"]):
            log.info(f"[{phase}] graph canonicalization + shape_prop")
            canonicalize(gm)  # type: ignore[arg-type]
            shape_prop(gm)  # type: ignore[arg-type]
            state.update(is_clean=True, has_valid_shapes=True)
            return True
        if want_clean and not state["is_clean"]:
            log.info(f"[{phase}] graph canonicalization")
            canonicalize(gm)  # type: ignore[arg-type]
            state["is_clean"] = True
            return True
        log.info(f"[{phase}] skipped (graph already clean)" if want_clean or want_shapes else f"[{phase}] skipped (disabled)")
        return False

    @staticmethod
    def _snapshot(ctx: PassContext, kept: Optional[tuple], cleaned: bool) -> matcher_guard.Snapshot:
        """The matcher guard's snapshot: the previous matcher's when it left the graph untouched and no cleanup ran
        since (a graph copy costs ~50 ms for an 8B model; most matchers find nothing)."""
        if kept is not None and not cleaned and kept[1] is ctx.model and kept[2] is ctx.model.graph:
            return kept[0]
        return matcher_guard.snapshot(ctx.model)  # type: ignore[arg-type]

    def _run_one(self, name, opts, ctx, rec, state, applied) -> None:
        log = get_logger()
        transform = get_transform_class(name)(opts)
        t0 = time.perf_counter()
        snap, kept = None, state.pop("snapshot", None)
        try:
            cleaned = self._cleanup("PRE-CLEANUP", opts.requires_shape_prop, opts.requires_clean_graph, ctx, state)
            t1 = time.perf_counter()
            if opts.stage == "pattern_matcher" and is_graph_module(ctx.model):
                snap = self._snapshot(ctx, kept, cleaned)  # a matcher that raises leaves the graph unchanged
            with log_prefix("[APPLY]"):
                # the progress display reads ad_step (position, total, stage, name), shown or not
                log.info("applying transform...", extra={"ad_step": (rec.position, len(self.entries), opts.stage, name)})
                info = transform.apply(ctx.model, ctx)
            if not isinstance(info, TransformInfo):
                raise TypeError(f"{name}.apply returned {type(info).__name__}, not TransformInfo")
            t2 = time.perf_counter()
            state.update(is_clean=state["is_clean"] and info.is_clean,
                         has_valid_shapes=state["has_valid_shapes"] and info.has_valid_shapes)
            untouched = info.num_matches == 0 and info.is_clean and info.has_valid_shapes
            if not untouched:  # an untouched graph keeps its flags
                state.update(is_clean=info.is_clean, has_valid_shapes=info.has_valid_shapes)
            cleaned = self._cleanup("POST-CLEANUP", opts.run_shape_prop, opts.run_graph_cleanup, ctx, state)
            if snap is not None and untouched and not cleaned:  # the same graph: its snapshot serves the next matcher
                state["snapshot"] = (snap, ctx.model, ctx.model.graph)
            t3 = time.perf_counter()
        except ADError:
            raise
        except Exception as e:  # noqa: BLE001 - reported with context below
            if snap is not None:
                matcher_guard.restore(ctx.model, snap)
                rec.error = matcher_guard.record_failure(ctx.misses, name, e)
                log.warning(f"{rec.error} (AUTO_DEPLOY_LOG_LEVEL=DEBUG shows the traceback)")
                log.debug("matcher traceback", exc_info=True)
                rec.note, rec.time_s = "matcher failed: graph unchanged", time.perf_counter() - t0
                state.update(is_clean=False, has_valid_shapes=False)
                return
            where = f"Transform `{name}` (stage {opts.stage}) failed: {type(e).__name__}: {e}."
            before = f" Transforms applied before it: {', '.join(applied) if applied else 'none'}."
            if opts.skip_on_error:
                log.warning(f"{where} Skipped because skip_on_error is set.")
                rec.skipped, rec.error, rec.note = True, f"{type(e).__name__}: {e}", "skipped on error"
                rec.time_s = time.perf_counter() - t0
                log.info(f"[SUMMARY] skipped | time: {rec.time_s:.3f}s")
                state.update(is_clean=False, has_valid_shapes=False)
                return
            raise TransformFailed(
                where + before + f" To continue without it set `transforms.{name}.skip_on_error=true` "
                "(or `enabled=false`); run with AUTO_DEPLOY_LOG_LEVEL=DEBUG for the full traceback."
            ) from e
        rec.skipped, rec.num_matches, rec.note = info.skipped, info.num_matches, info.note
        rec.pre_s, rec.apply_s, rec.post_s, rec.time_s = t1 - t0, t2 - t1, t3 - t2, t3 - t0
        if info.skipped:
            log.info(f"[SUMMARY] skipped{' (' + info.note + ')' if info.note else ''} | time: {rec.time_s:.3f}s")
        else:
            log.info(
                f"[SUMMARY] matches={info.num_matches} | time: {rec.time_s:.3f}s "
                f"(pre={rec.pre_s:.3f}s, apply={rec.apply_s:.3f}s, post={rec.post_s:.3f}s)"
            )
