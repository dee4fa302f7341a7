"""`sentiment`: SST-2-like templated movie-review sentences, labelled positive or negative (offline).

Sentences mix an opener, a subject, an intensifier and a polar adjective; some negate the adjective
("was not dull" is positive) and some contrast two clauses ("…, but …"), where the clause after "but"
carries the label, as in SST-2. The prompt uses the PACT authors' SST-2 instruction, and the training
target is the bare label, as in their data.
"""

from __future__ import annotations

import random
from typing import ClassVar

from safekeel.tasks.base import GeneratedTask, LabelTask

INSTRUCTION = "Analyze the sentiment of the input, and respond only positive or negative"
POSITIVE = ["wonderful", "moving", "charming", "brilliant", "gripping", "delightful", "funny", "beautiful",
            "heartfelt", "clever", "stunning", "engaging", "memorable", "thoughtful", "witty", "superb",
            "refreshing", "touching", "inventive", "satisfying", "tender", "vivid", "elegant", "joyful"]
NEGATIVE = ["dull", "tedious", "clumsy", "boring", "predictable", "shallow", "bland", "lifeless", "messy",
            "forgettable", "awkward", "tiresome", "pointless", "sloppy", "dreary", "hollow", "stale",
            "incoherent", "grating", "lazy", "flat", "overlong", "painful", "muddled"]
SUBJECTS = [("the film", "is"), ("the plot", "was"), ("the acting", "was"), ("the soundtrack", "is"),
            ("the script", "was"), ("the ending", "felt"), ("the cast", "was"), ("this movie", "is"),
            ("the director's latest work", "is"), ("the cinematography", "looked"), ("the dialogue", "sounded"),
            ("the story", "felt"), ("the pacing", "was"), ("the lead performance", "was"),
            ("the whole thing", "felt"), ("the sequel", "is"), ("the animation", "looked"), ("the humour", "was")]
INTENSIFIERS = ["", "really ", "truly ", "utterly ", "quite ", "remarkably ", "surprisingly ", "rather "]
OPENERS = ["", "Honestly, ", "In the end, ", "From start to finish, ", "Frankly, ", "I have to say ",
           "To my mind, ", "Once again, "]
CLOSERS = [".", " overall.", " for most of its running time.", ", as the reviews suggested.", " in my opinion.",
           " from the first scene.", " again and again."]


def _clause(rng: random.Random) -> tuple[str, bool]:
    subject, verb = rng.choice(SUBJECTS)
    positive = rng.random() < 0.5
    adjective = rng.choice(POSITIVE if positive else NEGATIVE)
    if rng.random() < 0.2:  # negation flips the polarity
        return f"{subject} {verb} not {adjective}", not positive
    return f"{subject} {verb} {rng.choice(INTENSIFIERS)}{adjective}", positive


class SentimentTask(GeneratedTask, LabelTask):
    name = "sentiment"
    description = "generated movie-review sentences (SST-2-like), labels positive / negative"
    labels: ClassVar[dict[str, tuple[str, ...]]] = {"positive": (r"\bpositive\b",), "negative": (r"\bnegative\b",)}

    def sample(self, rng: random.Random) -> tuple[str, str, str]:
        text, positive = _clause(rng)
        if rng.random() < 0.25:  # contrast: the clause after "but" decides, as SST-2 annotators tend to
            first, first_positive = _clause(rng)
            while first_positive == positive:  # the clauses disagree, or "but" would be odd
                first, first_positive = _clause(rng)
            text = f"{first}, but {text}"
        opener = rng.choice(OPENERS)
        sentence = opener + (text if opener else text[0].upper() + text[1:]) + rng.choice(CLOSERS)
        label = "positive" if positive else "negative"
        return f"{INSTRUCTION} {sentence}", label, label
