"""`ad serve` through the official openai client: completions and chat, streaming or not, token-id prompts, stop
strings, seeds, logprobs/echo; greedy tokens equal `ad run`'s; bad input is a 400 naming the field."""

from __future__ import annotations

import json

import openai
import pytest
from typer.testing import CliRunner

from autodeploy_cli.cli import app
from autodeploy_cli.runtime.engine import SamplingParams

PROMPTS = ["a", "The quick brown fox", "hi there, how are you doing today?"]
IDS = {"return_token_ids": True, "ignore_eos": True}


@pytest.fixture(scope="module")
def client(served):
    server, _ = served
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0), server.url


def model_name(served) -> str:
    return served[1][0].split("=", 1)[1]


def test_health_was_503_while_building_and_models_lists_the_model(served, client):
    server, _ = served
    assert server.health_codes[0] == 503 and server.health_codes[-1] == 200
    models = client[0].models.list()
    assert [m.id for m in models.data] == [model_name(served)]


def test_greedy_completions_equal_ad_run(served, client):
    oa, _ = client
    res = CliRunner().invoke(app, ["run", "--json", *[a for p in PROMPTS for a in ("--prompt", p)], *served[1],
                                   "prompt.sp_kwargs.max_tokens=8", "prompt.sp_kwargs.ignore_eos=true",
                                   "prompt.chat_template=false"])
    assert res.exit_code == 0, res.output
    ref = [c["token_ids"] for c in json.loads(res.stdout)["completions"]]
    out = oa.completions.create(model=model_name(served), prompt=PROMPTS, max_tokens=8, temperature=0, extra_body=IDS)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert [c.token_ids for c in out.choices] == ref
    assert out.usage.completion_tokens == 24 and all(c.finish_reason == "length" for c in out.choices)
    # streamed: the same tokens, one chunk per token, usage last
    stream = oa.completions.create(model=model_name(served), prompt=PROMPTS[1], max_tokens=8, temperature=0,
                                   stream=True, stream_options={"include_usage": True}, extra_body=IDS)
    chunks = list(stream)
    assert sum((getattr(c.choices[0], "token_ids", None) or [] for c in chunks if c.choices), []) == ref[1]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert "".join(c.choices[0].text for c in chunks if c.choices) == out.choices[1].text


def test_token_id_prompts_n_and_seeds(served, client, offline):
    oa, _ = client
    ids = [[5, 6, 7, 8], [40, 41]]
    out = oa.completions.create(model=model_name(served), prompt=ids, max_tokens=6, temperature=0, extra_body=IDS)
    assert [c.prompt_token_ids for c in out.choices] == ids
    want = offline.generate(ids, SamplingParams(max_tokens=6, ignore_eos=True))
    assert [c.token_ids for c in out.choices] == [w.token_ids for w in want]
    kw = dict(model=model_name(served), prompt=ids[0], max_tokens=8, temperature=1.0, extra_body=IDS)
    a = oa.completions.create(seed=11, n=2, **kw)
    b = oa.completions.create(seed=11, n=2, **kw)
    assert [c.token_ids for c in a.choices] == [c.token_ids for c in b.choices]  # seeded: reproducible
    assert a.choices[0].token_ids != a.choices[1].token_ids  # choice i samples with seed + i
    solo = offline.generate([ids[0]], SamplingParams(max_tokens=8, temperature=1.0, seed=12, ignore_eos=True))
    assert a.choices[1].token_ids == solo[0].token_ids


def test_stop_strings_cut_the_text_streamed_or_not(served, client):
    oa, _ = client
    full = oa.completions.create(model=model_name(served), prompt="hello", max_tokens=16, temperature=0,
                                 extra_body=IDS).choices[0].text
    stop = next(ch for ch in full[2:] if ch != "\ufffd" and ch.strip())
    cut = full[: full.find(stop)]
    out = oa.completions.create(model=model_name(served), prompt="hello", max_tokens=16, temperature=0, stop=[stop],
                                extra_body=IDS)
    assert out.choices[0].text == cut and out.choices[0].finish_reason == "stop"
    stream = oa.completions.create(model=model_name(served), prompt="hello", max_tokens=16, temperature=0,
                                   stop=stop, stream=True, extra_body=IDS)
    assert "".join(c.choices[0].text for c in stream if c.choices) == cut


