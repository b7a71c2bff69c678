"""Edit instructions and the VLM instruction-following check of generated pairs: the category mix,
JSON answers validated against the schema, retries that change the request, the disk cache, endpoint
failures as reject reasons, named config errors, and the local transformers backend on a tiny
random-initialised Qwen2-VL."""

import json
from collections import Counter

import numpy as np
import pytest
from fake_openai import FakeServer, answer, free_port, prompt_text
from omegaconf import OmegaConf
from test_curate_pipeline import compose_cfg

from liveditor.data_pipeline.generate.instructions import (OBJECT_AFTER_EDIT, InstructionFailure, InstructionWriter,
                                                           category_weights, check_vlm_config, make_backend,
                                                           parse_json_answer, sample_categories, validate_answer)
from liveditor.data_pipeline.generate.loading import ModelConfigError
from liveditor.data_pipeline.generate.vlm_check import InstructionFollowingCheck, parse_score


def gen_cfg(tmp_path, *overrides):
    cfg = compose_cfg(["pairs=generate", f"out_dir={tmp_path / 'out'}", "pairs.generate.vlm.backoff_s=0.01",
                       "pairs.generate.vlm.max_retries=1", "pairs.generate.vlm.timeout_s=5", *overrides])
    OmegaConf.resolve(cfg)
    return cfg.pairs.generate


def good_answer(category, obj="a red umbrella"):
    return json.dumps({"instruction": f"Do a {category} edit.", "reverse_instruction": "Undo the edit.",
                       "source_caption": "A street at noon.", "target_caption": "A street at noon, edited.",
                       "edited_object": obj, "category": category})


def requested_category(request):
    return prompt_text(request).split("Edit category: ", 1)[1].split(":", 1)[0]


def clip(seed=0, t=9):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, size=(t, 32, 48, 3), dtype=np.uint8)


# ---- categories ----------------------------------------------------------------------------

def test_category_mix_is_the_papers_and_sampling_follows_it(tmp_path):
    g = gen_cfg(tmp_path)
    weights = category_weights(g.instructions)
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["style_transfer"] == pytest.approx(0.3387) and weights["human_edit"] == pytest.approx(0.1280)
    assert weights["other"] == pytest.approx(0.0109)
    # one category per clip over many clips: frequencies follow the weights
    counts = Counter(sample_categories(f"clip-{i:05d}", weights, 1)[0] for i in range(6000))
    for name, w in weights.items():
        assert counts[name] / 6000 == pytest.approx(w, abs=0.02), name
    # two per clip: distinct, and a pure function of the clip id
    for i in range(200):
        two = sample_categories(f"clip-{i}", weights, 2)
        assert len(set(two)) == 2 and two == sample_categories(f"clip-{i}", weights, 2)
    assert len({tuple(sample_categories(f"clip-{i}", weights, 2)) for i in range(200)}) > 10


def test_bad_category_mix_is_a_named_error(tmp_path):
    with pytest.raises(ModelConfigError, match="pairs.generate.instructions.categories"):
        category_weights(OmegaConf.create({"categories": {"a": {"weight": -1, "description": "x"}}}))
    with pytest.raises(ModelConfigError, match="pairs.generate.instructions.categories"):
        category_weights(OmegaConf.create({"categories": {}}))


# ---- answers --------------------------------------------------------------------------------

def test_answers_parse_from_fences_and_prose_and_validate_against_the_schema():
    body = good_answer("object_addition")
    assert parse_json_answer(body)["category"] == "object_addition"
    assert parse_json_answer(f"```json\n{body}\n```")["instruction"] == "Do a object_addition edit."
    assert parse_json_answer(f"Sure! Here it is:\n{body}\nHope that helps.")["edited_object"] == "a red umbrella"
    instr = validate_answer(f"```\n{body}\n```", "object_addition")
    assert instr.object_after_edit == "present" and instr.edited_object == "a red umbrella"
    assert validate_answer(good_answer("object_removal", "the bicycle"), "object_removal").object_after_edit == "absent"
    assert validate_answer(good_answer("style_transfer", ""), "style_transfer").object_after_edit is None
    assert OBJECT_AFTER_EDIT == {"object_addition": "present", "object_swap": "present", "object_removal": "absent"}
    for text, why in [("no json here", "no JSON object"), ("{\"instruction\": ", "no JSON object|does not parse"),
                      ("[1, 2]", "not an object"),
                      (json.dumps({"instruction": "x"}), "does not match the schema"),
                      (good_answer("object_swap"), "not the requested 'object_addition'"),
                      (good_answer("object_addition", ""), "edited_object is empty")]:
        with pytest.raises(ValueError, match=why):
            validate_answer(text, "object_addition")


