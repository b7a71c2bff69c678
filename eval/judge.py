"""The VLM judge: one client for any OpenAI-compatible chat-completions endpoint.

    judge = JudgeClient(JudgeConfig(base_url="http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-VL-72B-Instruct",
                                    cache_dir="/runs/x/judge_cache"))
    text = judge.ask("Rate ...", [source_frame, edited_frame])      # frames uint8 [H, W, 3] RGB

Images go as base64 JPEG data URLs in `image_url` content parts, so GPT-4o and a vLLM- or
SGLang-served Qwen2.5-VL serve alike. Requests use temperature 0. Answers are cached on disk under
`cache_dir`, keyed by (model, prompt, SHA-256 of the encoded images), so a rerun or another metric
asking the same question does not call the endpoint again. Only answers the caller accepts are
cached: `ask(..., keep=fn)` stores an answer only when `fn(answer)` is true (a metric passes "holds
a score"), and a cached answer that `fn` rejects (written by an older version) is asked again, so
a rerun against a fixed endpoint retries every malformed answer. Network errors, timeouts, HTTP 429
and 5xx are retried with exponential backoff (`backoff_s * 2**attempt`); other HTTP errors (400)
fail at once with the endpoint's message, and 401, 403 and 404 (a key or URL that will never work)
raise `JudgeRefused`, which stops a scoring run instead of becoming an error row. `probe()` sends
one short text request, so a run can check the endpoint before scoring. A reply without
`choices[0].message.content` is a malformed answer: retried like an error, never cached. An unset
`base_url` means no judge: the judge metrics are reported "not computed", never a number.
`cached_answer` puts the same disk cache in front of any other answerer (curation's local
transformers VLM).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from liveditor.files import atomic_write_text

log = logging.getLogger(__name__)


class JudgeError(RuntimeError):
    """The endpoint could not give an answer (after retries); the message names the endpoint and why."""


class JudgeRefused(JudgeError):
    """The endpoint refuses every request of this configuration (HTTP 401, 403 or 404: the key, the
    URL or the model name is wrong): a configuration mistake, not one item's failure."""


# HTTP statuses that no retry and no other item will change.
REFUSED_STATUSES = (401, 403, 404)


@dataclass
class JudgeConfig:
    """Where and how to ask.

    Attributes:
        base_url: the endpoint's base, e.g. "https://api.openai.com/v1" or "http://host:8000/v1";
            requests go to `<base_url>/chat/completions`. None: no judge.
        model: the model name sent with each request.
        api_key_env: the environment variable holding the bearer token (None or unset: no header).
        cache_dir: where answers are kept (None: no cache).
        max_retries: further attempts after the first, for retryable failures.
        backoff_s: the first retry's wait, seconds; doubled each retry.
        timeout_s: one request's timeout, seconds.
        max_tokens: the answer's length limit.
        jpeg_quality: JPEG quality of the frames sent (95: OpenCV's default, which EditVerse used).
        swap_red_blue: send frames with red and blue swapped, as EditVerse's scorer does (it passes
            RGB frames to OpenCV's BGR encoder); False sends true colours.
        parallel_requests: requests in flight at once for one item's frames (EditVerse's judge asks
            once per frame index).
        response_format: None, or "json_object" to ask for the endpoint's JSON mode (OpenAI, vLLM and
            SGLang support it); part of the cache key when set.
    """

    base_url: Optional[str] = None
    model: str = "gpt-4o-2024-11-20"
    api_key_env: Optional[str] = "OPENAI_API_KEY"
    cache_dir: Optional[str] = None
    max_retries: int = 5
    backoff_s: float = 2.0
    timeout_s: float = 120.0
    max_tokens: int = 1024
    jpeg_quality: int = 95
    swap_red_blue: bool = False
    parallel_requests: int = 4
    response_format: Optional[str] = None

    @classmethod
    def from_dict(cls, d) -> "JudgeConfig":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in dict(d or {}).items() if k in known})


