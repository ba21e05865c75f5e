"""Reading config files into layers, including TensorRT-LLM AutoDeploy's file shapes.

A `--config` file becomes one or more layers (lowest precedence first). This is the single place that knows
about other tools' file shapes, so the rest of `ad` sees only its own schema. Two AutoDeploy shapes are read as-is:

* flat (`trtllm-serve/bench --extra_llm_api_options`): LlmArgs keys at the top;
* nested (`build_and_run_ad.py`): `args:` (the LlmArgs), `prompt:`, `benchmark:`, and `yaml_extra: [files]` at the
  top or inside `args:`. Files named by `yaml_extra` are resolved relative to the file naming them (then to the
  working directory) and become layers just below that file, so the outer file's values win, as in AutoDeploy.

AutoDeploy keys are renamed onto ours where an equivalent exists (an info note says so); keys that only
TensorRT-LLM's runtime reads are dropped with exactly one warning each, naming the key and what `ad` does instead
(see `keys.py`). The notes and warnings of one resolve are collected in the reader's `report`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from autodeploy_cli.config.compat import keys as K
from autodeploy_cli.config.compat.report import (
    CompatReport, check_backend, fmt_value, ignore_key, move_key, our_transforms,
)
from autodeploy_cli.config.layers import Layer, deep_merge, get_path, load_yaml_file
from autodeploy_cli.errors import ADError, did_you_mean

class AnchorCompat:
    """Reads config files and layers for one resolve; `report` collects what it mapped, dropped or ignored."""

    def __init__(self, report: CompatReport | None = None) -> None:
        self.report = report or CompatReport()

    def expand_file(self, path: str | Path) -> list[Layer]:
        """Load a config file as layers: the files its `yaml_extra` lists name (recursively), then the file itself."""
        return self._expand_file(Path(path), ())

    def normalize_layer(self, data: dict, source: str) -> dict:
        """Map one layer onto `ad`'s schema (the command-line layer); `yaml_extra` files are merged below it."""
        merged: dict = {}
        for _, layer in self._expand(data, source, Path.cwd(), ()):
            merged = deep_merge(merged, layer)
        return merged

    def _expand_file(self, path: Path, stack: tuple[Path, ...]) -> list[Layer]:
        key = path.resolve()
        if key in stack:
            chain = " -> ".join(str(p) for p in (*stack, key))
            raise ADError(f"Config files include each other in a loop through `yaml_extra`: {chain}. Remove one of them.")
        return self._expand(load_yaml_file(path), str(path), path.parent, (*stack, key))

    def _expand(self, data: dict, source: str, base_dir: Path, stack: tuple[Path, ...]) -> list[Layer]:
        data = copy.deepcopy(data)
        inner = data["args"].pop("yaml_extra", None) if isinstance(data.get("args"), dict) else None
        outer = data.pop("yaml_extra", None)
        layers: list[Layer] = []
        # AutoDeploy: args.yaml_extra files feed LlmArgs below the experiment files' `args`, and top-level ones below
        # the file naming them; both lie below this file's own values.
        for label, files in (("args.yaml_extra", inner), ("yaml_extra", outer)):
            for name in _as_list(files, label, source):
                layers += self._expand_file(_locate(name, base_dir, label, source), stack)
        layers.append((source, self._normalize(data, source)))
        return layers

    def _normalize(self, data: dict, source: str) -> dict:
        data = _hoist_args(data, source)
        self._top_level(data, source)
        self._kv_cache(data, source)
        self._transforms(data, source)
        self._prompt(data)
        self._benchmark(data, source)
        return data

    def _top_level(self, data: dict, source: str) -> None:
        for key in list(data):
            if key in K.RENAMED_TOP:
                move_key(self.report, data, data, key, K.RENAMED_TOP[key], key, source)
            elif key in K.IGNORED_TOP:
                ignore_key(self.report, data, key, key, K.IGNORED_TOP[key])
        if data.get("runtime") == "trtllm":
            data.pop("runtime")
            self.report.warn("`runtime: trtllm` is ignored: it selects TensorRT-LLM's runtime; ad always runs its built-in "
                         "runtime (`runtime: demollm`).")
        if "cuda_graph_config" in data:
            cg = data.pop("cuda_graph_config")
            if cg is None:
                self.report.warn(f"`cuda_graph_config: null` is ignored: {K.CUDA_GRAPH_OFF}.")
            elif not isinstance(cg, dict):
                raise ADError(f"`cuda_graph_config` in {source} must be a mapping or null, got {fmt_value(cg)}.")
            elif not cg:
                self.report.note(f"`cuda_graph_config: {{}}` dropped: {K.CUDA_GRAPH_OFF}.")
            for key in list(cg or {}):
                label = f"cuda_graph_config.{key}"
                if key in K.RENAMED_CUDA_GRAPH:
                    move_key(self.report, data, cg, key, K.RENAMED_CUDA_GRAPH[key], label, source)
                elif key in K.IGNORED_CUDA_GRAPH:
                    ignore_key(self.report, cg, key, label, K.IGNORED_CUDA_GRAPH[key])
                else:
                    ignore_key(self.report, cg, key, label, ((), "it is a TensorRT-LLM CUDA-graph option with no equivalent in ad"))
        from autodeploy_cli.config.schema import SHORTCUTS

        for key in ("attn_backend", "mla_backend", "compile_backend"):
            tname, option = SHORTCUTS[key]
            check_backend(self.report, data, key, key, tname, option)

    def _kv_cache(self, data: dict, source: str) -> None:
        kv = data.get("kv_cache_config")
        if not isinstance(kv, dict):
            return
        for key in list(kv):
            label = f"kv_cache_config.{key}"
            if key in K.RENAMED_KV_CACHE:
                move_key(self.report, data, kv, key, K.RENAMED_KV_CACHE[key], label, source)
            elif key in K.IGNORED_KV_CACHE:
                ignore_key(self.report, kv, key, label, K.IGNORED_KV_CACHE[key])
            elif key in K.NULL_DEFAULT_KV_CACHE and kv[key] is None:
                ignore_key(self.report, kv, key, label, ((None,), K.NULL_DEFAULT_KV_CACHE[key]))

    def _transforms(self, data: dict, source: str) -> None:
        """Options of transforms `ad` registers: map or drop AutoDeploy-only ones, and check backend values.

        Transforms `ad` does not register are judged after all layers are merged (`finalize`), because a later layer
        may disable them.
        """
        transforms = data.get("transforms")
        if not isinstance(transforms, dict):
            return
        registered = our_transforms()
        for name, entry in transforms.items():
            if name not in registered or not isinstance(entry, dict):
                continue
            for opt in list(entry):
                label = f"transforms.{name}.{opt}"
                renamed = K.RENAMED_TRANSFORM_OPTIONS.get((name, opt))
                if renamed is not None:
                    move_key(self.report, entry, entry, opt, renamed, label, source)
                elif K.is_anchor_only_option(name, opt):
                    ignore_key(self.report, entry, opt, label, ((), f"ad's `{name}` has no such option"))
            for opt in list(entry):
                if opt.endswith("backend") and opt != "dist_backend":
                    check_backend(self.report, entry, opt, f"transforms.{name}.{opt}", name, opt)
            if name == "detect_sharding":
                _tp_plan(name, entry)  # a bad style fails at config time, naming the entry

    def _prompt(self, data: dict) -> None:
        prompt = data.get("prompt")
        if not isinstance(prompt, dict):
            return
        if isinstance(prompt.get("queries"), str):  # AutoDeploy accepts one string
            prompt["queries"] = [prompt["queries"]]
        sp = prompt.get("sp_kwargs")
        if isinstance(sp, dict):
            for key in list(sp):
                if key in K.SAMPLING_KEYS_IGNORED:
                    ignore_key(self.report, sp, key, f"prompt.sp_kwargs.{key}", ((), K.SAMPLING_REASON))

    def _benchmark(self, data: dict, source: str) -> None:
        bench = data.get("benchmark")
        if not isinstance(bench, dict):
            return
        for key in list(bench):
            if key in K.RENAMED_BENCHMARK:
                move_key(self.report, data, bench, key, f"benchmark.{K.RENAMED_BENCHMARK[key]}", f"benchmark.{key}", source)
        # enabled / results_path / store_results are judged in self.finalize(): they depend on other keys of all layers

    def finalize(self, data: dict) -> dict:
        """Judge what needs the merged view (the loader calls this before validating): AutoDeploy transforms `ad`
        does not implement, and the benchmark's enabled/results_path/store_results keys."""
        self._finalize_benchmark(data)
        self._finalize_transforms(data)
        return data

    def _finalize_benchmark(self, data: dict) -> None:
        bench = data.get("benchmark")
        if not isinstance(bench, dict):
            return
        if "enabled" in bench:
            self._benchmark_enabled(data, bench, bench.pop("enabled"))
        if not ({"store_results", "results_path"} & set(bench)):
            return
        store = bench.pop("store_results", None)
        path = bench.pop("results_path", None)
        if store is False:
            if path is not None:
                self.report.warn("`benchmark.results_path` is ignored because `benchmark.store_results` is false: ad prints "
                             "the results and writes no file.")
            else:
                self.report.note("`benchmark.store_results: false` dropped: ad writes a results file only when "
                             "`benchmark.output` is set.")
            return
        bench["output"] = path if path is not None else "./benchmark_results.json"  # AutoDeploy's default path
        self.report.note(f"`benchmark.results_path`/`benchmark.store_results` -> `benchmark.output: {bench['output']}`.")

    def _benchmark_enabled(self, data: dict, bench: dict, enabled: Any) -> None:
        """AutoDeploy's experiment validator: an enabled benchmark raises max_seq_len to isl + osl and max_batch_size
        to its batch size, so its files keep working with `ad bench`."""
        if enabled is not True:
            self.report.warn(f"`benchmark.enabled: {fmt_value(enabled)}` is ignored: `ad bench` always runs the benchmark and "
                         "`ad run` never does.")
            return
        from autodeploy_cli.config.schema import ADConfig, BenchmarkConfig

        raised = []
        isl, osl = bench.get("isl", BenchmarkConfig.isl), bench.get("osl", BenchmarkConfig.osl)
        max_seq_len = data.get("max_seq_len", ADConfig.max_seq_len)
        max_bs = data.get("max_batch_size", ADConfig.max_batch_size)
        if all(isinstance(v, int) for v in (isl, osl, max_seq_len)) and isl + osl > max_seq_len:
            data["max_seq_len"] = isl + osl
            raised.append(f"max_seq_len to {isl + osl}")
        bs = bench.get("concurrency")
        if isinstance(bs, int) and isinstance(max_bs, int) and bs > max_bs:
            data["max_batch_size"] = bs
            raised.append(f"max_batch_size to {bs}")
        self.report.note("`benchmark.enabled: true`: `ad bench` runs the benchmark (`ad run` never does)"
                     + (f"; as in AutoDeploy, raised {' and '.join(raised)} to fit it." if raised else "."))

    def _finalize_transforms(self, data: dict) -> None:
        transforms = data.get("transforms")
        if not isinstance(transforms, dict):
            return
        registered = sorted(our_transforms())
        for name in list(transforms):
            if name in registered or name not in K.ANCHOR_TRANSFORMS:
                continue  # ours, or unknown to both (the registry's error names it)
            entry = transforms[name] if isinstance(transforms[name], dict) else {}
            if entry.get("enabled", True) is False:
                del transforms[name]
                self.report.note(f"`transforms.{name}` (AutoDeploy) is disabled and ad does not implement it; dropped.")
            elif name in K.SHARDING_TRANSFORMS:  # AutoDeploy's sharding-IR path (hint ops in custom model files)
                del transforms[name]
                self.report.warn(f"`transforms.{name}` is ignored: it belongs to AutoDeploy's sharding-IR path; ad "
                                 "shards with `detect_sharding` + `sharding_transform_executor` (on by default when "
                                 "`world_size` > 1).")
            else:
                raise ADError(
                    f"Transform `{name}` is a TensorRT-LLM AutoDeploy transform that ad does not implement, and your "
                    f"config enables it. Disable it with `transforms.{name}.enabled: false` or remove it. "
                    f"ad's transforms: {', '.join(registered)}."
                )


