"""Edit instructions for generated pairs: categories from a configured mix, answers from a VLM as JSON.

Per clip, `categories_per_clip` distinct categories are drawn from `instructions.categories` (weights
normalised) by a stable hash of the clip id: weighted sampling without replacement with Efraimidis-
Spirakis keys `u ** (1 / weight)`, `u` from `stable_hash(clip_id/category)`, so a rerun, another
machine or another partition count draws the same ones.

The VLM sees `instructions.frames` frames of the source clip (the anchor frame, which the image
editor will edit, first) and answers one JSON object, validated by `EditAnswer`:
`instruction`, `reverse_instruction` (the edit that turns the edited clip back into the source; the
`synthetic_to_real` direction ships it, so both directions come from one answer), `source_caption`,
`target_caption`, `edited_object` and `category` (must equal the requested one). Whether the
edited object must be present or absent after the edit is not asked: it follows from the category
(`OBJECT_AFTER_EDIT`).

Backends (`VLMBackend`): `openai`, any OpenAI-compatible chat endpoint (a vLLM- or SGLang-served
Qwen2.5-VL, GPT-4o, Gemini) through eval's `JudgeClient` (disk cache, retries with backoff); and
`transformers`, a local image-text-to-text model (AutoProcessor + AutoModelForImageTextToText,
greedy decoding) behind the same disk cache. A malformed answer is asked again up to
`max_attempts` times; each retry's prompt carries the attempt number and the previous error, so it
is a new request, not the cached answer. What still fails becomes `InstructionFailure` with the
reason `instruction_malformed` (the last error), `instruction_endpoint_unavailable` (the endpoint
gave no answer after JudgeClient's retries: connection refused, timeouts, HTTP 429 or 5xx, replies
without content; an outage, so the row is not finished and a rerun asks again, see
`pairs.RETRY_REASONS`) or `instruction_endpoint_error` (the endpoint refused the request, HTTP 4xx:
a finished reject): never a crash mid-stage. Configuration errors (`loading.ModelConfigError`) are
raised before any work and name the config key.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from liveditor.dtypes import dtype_name
from liveditor.eval.judge import JudgeClient, JudgeConfig, JudgeError

from ..stage import stable_hash
from .loading import ModelConfigError, weights_fingerprint

log = logging.getLogger("liveditor.curate")

# What the category says about the edited object after the edit (detection checks it):
# an addition or a swap puts the new object in the video (present); a removal takes it out (absent);
# any other category makes no claim about one object (no check).
OBJECT_AFTER_EDIT = {"object_addition": "present", "object_swap": "present", "object_removal": "absent"}

# What `edited_object` means, per rule, in the prompt.
_OBJECT_HINT = {
    "present": "a short noun phrase for the object that is in the video after the edit (the added or new object), e.g. \"a red umbrella\"",
    "absent": "a short noun phrase for the object the edit removes, e.g. \"the parked bicycle\"",
    None: "a short noun phrase for the main thing the edit changes, or \"\" if it changes the whole frame",
}


class InstructionFailure(Exception):
    """No valid answer for one pair: `reason` is the reject reason, the message the details."""

    def __init__(self, reason: str, message: str, attempts: list[dict]):
        super().__init__(message)
        self.reason = reason
        self.attempts = attempts


class EditAnswer(BaseModel):
    """The VLM's answer: one JSON object with these keys (others are ignored)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    instruction: str = Field(min_length=3)
    reverse_instruction: str = Field(min_length=3)
    source_caption: str = Field(min_length=3)
    target_caption: str = Field(min_length=3)
    edited_object: str = ""
    category: str


@dataclass
class Instruction:
    """A validated instruction with what produced it (for the pair's provenance)."""

    category: str
    instruction: str
    reverse_instruction: str
    source_caption: str
    target_caption: str
    edited_object: Optional[str]
    object_after_edit: Optional[str]  # "present" | "absent" | None (OBJECT_AFTER_EDIT)
    attempts: list[dict] = field(default_factory=list)  # [{"prompt", "answer", "error"}], the last one valid


