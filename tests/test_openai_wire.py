"""ailo.api.wire (pure): OpenAI request bodies become room bodies, stop strings are cut
without ever sending a piece of one, refusals map to OpenAI's error shapes."""
from __future__ import annotations

import random

import pytest

from ailo.api.wire import BadRequest, ChatRequest, CompletionRequest, StopFilter, refusal_error


def stream(stops: list[str], pieces: list[str]) -> tuple[list[str], bool]:
    f = StopFilter(stops)
    out = [f.feed(p) for p in pieces]
    return out + [f.flush()], f.stopped


def test_stop_filter_cuts_at_the_first_stop_string_and_never_sends_part_of_one():
    out, stopped = stream(["END", "\n\n"], ["Hello", " E", "N", "D more"])
    assert "".join(out) == "Hello " and stopped and "E" not in "".join(out)
    out, stopped = stream(["ab"], ["xa", "a", "c"])  # "a" held back until it cannot start "ab"
    assert out[0] == "x" and "".join(out) == "xaac" and not stopped


def test_stop_filter_equals_cutting_the_whole_text_on_random_splits():
    rng = random.Random(0)
    for _ in range(500):
        text = "".join(rng.choice("abc\n") for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice("abc\n") for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(0, 3))]
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        hits = [text.find(s) for s in stops if s in text]
        want = text[:min(hits)] if hits else text
        out, stopped = stream(stops, pieces)
        assert "".join(out) == want and stopped == bool(hits), (text, stops, pieces)


def test_request_bodies_become_room_bodies():
    body = ChatRequest.model_validate({"model": "gpt", "stop": "x", "max_tokens": 3, "temperature": 0, "seed": 4,
                                       "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                                       "presence_penalty": 0}).room_body()
    assert body == {"max_new_tokens": 3, "temperature": 0.0, "top_p": 1.0, "seed": 4, "stop": ["x"],
                    "messages": [{"role": "user", "content": "hi"}]}
    assert CompletionRequest.model_validate({"model": "m", "prompt": [5, 6]}).room_body()["input_ids"] == [5, 6]
    assert CompletionRequest.model_validate({"model": "m", "prompt": ["a"]}).room_body()["prompt"] == "a"
    assert CompletionRequest.model_validate({"model": "m", "prompt": "a"}).room_body()["max_new_tokens"] == 16
    for bad in ({"prompt": ["a", "b"]}, {"prompt": ""}, {"prompt": "a", "echo": True}, {"prompt": "a", "max_tokens": 9000},
                {"prompt": "a", "stop": [""]}):
        with pytest.raises(BadRequest):
            CompletionRequest.model_validate({"model": "m", **bad}).room_body()
    with pytest.raises(BadRequest):
        ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]
                                    }).room_body()


def test_refusals_map_to_openai_errors():
    e = refusal_error(402, "insufficient_funds", "payment refused", None, "r")
    assert (e.status, e.type, e.code) == (402, "insufficient_quota", "insufficient_quota")
    e = refusal_error(503, "unavailable", "still forming", None, "r")
    assert e.status == 503 and e.headers["Retry-After"] == "5"
    assert refusal_error(404, "not_found", "no room", None, "r").code == "model_not_found"
    assert refusal_error(429, "rate_limited", "slow down", 2.4, "r").headers["Retry-After"] == "2"
    assert refusal_error(500, "x", "boom", None, "r").status == 502
    assert set(e.body()["error"]) == {"message", "type", "code", "param"}
