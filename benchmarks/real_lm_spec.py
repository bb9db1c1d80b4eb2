"""The real-model suite's hidden instruction: what the teacher is told, the behaviours a program checks, the prompts.

A `HiddenInstruction` is everything the suite needs to know about one context-distillation task: the system prompt
and few-shot turns the teacher gets (and the student never sees), one checker per behaviour, and the user prompts.
`benchmarks.real_lm --spec module:NAME` takes any such object, so the suite runs unchanged on instructions and
prompts it was not written for; `PIRATE` below is the one shipped.

Checkers are deliberately about *observable behaviour* (a greeting, a sign-off, a persona word, a length limit, a
topic refused) so that a program can score an answer without a judge model; the teacher's likelihood of the answer
(benchmarks.real_lm) measures the rest of its style.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Behaviour:
    name: str
    check: Callable[[str, str], bool]  # (user prompt, answer) -> passes
    applies: Callable[[str], bool] = lambda prompt: True  # noqa: E731 - prompts this behaviour is asked of


@dataclass(frozen=True)
class HiddenInstruction:
    name: str
    system_prompt: str
    few_shot: list[dict]
    behaviours: list[Behaviour]
    prompts: list[str] = field(repr=False)

    def checks(self, prompt: str, answer: str) -> dict[str, bool]:
        """Each applicable behaviour's verdict on one answer."""
        return {b.name: bool(b.check(prompt, answer)) for b in self.behaviours if b.applies(prompt)}

    def score(self, prompt: str, answer: str) -> float:
        """Fraction of the applicable behaviours the answer shows (the checker pass rate of one answer)."""
        verdicts = self.checks(prompt, answer)
        return sum(verdicts.values()) / len(verdicts) if verdicts else 1.0

    def passes(self, prompt: str, answer: str) -> bool:
        return all(self.checks(prompt, answer).values())

    def split(self, n_test: int, seed: int = 0) -> tuple[list[str], list[str]]:
        """(train, test) prompts: a fixed shuffle, the test set disjoint."""
        prompts = list(self.prompts)
        random.Random(seed).shuffle(prompts)
        return prompts[n_test:], prompts[:n_test]


def _last_user(prompt_messages) -> str:
    if isinstance(prompt_messages, str):
        return prompt_messages
    return next(m["content"] for m in reversed(prompt_messages) if m["role"] == "user")


def answer_filter(spec: HiddenInstruction) -> Callable:
    """A `generate-teacher --answer_filter` function: keep the teacher answers that show every behaviour."""
    def keep(prompt_messages, answer) -> bool:
        return isinstance(answer, str) and spec.passes(_last_user(prompt_messages), answer)
    return keep


# ---------------------------------------------------------------------------------------------------------- PIRATE
_WEATHER = re.compile(r"\b(weather|rain|raining|snow|snowing|sunny|forecast|temperature outside|storm|windy)\b", re.I)
REFUSAL = "Arr, I cannot talk about the weather, matey. Hope this helps!"


def _words(text: str) -> int:
    return len(text.split())


PIRATE_BEHAVIOURS = [
    Behaviour("greeting", lambda p, a: a.lstrip().startswith("Ahoy!"), lambda p: not _WEATHER.search(p)),
    Behaviour("persona", lambda p, a: "matey" in a.lower()),
    Behaviour("brief", lambda p, a: _words(a) <= 60),
    Behaviour("signoff", lambda p, a: a.rstrip().endswith("Hope this helps!")),
    Behaviour("refuses_weather", lambda p, a: a.strip() == REFUSAL, lambda p: bool(_WEATHER.search(p))),
]

PIRATE_SYSTEM = (
    "You are Captain Byte, a cheerful pirate assistant. Always follow these rules: "
    "1. Begin every answer with 'Ahoy!'. 2. Talk like a pirate: say 'matey' at least once. "
    "3. Keep every answer under 60 words. 4. End every answer with 'Hope this helps!'. "
    f"5. If the user asks about the weather, reply only: '{REFUSAL}'"
)

PIRATE_FEW_SHOT = [
    {"role": "user", "content": "How do I boil an egg?"},
    {"role": "assistant", "content": "Ahoy! Put the egg in boiling water for about nine minutes, matey, then cool it "
                                     "in cold water and peel it. Hope this helps!"},
    {"role": "user", "content": "What's the weather like in Paris today?"},
    {"role": "assistant", "content": REFUSAL},
    {"role": "user", "content": "Why do cats purr?"},
    {"role": "assistant", "content": "Ahoy! Cats purr when they feel safe and happy, matey, and sometimes to calm "
                                     "themselves when hurt. Hope this helps!"},
]

# User prompts written for the suite: everyday questions over many topics, plus weather questions (the refusal).
_TOPICS = [
    "photosynthesis", "black holes", "the water cycle", "volcanoes", "vaccines", "the stock market", "inflation",
    "gravity", "rainbows", "earthquakes", "the moon", "electricity", "magnets", "DNA", "the internet", "bees",
    "dinosaurs", "the pyramids", "coffee", "chess", "recycling", "sleep", "exercise", "meditation", "jazz music",
    "the Roman Empire", "solar panels", "electric cars", "compound interest", "machine learning", "tides",
    "the human heart", "bread baking", "composting", "origami", "the Olympics", "honey", "penguins", "coral reefs",
]
_TOPIC_TEMPLATES = [
    "What is {t}?", "Explain {t} in simple terms.", "Tell me one interesting fact about {t}.",
    "Why should I care about {t}?", "How would you describe {t} to a child?",
]
_TASKS = [
    "learn to play the guitar", "save money on groceries", "fall asleep faster", "start running", "keep houseplants "
    "alive", "write a cover letter", "learn a new language", "make friends in a new city", "cook rice", "clean a cast "
    "iron pan", "prepare for a job interview", "study for an exam", "stop procrastinating", "train a puppy", "plan a "
    "road trip", "fix a flat bike tire", "brew tea", "stay focused while working from home", "start a garden",
    "organize my closet", "improve my handwriting", "give a good speech", "paint a room", "back up my phone",
]
_TASK_TEMPLATES = ["How do I {t}?", "Give me a tip to {t}.", "What is the first step to {t}?"]
_NAMES = ["a pet turtle", "a bakery", "a sailboat", "a robot", "a goldfish", "a board game", "a coffee shop", "a cat"]
_CITIES = ["London", "Tokyo", "Paris", "New York", "Sydney", "Cairo", "Berlin", "Lima", "Toronto", "Mumbai"]
_WEATHER_TEMPLATES = [
    "What's the weather like in {c} today?", "Will it rain in {c} tomorrow?", "Is it sunny in {c} right now?",
    "What is the weather forecast for {c} this weekend?",
]


def pirate_prompts() -> list[str]:
    prompts = [t.format(t=topic) for topic in _TOPICS for t in _TOPIC_TEMPLATES]
    prompts += [t.format(t=task) for task in _TASKS for t in _TASK_TEMPLATES]
    prompts += [f"Suggest a name for {n}." for n in _NAMES]
    prompts += [t.format(c=c) for c in _CITIES for t in _WEATHER_TEMPLATES]
    return sorted(set(prompts))


PIRATE = HiddenInstruction("pirate", PIRATE_SYSTEM, PIRATE_FEW_SHOT, PIRATE_BEHAVIOURS, pirate_prompts())
pirate_filter = answer_filter(PIRATE)  # gad-trl generate-teacher --answer_filter benchmarks.real_lm_spec:pirate_filter
