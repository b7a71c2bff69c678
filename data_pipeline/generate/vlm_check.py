"""VLM instruction-following check of a generated pair: does the edited video do what the instruction says?

The VLM (the same backend that wrote the instructions, `pairs.generate.vlm`) sees `frames` aligned
frames of the source and of the generated video, in pairs (source first, then edited), and answers
one JSON object `{"score": <integer 0-10>, "reason": "<one sentence>"}`. The score is parsed
strictly (`CheckAnswer`: an integer from 0 to 10; ```json fences tolerated, nothing else guessed).
An unparseable answer is asked again (the retry's prompt names the attempt and the error, so it is
not the cached answer) up to `max_attempts` times, then the pair is rejected with
`vlm_check_malformed`; an endpoint that refuses the request, with `vlm_check_endpoint_error`. An
endpoint that gives no answer after the retries (an outage) leaves the row unfinished,
`vlm_check_endpoint_unavailable`: a rerun makes the pair and asks again (`pairs.RETRY_REASONS`). A score
below `min_score` rejects it with `vlm_instruction_following_low`. The score goes to the manifest
column `vlm_instruction_following` and the shard json's scores.

The check always judges the generated edit (real clip -> synthetic video, the forward instruction),
whichever direction the pair ships in: the reversed pair is right exactly when the forward one is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic import Field as PydanticField

from .instructions import InstructionFailure, VLMBackend, ask_validated, parse_json_answer

SCORE_MIN, SCORE_MAX = 0, 10


class CheckAnswer(BaseModel):
    """`{"score": 0..10 integer, "reason": str}`; a float such as 7.5 or a string "7" is not a score."""

    model_config = ConfigDict(extra="ignore", strict=True)

    score: int = PydanticField(ge=SCORE_MIN, le=SCORE_MAX)
    reason: str = ""


def check_prompt(instruction: str, pairs: int, attempt: int = 1, previous_error: Optional[str] = None) -> str:
    lines = [
        "You judge instruction-based video edits.",
        f"You are shown {pairs} pair(s) of frames at the same moments of a source video and of its edited version, "
        "in order: source frame, then edited frame, for each moment.",
        f"Editing instruction: {instruction}",
        f"Rate how well the edited video follows the instruction, as an integer from {SCORE_MIN} (ignored or wrong) to "
        f"{SCORE_MAX} (done exactly, nothing else changed).",
        'Answer with exactly one JSON object and nothing else: {"score": <integer>, "reason": "<one sentence>"}',
    ]
    if attempt > 1:
        lines.append(f"(Attempt {attempt}: the previous answer was rejected: {previous_error}. Answer with valid JSON only.)")
    return "\n".join(lines)


def parse_score(text: str) -> int:
    """The integer score of a check answer; ValueError saying why when the answer is not one."""
    try:
        return CheckAnswer.model_validate(parse_json_answer(text)).score
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'answer'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"the answer's JSON does not match the schema: {problems}") from None


@dataclass
class CheckResult:
    score: Optional[float]
    reason: Optional[str]       # reject reason, None when the pair passes
    error: Optional[str]        # why no score (malformed answer, endpoint down)
    attempts: list[dict]


class InstructionFollowingCheck:
    """Scores (source, generated) frame pairs against an instruction with a VLM; `min_score` floor."""

    def __init__(self, backend: VLMBackend, ccfg):
        self.backend = backend
        self.frames = int(ccfg.frames)
        self.min_score = None if ccfg.get("min_score") is None else float(ccfg.min_score)
        self.max_attempts = int(ccfg.max_attempts)

    def shown(self, source: np.ndarray, generated: np.ndarray) -> list[np.ndarray]:
        """Aligned frames interleaved: source, generated, source, generated, ..."""
        n = max(1, min(self.frames, len(source), len(generated)))
        rel = np.linspace(0, 1, num=n)
        si = (rel * (len(source) - 1)).round().astype(int)
        gi = (rel * (len(generated) - 1)).round().astype(int)
        return [f for a, b in zip(si, gi) for f in (source[a], generated[b])]

    def check(self, instruction: str, source: np.ndarray, generated: np.ndarray) -> CheckResult:
        frames = self.shown(source, generated)
        try:
            score, attempts = ask_validated(self.backend, frames, self.max_attempts,
                                            lambda attempt, error: check_prompt(instruction, len(frames) // 2, attempt, error),
                                            parse_score)
        except InstructionFailure as exc:
            return CheckResult(None, f"vlm_check_{exc.reason}", str(exc), exc.attempts)
        low = self.min_score is not None and score < self.min_score
        return CheckResult(float(score), "vlm_instruction_following_low" if low else None, None, attempts)

    def check_many(self, requests: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> list[CheckResult]:
        """`check` for each `(instruction, source, generated)`, in parallel where the backend allows."""
        return self.backend.map(lambda req: self.check(*req), list(requests))
