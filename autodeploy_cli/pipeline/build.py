"""Build = resolve device + factory, run the pipeline with dumps/verification, and produce the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from torch import fx, nn

from autodeploy_cli.config.checks import check_config
from autodeploy_cli.config.schema import ADConfig
from autodeploy_cli.pipeline.dump import GraphDumper, dump_dir_from_env, prepare_dump_dir
from autodeploy_cli.pipeline.interface import PassContext
from autodeploy_cli.pipeline.registry import ordered_entries
from autodeploy_cli.pipeline.report import build_report
from autodeploy_cli.pipeline.runner import PipelineRunner, TransformRecord


@dataclass
class BuildResult:
    config: ADConfig
    ctx: PassContext
    records: list[TransformRecord]
    report: dict[str, Any]
    dump_dir: Optional[Path] = None
    verify_failure: Optional[str] = None
    extra: dict = field(default_factory=dict)

    @property
    def model(self) -> nn.Module:
        return self.ctx.model  # type: ignore[return-value]


def _final_graph(model: Any) -> fx.GraphModule | None:
    """The GraphModule inside the compiled model: CUDA-graph runners wrap it (`.model`), torch.compile too
    (`_orig_mod`), and torch-opt wraps one in the other."""
    for _ in range(4):
        if isinstance(model, fx.GraphModule):
            return model
        model = getattr(model, "graph_module", None) or getattr(model, "_orig_mod", None) or getattr(
            model, "model", None)
    return None


def _quality_extra(ctx: PassContext, verifier: Any) -> dict | None:
    """The build report's `quantization` (scheme, layers) and `quality` (the gate vs the unquantized model)."""
    out: dict[str, Any] = {}
    if ctx.facts.quantization:
        out["quantization"] = {"scheme": ctx.facts.quantization, "linears": ctx.facts.quantized_linears,
                               "lossy_transforms": list(ctx.facts.lossy)}
    gate = getattr(verifier, "gate", None)
    if gate is not None and gate.final is not None:
        out["quality"] = gate.final
    return out or None


def device_notes(cfg: ADConfig, device: Any) -> None:
    """One line for settings that work on this device but are rarely what a user wants there."""
    from autodeploy_cli.log import get_logger

    if device.type != "cpu":
        return
    if cfg.kv_cache_config.dtype == "fp8":
        get_logger().warning("kv_cache_config.dtype=fp8 on CPU: K/V are stored as float8 e4m3 and dequantized by the "
                             "torch reference backend (slower than float32 here; it exists to test the fp8 path).")
    if cfg.dtype == "float16":
        get_logger().warning("dtype=float16 on CPU: most CPUs have no fast float16 matmul, so this is slower and "
                             "less accurate than float32 (the CPU default); use it to reproduce GPU numerics.")


def _rank_state(cfg: ADConfig, verify: bool, stop_after: str | None) -> Any:
    """This process's rank; rank 0 of a multi-rank run first tells the other ranks to build the same."""
    from autodeploy_cli.distributed import broadcast, groups
    from autodeploy_cli.errors import ADError

    ranks = groups.state()
    if ranks.world_size != cfg.world_size:
        raise ADError(
            f"`world_size: {cfg.world_size}` needs one process per rank, but this process runs "
            f"{ranks.world_size} rank(s). Use `ad build | run | bench` (they start the ranks), torchrun, or "
            "`autodeploy_cli.LLM(...)`, which start or join the ranks before building.")
    if ranks.world_size > 1 and ranks.rank == 0:
        broadcast.send_build({"config": cfg, "verify": verify, "stop_after": stop_after})
    return ranks


def build(
    cfg: ADConfig,
    dump_dir: str | Path | None = None,
    force_dump: bool = False,
    verify: bool = False,
    stop_after: str | None = None,
) -> BuildResult:
    """Run the whole pipeline for `cfg`. `dump_dir` (or AD_DUMP_GRAPHS_DIR) writes one graph file per entry."""
    from autodeploy_cli.models.factory import ModelFactory
    from autodeploy_cli.pipeline.coverage import CoverageHook, coverage_rows

    check_config(cfg)
    entries = ordered_entries(cfg.transforms)  # the one validation of transform options: typed from here on
    ranks = _rank_state(cfg, verify, stop_after)
    factory = ModelFactory(cfg, device=ranks.device)
    device_notes(cfg, factory.device)
    ctx = PassContext(config=cfg, factory=factory, device=factory.device, rank=ranks.rank,
                      world_size=cfg.world_size)
    if stop_after is not None:
        names = [n for n, _ in entries]
        entries = entries[: names.index(stop_after) + 1]
    dump_path = (dump_dir or dump_dir_from_env()) if ranks.rank == 0 else None  # rank 0's graphs only
    dumper = None
    if dump_path:
        dumper = GraphDumper(prepare_dump_dir(dump_path, force=force_dump, from_env=dump_dir is None))
    runner = PipelineRunner(entries, dumper=dumper)
    exported_nodes: dict[str, int] = {}

    def remember_export_size(rec: TransformRecord, _ctx: PassContext) -> None:
        if rec.name == "export_to_gm":
            exported_nodes["n"] = rec.nodes_after or 0

    coverage = CoverageHook()
    runner.after_hooks += [remember_export_size, coverage]
    verifier = None
    if verify:
        from autodeploy_cli.pipeline.verify import Verifier

        verifier = Verifier.create(ctx)
        runner.after_hooks.append(verifier)
    records = runner.run(ctx)
    final = _final_graph(ctx.model)
    from autodeploy_cli.models.hf_arch import model_notes

    notes = model_notes(factory.hf_config())
    report = build_report(
        model=cfg.model,
        records=records,
        graph_nodes_exported=exported_nodes.get("n"),
        final_graph=final,
        coverage=coverage_rows(final, factory.hf_config(), coverage.census, ctx.misses,
                               ctx.facts.moe_experts_implementation) if final is not None else [],
        verify_rows=verifier.rows if verifier else None,
        verify_failure=verifier.first_failure if verifier else None,
        extra={**({"notes": notes} if notes else {}), **(_quality_extra(ctx, verifier) or {}),
               **({"sharding": ctx.facts.sharding} if ctx.facts.sharding else {}),
               **({"export_cache": ctx.facts.export_cache} if ctx.facts.export_cache else {})} or None,
    )
    return BuildResult(cfg, ctx, records, report, Path(dump_path) if dump_path else None,
                       verifier.first_failure if verifier else None)
