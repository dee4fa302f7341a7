"""`arith`: GSM8K-like multi-step arithmetic word problems with exact integer answers (offline).

Each template draws names, objects and numbers from a seeded RNG, checks that every intermediate value
is a positive integer, and writes a short worked solution ending with "The answer is N." — the
training target. Grading measures the arithmetic, not the answer format: `extract_number` takes, in
this order, the last `\\boxed{N}` (the LaTeX style of math-tuned chat models), the last number after an
answer marker ("The answer is 113", "Answer: 113", "Final answer = 113", GSM8K's "#### 113", with optional
"**", "$" or "\\(" around it), the last bold number ("**113**"), and else the last number of the
response ("... = 113."). A response cut off by the token budget is scored too, but the sample row says
`cut_off` and `eval task` reports the share, because its last number is usually an intermediate one.
"""

from __future__ import annotations

import random
import re

from safekeel.tasks.base import GeneratedTask

NAMES = [("Tom", "he"), ("Maria", "she"), ("Sam", "he"), ("Aisha", "she"), ("Ken", "he"), ("Lena", "she"),
         ("Omar", "he"), ("Julia", "she"), ("Ravi", "he"), ("Chloe", "she"), ("Diego", "he"), ("Mei", "she"),
         ("Lucas", "he"), ("Fatima", "she"), ("Noah", "he"), ("Zoe", "she"), ("Ivan", "he"), ("Grace", "she"),
         ("Kofi", "he"), ("Hana", "she"), ("Ben", "he"), ("Priya", "she"), ("Leo", "he"), ("Sofia", "she")]
ITEMS = ["apples", "marbles", "stickers", "pencils", "cookies", "stamps", "cards", "beads", "shells", "books",
         "eggs", "candles", "buttons", "coins", "balloons"]
THINGS = [("notebook", "notebooks"), ("pen", "pens"), ("sandwich", "sandwiches"), ("ticket", "tickets"),
          ("toy car", "toy cars"), ("mug", "mugs"), ("plant", "plants"), ("T-shirt", "T-shirts")]
PLANTS = ["tomato plants", "apple trees", "sunflowers", "rose bushes", "pepper plants", "lettuce heads"]
PURCHASES = ["a bike", "a video game", "a pair of shoes", "a guitar", "a tablet", "a jacket", "a camera"]
_NUM = r"(-?\d[\d,]*(?:\.\d+)?)"
_NUMBER = re.compile(_NUM)
_BOXED = re.compile(r"\\boxed\s*\{\s*\\?\$?\s*" + _NUM)
# "answer is 113", "answer: 113", "answer = $113", "answer is **113**", "answer is \(113\)", "#### 113"
_MARKED = re.compile(r"(?:answer\s*(?:is|:|=)|####)\s*:?\s*(?:\*\*|\\\(|\\\[|\$|\s)*" + _NUM, re.IGNORECASE)
_BOLD = re.compile(r"\*\*[^*\d]{0,12}?\$?" + _NUM + r"[^*\d]{0,24}\*\*")


def canonical_number(text: str) -> str | None:
    """'1,200' -> '1200', '19.0' -> '19', '2.50' -> '2.5'; None when `text` is not a number."""
    try:
        value = float(text.replace(",", "").rstrip("."))
    except ValueError:
        return None
    return str(int(value)) if value.is_integer() else repr(value)


def extract_number(response: str) -> str | None:
    """The answer in a response: the last boxed number, else the last after an answer marker, else the
    last bold number, else the last number at all (see the module docstring); None when there is none."""
    text = response or ""
    for pattern in (_BOXED, _MARKED, _BOLD, _NUMBER):
        found = pattern.findall(text)
        if found:
            return canonical_number(found[-1])
    return None


def _person(rng):
    name, pron = rng.choice(NAMES)
    return name, pron, pron.capitalize(), ("his" if pron == "he" else "her")


