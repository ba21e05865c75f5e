"""Hypothesis strategies for what users type: config keys and values, override strings, YAML, dataset lines,
sampling parameters and prompts, including the nasty ones (invalid UTF-8, huge, empty, `${...}`)."""

from __future__ import annotations

import dataclasses
import typing

from hypothesis import strategies as st

from autodeploy_cli.config.schema import ADConfig


def schema_keys(root: type = ADConfig, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(root):
        tp = typing.get_type_hints(root)[f.name]
        key = prefix + f.name
        out.append(key)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += schema_keys(tp, key + ".")
    return out


KEYS = schema_keys() + ["transforms.compile_model.backend", "transforms.insert_cached_attention.backend",
                        "transforms.resize_kv_cache.free_gpu_memory_fraction", "transforms.fuse_gemms.enabled",
                        "transforms.nope.stage", "model_kwargs.num_hidden_layers", "args.max_seq_len", "yaml_extra",
                        "benchmark.num", "kv_cache_config.tokens_per_block", "cuda_graph_config.batch_sizes"]
nasty_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "${oc.env:HOME}", "${x}", "\udcff\udcfe", "a" * 5000, "null", "[1, 2", "{a: b",
                     "cuda:99", "tpu", "fp8", "auto", "torch", "-1", "1e309", "nan", "~/x", "/nonexistent/x.yaml"]),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**6, max_value=10**6),
                    st.floats(allow_nan=True, allow_infinity=True), nasty_text)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)
keys = st.one_of(st.sampled_from(KEYS), st.text(alphabet="abcdefghij_.-", min_size=1, max_size=20))


@st.composite
def override_strings(draw) -> list[str]:
    """`key=value`, `--key-name=value`, `--key value`, bare words: what a command line may hold."""
    out = []
    for _ in range(draw(st.integers(0, 4))):
        key, value = draw(keys), draw(st.one_of(nasty_text, st.integers().map(str), st.sampled_from(["[1,2]", "{}"])))
        form = draw(st.sampled_from(["eq", "dash", "dash_space", "bare"]))
        if form == "eq":
            out.append(f"{key}={value}")
        elif form == "dash":
            out.append(f"--{key.replace('_', '-')}={value}")
        elif form == "dash_space":
            out += [f"--{key}", value]
        else:
            out.append(value)
    return out


@st.composite
def yaml_documents(draw) -> str:
    """Valid and broken YAML: generated mappings of schema keys, anchor shapes, or raw text."""
    kind = draw(st.sampled_from(["mapping", "nested", "raw"]))
    if kind == "raw":
        return draw(st.text(max_size=200))
    body = {draw(keys): draw(values) for _ in range(draw(st.integers(0, 4)))}
    if kind == "nested":
        body = {"args": body, "prompt": {"batch_size": draw(scalars)}}
    import yaml

    return yaml.safe_dump(body, allow_unicode=True)


dataset_lines = st.one_of(
    st.text(max_size=80),
    st.builds(lambda p, m: __import__("json").dumps({"prompt": p, "max_tokens": m}), nasty_text, scalars),
    st.builds(lambda v: __import__("json").dumps(v), values),
)
sampling = st.fixed_dictionaries({
    "max_tokens": st.one_of(st.integers(-3, 6), st.none()),
    "temperature": st.one_of(st.floats(-1, 3), st.just(float("nan")), st.just(float("inf")), st.none()),
    "top_p": st.one_of(st.floats(-0.5, 1.5), st.just(float("nan")), st.none()),
    "top_k": st.one_of(st.integers(-2, 400), st.none()),
    "seed": st.one_of(st.integers(-5, 2**40), st.none()),
    "stop": st.lists(nasty_text, max_size=2),
    "stop_token_ids": st.lists(st.integers(-5, 400), max_size=2),
    "ignore_eos": st.booleans(),
})
prompts = st.one_of(nasty_text, st.lists(st.integers(-3, 400), max_size=40),
                    st.lists(st.integers(0, 319), min_size=60, max_size=90))