def parse_json_answer(text: str) -> dict:
    """The JSON object in a VLM answer: bare, inside a ```json fence, or the outermost {...} of the text."""
    body = text.strip()
    fence = re.search(r"```(?:json|JSON)?\s*\n?(.*?)```", body, re.S)
    if fence:
        body = fence.group(1).strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        start, end = body.find("{"), body.rfind("}")
        if start < 0 or end <= start:
            raise ValueError(f"no JSON object in the answer: {text[:200]!r}") from None
        try:
            value = json.loads(body[start : end + 1])
        except json.JSONDecodeError as exc:
            raise ValueError(f"the answer's JSON does not parse ({exc.msg} at char {exc.pos}): {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"the answer is JSON but not an object: {text[:200]!r}")
    return value


def validate_answer(text: str, category: str) -> Instruction:
    """`text` as an `Instruction` for `category`; ValueError with the reason when it is not one."""
    try:
        answer = EditAnswer.model_validate(parse_json_answer(text))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'answer'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"the answer's JSON does not match the schema: {problems}") from None
    if answer.category != category:
        raise ValueError(f"the answer's category is {answer.category!r}, not the requested {category!r}")
    rule = OBJECT_AFTER_EDIT.get(category)
    if rule and not answer.edited_object:
        raise ValueError(f"edited_object is empty: a {category} edit needs the object's phrase")
    return Instruction(category, answer.instruction, answer.reverse_instruction, answer.source_caption, answer.target_caption,
                       answer.edited_object or None, rule)


# ---- categories -----------------------------------------------------------------------------

def category_weights(icfg) -> dict[str, float]:
    """`{category: weight}` normalised to sum 1, from `instructions.categories` (name -> {weight, description})."""
    cats = {str(k): float(v.weight) for k, v in dict(icfg.categories).items()}
    bad = {k: w for k, w in cats.items() if not w >= 0}
    if not cats or bad or sum(cats.values()) <= 0:
        raise ModelConfigError(f"pairs.generate.instructions.categories: need at least one category with a positive weight "
                                  f"and no negative ones (got {cats})")
    total = sum(cats.values())
    return {k: w / total for k, w in cats.items() if w > 0}


def sample_categories(clip_id: str, weights: dict[str, float], count: int) -> list[str]:
    """`count` distinct categories for `clip_id`, drawn without replacement in proportion to `weights`.

    Efraimidis-Spirakis: each category gets the key `u ** (1 / w)` with `u` in (0, 1) from a stable
    hash of (clip id, category); the `count` largest keys win, in that order. A pure function of its
    arguments (no process state), so every run and machine draws the same categories.
    """
    def key(name: str) -> float:
        u = (stable_hash(f"{clip_id}/{name}") % (1 << 53) + 0.5) / (1 << 53)
        return u ** (1.0 / weights[name])

    return sorted(weights, key=lambda n: (-key(n), n))[: max(0, int(count))]


# ---- prompts --------------------------------------------------------------------------------

def instruction_prompt(category: str, description: str, num_frames: int, attempt: int = 1, previous_error: Optional[str] = None) -> str:
    """The request for one edit of `category`; a retry (attempt > 1) names the previous answer's error."""
    rule = OBJECT_AFTER_EDIT.get(category)
    lines = [
        "You write edit instructions for a dataset of instruction-based video edits.",
        f"You are shown {num_frames} frame(s) of one video clip in time order. The first frame is the anchor frame: an image "
        "editor applies your instruction to it, and a video model then animates the edited frame into the edited clip.",
        f"Edit category: {category}: {description}",
        "Write one edit of this category that suits what is visible in the clip, is clearly visible once made, and keeps "
        "everything the instruction does not mention unchanged.",
        "Answer with exactly one JSON object and nothing else, with these keys:",
        '  "instruction": the edit, as an imperative sentence addressed to an editor,',
        '  "reverse_instruction": the imperative sentence that would turn the edited clip back into the original,',
        '  "source_caption": one sentence describing the original clip,',
        '  "target_caption": one sentence describing the clip after the edit,',
        f'  "edited_object": {_OBJECT_HINT[rule]},',
        f'  "category": "{category}"',
    ]
    if attempt > 1:
        lines.append(f"(Attempt {attempt}: the previous answer was rejected: {previous_error}. Answer with valid JSON only.)")
    return "\n".join(lines)


def clip_frames(frames: np.ndarray, count: int) -> list[np.ndarray]:
    """`count` frames spread evenly over `frames` `[T, H, W, 3]`, the first (anchor) frame first."""
    n = len(frames)
    idx = sorted(set(np.linspace(0, n - 1, num=max(1, min(int(count), n))).round().astype(int).tolist()))
    return [frames[i] for i in idx]


