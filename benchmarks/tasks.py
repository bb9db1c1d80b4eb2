"""Synthetic black-box distillation tasks: a program is the teacher, a rule-based judge scores answers.

A task is one function pair, registered by name:

    make_example(rng: random.Random) -> (prompt: str, teacher_answer: str)
    judge(prompt: str, answer: str) -> float in [0, 1]

Plug a new task in with

    from benchmarks.tasks import register_task
    register_task("my_task", make_example, judge)

and `benchmarks/quality.py --tasks my_task,...` picks it up; nothing in the trainer changes. The judge plays the role
of the paper's GPT-4o judge: it reads only the prompt and the answer text and checks them against the teacher's rules
(not against one reference string), so any valid answer style scores 1.

Text handling: the tiny tokenizer is a byte-level BPE trained on a toy corpus, and a tiny student's decoded text can
space words and digits unevenly ("1 2 plus 7 equals 1 9", "1. water"). Judges therefore compare *normalised token
lists* (`tokens()`), where consecutive digits form one number, never raw strings.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

from gad_trl.tiny import _WORDS

# Plain words used as task content (all in the tiny tokenizer's vocabulary, none a task keyword).
_KEYWORDS = {"reverse", "result", "list", "sum", "plus", "minus", "equals", "so", "the", "answer", "is", "item"}
NOUNS = [w for w in _WORDS[40:200] if w.isalpha() and w.islower() and w not in _KEYWORDS][:48]

_TOKEN_RE = re.compile(r"\d+|[A-Za-z]+|\n|[^\sA-Za-z\d]")


def tokens(text: str) -> list[str]:
    """Normalised tokens: words, numbers (digit runs, spaces between digits removed), newlines, punctuation."""
    text = re.sub(r"(?<=\d) +(?=\d)", "", text)  # "1 2" -> "12": the tokenizer splits numbers into digits
    text = text.replace("<|im_end|>", " ").replace("<|endoftext|>", " ")
    return _TOKEN_RE.findall(text)


@dataclass(frozen=True)
class Task:
    name: str
    make_example: Callable[[random.Random], tuple[str, str]]
    judge: Callable[[str, str], float]
    description: str = ""
    # Optional: the teacher answering a given prompt, `answer(prompt, rng) -> str` (a fresh draw of its answer
    # distribution). Tasks without one have a single answer per prompt (`teacher_answers` repeats it).
    answer: Callable[[str, random.Random], str] | None = None


TASKS: dict[str, Task] = {}


def register_task(name: str, make_example, judge, description: str = "", answer=None) -> Task:
    """`answer(prompt, rng) -> str`, optional: draw another teacher answer for `prompt` (a multi-modal teacher); used
    where k teacher answers per prompt are asked for (`teacher_answers`)."""
    task = Task(name, make_example, judge, description, answer)
    TASKS[name] = task
    return task


def get_tasks(names: str | list[str] | None = None) -> list[Task]:
    if names is None:
        return list(TASKS.values())
    if isinstance(names, str):
        names = [n for n in names.split(",") if n]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise KeyError(f"Unknown task(s) {unknown}; registered: {sorted(TASKS)}")
    return [TASKS[n] for n in names]


def _positional_match(pred: list[str], ref: list[str]) -> float:
    if not ref:
        return float(not pred)
    return sum(p == r for p, r in zip(pred, ref)) / max(len(pred), len(ref))


# --------------------------------------------------------------------------------------------------------------------
# 1. reverse: a transformation with several valid output styles (the teacher picks one at random).
# --------------------------------------------------------------------------------------------------------------------
REVERSE_STYLES = ("plain", "commas", "result")


def reverse_example(rng: random.Random) -> tuple[str, str]:
    words = [rng.choice(NOUNS) for _ in range(rng.randint(3, 5))]
    return "reverse : " + " ".join(words), _reverse_styled(words[::-1], rng.choice(REVERSE_STYLES))


def _reverse_styled(rev: list[str], style: str) -> str:
    if style == "plain":
        return " ".join(rev)
    if style == "commas":
        return " , ".join(rev)
    return "result : " + " ".join(rev)


def reverse_answer(prompt: str, rng: random.Random) -> str:
    """The teacher's answer to a `reverse` prompt, in a style drawn at random (as `reverse_example` draws it)."""
    ptoks = tokens(prompt)
    words = ptoks[2:] if ptoks[:2] == ["reverse", ":"] else ptoks
    return _reverse_styled(words[::-1], rng.choice(REVERSE_STYLES))


