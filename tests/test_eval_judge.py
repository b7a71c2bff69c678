"""The judge client against a fake OpenAI-compatible server over real HTTP on 127.0.0.1: requests,
images as data URLs, errors, retries with backoff, the disk cache, and malformed answers."""

import base64
import io

import numpy as np
import pytest
from fake_openai import FakeServer, answer, free_port
from PIL import Image

from liveditor.eval.benchmarks import Item
from liveditor.eval.judge import JudgeClient, JudgeConfig, JudgeError
from liveditor.eval.metrics import build_metrics
from liveditor.eval.models import EvalModels, NotComputed


def client(server, tmp_path, **kw):
    cfg = dict(base_url=server.url, model="fake-vlm", cache_dir=str(tmp_path / "cache"), backoff_s=0.01, max_retries=3,
               timeout_s=5, api_key_env="LIVEDITOR_TEST_JUDGE_KEY")
    cfg.update(kw)
    return JudgeClient(JudgeConfig(**cfg))


def frame(colour):
    return np.full((32, 48, 3), colour, np.uint8)


def decode_data_url(url):
    assert url.startswith("data:image/jpeg;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def test_request_shape_images_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVEDITOR_TEST_JUDGE_KEY", "sk-test")
    with FakeServer() as server:
        judge = client(server, tmp_path)
        red = frame((220, 10, 10))
        assert judge.ask("rate this", [red, frame((0, 0, 200))]) == "Total Score: 7"
        req = server.requests[0]
        assert req["model"] == "fake-vlm" and req["temperature"] == 0
        content = req["messages"][0]["content"]
        assert content[0] == {"type": "text", "text": "rate this"}
        sent = decode_data_url(content[1]["image_url"]["url"])
        assert sent[..., 0].mean() > 200 and sent[..., 2].mean() < 30  # true colours: red stays red
        assert server.headers[0]["Authorization"] == "Bearer sk-test"
        # Same (model, prompt, frames): answered from the disk cache, also by a new client.
        assert client(server, tmp_path).ask("rate this", [red, frame((0, 0, 200))]) == "Total Score: 7"
        assert len(server.requests) == 1
        # Another prompt, other frames or another model: a new request each.
        judge.ask("rate that", [red, frame((0, 0, 200))])
        judge.ask("rate this", [red, frame((0, 0, 199))])
        client(server, tmp_path, model="other-vlm").ask("rate this", [red, frame((0, 0, 200))])
        assert len(server.requests) == 4


def test_swap_red_blue_reproduces_editverse(tmp_path):
    with FakeServer() as server:
        client(server, tmp_path, swap_red_blue=True, cache_dir=None).ask("p", [frame((220, 10, 10))])
        sent = decode_data_url(server.requests[0]["messages"][0]["content"][1]["image_url"]["url"])
        assert sent[..., 2].mean() > 200 and sent[..., 0].mean() < 30


def test_retries_server_errors_and_rate_limits_then_succeeds(tmp_path):
    with FakeServer() as server:
        server.script = [(500, {"error": "boom"}), (429, {"error": "slow down"}), (503, b"not json"), answer("Total Score: 5")]
        assert client(server, tmp_path).ask("p", [frame(1)]) == "Total Score: 5"
        assert len(server.requests) == 4


def test_gives_up_after_max_retries(tmp_path):
    with FakeServer() as server:
        server.script = [(502, {"error": "bad gateway"})]
        with pytest.raises(JudgeError, match="after 3 attempts.*502"):
            client(server, tmp_path, max_retries=2).ask("p", [frame(1)])
        assert len(server.requests) == 3


def test_client_errors_fail_at_once_with_the_endpoints_message(tmp_path):
    with FakeServer() as server:
        server.script = [(401, {"error": {"message": "invalid api key"}})]
        with pytest.raises(JudgeError, match="401.*invalid api key"):
            client(server, tmp_path).ask("p", [frame(1)])
        assert len(server.requests) == 1
        with pytest.raises(JudgeError, match="404"):
            client(server, tmp_path, base_url=server.url.replace("/v1", "/wrong")).ask("p", [frame(1)])


def test_malformed_replies_are_retried_and_never_cached(tmp_path):
    with FakeServer() as server:
        server.script = [(200, b"{not json"), (200, {"choices": []}), (200, {"choices": [{"message": {}}]}), answer("Total Score: 4")]
        judge = client(server, tmp_path)
        assert judge.ask("p", [frame(2)]) == "Total Score: 4"
        assert len(server.requests) == 4
        assert len(list((tmp_path / "cache").rglob("*.json"))) == 1