# ---- backends -------------------------------------------------------------------------------

class VLMBackend:
    """Answers `ask(prompt, frames)` (frames uint8 `[H, W, 3]` RGB) with text, cached on disk."""

    def ask(self, prompt: str, frames: Sequence[np.ndarray]) -> str:
        raise NotImplementedError

    def map(self, fn: Callable, args: Sequence) -> list:
        return [fn(a) for a in args]

    def provenance(self) -> dict:
        raise NotImplementedError


class OpenAIBackend(VLMBackend):
    """An OpenAI-compatible chat endpoint through eval's JudgeClient (temperature 0, cache, retries)."""

    def __init__(self, vcfg):
        self.cfg = JudgeConfig(base_url=str(vcfg.base_url), model=str(vcfg.model), api_key_env=vcfg.get("api_key_env"),
                               cache_dir=_cache_dir(vcfg), max_retries=int(vcfg.max_retries), backoff_s=float(vcfg.backoff_s),
                               timeout_s=float(vcfg.timeout_s), max_tokens=int(vcfg.max_tokens),
                               parallel_requests=int(vcfg.parallel_requests), response_format=vcfg.get("response_format"))
        self.client = JudgeClient(self.cfg)

    def ask(self, prompt: str, frames: Sequence[np.ndarray]) -> str:
        return self.client.ask(prompt, frames)

    def map(self, fn: Callable, args: Sequence) -> list:
        return self.client.map(fn, args)

    def provenance(self) -> dict:
        return {"backend": "openai", "base_url": self.cfg.base_url, "model": self.cfg.model, "temperature": 0,
                "response_format": self.cfg.response_format}