def reverse_judge(prompt: str, answer: str) -> float:
    """1 for the reversed words in any of the three styles; partial credit for a valid style with some words right."""
    ptoks = tokens(prompt)
    ref = ptoks[2:][::-1] if ptoks[:2] == ["reverse", ":"] else ptoks[::-1]
    toks = tokens(answer)
    valid_style = True
    if toks[:2] == ["result", ":"]:
        body = toks[2:]
        valid_style = "," not in body
        words = [t for t in body if t != ","]
    elif "," in toks:
        words = toks[0::2]
        valid_style = all(t == "," for t in toks[1::2]) and len(toks) % 2 == 1
        words = [t for t in toks if t != ","]
    else:
        words = toks
    if valid_style and words == ref:
        return 1.0
    return (0.5 if valid_style else 0.25) * _positional_match(words, ref)


# --------------------------------------------------------------------------------------------------------------------
# 2. numbered_list: a formatting task ("1 . w1 \n 2 . w2 ...").
# --------------------------------------------------------------------------------------------------------------------
def numbered_list_example(rng: random.Random) -> tuple[str, str]:
    words = [rng.choice(NOUNS) for _ in range(rng.randint(2, 4))]
    answer = "\n".join(f"{i} . {w}" for i, w in enumerate(words, 1))
    return "list : " + " ".join(words), answer


def numbered_list_judge(prompt: str, answer: str) -> float:
    """Fraction of correct lines `<i> . <word_i>`, out of max(expected, produced) lines."""
    ptoks = tokens(prompt)
    words = ptoks[2:] if ptoks[:2] == ["list", ":"] else ptoks
    lines, cur = [], []
    for t in tokens(answer):
        if t == "\n":
            lines.append(cur)
            cur = []
        else:
            cur.append(t)
    lines.append(cur)
    lines = [line for line in lines if line]
    good = sum(line == [str(i), ".", w] for i, (line, w) in enumerate(zip(lines, words), 1))
    return good / max(len(lines), len(words), 1)


# --------------------------------------------------------------------------------------------------------------------
# 3. arithmetic: a short explanation of a running sum ("a plus b equals s , s plus c equals t , so the answer is t").
# --------------------------------------------------------------------------------------------------------------------
def arithmetic_example(rng: random.Random) -> tuple[str, str]:
    terms = [rng.randint(0, 9) for _ in range(rng.randint(2, 3))]
    steps, acc = [], terms[0]
    for t in terms[1:]:
        steps.append(f"{acc} plus {t} equals {acc + t}")
        acc += t
    answer = " , ".join(steps) + f" , so the answer is {acc}"
    return "sum " + " plus ".join(map(str, terms)), answer


def arithmetic_judge(prompt: str, answer: str) -> float:
    """0.5 for the right final answer ("so the answer is N") + 0.5 x fraction of correct, correctly chained steps."""
    terms = [int(t) for t in tokens(prompt) if t.isdigit()]
    total = sum(terms)
    toks = tokens(answer)
    final, body = 0.0, toks
    trailer = ["so", "the", "answer", "is"]
    starts = [i for i in range(len(toks) - 3) if toks[i : i + 4] == trailer]
    if starts:
        i = starts[-1]
        body, rest = toks[:i], toks[i + 4 :]
        if len(rest) == 1 and rest[0].isdigit():
            final = 0.5 * (int(rest[0]) == total)
    # steps: "x plus y equals z" separated by ","
    segments, cur = [], []
    for t in body:
        if t == ",":
            segments.append(cur)
            cur = []
        else:
            cur.append(t)
    segments.append(cur)
    segments = [s for s in segments if s]
    expected = len(terms) - 1
    good, acc = 0, terms[0] if terms else 0
    for i, seg in enumerate(segments[:expected]):
        ok = (
            len(seg) == 5
            and seg[1] == "plus"
            and seg[3] == "equals"
            and all(seg[j].isdigit() for j in (0, 2, 4))
            and int(seg[0]) == acc
            and int(seg[2]) == terms[i + 1]
            and int(seg[4]) == acc + terms[i + 1]
        )
        good += ok
        acc += terms[i + 1]
    steps = good / max(expected, len(segments), 1)
    return final + 0.5 * steps


register_task("reverse", reverse_example, reverse_judge, "reverse 3-5 words; 3 valid output styles", reverse_answer)
register_task("numbered_list", numbered_list_example, numbered_list_judge, "format 2-4 words as a numbered list")
register_task("arithmetic", arithmetic_example, arithmetic_judge, "explain a running sum of 2-3 digits")