def test_malformed_answer_is_retried_with_a_changed_request_then_cached(tmp_path):
    g = gen_cfg(tmp_path)
    with FakeServer() as server:
        replies = iter([answer("I think you should add an umbrella."), answer(f"```json\n{good_answer('object_addition')}\n```")])
        server.respond = lambda request: next(replies)
        g.vlm.base_url = server.url
        writer = InstructionWriter(make_backend(g.vlm, "cpu", None), g.instructions)
        instr = writer.write(clip(), "object_addition")
        assert instr.instruction == "Do a object_addition edit." and instr.object_after_edit == "present"
        assert len(server.requests) == 2
        first, second = (prompt_text(r) for r in server.requests)
        assert "Attempt 2" not in first and "Attempt 2" in second and "no JSON object" in second
        assert [a["error"] is None for a in instr.attempts] == [False, True]
        assert instr.attempts[0]["answer"] == "I think you should add an umbrella."
        images = [p for p in server.requests[0]["messages"][0]["content"] if p["type"] == "image_url"]
        assert len(images) == g.instructions.frames
        # A rerun (a new process, the same cache): both answers come from the cache, nothing is asked.
        again = InstructionWriter(make_backend(g.vlm, "cpu", None), g.instructions).write(clip(), "object_addition")
        assert again.instruction == instr.instruction and len(server.requests) == 2


def test_always_malformed_becomes_instruction_malformed_with_every_attempt(tmp_path):
    g = gen_cfg(tmp_path, "pairs.generate.instructions.max_attempts=3")
    with FakeServer() as server:
        server.respond = lambda request: answer(good_answer("object_swap"))  # always the wrong category
        g.vlm.base_url = server.url
        writer = InstructionWriter(make_backend(g.vlm, "cpu", None), g.instructions)
        with pytest.raises(InstructionFailure, match="3 attempt.*not the requested 'object_removal'") as err:
            writer.write(clip(), "object_removal")
        assert err.value.reason == "instruction_malformed" and len(err.value.attempts) == 3
        assert len(server.requests) == 3


def test_an_outage_leaves_the_row_unfinished_and_a_refusal_rejects_it(tmp_path):
    """No answer after the retries (5xx, connection refused) is `instruction_endpoint_unavailable`, which the
    pairs stage asks again on a rerun (pairs.RETRY_REASONS); a refused request (4xx) is a finished reject."""
    with FakeServer() as server:
        server.script = [(500, {"error": "overloaded"})]
        g = gen_cfg(tmp_path, f"pairs.generate.vlm.base_url={server.url}")
        results = InstructionWriter(make_backend(g.vlm, "cpu", None), g.instructions).write_many([(clip(), "other"), (clip(1), "other")])
        assert [r.reason for r in results] == ["instruction_endpoint_unavailable"] * 2
        assert "HTTP 500" in str(results[0]) and "overloaded" in str(results[0])
        assert len(server.requests) == 4  # first try + max_retries=1, per request
        server.script = [(400, {"error": "bad request"})]
        [res] = InstructionWriter(make_backend(g.vlm, "cpu", None), g.instructions).write_many([(clip(2), "other")])
        assert res.reason == "instruction_endpoint_error" and "HTTP 400" in str(res)
    # connection refused: nothing listens on the port
    g = gen_cfg(tmp_path, f"pairs.generate.vlm.base_url=http://127.0.0.1:{free_port()}/v1")
    [res] = InstructionWriter(make_backend(g.vlm, "cpu", None), g.instructions).write_many([(clip(), "other")])
    assert isinstance(res, InstructionFailure) and res.reason == "instruction_endpoint_unavailable"
    assert "Connection refused" in str(res) or "ConnectionRefused" in str(res)


def test_vlm_config_errors_name_the_key(tmp_path):
    with pytest.raises(ModelConfigError, match=r"pairs.generate.vlm.base_url is not set"):
        check_vlm_config(gen_cfg(tmp_path).vlm)
    with pytest.raises(ModelConfigError, match=r"pairs.generate.vlm.base_url='127.0.0.1:8000' is not an http"):
        check_vlm_config(gen_cfg(tmp_path, "pairs.generate.vlm.base_url=127.0.0.1:8000").vlm)
    with pytest.raises(ModelConfigError, match=r"pairs.generate.vlm.path is not set"):
        check_vlm_config(gen_cfg(tmp_path, "pairs.generate.vlm.backend=transformers").vlm)
    with pytest.raises(ModelConfigError, match=r"pairs.generate.vlm.path='/nonexistent/vlm' is not a directory"):
        check_vlm_config(gen_cfg(tmp_path, "pairs.generate.vlm.backend=transformers", "pairs.generate.vlm.path=/nonexistent/vlm").vlm)
    with pytest.raises(ModelConfigError, match=r"pairs.generate.vlm.backend='gemini': choose openai or transformers"):
        check_vlm_config(gen_cfg(tmp_path, "pairs.generate.vlm.backend=gemini").vlm)