class TransformersBackend(VLMBackend):
    """A local image-text-to-text model (AutoProcessor + AutoModelForImageTextToText), greedy decoding.

    Loaded on first use, on `device` in `dtype`; answers go through JudgeClient's disk cache (keyed by
    the model's path, prompt and frames), so a rerun does not generate again.
    """

    def __init__(self, vcfg, device: str, dtype):
        self.path = str(vcfg.path)
        self.max_new_tokens = int(vcfg.max_new_tokens)
        self.device, self.dtype = device, dtype
        self.cache = JudgeClient(JudgeConfig(base_url=None, model=f"transformers:{os.path.abspath(self.path)}", cache_dir=_cache_dir(vcfg)))
        self._model = self._processor = self._fingerprint = None

    def _load(self):
        if self._model is None:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            self._processor = AutoProcessor.from_pretrained(self.path)
            self._model = AutoModelForImageTextToText.from_pretrained(self.path, dtype=self.dtype).to(self.device).eval()
        return self._model, self._processor

    def _generate(self, prompt: str, frames: Sequence[np.ndarray]) -> str:
        import torch
        from PIL import Image

        model, processor = self._load()
        messages = [{"role": "user", "content": [{"type": "image"} for _ in frames] + [{"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=[Image.fromarray(np.ascontiguousarray(f)) for f in frames] or None,
                           return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens)
        return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]

    def ask(self, prompt: str, frames: Sequence[np.ndarray]) -> str:
        return self.cache.cached_answer(prompt, frames, lambda: self._generate(prompt, frames))

    def provenance(self) -> dict:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.path)
        return {"backend": "transformers", "path": os.path.abspath(self.path), "weights_sha256": self._fingerprint,
                "decoding": "greedy", "max_new_tokens": self.max_new_tokens, "dtype": dtype_name(self.dtype)}


def _cache_dir(vcfg) -> Optional[str]:
    return str(vcfg.cache_dir) if vcfg.get("cache_dir") else None


def check_vlm_config(vcfg, key: str = "pairs.generate.vlm") -> None:
    """Raise `ModelConfigError` naming the key when the VLM backend cannot work (before any work)."""
    backend = vcfg.get("backend")
    if backend == "openai":
        if not vcfg.get("base_url"):
            raise ModelConfigError(f"{key}.base_url is not set: give the OpenAI-compatible endpoint, e.g. "
                                      f"{key}.base_url=http://127.0.0.1:8000/v1 (vLLM serving Qwen2.5-VL), or use "
                                      f"{key}.backend=transformers with {key}.path=/models/Qwen2.5-VL-7B-Instruct")
        if not re.match(r"https?://", str(vcfg.base_url)):
            raise ModelConfigError(f"{key}.base_url={vcfg.base_url!r} is not an http(s) URL: give e.g. http://127.0.0.1:8000/v1")
    elif backend == "transformers":
        path = vcfg.get("path")
        if not path:
            raise ModelConfigError(f"{key}.path is not set: point it at a local transformers image-text-to-text model "
                                      "directory (weights are never downloaded at run time)")
        if not os.path.isdir(str(path)):
            raise ModelConfigError(f"{key}.path='{path}' is not a directory: point it at a local transformers "
                                      "image-text-to-text model (config.json, weights, processor files)")
    else:
        raise ModelConfigError(f"{key}.backend={backend!r}: choose openai or transformers")


def make_backend(vcfg, device: str, dtype) -> VLMBackend:
    check_vlm_config(vcfg)
    return OpenAIBackend(vcfg) if vcfg.backend == "openai" else TransformersBackend(vcfg, device, dtype)


# ---- asking ---------------------------------------------------------------------------------

def endpoint_unavailable(exc: JudgeError) -> bool:
    """Whether `exc` is an outage a later run may get past: the endpoint gave no answer after
    JudgeClient's retries (connection errors, timeouts, HTTP 429 and 5xx, replies without content).
    False when it refused the request: JudgeClient raises those from the HTTP error (4xx but 429),
    which the same request will meet again."""
    import urllib.error

    return not isinstance(exc.__cause__, urllib.error.HTTPError)


def ask_validated(backend: VLMBackend, frames: Sequence[np.ndarray], max_attempts: int, make_prompt: Callable, validate: Callable):
    """Ask until `validate(answer)` returns a value, at most `max_attempts` times.

    `make_prompt(attempt, previous_error)` gives each attempt's prompt (a retry differs from the
    cached first request). Returns `(value, attempts)`; raises `InstructionFailure` with reason
    `malformed`, `endpoint_unavailable` or `endpoint_error` (the caller prefixes its own name).
    """
    attempts: list[dict] = []
    error = None
    for attempt in range(1, max(1, int(max_attempts)) + 1):
        prompt = make_prompt(attempt, error)
        try:
            text = backend.ask(prompt, frames)
        except JudgeError as exc:
            attempts.append({"prompt": prompt, "answer": None, "error": str(exc)})
            reason = "endpoint_unavailable" if endpoint_unavailable(exc) else "endpoint_error"
            raise InstructionFailure(reason, str(exc), attempts) from None
        try:
            value = validate(text)
        except ValueError as exc:
            error = str(exc)
            attempts.append({"prompt": prompt, "answer": text, "error": error})
            log.info("VLM answer rejected (attempt %d of %d): %s", attempt, max_attempts, error)
            continue
        attempts.append({"prompt": prompt, "answer": text, "error": None})
        return value, attempts
    raise InstructionFailure("malformed", f"no valid answer in {len(attempts)} attempt(s); last error: {error}", attempts)


class InstructionWriter:
    """Edit instructions for (frames, category) requests from one VLM backend."""

    def __init__(self, backend: VLMBackend, icfg):
        self.backend = backend
        self.descriptions = {str(k): str(v.description) for k, v in dict(icfg.categories).items()}
        self.num_frames = int(icfg.frames)
        self.max_attempts = int(icfg.max_attempts)

    def write(self, frames: np.ndarray, category: str) -> Instruction:
        """One validated instruction for `category` from the clip `frames` `[T, H, W, 3]`; raises
        `InstructionFailure` (reason `instruction_malformed`, `instruction_endpoint_unavailable` or
        `instruction_endpoint_error`)."""
        shown = clip_frames(frames, self.num_frames)
        description = self.descriptions[category]
        try:
            value, attempts = ask_validated(
                self.backend, shown, self.max_attempts,
                lambda attempt, error: instruction_prompt(category, description, len(shown), attempt, error),
                lambda text: validate_answer(text, category))
        except InstructionFailure as exc:
            raise InstructionFailure(f"instruction_{exc.reason}", str(exc), exc.attempts) from None
        value.attempts = attempts
        return value

    def write_many(self, requests: Sequence[tuple[np.ndarray, str]]) -> list:
        """`write` for each `(frames, category)`, requests in flight in parallel where the backend
        allows; each result is an `Instruction` or the `InstructionFailure` it raised."""
        def one(req):
            try:
                return self.write(*req)
            except InstructionFailure as exc:
                return exc

        return self.backend.map(one, list(requests))
