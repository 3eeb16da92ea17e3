"""Scorers: a code scorer matching the corrected answer, and an LLM judge.

The code scorer is deterministic, so it is what a CI gate decides on by default: an answer
passes when it equals the correction once both are normalised (Unicode NFKC, lower case,
punctuation dropped, whitespace collapsed), or when their token-overlap F1 reaches
EVAL_MATCH_THRESHOLD (0.8: the same words with a few added or missing). The judge asks the
configured model whether the answer says what the correction says; it helps with paraphrases a
word overlap misses, and its verdict can decide instead (`evaluate --decide-by judge|either`).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from chat.llm import ChatMessage, ChatModel

WORD = re.compile(r"\w+")
VERDICT = re.compile(r"^\W*(PASS|FAIL)\b[\s:.\-–—]*(.*)", re.IGNORECASE | re.DOTALL)

JUDGE_PROMPT = (
    "You are a strict grader of a support assistant's answers. You get the conversation's last "
    "question, the reference answer a reviewer wrote, and the assistant's answer. Reply PASS if "
    "the assistant's answer gives the same facts and instructions as the reference (wording may "
    "differ), FAIL otherwise. Start your reply with PASS or FAIL, then one sentence why."
)


def normalise(text: str) -> str:
    return " ".join(WORD.findall(unicodedata.normalize("NFKC", text).lower()))


def overlap_f1(output: str, expected: str) -> float:
    """Token-overlap F1 of the normalised texts (1.0 when they are equal)."""
    got, want = normalise(output).split(), normalise(expected).split()
    if not got or not want:
        return 1.0 if got == want else 0.0
    common = sum((Counter(got) & Counter(want)).values())
    if not common:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class Match:
    exact: bool
    score: float
    passed: bool


def match_expected(*, output: str, expected: str, threshold: float) -> Match:
    """The code scorer. `score` is the F1 (1.0 for a normalised match)."""
    exact = normalise(output) == normalise(expected)
    score = 1.0 if exact else overlap_f1(output, expected)
    return Match(exact=exact, score=round(score, 4), passed=exact or score >= threshold)


@dataclass(frozen=True)
class Verdict:
    passed: bool | None  # None: the judge's reply did not start with PASS or FAIL
    rationale: str


async def judge(*, model: ChatModel, question: str, expected: str, output: str) -> Verdict:
    """Ask `model` whether `output` answers like `expected`. Raises: LLMTimeout, LLMUnavailable."""
    prompt = [
        ChatMessage("system", JUDGE_PROMPT),
        ChatMessage(
            "user",
            f"Question:\n{question}\n\nReference answer:\n{expected}\n\n"
            f"Assistant's answer:\n{output}",
        ),
    ]
    reply = await model.complete(prompt)
    match = VERDICT.match(reply.content or "")
    if match is None:
        return Verdict(passed=None, rationale=(reply.content or "")[:500])
    return Verdict(passed=match[1].upper() == "PASS", rationale=match[2].strip()[:500])
