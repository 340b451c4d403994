"""Seeded exercises in the style of OSTEP's homework simulators.

``ex = SomeExercise(seed=7)`` shows the same problem to everyone with seed 7;
``ex.check(answer)`` says right, or what is wrong without giving it away;
``ex.answer()`` gives the worked solution. Answers are computed by the models,
never stored.
"""

from __future__ import annotations

import html
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Feedback:
    """The result of ``check``: ``ok`` and a message for the reader."""

    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return ("✔ " if self.ok else "✘ ") + self.message


class Exercise:
    """Base: subclasses set ``title`` and build ``question`` from ``self.rng``."""

    title = "exercise"

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.rng = random.Random(f"{type(self).__name__}:{seed}")
        self.question = self.build()

    def build(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, answer: object) -> Feedback:  # pragma: no cover - abstract
        raise NotImplementedError

    def answer(self) -> Solution:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{self.title} (seed {self.seed})\n{self.question}"

    def _repr_html_(self) -> str:
        return (f"<div><b>{html.escape(self.title)}</b> <i>(seed {self.seed})</i>"
                f"<pre>{html.escape(self.question)}</pre></div>")


@dataclass(frozen=True)
class Solution:
    """A worked answer: the value and the steps that lead to it."""

    value: object
    steps: str

    def __repr__(self) -> str:
        v = self.value
        shown = f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool) and v > 0xFF else repr(v)
        return f"{self.steps}\nanswer: {shown}"
