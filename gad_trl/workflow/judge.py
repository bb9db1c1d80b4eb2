"""The paper's judge protocol (GAD Appendix A.3, taken from MiniLLM, whose prompt is FastChat's Vicuna reviewer).

A judge model writes its own reference answer to the prompt; shown the question and two answers ("Assistant 1" = the
reference, "Assistant 2" = the student's), it rates each from 1 to 10 on the first line of its review. The score of
a prompt is student / (student + reference) x 100: about 50 means parity with the judge's own answer. The pairwise
mode rates the student against the teacher's answer in both orders (position bias) and counts win = 1, tie = 1/2.

Pure functions here (prompt text, parsing, per-prompt scores, mean and 95% interval); requests are in
`gad_trl.workflow.evaluation`.
"""

from __future__ import annotations

import math
import re

JUDGE_SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."

# FastChat's "general" reviewer prompt (fastchat/eval/table/prompt.jsonl), used by MiniLLM's GPT-4 evaluation.
JUDGE_TEMPLATE = (
    "[Question]\n{question}\n\n"
    "[The Start of Assistant 1's Answer]\n{answer_1}\n\n[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\n{answer_2}\n\n[The End of Assistant 2's Answer]\n\n"
    "[System]\n"
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above.\n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant receives "
    "an overall score on a scale of 1 to 10, where a higher score indicates better overall performance.\n"
    "Please first output a single line containing only two values indicating the scores for Assistant 1 and 2, "
    "respectively. The two scores are separated by a space. In the subsequent line, please provide a comprehensive "
    "explanation of your evaluation, avoiding any potential bias and ensuring that the order in which the responses "
    "were presented does not affect your judgment."
)

# What the judge must write first: two ratings 1-10 separated by a space (or a comma). Usable as a structured-output
# regex on endpoints that support one (vLLM: extra_body={"structured_outputs": {"regex": SCORE_LINE_REGEX + ...}}).
SCORE_LINE_REGEX = r"(10|[1-9])(\.[0-9])? (10|[1-9])(\.[0-9])?"
_NUMBER = r"\d+(?:\.\d+)?"
_SCORE_LINE = re.compile(rf"^\s*({_NUMBER})\s*[, ]\s*({_NUMBER})\s*$")

MIN_RATING, MAX_RATING = 1.0, 10.0
Z_95 = 1.959963984540054  # normal quantile for a two-sided 95% interval


def question_text(messages: list[dict]) -> str:
    """The question shown to the judge: the last user turn, or the whole conversation for a multi-turn prompt."""
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in turns)


def judge_messages(question: str, answer_1: str, answer_2: str, template: str = JUDGE_TEMPLATE,
                   system_prompt: str | None = JUDGE_SYSTEM_PROMPT) -> list[dict]:
    content = template.format(question=question, answer_1=answer_1, answer_2=answer_2)
    messages = [{"role": "user", "content": content}]
    return [{"role": "system", "content": system_prompt}, *messages] if system_prompt else messages


def parse_ratings(review: str) -> tuple[float, float] | None:
    """The (Assistant 1, Assistant 2) ratings on the review's first non-empty line, or None when it is not two
    numbers in [1, 10] (FastChat's rule, which marks such reviews -1 and leaves them out)."""
    for line in review.splitlines():
        if line.strip():
            match = _SCORE_LINE.match(line)
            if not match:
                return None
            a, b = float(match.group(1)), float(match.group(2))
            if not (MIN_RATING <= a <= MAX_RATING and MIN_RATING <= b <= MAX_RATING):
                return None
            return a, b
    return None


def relative_score(reference: float, student: float) -> float:
    """The paper's per-prompt score: student / (student + reference) x 100."""
    return 100.0 * student / (student + reference)


def pairwise_outcome(student: float, other: float) -> float:
    """1 when the student is rated higher, 1/2 for a tie, 0 otherwise."""
    return 1.0 if student > other else 0.5 if student == other else 0.0


def mean_ci95(values: list[float]) -> dict:
    """Mean and a normal-approximation 95% interval (mean +/- 1.96 standard errors; sample standard deviation)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "ci95_low": None, "ci95_high": None, "stderr": None}
    mean = sum(values) / n
    if n == 1:
        return {"n": 1, "mean": mean, "ci95_low": None, "ci95_high": None, "stderr": None}
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    stderr = math.sqrt(var / n)
    return {"n": n, "mean": mean, "ci95_low": mean - Z_95 * stderr, "ci95_high": mean + Z_95 * stderr,
            "stderr": stderr}
