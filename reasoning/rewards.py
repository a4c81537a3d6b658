"""Answer parsing, the two GRPO rewards, and the probe's scoring (accuracy / format rate with Wilson CIs).

- format: the whole completion is `<think>...</think><answer>X</answer>` (whitespace allowed between and
  around, X one option letter) -> 1.0, else 0.0 (the R1 / EasyR1 format reward).
- answer: the letter inside the last `<answer>...</answer>` equals the correct letter -> 1.0, else 0.0
  (exact match, as Robot-R1's accuracy reward).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ANSWER_RE = re.compile(r"<answer>\s*([A-Z])\s*</answer>", re.S)
FORMAT_RE = re.compile(r"^\s*<think>.*?</think>\s*<answer>\s*[A-Z]\s*</answer>\s*$", re.S)
DIRECT_RE = re.compile(r"^\s*<answer>\s*[A-Z]\s*</answer>\s*$", re.S)  # Direct SFT's format (the probe)
FORMAT_RES = {"think": FORMAT_RE, "direct": DIRECT_RE}


def completion_text(completion: object) -> str:
    """Text of a TRL completion: a string, or conversational [{'role': 'assistant', 'content': ...}]."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        content = completion[-1].get("content", "")
        if isinstance(content, list):
            return "".join(c.get("text", "") for c in content if isinstance(c, dict))
        return str(content)
    return ""


def parse_answer(text: str) -> str | None:
    """The letter in the last <answer>X</answer>, or None."""
    found = ANSWER_RE.findall(text)
    return found[-1] if found else None


def is_formatted(text: str, answer_format: str = "think") -> bool:
    return FORMAT_RES[answer_format].match(text) is not None


def format_reward(completions: list, **_: object) -> list[float]:
    """TRL reward function: 1.0 for `<think>...</think><answer>X</answer>`, else 0.0."""
    return [1.0 if is_formatted(completion_text(c)) else 0.0 for c in completions]


def answer_reward(completions: list, answer: list[str], **_: object) -> list[float]:
    """TRL reward function: 1.0 when the answered letter is the correct one (`answer` column), else 0.0."""
    return [
        1.0 if parse_answer(completion_text(c)) == a else 0.0
        for c, a in zip(completions, answer, strict=True)
    ]


def wilson(successes: int, n: int) -> list[float]:
    """Wilson 95% interval of successes / n (statsmodels proportion_confint, method='wilson')."""
    if n == 0:
        return [0.0, 1.0]
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(successes, n, alpha=0.05, method="wilson")
    return [float(lo), float(hi)]


def _rates(correct: list[bool], formatted: list[bool], answered: list[bool]) -> dict:
    n = len(correct)
    out: dict = {"n": n}
    for name, vals in (("accuracy", correct), ("format", formatted), ("answered", answered)):
        k = int(sum(vals))
        out[name] = k / n if n else 0.0
        out[f"{name}_ci95"] = wilson(k, n)
    return out


def score(
    texts: Sequence[str],
    answers: Sequence[str],
    kinds: Sequence[str],
    options: int = 4,
    answer_format: str = "think",
) -> dict:
    """Accuracy, format rate (of `answer_format`: think | direct) and answered rate (a valid <answer> tag) per
    kind and overall, Wilson 95% CIs. `chance` = 1 / options."""
    if not len(texts) == len(answers) == len(kinds):
        raise ValueError(
            f"texts, answers, kinds differ in length: {len(texts)}, {len(answers)}, {len(kinds)}"
        )
    letters = [parse_answer(t) for t in texts]
    correct = [p == a for p, a in zip(letters, answers, strict=True)]
    formatted = [is_formatted(t, answer_format) for t in texts]
    answered = [p is not None for p in letters]
    result = {"overall": _rates(correct, formatted, answered), "per_kind": {}, "chance": 1.0 / options}
    for kind in sorted(set(kinds)):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        result["per_kind"][kind] = _rates(
            [correct[i] for i in idx], [formatted[i] for i in idx], [answered[i] for i in idx]
        )
    return result
