"""Synthetic text domains for the forgetting benchmark (``bench/forgetting.py``).

Three generators of JSONL ``{"text": ...}`` lines, each a pure function of (seed, index),
so the same seed writes byte-identical drops on every machine. They are far apart on
purpose, down to the bytes they use, so that training on one shifts a byte-level model
away from the others (a strong distribution shift):

* ``arithmetic``: sums, differences and products of numbers up to 12 with their results,
  e.g. ``"7*9=63 20-9=11 6+9=15 ..."`` (digits, ``+-*=`` and spaces only).
* ``code``: small Python functions assembled from templates and a list of identifiers
  (``def``, ``if``/``for``/``return``, indentation, brackets, snake_case names).
* ``prose``: English-like sentences from a word list and a small grammar (determiner,
  adjective, noun, verb, adverb, prepositional phrase), capitalised, full stops.

Nothing here imports torch or traind.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_NOUNS = _words(
    "farmer river teacher window garden soldier village mountain child painter letter "
    "market forest doctor bridge kitchen sailor lantern meadow student castle "
    "merchant orchard harbor"
)
_ADJECTIVES = _words(
    "old quiet bright narrow gentle heavy golden distant proud tired small silver "
    "ancient busy lonely careful warm green"
)
_VERBS = _words(
    "watched followed carried painted visited remembered crossed praised found opened "
    "described guarded cleaned admired left"
)
_ADVERBS = _words("slowly quietly often carefully gladly rarely suddenly again")
_PREPOSITIONS = _words("near behind beyond under across beside towards inside")
_DETERMINERS = _words("the a every that one this")

_VERBS_CODE = _words("get set load save find parse build check count merge")
_OBJECTS = _words("user item order record token config node entry path row")
_FIELDS = _words("name size value index total key parent items data limit")
_ARGS = _words("key value items limit default other start count")


def _phrase(rng: random.Random) -> str:
    words = [rng.choice(_DETERMINERS)]
    if rng.random() < 0.6:
        words.append(rng.choice(_ADJECTIVES))
    words.append(rng.choice(_NOUNS))
    return " ".join(words)


def _sentence(rng: random.Random) -> str:
    parts = [_phrase(rng), rng.choice(_VERBS), _phrase(rng)]
    if rng.random() < 0.4:
        parts.append(rng.choice(_ADVERBS))
    if rng.random() < 0.5:
        parts += [rng.choice(_PREPOSITIONS), _phrase(rng)]
    text = " ".join(parts)
    return text[0].upper() + text[1:] + "."


def prose(rng: random.Random) -> str:
    """A short paragraph of three to five sentences."""
    return " ".join(_sentence(rng) for _ in range(rng.randint(3, 5)))


def _equation(rng: random.Random) -> str:
    a, b = rng.randint(1, 12), rng.randint(1, 12)
    op = rng.choice("+-*")
    if op == "-":
        a, b = a + b, b
    return f"{a}{op}{b}={a + b if op == '+' else a - b if op == '-' else a * b}"


def arithmetic(rng: random.Random) -> str:
    """Eight to twelve equations with their results, space-separated."""
    return " ".join(_equation(rng) for _ in range(rng.randint(8, 12)))


def _statement(rng: random.Random, obj: str, arg: str) -> str:
    field = rng.choice(_FIELDS)
    kind = rng.randrange(4)
    if kind == 0:
        return f"    if {arg} in self.{field}s:\n        return self.{field}s[{arg}]"
    if kind == 1:
        return f"    for {obj} in self.{field}s:\n        {obj}.{field} += {arg}"
    if kind == 2:
        return f"    self.{field} = {arg}"
    return f"    {field} = len(self.{obj}s) - {rng.randint(1, 9)}"


def code(rng: random.Random) -> str:
    """One small Python method of two or three statements and a return."""
    verb, obj, arg = rng.choice(_VERBS_CODE), rng.choice(_OBJECTS), rng.choice(_ARGS)
    body = [_statement(rng, obj, arg) for _ in range(rng.randint(2, 3))]
    ret = f"    return self.{rng.choice(_FIELDS)}"
    return "\n".join([f"def {verb}_{obj}(self, {arg}):", *body, ret])


DOMAINS: dict[str, Callable[[random.Random], str]] = {
    "arithmetic": arithmetic,
    "code": code,
    "prose": prose,
}
"""Name -> generator of one example's text from a seeded ``random.Random``."""


def example(domain: str, *, seed: int, index: int) -> str:
    """The ``index``-th example of ``domain`` for ``seed`` (independent of the others)."""
    rng = random.Random(f"{seed}:{domain}:{index}")
    return DOMAINS[domain](rng)


def write_drop(path: Path, domain: str, *, seed: int, start: int, size: int) -> int:
    """Write examples of ``domain`` from index ``start`` on as a JSONL text drop, until its
    texts hold at least ``size`` characters; returns the index after the last one written."""
    written, index = 0, start
    with path.open("w") as fh:
        while written < size:
            text = example(domain, seed=seed, index=index)
            fh.write(json.dumps({"text": text}) + "\n")
            written += len(text) + 1
            index += 1
    return index


__all__ = ["DOMAINS", "arithmetic", "code", "example", "prose", "write_drop"]