def test_unreachable_endpoint_is_retried_then_an_error(tmp_path):
    judge = JudgeClient(JudgeConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", backoff_s=0.01, max_retries=1, timeout_s=2))
    with pytest.raises(JudgeError, match="after 2 attempts"):
        judge.ask("p", [frame(1)])
    assert judge.requests_sent == 2


ITEM = Item("0", "s", "turn the car red", "a red car", "color")


def video(t, value=100):
    """`t` frames, each a little brighter than the last (distinct images, so no two share a cache entry)."""
    return np.stack([np.full((24, 32, 3), value + i // 2, np.uint8) for i in range(t)])


def test_editing_quality_metric_protocol(tmp_path):
    with FakeServer() as server:
        server.script = [answer("Prompt Following: 3\nEdit Quality: 2\nBackground Consistency: 3\nTotal Score: 8"),
                         answer("Total Score: 6"), answer("Total Score: 7"), answer("Total Score: 9")]
        judge = client(server, tmp_path)
        metric = build_metrics("editverse", EvalModels({}, "cpu"), judge)["editing_vlm_evaluation"]
        # T = 82: frames 0, 27, 54, 81 (four requests, two images each: source then edited)
        value = metric(video(82, 200), video(82, 50), ITEM)
        assert value == pytest.approx((8 + 6 + 7 + 9) / 4)
        assert len(server.requests) == 4
        for req in server.requests:
            parts = req["messages"][0]["content"]
            assert "Editing Prompt:\nturn the car red" in parts[0]["text"] and len(parts) == 3
            assert decode_data_url(parts[1]["image_url"]["url"]).mean() < 100  # the source first
            assert decode_data_url(parts[2]["image_url"]["url"]).mean() > 190
        # Asked again (a rerun): every answer comes from the cache.
        assert metric(video(82, 200), video(82, 50), ITEM) == value and len(server.requests) == 4


def test_malformed_score_goes_through_extraction_then_errors(tmp_path):
    with FakeServer() as server:
        # First answer has no total: EditVerse's second request extracts it.
        server.script = [answer("It looks fine overall, about seven."), answer("7")]
        metric = build_metrics("editverse", EvalModels({}, "cpu"), client(server, tmp_path))["editing_vlm_evaluation"]
        assert metric(video(3), video(3), ITEM) == 7.0
        assert sum("Only output the overall score number" in r["messages"][0]["content"][0]["text"] for r in server.requests) == 1
    with FakeServer() as server:
        server.script = [answer("no idea"), answer("also no idea")]
        metric = build_metrics("editverse", EvalModels({}, "cpu"), client(server, tmp_path / "b"))["editing_vlm_evaluation"]
        with pytest.raises(JudgeError, match="malformed judge answer"):
            metric(video(3), video(3), ITEM)


def test_no_endpoint_means_not_computed():
    for bench, name in (("editverse", "editing_vlm_evaluation"), ("ivebench_short", "instruction_satisfaction_score"),
                        ("viebench", "vie_quality")):
        metric = build_metrics(bench, EvalModels({}, "cpu"), JudgeClient(JudgeConfig(base_url=None)))[name]
        with pytest.raises(NotComputed, match="judge.base_url"):
            metric(video(3), video(3), ITEM)


def test_json_mode_is_sent_and_is_part_of_the_cache_key(tmp_path):
    with FakeServer() as server:
        client(server, tmp_path).ask("p", [frame(1)])
        client(server, tmp_path, response_format="json_object").ask("p", [frame(1)])
        assert "response_format" not in server.requests[0]
        assert server.requests[1]["response_format"] == {"type": "json_object"}  # asked, not the plain request's cached answer


def test_cached_answer_puts_the_disk_cache_in_front_of_another_answerer(tmp_path):
    calls = []

    def local():
        calls.append(1)
        return "a local model's answer"

    judge = JudgeClient(JudgeConfig(base_url=None, model="transformers:/models/vlm", cache_dir=str(tmp_path / "cache")))
    assert judge.cached_answer("q", [frame(3)], local) == "a local model's answer"
    assert JudgeClient(judge.cfg).cached_answer("q", [frame(3)], local) == "a local model's answer"
    assert len(calls) == 1  # the second came from the cache
    judge.cached_answer("q", [frame(4)], local)
    assert len(calls) == 2