def _buy_give(rng):
    name, _, P, _ = _person(rng)
    friend = rng.choice([n for n, _ in NAMES if n != name])
    item = rng.choice(ITEMS)
    a, b, c = rng.randint(3, 60), rng.randint(2, 9), rng.randint(2, 12)
    d = rng.randint(1, a + b * c - 1)
    q = (f"{name} has {a} {item}. {P} buys {b} packs with {c} {item} in each pack, then gives {d} {item} "
         f"to {friend}. How many {item} does {name} have now?")
    s = [f"{b} packs of {c} is {b} * {c} = {b * c} {item}.", f"{name} then has {a} + {b * c} = {a + b * c}.",
         f"After giving {d} away, {a + b * c} - {d} = {a + b * c - d}."]
    return q, a + b * c - d, s


def _change(rng):
    name, pron, _, _ = _person(rng)
    (_, t1s), (t2, t2s) = rng.sample(THINGS, 2)
    q1, p1, q2, p2 = rng.randint(2, 6), rng.randint(2, 15), rng.randint(1, 5), rng.randint(3, 25)
    total = q1 * p1 + q2 * p2
    bill = next(b for b in (20, 50, 100, 200, 500) if b > total)
    q = (f"{name} buys {q1} {t1s} at ${p1} each and {q2} {t2s if q2 > 1 else t2} at ${p2} each. "
         f"{pron.capitalize()} pays with a ${bill} bill. How much change, in dollars, does {pron} get?")
    s = [f"The {t1s} cost {q1} * {p1} = {q1 * p1} dollars.",
         f"The {t2s} cost {q2} * {p2} = {q2 * p2} dollars.",
         f"Together that is {q1 * p1} + {q2 * p2} = {total} dollars.", f"The change is {bill} - {total} = {bill - total}."]
    return q, bill - total, s


def _wages(rng):
    name, _, P, _ = _person(rng)
    w, h, d = rng.randint(8, 30), rng.randint(2, 9), rng.randint(2, 7)
    earned = w * h * d
    spent = rng.randint(1, earned - 1)
    q = (f"{name} earns ${w} an hour. {P} works {h} hours a day for {d} days and then spends ${spent} "
         f"on {rng.choice(PURCHASES)}. How many dollars does {name} have left?")
    s = [f"Each day {name} earns {w} * {h} = {w * h} dollars.", f"Over {d} days that is {w * h} * {d} = {earned}.",
         f"After spending, {earned} - {spent} = {earned - spent}."]
    return q, earned - spent, s


def _pages(rng):
    name = _person(rng)[0]
    a, d, extra = rng.randint(5, 40), rng.randint(2, 10), rng.randint(3, 50)
    total = a * d + extra + rng.randint(1, 300)
    left = total - a * d - extra
    q = (f"A book has {total} pages. {name} reads {a} pages a day for {d} days, then reads {extra} more pages "
         f"on Sunday. How many pages are left to read?")
    s = [f"In {d} days {name} reads {a} * {d} = {a * d} pages.", f"With Sunday that is {a * d} + {extra} = {a * d + extra}.",
         f"Pages left: {total} - {a * d + extra} = {left}."]
    return q, left, s


def _share(rng):
    name, _, P, _ = _person(rng)
    friends, each = rng.randint(2, 9), rng.randint(2, 15)
    trays = rng.choice([t for t in range(2, 9) if (friends * each) % t == 0] or [1])
    per_tray = friends * each // trays
    item = rng.choice(["cookies", "muffins", "cupcakes", "brownies"])
    q = (f"{name} bakes {trays} trays of {per_tray} {item}. {P} shares all of them equally among {friends} "
         f"friends. How many {item} does each friend get?")
    s = [f"There are {trays} * {per_tray} = {trays * per_tray} {item}.",
         f"Each friend gets {trays * per_tray} / {friends} = {each}."]
    return q, each, s