def test_transformers_backend_runs_a_local_vlm_and_caches_its_answers(tmp_path):
    from liveditor.data_pipeline.generate.tiny_vlm import make_tiny_vlm_dir

    path = make_tiny_vlm_dir(tmp_path / "vlm")
    g = gen_cfg(tmp_path, "pairs.generate.vlm.backend=transformers", f"pairs.generate.vlm.path={path}",
                "pairs.generate.vlm.max_new_tokens=12", "pairs.generate.instructions.max_attempts=2")
    backend = make_backend(g.vlm, "cpu", None)
    text = backend.ask("Describe the frames.", clip()[:2])
    assert isinstance(text, str) and backend.ask("Describe the frames.", clip()[:2]) == text  # greedy, then cached
    # Random weights answer noise: malformed, asked twice (two distinct prompts), then a reject reason.
    with pytest.raises(InstructionFailure) as err:
        InstructionWriter(backend, g.instructions).write(clip(), "stylization")
    assert err.value.reason == "instruction_malformed" and len(err.value.attempts) == 2
    assert err.value.attempts[0]["prompt"] != err.value.attempts[1]["prompt"]
    cached = sorted(p.name for p in (tmp_path / "out" / "vlm_cache").rglob("*.json"))
    assert len(cached) == 3
    # A new backend (a rerun) answers every one of them from the cache without loading the model.
    fresh = make_backend(g.vlm, "cpu", None)
    with pytest.raises(InstructionFailure):
        InstructionWriter(fresh, g.instructions).write(clip(), "stylization")
    assert fresh._model is None
    prov = backend.provenance()
    assert prov["backend"] == "transformers" and len(prov["weights_sha256"]) == 64 and prov["decoding"] == "greedy"


# ---- the instruction-following check --------------------------------------------------------

def test_check_scores_parse_strictly():
    assert parse_score('{"score": 7, "reason": "fine"}') == 7
    assert parse_score('```json\n{"score": 10}\n```') == 10
    for bad in ['{"score": 7.5}', '{"score": "7"}', '{"score": 11}', '{"score": -1}', "Score: 7", '{"reason": "x"}']:
        with pytest.raises(ValueError):
            parse_score(bad)


def test_check_scores_floors_and_rejects_with_reasons(tmp_path):
    g = gen_cfg(tmp_path, "pairs.generate.vlm_check.frames=3", "pairs.generate.vlm_check.min_score=6")
    src = np.zeros((9, 32, 48, 3), np.uint8)
    gen = np.full((9, 32, 48, 3), 255, np.uint8)
    with FakeServer() as server:
        scores = {"add a hat": answer('{"score": 8, "reason": "done"}'), "add a cat": answer('{"score": 3, "reason": "no cat"}'),
                  "add a dog": answer("It is a dog, I guess.")}
        server.respond = lambda request: scores[prompt_text(request).split("Editing instruction: ", 1)[1].split("\n", 1)[0]]
        g.vlm.base_url = server.url
        check = InstructionFollowingCheck(make_backend(g.vlm, "cpu", None), g.vlm_check)
        good, low, bad = check.check_many([("add a hat", src, gen), ("add a cat", src, gen), ("add a dog", src, gen)])
        assert (good.score, good.reason) == (8.0, None)
        assert (low.score, low.reason) == (3.0, "vlm_instruction_following_low")
        assert bad.score is None and bad.reason == "vlm_check_malformed" and len(bad.attempts) == g.vlm_check.max_attempts
        # frames in (source, generated) pairs: dark, bright, dark, bright, ...
        from test_eval_judge import decode_data_url

        parts = [p for p in server.requests[0]["messages"][0]["content"] if p["type"] == "image_url"]
        assert [decode_data_url(p["image_url"]["url"]).mean() > 128 for p in parts] == [False, True] * 3
    g.vlm.base_url = f"http://127.0.0.1:{free_port()}/v1"
    # (an instruction not asked before: answers are cached by model, prompt and frames, whatever the URL)
    down = InstructionFollowingCheck(make_backend(g.vlm, "cpu", None), g.vlm_check).check("add a fox", src, gen)
    assert down.score is None and down.reason == "vlm_check_endpoint_unavailable" and down.error  # an outage: asked again on a rerun
