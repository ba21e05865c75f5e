"""Generated bad and unusual input: every case ends in success or in one of ad's own errors (ADError, or a
per-request error for a request) -- never a traceback, never "internal error". Hypothesis prints the failing
example and a `@reproduce_failure` blob for any failure; the seed is derived from the test name, so CI runs are
reproducible (HYPOTHESIS_SEED / --hypothesis-seed overrides it)."""

from __future__ import annotations

import functools
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from autodeploy_cli.cli import app
from autodeploy_cli.config.checks import check_config
from autodeploy_cli.config.layers import parse_overrides, set_path
from autodeploy_cli.config.loader import resolve_with_report
from autodeploy_cli.errors import ADError
from tests.fuzz.strategies import dataset_lines, keys, override_strings, prompts, sampling, values, yaml_documents

def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, print_blob=True, database=None,
                    suppress_health_check=list(HealthCheck))


def _ok_or_aderror(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ADError as e:
        assert str(e).strip() and "\n" not in str(e).strip(), "an ad error is one paragraph"
        return None


@fuzz(250)
@given(st.dictionaries(keys, values, max_size=4))
def test_config_layers_resolve_or_fail_clearly(layer):
    """A generated layer of keys and values (the shape of a --config file or nested overrides)."""
    over: dict = {}
    for k, v in layer.items():
        _ok_or_aderror(set_path, over, k, v)
    out = _ok_or_aderror(resolve_with_report, [], over)
    if out is not None:
        _ok_or_aderror(check_config, out[0])


@fuzz(800)
@given(override_strings())
def test_override_strings_parse_or_fail_clearly(args):
    parsed = _ok_or_aderror(parse_overrides, args)
    if parsed is not None and len(args) % 3 == 0:  # every third also resolves (parsing is cheap, resolving is not)
        _ok_or_aderror(resolve_with_report, [], parsed)


@fuzz(200)
@given(text=yaml_documents())
def test_yaml_files_resolve_or_fail_clearly(text, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    _ok_or_aderror(resolve_with_report, [path])


@fuzz(100)
@given(args=override_strings())
def test_print_config_never_shows_an_internal_error(args):
    result = CliRunner().invoke(app, ["build", "--print-config", *args])
    out = result.output
    assert result.exit_code in (0, 2), out
    assert "internal error" not in out and "Traceback" not in out, out


@fuzz(500)
@given(lines=st.lists(dataset_lines, min_size=1, max_size=4))
def test_dataset_lines_read_or_fail_clearly(lines, tmp_path_factory):
    from autodeploy_cli.bench.workload import read_dataset

    path = tmp_path_factory.mktemp("ds") / "d.jsonl"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogateescape"))
    _ok_or_aderror(read_dataset, str(path))


@functools.lru_cache(maxsize=1)
def _engine():
    from autodeploy_cli.config.loader import resolve
    from autodeploy_cli.llm import build_engine

    return build_engine(resolve([], ["max_seq_len=64", "max_batch_size=4", "attn_page_size=8"]))


@fuzz(200)
@given(st.lists(st.tuples(prompts, sampling), min_size=1, max_size=3))
def test_requests_complete_or_fail_alone(batch):
    from autodeploy_cli.runtime.engine import SamplingParams

    engine = _engine()
    params = [SamplingParams(**{k: v for k, v in sp.items() if v is not None}) for _, sp in batch]
    comps = engine.generate([p for p, _ in batch], params, chat_template=True)
    assert len(comps) == len(batch)
    for c, sp in zip(comps, params):
        if c.error is None:
            assert c.finish_reason in ("stop", "length") and 1 <= len(c.token_ids) <= sp.max_tokens
        else:
            assert c.finish_reason == "error" and c.token_ids == [] and "\n" not in c.error
    assert not engine.has_unfinished() and engine.pages.num_free == engine.pages.num_pages


def test_the_suite_generates_at_least_2000_cases():
    counts = [400, 800, 200, 100, 500, 200]  # max_examples of the tests above
    assert sum(counts) >= 2000 and not math.isnan(sum(counts))