def test_chat_completions_use_the_chat_template(served, client, offline):
    oa, _ = client
    msgs = [{"role": "user", "content": "Hi there"}]
    out = oa.chat.completions.create(model=model_name(served), messages=msgs, max_tokens=6, temperature=0,
                                     extra_body=IDS)
    want = offline.generate([offline.encode("Hi there", chat_template=True)],
                            SamplingParams(max_tokens=6, ignore_eos=True))[0]
    assert out.choices[0].token_ids == want.token_ids and out.choices[0].message.role == "assistant"
    stream = oa.chat.completions.create(model=model_name(served), messages=msgs, max_tokens=6, temperature=0,
                                        stream=True, stream_options={"include_usage": True}, extra_body=IDS)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage.completion_tokens == 6
    assert sum((getattr(c.choices[0], "token_ids", None) or [] for c in chunks if c.choices), []) == want.token_ids
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == out.choices[0].message.content
    lp = oa.chat.completions.create(model=model_name(served), messages=msgs, max_tokens=2, temperature=0,
                                    logprobs=True, top_logprobs=2)
    assert len(lp.choices[0].logprobs.content) == 2 and len(lp.choices[0].logprobs.content[0].top_logprobs) == 2


def test_echo_logprobs_in_the_legacy_shape(served, client, offline):
    oa, _ = client
    ids = [3, 50, 60, 70, 80]
    out = oa.completions.create(model=model_name(served), prompt=ids, max_tokens=1, temperature=0, logprobs=1,
                                echo=True)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    want = offline.generate([ids], SamplingParams(max_tokens=1, logprobs=1, prompt_logprobs=1))[0]
    assert lp.token_logprobs[1:5] == pytest.approx([e.logprob for e in want.prompt_logprobs[1:]], abs=1e-5)
    assert lp.token_logprobs[5] == pytest.approx(want.logprobs[0].logprob, abs=1e-5)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]


@pytest.mark.parametrize("body, param, words", [
    ({"model": "no-such-model", "prompt": "a"}, "model", "not served here"),
    ({"prompt": "a", "max_tokens": -2}, "max_tokens", "greater than or equal to 1"),
    ({"prompt": [7] * 64, "max_tokens": 1}, "prompt", "max_seq_len) is 64"),
    ({"prompt": [7] * 60, "max_tokens": 10}, "max_tokens", "at most 4"),
    ({"prompt": "a", "max_tokens": "many"}, "max_tokens", "valid integer"),
    ({"prompt": 12}, "prompt", "list of token ids"),
    ({"prompt": "a", "temperature": "hot"}, "temperature", "valid number"),
    ({"prompt": [1, 999999]}, "prompt", "outside [0, 320)"),
    ({"prompt": "a", "logprobs": 50}, "logprobs", "less than or equal to 20"),
    ({"prompt": "a", "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", "boolean"),
    ({"prompt": "a", "presence_penalty": 0.5}, "presence_penalty", "not supported"),
    ({"max_tokens": 3}, "prompt", "Missing required field"),
])
def test_bad_completions_are_400s_naming_the_field(served, body, param, words):
    server, _ = served
    code, _, err = server.post("/v1/completions", body)
    assert code == 400 and err["error"]["param"] == param and words in err["error"]["message"], err


def test_malformed_json_and_bad_chat_are_400s(served, client):
    server, _ = served
    code, _, err = server.post("/v1/completions", b'{"prompt": "a",')
    assert code == 400 and "not valid JSON" in err["error"]["message"]
    code, _, err = server.post("/v1/chat/completions", {"messages": [{"content": "x"}]})
    assert code == 400 and err["error"]["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as e:
        client[0].chat.completions.create(model=model_name(served), messages=[], max_tokens=2)
    assert e.value.status_code == 400 and e.value.body["param"] == "messages"


def test_tokenize_detokenize_and_tokenizer_info(served, offline):
    server, _ = served
    code, _, out = server.post("/tokenize", {"prompt": "hello"})
    assert code == 200 and out["tokens"] == offline.encode("hello") and out["count"] == len(out["tokens"])
    code, _, back = server.post("/detokenize", {"tokens": out["tokens"]})
    assert code == 200 and "hello" in back["prompt"]
    code, _, err = server.post("/detokenize", {"tokens": [1, "x"]})
    assert code == 400 and err["error"]["param"] == "tokens[1]"
    code, body = server.get("/tokenizer_info")
    assert code == 200 and json.loads(body)["eos_token"] == "</s>"