def _as_list(files: Any, label: str, source: str) -> list[str]:
    if files is None or files == "":
        return []
    if isinstance(files, str):
        return [files]
    if isinstance(files, list) and all(isinstance(f, str) for f in files):
        return files
    raise ADError(f"`{label}` in {source} must be a list of YAML file paths, got {fmt_value(files)}.")

def _locate(name: str, base_dir: Path, label: str, source: str) -> Path:
    p = Path(name).expanduser()
    candidates = [p] if p.is_absolute() else [base_dir / p, Path.cwd() / p]
    for c in candidates:
        if c.is_file():
            return c
    tried = ", ".join(str(c.resolve()) for c in dict.fromkeys(candidates))
    raise ADError(
        f"`{label}` in {source} names `{name}`, which does not exist (tried {tried}). Paths are relative to the "
        "file that names them, then to the working directory; fix the path or remove the entry."
    )

def _hoist_args(data: dict, source: str) -> dict:
    """Nested shape: `args:` holds the deployment config; its keys go to our top level (they win over the rest)."""
    if "args" not in data:
        return data
    args = data.pop("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ADError(f"`args` in {source} must be a mapping (AutoDeploy's deployment config), got {fmt_value(args)}.")
    if "model" in data and "model" in args and data["model"] != args["model"]:
        raise ADError(
            f"{source} sets `model: {data['model']}` and `args.model: {args['model']}`; keep one of them."
        )
    return deep_merge(data, args)

def _tp_plan(name: str, entry: dict) -> dict:
    plan = get_path(entry, "manual_config.tp_plan") or {}
    where = f"transforms.{name}.manual_config.tp_plan"
    if not isinstance(plan, dict):
        raise ADError(f"`{where}` must map module-name patterns to a sharding style, got {fmt_value(plan)}.")
    for pattern, style in plan.items():
        if style not in K.TP_PLAN_VALUES:
            raise ADError(
                f"Invalid sharding style `{style}` for `{pattern}` in `{where}`: choose one of "
                f"{', '.join(K.TP_PLAN_VALUES)}.{did_you_mean(str(style), K.TP_PLAN_VALUES)}"
            )
    return plan
