"""`topic`: AG-News-like templated news items in four classes, World, Sports, Business, Sci/Tech (offline).

Each item is a headline plus a one-sentence lead drawn from its class's templates and vocabularies. The
prompt uses the PACT authors' AG News instruction and the target is the class name, as in their data.
Grading takes the first class word in the response; like the authors' scorer, "science",
"technology" and "tech" count as Sci/Tech.
"""

from __future__ import annotations

import random
from typing import ClassVar

from safekeel.tasks.base import GeneratedTask, LabelTask

INSTRUCTION = ("Categorize the news article given in the input into one of the 4 categories:\n\n"
               "World\nSports\nBusiness\nSci/Tech\n")
COUNTRIES = ["France", "Brazil", "India", "Kenya", "Japan", "Canada", "Egypt", "Chile", "Norway", "Vietnam",
             "Poland", "Ghana", "Peru", "Turkey", "Indonesia", "Mexico", "Sweden", "Nigeria", "Spain", "Thailand"]
CITIES = ["GENEVA", "NAIROBI", "LIMA", "HANOI", "CAIRO", "OSLO", "WARSAW", "ACCRA", "MADRID", "BANGKOK"]
ISSUES = ["border security", "water rights", "refugee aid", "a ceasefire", "trade sanctions", "election reform",
          "disaster relief", "fishing rights", "a peace plan", "nuclear inspections"]
TEAMS = ["Rovers", "United", "Falcons", "Tigers", "Hawks", "Rangers", "Wolves", "Sharks", "Lions", "Eagles",
         "Comets", "Pirates"]
SPORTS = [("the cup", "goal"), ("the league", "touchdown"), ("the playoffs", "basket"), ("the series", "run"),
          ("the tournament", "goal")]
ATHLETES = ["Ana Ruiz", "Tomas Berg", "Kwame Mensah", "Yuki Sato", "Lars Holm", "Maya Patel", "Ivan Petrov"]
EVENTS = ["the 200-metre final", "the grand slam semi-final", "the marathon", "the time trial", "the world title bout"]
COMPANIES = ["Norwell Bank", "Apex Motors", "Grainfield Foods", "Bluestone Energy", "Harbor Airlines",
             "Meridian Retail", "Crestline Steel", "Pioneer Insurance", "Summit Telecom", "Oakridge Pharma"]
METRICS = ["profit", "revenue", "sales", "earnings"]
TECHCOS = ["Quantix", "NovaSoft", "Helio Labs", "Cirrus Systems", "Bytewave", "Orbital Robotics", "Pixelcore"]
GADGETS = ["smartphone", "laptop", "search engine", "chip", "operating system", "browser", "satellite", "robot"]
FINDINGS = ["a new exoplanet", "a gene linked to ageing", "water ice on an asteroid", "a faster battery material",
            "a new species of frog", "a flaw in a widely used encryption library"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]


def _world(r: random.Random) -> str:
    a, b = r.sample(COUNTRIES, 2)
    heads = [f"{a} and {b} hold talks on {r.choice(ISSUES)}",
             f"Prime minister of {a} visits {b} amid dispute over {r.choice(ISSUES)}",
             f"Protests spread in {a} after vote on {r.choice(ISSUES)}",
             f"UN envoy urges {a} to accept {r.choice(ISSUES)}"]
    leads = [f"{r.choice(CITIES)} - Officials from {a} said on {r.choice(DAYS)} that negotiations with {b} would resume next week.",
             f"{r.choice(CITIES)} - Thousands gathered outside parliament as ministers from {a} met their counterparts from {b}.",
             f"{r.choice(CITIES)} - Diplomats said the agreement between {a} and {b} could be signed within {r.randint(2, 9)} days."]
    return f"{r.choice(heads)} {r.choice(leads)}"


def _sports(r: random.Random) -> str:
    t1, t2 = r.sample(TEAMS, 2)
    comp, score = r.choice(SPORTS)
    s1, s2 = r.randint(1, 6), r.randint(0, 5)
    heads = [f"{t1} beat {t2} {max(s1, s2 + 1)}-{min(s1, s2)} to stay top of {comp}",
             f"{r.choice(ATHLETES)} wins {r.choice(EVENTS)}",
             f"{t1} coach fired after loss to {t2}",
             f"Late {score} sends {t1} past {t2} in {comp}"]
    leads = [f"The {t1} scored twice in the final {r.randint(3, 15)} minutes in front of a home crowd of {r.randint(8, 70)},000.",
             f"{r.choice(ATHLETES)} set a season best and said the team would now focus on the next round.",
             f"Fans of the {t2} booed as their side slipped to a {r.choice(['third', 'fourth', 'fifth'])} straight defeat."]
    return f"{r.choice(heads)} {r.choice(leads)}"


def _business(r: random.Random) -> str:
    c1, c2 = r.sample(COMPANIES, 2)
    pct, metric = r.randint(2, 19), r.choice(METRICS)
    heads = [f"{c1} shares {r.choice(['rise', 'fall', 'jump', 'slide'])} {pct} percent after quarterly {metric} report",
             f"{c1} to buy {c2} for ${r.randint(2, 40)} billion",
             f"{c1} cuts {r.randint(2, 12)},000 jobs as {metric} slump",
             f"Investors cheer as {c1} raises dividend by {pct} percent"]
    leads = [f"NEW YORK (Reuters) - {c1} said on {r.choice(DAYS)} that quarterly {metric} came in above analysts' forecasts.",
             f"The deal, which still needs approval from regulators, would make {c1} the largest player in its market.",
             f"Shares of {c2} also moved in early trading as investors weighed interest-rate expectations."]
    return f"{r.choice(heads)} {r.choice(leads)}"


def _scitech(r: random.Random) -> str:
    co, gadget = r.choice(TECHCOS), r.choice(GADGETS)
    heads = [f"{co} unveils new {gadget} with longer battery life",
             f"Researchers discover {r.choice(FINDINGS)} in {r.randint(2, 15)}-year study",
             f"{co} patches security hole in its {gadget} software",
             f"Space agency launches ${r.randint(2, 9)}00 million probe to study {r.choice(['Mars', 'Jupiter', 'the Sun', 'a comet'])}"]
    leads = [f"The {gadget} will go on sale in {r.randint(2, 12)} weeks, the company said in a statement.",
             f"Scientists published the results in a journal on {r.choice(DAYS)} after {r.randint(2, 9)} years of work.",
             f"Engineers at {co} said the update would reach {r.randint(2, 90)} million users automatically over the internet."]
    return f"{r.choice(heads)} {r.choice(leads)}"


GENERATORS = {"World": _world, "Sports": _sports, "Business": _business, "Sci/Tech": _scitech}


class TopicTask(GeneratedTask, LabelTask):
    name = "topic"
    description = "generated news items (AG News-like), labels World / Sports / Business / Sci/Tech"
    labels: ClassVar[dict[str, tuple[str, ...]]] = {
        "World": (r"\bworld\b",),
        "Sports": (r"\bsports?\b",),
        "Business": (r"\bbusiness\b",),
        "Sci/Tech": (r"\bsci(?:ence)?\s*/\s*tech(?:nology)?\b", r"\bscience\b", r"\btech(?:nology)?\b", r"\bsci\b"),
    }

    def sample(self, rng: random.Random) -> tuple[str, str, str]:
        label = rng.choice(list(GENERATORS))
        return f"{INSTRUCTION} {GENERATORS[label](rng)}", label, label