def encode_jpeg(frame: np.ndarray, quality: int = 95, swap_red_blue: bool = False) -> bytes:
    """`uint8` `[H, W, 3]` RGB -> JPEG bytes (PIL)."""
    from PIL import Image

    arr = np.ascontiguousarray(frame[..., ::-1] if swap_red_blue else frame, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def judge_frame_indices(num_frames: int) -> list[int]:
    """EditVerse's judge frames: `range(0, T, T // 3)`: 3 frames when T is divisible by 3, else 4
    (T = 82: 0, 27, 54, 81). Below 3 frames every frame is used."""
    if num_frames < 1:
        return []
    return list(range(0, num_frames, max(1, num_frames // 3)))


class JudgeClient:
    """Ask an OpenAI-compatible chat endpoint about frames; answers cached, failures retried."""

    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg
        self.requests_sent = 0  # HTTP requests made (tests and logs read it)

    @property
    def available(self) -> bool:
        return bool(self.cfg.base_url)

    def _cache_path(self, key: str) -> Optional[Path]:
        return Path(self.cfg.cache_dir) / key[:2] / f"{key}.json" if self.cfg.cache_dir else None

    def cache_key(self, prompt: str, images: Sequence[bytes]) -> str:
        frames = hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in images)).hexdigest()
        parts = [self.cfg.model, prompt, frames] + ([self.cfg.response_format] if self.cfg.response_format else [])
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def ask(self, prompt: str, frames: Sequence[np.ndarray] = (), keep=None) -> str:
        """The endpoint's answer to `prompt` with `frames` (uint8 `[H, W, 3]` RGB) attached, in order.
        `keep(answer) -> bool`: whether the answer is usable; only usable answers are cached, and a
        cached one that `keep` rejects is asked again (None: every answer is usable)."""
        if not self.available:
            raise JudgeError("no judge endpoint: set judge.base_url")
        return self._cached(prompt, frames, lambda images: self._request(prompt, images), keep)

    def cached_answer(self, prompt: str, frames: Sequence[np.ndarray], produce, keep=None) -> str:
        """`produce()`'s answer to `prompt` with `frames`, through the same disk cache as `ask` (keyed
        by model, prompt and frames): for answerers other than the endpoint, e.g. a local VLM."""
        return self._cached(prompt, frames, lambda images: produce(), keep)

    def probe(self) -> str:
        """One short text-only request, not cached: raises `JudgeRefused` (401, 403, 404) or
        `JudgeError` (unreachable after the retries) when the endpoint cannot serve this config."""
        if not self.available:
            raise JudgeError("no judge endpoint: set judge.base_url")
        return self._request("Reply with the single word OK.", [], max_tokens=8)

    def _cached(self, prompt: str, frames: Sequence[np.ndarray], produce, keep=None) -> str:
        images = [encode_jpeg(f, self.cfg.jpeg_quality, self.cfg.swap_red_blue) for f in frames]
        key = self.cache_key(prompt, images)
        path = self._cache_path(key)
        if path is not None and path.is_file():
            try:
                answer = json.loads(path.read_text())["answer"]
                if keep is None or keep(answer):
                    return answer
                log.info("judge cache entry '%s' holds an unusable answer: asking again", path)
            except (json.JSONDecodeError, KeyError):
                log.warning("judge cache entry '%s' is unreadable: asking again", path)
        answer = produce(images)
        if (keep is None or keep(answer)) and path is not None:  # keep is always asked: callers read its verdict
            atomic_write_text(path, json.dumps({"model": self.cfg.model, "prompt": prompt, "answer": answer}))
        return answer

    def map(self, fn, args: Sequence) -> list:
        """`[fn(a) for a in args]` with up to `parallel_requests` calls in flight (order kept; the
        first exception is raised)."""
        workers = max(1, int(self.cfg.parallel_requests))
        if workers == 1 or len(args) < 2:
            return [fn(a) for a in args]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(workers, len(args))) as pool:
            return list(pool.map(fn, args))

    def _payload(self, prompt: str, images: Sequence[bytes], max_tokens: Optional[int] = None) -> bytes:
        content = [{"type": "text", "text": prompt}] + [
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(b).decode()}} for b in images
        ]
        payload = {"model": self.cfg.model, "temperature": 0, "max_tokens": int(max_tokens or self.cfg.max_tokens),
                   "messages": [{"role": "user", "content": content}]}
        if self.cfg.response_format:
            payload["response_format"] = {"type": self.cfg.response_format}
        return json.dumps(payload).encode()

    def _request(self, prompt: str, images: Sequence[bytes], max_tokens: Optional[int] = None) -> str:
        url = self.cfg.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        token = os.environ.get(self.cfg.api_key_env) if self.cfg.api_key_env else None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        body = self._payload(prompt, images, max_tokens)
        last = ""
        for attempt in range(int(self.cfg.max_retries) + 1):
            if attempt:
                time.sleep(float(self.cfg.backoff_s) * 2 ** (attempt - 1))
            self.requests_sent += 1
            try:
                with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=float(self.cfg.timeout_s)) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
                last = f"HTTP {exc.code}: {detail}"
                if exc.code == 429 or exc.code >= 500:
                    log.warning("judge %s: %s (attempt %d)", url, last, attempt + 1)
                    continue
                if exc.code in REFUSED_STATUSES:
                    hint = {401: f"check the key in ${self.cfg.api_key_env}" if self.cfg.api_key_env else "set judge.api_key_env",
                            403: f"check the key in ${self.cfg.api_key_env} and its access to judge.model={self.cfg.model}",
                            404: f"check judge.base_url (it ends before /chat/completions, e.g. .../v1) and judge.model={self.cfg.model}"}[exc.code]
                    raise JudgeRefused(f"judge endpoint {url} refused the request ({last.strip()}): {hint}") from exc
                raise JudgeError(f"judge endpoint {url} refused the request: {last}") from exc
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
                log.warning("judge %s: %s (attempt %d)", url, last, attempt + 1)
                continue
            try:
                answer = json.loads(raw)["choices"][0]["message"]["content"]
                if isinstance(answer, list):  # content parts
                    answer = "".join(p.get("text", "") for p in answer if isinstance(p, dict))
                if not isinstance(answer, str):
                    raise TypeError(f"content is {type(answer).__name__}")
                return answer
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                last = f"malformed reply ({exc}): {raw[:200]!r}"
                log.warning("judge %s: %s (attempt %d)", url, last, attempt + 1)
        raise JudgeError(f"judge endpoint {url} gave no answer after {int(self.cfg.max_retries) + 1} attempts; last: {last}")
