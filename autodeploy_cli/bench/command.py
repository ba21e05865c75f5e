"""`ad bench`: check the plan, build the workload, time ours, then each Hugging Face baseline; print and save.

Order: all cheap checks first (bad counts, ISL + OSL above max_seq_len, bad dataset lines fail before the build),
then our engine (built, warmed up, timed, freed), then each baseline on the same device with the same weights.
Ctrl-C at any point prints and writes what was gathered so far, marked partial, and exits 130.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from autodeploy_cli.bench import ours
from autodeploy_cli.bench.metrics import RunTrace, now
from autodeploy_cli.bench.plan import BenchPlan, make_plan
from autodeploy_cli.bench.results import BenchResult, write_json
from autodeploy_cli.bench.table import render
from autodeploy_cli.bench.workload import load_workload
from autodeploy_cli.config.checks import output_path
from autodeploy_cli.config.schema import ADConfig
from autodeploy_cli.errors import ADError, first_line
from autodeploy_cli.log import build_progress, get_logger


def _check_output(plan: BenchPlan, overwrite: bool) -> None:
    """Fail before a long run, not after it, when the result file cannot be written; an existing file is kept (a
    numbered name is used) unless `--force`."""
    if plan.output:
        chosen = output_path(plan.output, "--output", overwrite=overwrite)
        if str(chosen) != str(Path(plan.output).expanduser()):
            get_logger().warning(f"`{plan.output}` exists and is kept; the results go to `{chosen}` (pass --force "
                                 "to overwrite).")
        plan.output = str(chosen)


def _conditions(cfg: ADConfig, factory: Any) -> dict[str, Any]:
    return {
        "model": cfg.model,
        "dtype": str(factory.model_dtype()).replace("torch.", ""),
        "device": str(factory.device),
        "world_size": cfg.world_size,
        "compile_backend": cfg.compile_backend,
        "attn_backend": cfg.attn_backend,
        "max_seq_len": cfg.max_seq_len,
        "max_batch_size": cfg.max_batch_size,
    }


def _describe_ours(cfg: ADConfig, conditions: dict[str, Any]) -> str:
    return (f"ad engine: compile backend {conditions['compile_backend']}, attention backend "
            f"{conditions['attn_backend']}, paged KV cache (page {cfg.attn_page_size})")


class _Session:
    """One `ad bench` invocation; `stage` says where an interrupt landed."""

    def __init__(self, cfg: ADConfig, plan: BenchPlan, console: Console):
        from autodeploy_cli.models.factory import ModelFactory

        self.cfg, self.plan, self.console = cfg, plan, console
        self.factory = ModelFactory(cfg)
        self.workload = load_workload(plan, cfg, self.factory)
        self.result = BenchResult(plan=plan, config=dataclasses.asdict(cfg), workload=self.workload.summary(),
                                  conditions=_conditions(cfg, self.factory))
        self.stage = "setup"
        self._probe: Any = None  # our logits on the quality probe (quantized builds with --baseline hf)

    def run(self) -> None:
        from autodeploy_cli.bench import hardware

        device = self.factory.device
        self.result.environment = hardware.environment(device)
        self.result.model = hardware.model_bytes(self.factory)
        bw, note = hardware.measure_copy_bandwidth(device)
        self.result.hardware = {"copy_bandwidth_gb_s": bw / 1e9 if bw else None, "note": note}
        self.stage = "build"
        t0 = now()
        with build_progress():
            engine = ours.make_engine(self.cfg)
        self.result.build = ours.build_split(engine.build_result.records, now() - t0)
        self.result.kv_cache_capacity_tokens = getattr(engine, "kv_capacity_tokens", None)
        if getattr(engine, "iface", None) is not None:  # exact KV / state bytes of the built model
            self.result.model.update(hardware.cache_bytes(engine.iface))
        # the backends `auto` resolved to on this device
        facts = getattr(getattr(engine.build_result, "ctx", None), "facts", None)
        for key, name in (("attn_backend", "attention_backend"), ("compile_backend", "compile_backend")):
            self.result.conditions[key] = getattr(facts, name, None) or self.result.conditions[key]
        with self._progress() as progress:
            self._run_ours(engine, progress)
            del engine
            self._release(device)
            for kind in self.plan.baselines:
                try:
                    self._run_baseline(kind, progress)
                except Exception as e:  # noqa: BLE001 - a failing baseline (HF out of memory, say) keeps our numbers
                    self._baseline_failed(kind, e)

    def _progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), transient=True)

    def _run_ours(self, engine: Any, progress: Progress) -> None:
        from autodeploy_cli.bench import hardware

        requests, c = self.workload.requests, self.plan.concurrency
        trace = self.result.runs.setdefault("ad", RunTrace("ad", _describe_ours(self.cfg, self.result.conditions)))
        self.stage = "ad"
        task = progress.add_task("ad: warm-up", total=len(requests))
        bench = self.cfg.benchmark
        sampling = None if bench.temperature == 0 else (
            lambda n: ours.sampling_params(n, bench.temperature, bench.top_p, bench.seed))
        if self.plan.warmup:
            t0 = now()
            ours.run_engine(engine, requests[:c], c, RunTrace("ad-warmup"), sampling=sampling)
            trace.warmup_s = now() - t0
        progress.update(task, description="ad")
        hardware.reset_peak_memory(self.factory.device)
        ours.run_engine(engine, requests, c, trace, on_done=lambda: progress.advance(task), sampling=sampling)
        trace.peak_memory_bytes, trace.peak_memory_note = hardware.peak_memory(self.factory.device)
        if "hf" in self.plan.baselines and (self.factory.quant_scheme() is not None or
                                            self.factory.kv_cache_dtype() == "fp8"):
            from autodeploy_cli.llm import quality_probe

            self._probe = quality_probe(engine, self.cfg)  # compared with the hf baseline's logits below

    def _run_baseline(self, kind: str, progress: Progress) -> None:
        from autodeploy_cli.bench import baselines, hardware

        device = self.factory.device
        self.stage = kind
        task = progress.add_task(f"{kind}: load + warm-up", total=len(self.workload.requests))
        trace = self.result.runs.setdefault(kind, RunTrace(kind))
        model = self.factory.materialize(device)  # the same weights as ours (checkpoint or the same seeded init)

        def warmed() -> None:
            progress.update(task, description=kind)
            hardware.reset_peak_memory(device)

        if kind == "hf" and self._probe is not None:  # quantized: the quality gate's numbers vs this model
            from autodeploy_cli.llm import quality_against

            self.result.quality = quality_against(model, self._probe, self.cfg)
        try:
            baselines.run_hf(model, kind, self.workload.requests,
                             self.plan.baseline_concurrency or self.plan.concurrency, trace,
                             do_warmup=self.plan.warmup, on_done=lambda: progress.advance(task), on_warm=warmed)
            trace.peak_memory_bytes, trace.peak_memory_note = hardware.peak_memory(device)
        finally:
            del model
            self._release(device)

    def _baseline_failed(self, kind: str, err: Exception) -> None:
        first = first_line(err)[:300]
        trace = self.result.runs.setdefault(kind, RunTrace(kind))
        trace.partial = True
        trace.notes.append(f"the {kind} baseline failed ({type(err).__name__}: {first}); no ratio against it")
        self.console.print(f"[yellow]warning:[/yellow] the `{kind}` baseline failed ({type(err).__name__}: {first}); "
                           "ad's own results are kept, without a ratio against it.")

    @staticmethod
    def _release(device: Any) -> None:
        from autodeploy_cli.bench import hardware

        if "torch._dynamo" in sys.modules:  # compiled code holds references to the model's tensors
            import torch._dynamo

            torch._dynamo.reset()
        hardware.free_device_memory(device)


def _finish(session: _Session, partial: bool) -> dict[str, Any]:
    result = session.result
    if partial:
        result.partial, result.interrupted_during = True, session.stage
        for trace in result.runs.values():
            if trace.t_end is None or session.stage == trace.name:
                trace.partial = True
    data = result.to_dict()
    render(data, session.console)
    if session.plan.output:
        path = write_json(data, session.plan.output)
        session.console.print(f"{'partial ' if partial else ''}results written to {path}")
    return data


def run_bench(cfg: ADConfig, console: Optional[Console] = None, overwrite: bool = False) -> dict[str, Any]:
    """Run `ad bench` for the resolved config; returns the result document (also written to --output)."""
    plan = make_plan(cfg)
    _check_output(plan, overwrite)
    if plan.url:  # online: the same workload, metrics and JSON, against a server over HTTP
        from autodeploy_cli.bench.online import OnlineSession

        session: Any = OnlineSession(cfg, plan, console or Console())
    else:
        session = _Session(cfg, plan, console or Console())
    try:
        session.run()
    except KeyboardInterrupt:
        _finish(session, partial=True)
        raise
    data = _finish(session, partial=False)
    _fail_if_nothing_completed(data, plan)
    return data


def _fail_if_nothing_completed(data: dict[str, Any], plan: BenchPlan) -> None:
    """A measured run in which every request failed has no numbers: an error (exit 1), not a row of zeros."""
    for name in ("ad", "online"):
        run = data.get("runs", {}).get(name)
        if run and run["num_requests_submitted"] and not run["num_requests_completed"]:
            first = " ".join((run["errors"] or ["no error recorded"])[0].split())[:400]
            where = f" (results written to {plan.output})" if plan.output else ""
            raise ADError(f"No request of the `{name}` run completed: {run['num_requests_failed']} of "
                          f"{run['num_requests_submitted']} failed{where}; the first: {first}. Fix that cause and "
                          "run `ad bench` again.")