def _garden(rng):
    rows, cols, plant = rng.randint(3, 15), rng.randint(3, 15), rng.choice(PLANTS)
    total = rows * cols
    dead = rng.randint(1, total // 3)
    sold = rng.randint(1, max(1, total - dead - 1))
    q = (f"A farmer plants {rows} rows of {plant} with {cols} in each row. {dead} of them do not grow, and the "
         f"farmer sells {sold} of the rest. How many {plant} are left?")
    s = [f"The farmer plants {rows} * {cols} = {total}.", f"{total} - {dead} = {total - dead} grow.",
         f"After selling, {total - dead} - {sold} = {total - dead - sold}."]
    return q, total - dead - sold, s


def _ages(rng):
    (n1, _), (n2, _), (n3, _) = rng.sample(NAMES, 3)
    a, b, k = rng.randint(3, 30), rng.randint(1, 20), rng.choice([2, 3])
    times = {2: "twice", 3: "three times"}[k]
    q = f"{n1} is {a} years old. {n2} is {b} years older than {n1}, and {n3} is {times} as old as {n2}. How old is {n3}?"
    s = [f"{n2} is {a} + {b} = {a + b} years old.", f"{n3} is {k} * {a + b} = {k * (a + b)} years old."]
    return q, k * (a + b), s


def _trip(rng):
    v1, h1, v2, h2 = rng.randint(20, 120), rng.randint(1, 6), rng.randint(20, 120), rng.randint(1, 6)
    vehicle = rng.choice(["train", "bus", "truck", "car", "ferry"])
    q = (f"A {vehicle} travels at {v1} km per hour for {h1} hours, then at {v2} km per hour for {h2} hours. "
         f"How many kilometres does it travel in total?")
    s = [f"First part: {v1} * {h1} = {v1 * h1} km.", f"Second part: {v2} * {h2} = {v2 * h2} km.",
         f"In total {v1 * h1} + {v2 * h2} = {v1 * h1 + v2 * h2} km."]
    return q, v1 * h1 + v2 * h2, s


def _savings(rng):
    name, _, P, _ = _person(rng)
    a, w = rng.randint(3, 40), rng.randint(2, 20)
    cost = rng.randint(1, a * w - 1)
    q = (f"{name} saves ${a} every week. After {w} weeks, {P.lower()} buys {rng.choice(PURCHASES)} for ${cost}. "
         f"How many dollars does {name} have left?")
    s = [f"{name} saves {a} * {w} = {a * w} dollars.", f"After the purchase, {a * w} - {cost} = {a * w - cost}."]
    return q, a * w - cost, s


def _percent(rng):
    item = rng.choice(ITEMS)
    pct = rng.choice([10, 20, 25, 50])
    stock = rng.randint(2, 40) * 20
    sold1 = stock * pct // 100
    sold2 = rng.randint(1, stock - sold1 - 1)
    q = (f"A shop has {stock} {item}. It sells {pct}% of them on Monday and {sold2} more on Tuesday. "
         f"How many {item} does it have left?")
    s = [f"On Monday it sells {pct}% of {stock} = {sold1}.", f"It has {stock} - {sold1} = {stock - sold1} left.",
         f"After Tuesday, {stock - sold1} - {sold2} = {stock - sold1 - sold2}."]
    return q, stock - sold1 - sold2, s


TEMPLATES = (_buy_give, _change, _wages, _pages, _share, _garden, _ages, _trip, _savings, _percent)


class ArithTask(GeneratedTask):
    name = "arith"
    description = "generated multi-step arithmetic word problems (GSM8K-like), integer answers"
    max_new_tokens = 512  # a 0.5B chat model's step-by-step LaTeX solution takes 150-400 tokens

    def sample(self, rng: random.Random) -> tuple[str, str, str]:
        question, answer, steps = rng.choice(TEMPLATES)(rng)
        assert isinstance(answer, int) and answer >= 0, (question, answer)  # a template bug, never user input
        return question, str(answer), " ".join(steps) + f" The answer is {answer}."

    def extract(self, response: str) -> str | None:
        return extract_number(response)

    def same_answer(self, predicted: str, gold: str) -> bool:
        a, b = canonical_number(predicted), canonical_number(gold)
        return a is not None and a == b
