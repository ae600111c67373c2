"""Write the example drops in examples/drops/: short arithmetic and reasoning tasks.

Run: ``python examples/make_drops.py`` (stdlib only; ``--out DIR`` to write elsewhere).
The output is deterministic (fixed seeds), so re-running it reproduces the committed
files byte for byte. One file per drop format:

* ``day1-arithmetic-text.jsonl``: ``{"text": ...}``
* ``day2-arithmetic-qa.jsonl``: ``{"prompt": ..., "completion": ...}``
* ``day3-arithmetic-chat.jsonl``: ``{"messages": [{"role": ..., "content": ...}, ...]}``
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

SEED = 20240601
LINES_PER_FILE = 250
SYSTEM_PROMPT = "You are a careful math tutor. Answer with one line of working."

NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivo", "Jade"]
THINGS = ["apples", "pens", "marbles", "stickers", "books", "cookies", "shells", "coins"]
LETTERS = "ABCDEFGHKMNPQRSTUVWXYZ"

Task = tuple[str, str]


def _two_vars(rng: random.Random) -> tuple[str, str]:
    first, second = rng.sample(LETTERS, 2)
    return first, second


def add(rng: random.Random) -> Task:
    x, y = _two_vars(rng)
    a, b = rng.randint(1, 50), rng.randint(1, 50)
    return f"If {x}={a} and {y}={b}, what is {x}+{y}?", f"{x}+{y} = {a}+{b} = {a + b}."


def subtract(rng: random.Random) -> Task:
    x, y = _two_vars(rng)
    a, b = rng.randint(1, 60), rng.randint(1, 60)
    return f"If {x}={a} and {y}={b}, what is {x}-{y}?", f"{x}-{y} = {a}-{b} = {a - b}."


def multiply(rng: random.Random) -> Task:
    x, y = _two_vars(rng)
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return f"If {x}={a} and {y}={b}, what is {x}*{y}?", f"{x}*{y} = {a}*{b} = {a * b}."


def two_step(rng: random.Random) -> Task:
    x = rng.choice(LETTERS)
    a, k, c = rng.randint(1, 10), rng.randint(2, 5), rng.randint(1, 9)
    return (
        f"If {x}={a}, what is {k}*{x}+{c}?",
        f"{k}*{x}+{c} = {k}*{a}+{c} = {k * a}+{c} = {k * a + c}.",
    )


def compare(rng: random.Random) -> Task:
    a, b = rng.sample(range(1, 100), 2)
    if rng.random() < 0.5:
        big = max(a, b)
        return f"Which is larger, {a} or {b}?", f"{big} > {min(a, b)}, so {big} is larger."
    sign, answer = ("<", "yes") if a < b else (">", "no")
    return f"Is {a} less than {b}?", f"{a} {sign} {b}, so {answer}."


def word_problem(rng: random.Random) -> Task:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randint(2, 20), rng.randint(1, 15)
        return (
            f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?",
            f"{a} + {b} = {a + b}, so {name} has {a + b} {thing}.",
        )
    if kind == 1:
        a = rng.randint(5, 30)
        b = rng.randint(1, a - 1)
        return (
            f"{name} had {a} {thing} and gave away {b}. How many are left?",
            f"{a} - {b} = {a - b}, so {a - b} {thing} are left.",
        )
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return (
        f"A box holds {a} {thing}. How many {thing} are in {b} boxes?",
        f"{b} * {a} = {a * b}, so there are {a * b} {thing}.",
    )


TASKS: list[Callable[[random.Random], Task]] = [
    add,
    subtract,
    multiply,
    two_step,
    compare,
    word_problem,
]


def text_record(question: str, answer: str, rng: random.Random) -> dict[str, object]:
    return {"text": f"Q: {question}\nA: {answer}"}


def qa_record(question: str, answer: str, rng: random.Random) -> dict[str, object]:
    # The completion starts with a space: it continues "A:" as one line of text.
    return {"prompt": f"Q: {question}\nA:", "completion": f" {answer}"}


def chat_record(question: str, answer: str, rng: random.Random) -> dict[str, object]:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    if rng.random() < 0.3:
        messages.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
    return {"messages": messages}


DROPS: dict[str, Callable[[str, str, random.Random], dict[str, object]]] = {
    "day1-arithmetic-text.jsonl": text_record,
    "day2-arithmetic-qa.jsonl": qa_record,
    "day3-arithmetic-chat.jsonl": chat_record,
}


def write_drops(out: Path, *, lines: int = LINES_PER_FILE) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (name, record) in enumerate(DROPS.items()):
        # One generator per file, so changing one file's recipe leaves the others unchanged.
        rng = random.Random(SEED + index)
        rows = []
        for _ in range(lines):
            question, answer = rng.choice(TASKS)(rng)
            rows.append(json.dumps(record(question, answer, rng), ensure_ascii=False))
        path = out / name
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "drops",
        help="folder to write into (default: examples/drops next to this script)",
    )
    parser.add_argument("--lines", type=int, default=LINES_PER_FILE, help="lines per file")
    args = parser.parse_args(argv)
    for path in write_drops(args.out, lines=args.lines):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