# --------------------------------------------------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------------------------------------------------
def corrupt(answer: str, rng: random.Random, vocab: list[str] | None = None) -> str:
    """A generic, task-agnostic perturbation of a teacher answer (the 'weaker teacher' of student pre-training):
    swap two tokens, replace one with a random word/digit, drop one, or duplicate one."""
    toks = answer.replace("\n", " \n ").split(" ")
    toks = [t for t in toks if t != ""]
    vocab = vocab or NOUNS + [str(d) for d in range(10)]
    n = len(toks)
    op = rng.choice(("swap", "replace", "drop", "dup"))
    i = rng.randrange(n)
    if op == "swap" and n > 1:
        j = rng.randrange(n)
        toks[i], toks[j] = toks[j], toks[i]
    elif op == "replace":
        toks[i] = rng.choice(vocab) if not toks[i].isdigit() else str(rng.randint(0, 18))
    elif op == "drop" and n > 1:
        del toks[i]
    else:
        toks.insert(i, toks[i])
    return " ".join(toks).replace(" \n ", "\n")


def truncate(answer: str) -> str:
    """Drop the last whitespace-separated word (keeps at least one): the weaker teacher's systematic early stop."""
    head, sep, _ = answer.rstrip().rpartition(" ")
    return head if sep and head.strip() else answer


def make_split(tasks: list[Task], n_per_task: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    """`n_per_task` distinct examples per task (prompts not in `exclude`), as rows with `task`, `prompt_text`,
    `teacher_response` and the TRL conversational `prompt`."""
    rows = []
    for k, task in enumerate(tasks):
        rng = random.Random(f"{seed}-{task.name}")
        seen = set(exclude)
        tries = 0
        got = 0
        while got < n_per_task:
            prompt, answer = task.make_example(rng)
            tries += 1
            if prompt in seen and tries < 100 * n_per_task:
                continue
            seen.add(prompt)
            rows.append(
                {
                    "task": task.name,
                    "prompt_text": prompt,
                    "prompt": [{"role": "user", "content": prompt}],
                    "teacher_response": answer,
                }
            )
            got += 1
    return rows


def teacher_answers(task: Task, prompt: str, first: str, k: int, rng: random.Random, tries_per_answer: int = 20) -> list[str]:
    """`k` teacher answers to `prompt`: `first` (the row's answer), then distinct new draws of `task.answer`; where the
    task has fewer than `k` valid answers (or no `answer` sampler) the list is filled by repeating its distinct answers
    in turn (duplicates only as a fallback)."""
    answers = [first]
    if task.answer is not None:
        for _ in range(tries_per_answer * k):
            if len(answers) == k:
                break
            a = task.answer(prompt, rng)
            if a not in answers:
                answers.append(a)
    distinct = list(answers)
    while len(answers) < k:
        answers.append(distinct[(len(answers) - len(distinct)) % len(distinct)])
    return answers


def with_k_answers(rows: list[dict], tasks_by_name: dict[str, Task], k: int, seed: str | int = "k-answers"):
    """Copies of `rows` whose `teacher_response` is a list of `k` answers (`teacher_answers`; the row's own answer
    first), and how often duplicates were needed: `{"k", "rows", "rows_with_duplicates", "mean_distinct",
    "per_task": {task: mean distinct answers}}`."""
    out, distinct = [], {}
    for r in rows:
        rng = random.Random(f"{seed}-{r['task']}-{r['prompt_text']}")
        answers = teacher_answers(tasks_by_name[r["task"]], r["prompt_text"], r["teacher_response"], k, rng)
        out.append({**r, "teacher_response": answers})
        distinct.setdefault(r["task"], []).append(len(set(answers)))
    flat = [d for v in distinct.values() for d in v]
    stats = {"k": k, "rows": len(flat), "rows_with_duplicates": sum(d < k for d in flat),
             "mean_distinct": sum(flat) / max(len(flat), 1),
             "per_task": {t: sum(v) / len(v) for t, v in distinct.items()}}
    return out, stats


def check_held_out(train_prompts: set[str], rows: list[dict], flag: str) -> None:
    """Held-out rows must not repeat a train prompt. `make_split` admits repeats only once a task's prompt space is
    exhausted (a small plugged-in task), so this turns that case into a clear error instead of a silent leak."""
    leaked = sorted({r["task"] for r in rows if r["prompt_text"] in train_prompts})
    if leaked:
        raise ValueError(
            f"Task(s) {', '.join(leaked)} have too few distinct prompts: held-out rows repeat train prompts. Lower "
            f"--n-train or {flag}, or make the task's prompt maker produce more distinct prompts."
        )
