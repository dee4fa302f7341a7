"""The worked example of docs/defences.md ("Adding a defence"): a toy defence, registered and trained two
steps. The code between the markers is the documentation's, character for character (checked below)."""

import json

# --- example: begin ---
from dataclasses import dataclass, field
from pathlib import Path

import torch

from safekeel.defences import Defence, DefenceOptions, LossTerms, register_defence


@dataclass
class AnchorOptions(DefenceOptions):
    anchor_weight: float = field(default=0.1, metadata={"help": "weight of the pull towards the start weights"})
    refusal_weight: float = field(default=2.0, metadata={"help": "CE weight on harmful rows' first 4 answer tokens"})


class Anchor(Defence):
    """Up-weights the opening of refusals and pulls the trainable weights back towards where they started."""

    name = "anchor"
    summary = "toy: heavier CE on refusal openings + an L2 pull towards the initial trainable weights"
    paper = "- (documentation example)"
    options_class = AnchorOptions

    def configure_model(self, model):  # after LoRA wrapping: remember the trainable weights
        self.start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return model

    def loss(self, step):  # per micro-batch: weights on the per-token CE [B, A], and a log stat
        weights = torch.ones_like(step.ce)
        opening = torch.arange(step.ce.shape[1], device=step.ce.device) < 4  # [A]
        harmful = step.batch["harmful"].bool()[:, None]  # [B, 1]
        weights = torch.where(opening & harmful, self.options.refusal_weight, weights)
        count = step.mask.sum(1).float()
        return LossTerms(token_weights=weights, stats={"weight_mean": ((weights * step.mask).sum(1), count)})

    def step_loss(self, model, state):  # once per optimizer step
        moved = [(p - self.start[n]).pow(2).sum() for n, p in model.named_parameters() if n in self.start]
        return self.options.anchor_weight * torch.stack(moved).sum()

# --- example: end ---


def test_the_example_trains_two_steps_and_logs_its_terms(tmp_path):
    from safekeel.cli.main import main
    from safekeel.defences import unregister_defence
    from safekeel.testing import tiny_setup

    setup = tiny_setup(tmp_path / "setup")
    register_defence("anchor", Anchor)  # in a plugin or your script, at import time
    try:
        code = main(["train", "--method", "anchor", "--anchor-weight", "0.5", "--model", setup["model"],
                     "--dataset", setup["data"], "--output-dir", str(tmp_path / "run"), "--max-steps", "2",
                     "--logging-steps", "1", "--learning-rate", "1e-2", "--overlap-check", "none", "--disable-tqdm"])
    finally:
        unregister_defence("anchor")
    assert code == 0
    logs = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in logs] == [1, 2]
    assert logs[0]["step_term"] == 0.0 < logs[1]["step_term"]  # the weights moved after step 1
    assert all(r["weight_mean"] > 1.0 for r in logs)  # harmful rows' openings weigh 2
    options = json.loads((tmp_path / "run" / "safekeel_run.json").read_text())["options"]
    assert options["method"] == "anchor" and options["defence"] == {"anchor_weight": 0.5, "refusal_weight": 2.0}


def test_the_documentation_shows_this_code():
    source = Path(__file__).read_text()
    example = source.split("# --- example: begin ---\n")[1].split("# --- example: end ---")[0]
    docs = (Path(__file__).parents[1] / "docs" / "defences.md").read_text()
    assert example.strip() in docs, "docs/defences.md's example differs from tests/test_defence_example.py"
