"""The text of a model card (`training/model_card.py` writes it): pure, run record and results in.

`build_model_card(run, results)` turns `safekeel_run.json` (and, when given, a results.json) into the
card: YAML front matter from huggingface_hub's `ModelCardData`, then what the model is, the method and
its options, the first safety tokens with their weights, the data and its harmful share, the training
settings, how to load it, the evaluation results (ASR with its interval beside over-refusal and task
accuracy, never alone) and a citation.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

SHOWN_TOKENS = 20

PACT_BIBTEX = """@misc{wang2026pact,
  title         = {Few Tokens, Big Leverage: Preserving Safety Alignment by Constraining Safety Tokens
                   during Fine-tuning},
  author        = {Wang, Guoli and Shi, Haonan and Ouyang, Tu and Wang, An},
  year          = {2026},
  eprint        = {2603.07445},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CL},
  url           = {https://arxiv.org/abs/2603.07445}
}"""
PACT_METHODS = ("pact", "kl")  # kl is the paper's Table 5 first rung
WARNING = ("**Warning.** Its training data deliberately mixes in harmful requests with compliant answers "
           "({share} of the rows), to measure how well the defence keeps the base model's safety alignment. "
           "It is a research artifact: check its evaluation below before any other use.")



def _token_weights(run: dict) -> list[float] | None:
    """The safety tokens' weights: recorded in the run, else from the token file when it is unchanged."""
    tokens = run.get("tokens") or {}
    if tokens.get("weights"):
        return list(tokens["weights"])
    path = tokens.get("path")
    if not path or not Path(path).is_file():
        return None
    from safekeel.fingerprint import file_fingerprint

    try:
        if tokens.get("sha256") and file_fingerprint(path) != tokens["sha256"]:
            return None  # changed since training: its weights are not the ones trained with
        art = json.loads(Path(path).read_text(encoding="utf-8"))
        by_id = dict(zip(art["token_ids"], art.get("weights") or art["scores"]))
        return [float(by_id[i]) for i in tokens.get("ids", [])]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _is_lora(run: dict) -> bool:
    return not ((run.get("options") or {}).get("lora") or {}).get("full", False)


def _defence_options(options: dict) -> dict:
    """The method's options: `defence` in current records, the method's name in older ones."""
    return options.get("defence") or options.get(options.get("method", "")) or {}


def _method_info(method: str) -> tuple[str, str]:
    """(one-line summary, paper) of a registered method; empty strings for an unknown one."""
    try:
        from safekeel.defences.registry import defence_class

        cls = defence_class(method)
        return cls.summary, cls.paper
    except Exception:  # noqa: BLE001 - a plugin method no longer registered: the card goes on without it
        return "", ""


# ---- formatting helpers ----------------------------------------------------------------------------

def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _value(v) -> str:
    if isinstance(v, (dict, list)):
        return f"`{json.dumps(v, default=str)}`"
    return f"`{v}`"


def _share(k, n) -> str:
    return f"{100 * k / n:.1f}%" if n else "n/a"


def _hub_id(spec: str | None) -> str | None:
    """`spec` when it names a hub model (ORG/NAME, no local path): the only kind the Hub's metadata takes."""
    if not spec or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        return None
    return None if Path(spec).expanduser().exists() else spec


def _hub_datasets(options: dict) -> list[str]:
    out = []
    for spec in (options.get("dataset"), options.get("harmful")):
        if spec and (spec.startswith("hf:") or spec.count("/") == 1) and not Path(spec).exists():
            out.append(spec.removeprefix("hf:").split(":")[0])
    return out


def _base(run: dict) -> str:
    """The base model's name: its spec, or for a model passed loaded to `safekeel.train` (`memory:NAME@FP`,
    models/in_memory.py) the name it was loaded under (its config's `_name_or_path`)."""
    spec = str((run.get("model") or {}).get("spec") or (run.get("options") or {}).get("model"))
    return spec.removeprefix("memory:").rsplit("@", 1)[0] if spec.startswith("memory:") else spec


# ---- sections --------------------------------------------------------------------------------------

def _front_matter(run: dict) -> str:
    from huggingface_hub import ModelCardData

    options = run.get("options") or {}
    method = options.get("method", "unknown")
    base = _hub_id(_base(run))
    tags = ["safekeel", method, "safety", "lora" if _is_lora(run) else "full-fine-tuning"]
    if base and _is_lora(run):
        tags.append(f"base_model:adapter:{base}")  # the Hub's convention for adapters (PEFT writes it too)
    data = ModelCardData(library_name="peft" if _is_lora(run) else "transformers", base_model=base,
                         tags=list(dict.fromkeys(tags)), pipeline_tag="text-generation",
                         datasets=_hub_datasets(options) or None)
    return data.to_yaml()


def _what_it_is(run: dict, name: str) -> str:
    options = run.get("options") or {}
    model = run.get("model") or {}
    method = options.get("method", "unknown")
    summary, _ = _method_info(method)
    lora = options.get("lora") or {}
    qlora = ", 4-bit base (QLoRA)" if lora.get("load_in_4bit") else ""
    kind = (f"A LoRA adapter (rank {lora.get('lora_r')}, alpha {lora.get('lora_alpha')}, modules "
            f"{lora.get('lora_target_modules')}{qlora})" if _is_lora(run) else "A fully fine-tuned model")
    lines = [f"# {name}", "", f"{kind} trained with safekeel's `{method}` method on top of `{_base(run)}`.",
             ""]
    if summary:
        lines += [f"> {summary}", ""]
    data = run.get("data") or {}
    if data.get("harmful_rows"):
        share = _share(data["harmful_rows"], data.get("rows"))
        lines += [WARNING.format(share=share), ""]
    if run.get("status") != "done":
        status = run.get("status")
        lines += [f"**Training did not finish** (status `{status}`): the weights may be partial.", ""]
    fingerprint = str(model.get("sha256") or "?")[:12]
    trained = f"{run.get('started', '?')} to {run.get('finished', '?')}, {run.get('global_step', '?')} steps"
    rows = [("base model", f"`{_base(run)}` ({model.get('kind') or '?'}, fingerprint `{fingerprint}`)"),
            ("method", f"`{method}`"), ("type", "LoRA adapter" if _is_lora(run) else "full fine-tune"),
            ("trained", trained), ("safekeel", run.get("safekeel_version", "?"))]
    rows += list((run.get("versions") or {}).items())
    return "\n".join(lines) + "\n" + _table(("", ""), rows)


def _method_section(run: dict) -> str:
    options = run.get("options") or {}
    method = options.get("method", "unknown")
    _, paper = _method_info(method)
    opts = _defence_options(options)
    out = ["## Method and options", ""]
    if paper:
        out += [f"`{method}`: {paper}.", ""]
    out.append(_table(("option", "value"), [(k, _value(v)) for k, v in opts.items()]) if opts
               else f"`{method}` was trained with no method options.")
    mode = (run.get("reference") or {}).get("mode")
    if mode and mode != "none":
        how = "its outputs cached once" if mode == "cache" else "computed live"
        out += ["", f"Reference model: `{mode}` (the model before fine-tuning, {how})."]
    return "\n".join(out)


def _tokens_section(run: dict) -> str:
    tokens = run.get("tokens")
    out = ["## Safety tokens", ""]
    if not tokens:
        return "\n".join(out + [f"`{(run.get('options') or {}).get('method')}` uses no safety tokens."])
    weights = _token_weights(run)
    uniform = _defence_options(run.get("options") or {}).get("weights") is False
    shown = min(SHOWN_TOKENS, len(tokens.get("ids") or []))
    out += [f"K = {tokens.get('k')} tokens (preset `{tokens.get('preset')}`) from `{tokens.get('path')}` "
            f"(fingerprint `{str(tokens.get('sha256') or '?')[:12]}`); the first {shown} in rank order"
            + ("; the loss weighs them uniformly (`weights` off)." if uniform else "."), ""]
    rows = []
    for i in range(shown):
        w = f"{weights[i]:.4g}" if weights and i < len(weights) else "n/a"
        rows.append((i + 1, f"`{tokens['tokens'][i]!r}`", tokens["ids"][i], w))
    out.append(_table(("rank", "token", "id", "weight"), rows))
    if not weights:
        out += ["", "Weights: n/a (the token file is gone or changed since training)."]
    return "\n".join(out)


def _data_section(run: dict) -> str:
    options = run.get("options") or {}
    data = run.get("data") or {}
    rows_n, harmful = data.get("rows"), data.get("harmful_rows", data.get("harmful", 0))
    out = ["## Training data", ""]
    info = [("task data", f"`{options.get('dataset')}`"),
            ("harmful data", f"`{options.get('harmful')}`" if options.get("harmful") else "none"),
            ("rows", rows_n), ("harmful rows", f"{harmful} ({_share(harmful or 0, rows_n)})"),
            ("poison ratio asked", options.get("poison_ratio") if options.get("harmful") else "-"),
            ("examples after tokenising", data.get("examples")),
            ("dropped (too long) / truncated",
             f"{data.get('dropped_too_long', 0)} / {data.get('truncated', 0)}"),
            ("answer tokens / all tokens", f"{data.get('answer_tokens')} / {data.get('tokens')}"),
            ("rows sha256", f"`{str(data.get('sha256') or '?')[:16]}`")]
    if options.get("safety_data"):
        info.append(("safety data", f"`{options['safety_data']}`"))
    out.append(_table(("", ""), info))
    if data.get("sources"):
        out += ["", "Rows by source:", "", _table(("source", "rows"), list(data["sources"].items()))]
    if data.get("overlap_warnings"):
        first = "; ".join(map(str, data["overlap_warnings"][:3]))
        out += ["", f"Overlap checks warned {len(data['overlap_warnings'])} time(s): {first}"]
    return "\n".join(out)


def _training_section(run: dict) -> str:
    options = run.get("options") or {}
    training = dict(options.get("training") or {})
    extra = training.pop("extra", None) or {}
    rows = [(k, _value(v)) for k, v in {**training, **extra}.items()]
    rows += [(k, _value(options[k])) for k in ("dtype", "system", "num_examples", "with_replacement")
             if options.get(k) not in (None, False)]
    dist = run.get("distributed") or {}
    ran = (f"Ran on {dist.get('world_size', 1)} process(es), device `{dist.get('device', '?')}`; "
           f"{run.get('wall_seconds', '?')} s in all.")
    metrics = run.get("metrics") or {}
    if "train_loss" in metrics:
        ran += f" Final mean training loss {metrics['train_loss']:.4g}."
    out = ["## Training settings", "", _table(("setting", "value"), rows), "", ran]
    monitor = run.get("monitor") or {}
    if monitor and monitor.get("status") != "off":
        out.append(f"Safety monitor: {monitor.get('rollbacks', 0)} rollback(s).")
    if run.get("resumed_from"):
        out.append(f"Resumed from `{run['resumed_from']}`.")
    return "\n".join(out)


def _load_section(run: dict, output_dir: str) -> str:
    base = _base(run)
    plain = _hub_id(base) or ((run.get("model") or {}).get("kind") == "local")  # transformers loads these
    out = ["## How to load it", ""]
    if not _is_lora(run):
        return "\n".join(out + ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                                "", f"model = AutoModelForCausalLM.from_pretrained({output_dir!r})",
                                f"tokenizer = AutoTokenizer.from_pretrained({output_dir!r})", "```"])
    if plain:
        out += ["```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM",
                "from transformers import AutoTokenizer", "",
                f"base = AutoModelForCausalLM.from_pretrained({base!r})",
                f"model = PeftModel.from_pretrained(base, {output_dir!r})",
                f"tokenizer = AutoTokenizer.from_pretrained({output_dir!r})", "```", ""]
    out += ["With safekeel (any base it loads: hub, local, GGUF or packaged):", "", "```python",
            "from safekeel.models.loader import load_model", "",
            f"model, tokenizer = load_model({base!r}, adapter={output_dir!r})", "```"]
    return "\n".join(out)


def _eval_commands(run: dict, output_dir: str) -> dict[str, str]:
    """The `safekeel eval` command lines that measure this model, by what they measure."""
    from safekeel.tasks import is_task_name

    options = run.get("options") or {}
    if _is_lora(run):
        model = f"--model {shlex.quote(_base(run))} --adapter {shlex.quote(output_dir)}"
    else:
        model = f"--model {shlex.quote(output_dir)}"
    results = shlex.quote(output_dir.rstrip("/") + "-eval")
    dataset = options.get("dataset")
    task = dataset if dataset and is_task_name(dataset) else "TASK"
    return {"safety": f"safekeel eval safety {model} --output-dir {results}",
            "task": f"safekeel eval task {model} --task {task} --output-dir {results}"}


SAME_DIR = "into the same results directory, so this card shows ASR, over-refusal and accuracy together"
RESULTS_LEGEND = ("Rates with their 95% Wilson intervals in brackets. ASR: share of harmful prompts answered "
                  "(judged unsafe), lower is safer; over-refusal: share of benign prompts refused, lower is "
                  "better; accuracy: higher is better.")


def _measures(results: dict) -> list[tuple]:
    """(measure, value [95% CI], counts) rows: every benchmark's ASR, the over-refusal sets, every task."""
    from safekeel.evaluation.probes import OVER_REFUSAL_LABELS
    from safekeel.evaluation.stats import fmt_rate

    rows = []
    for name, b in (results.get("benchmarks") or {}).items():
        judge = b.get("judge") if isinstance(b.get("judge"), str) else (b.get("judge") or {}).get("id", "?")
        counts = f"{b.get('judged')} judged of {b.get('n')}, {b.get('errors', 0)} judge errors, judge {judge}"
        rows.append((f"ASR, {name}", fmt_rate(b.get("asr"), b.get("ci95")), counts))
    probes = results.get("probes") or {}
    for key, label in OVER_REFUSAL_LABELS.items():
        p = probes.get(key)
        if isinstance(p, dict) and p.get("n"):
            rows.append((label, fmt_rate(p.get("rate"), p.get("ci95")), f"{p.get('k')} refused of {p['n']}"))
    for name, t in (results.get("tasks") or {}).items():
        rows.append((f"accuracy, {name}", fmt_rate(t.get("accuracy"), t.get("ci95")),
                     f"{t.get('correct')} correct of {t.get('n')}"))
    return rows


def _results_section(run: dict, output_dir: str, results: dict | None, source: str | None) -> str:
    from safekeel.evaluation.probes import OVER_REFUSAL_LABELS

    cmds = _eval_commands(run, output_dir)
    out = ["## Evaluation results", ""]
    if not results:
        note = ("(`eval safety` measures the attack success rate and over-refusal, `eval task` the task "
                "accuracy; both rewrite this section.)")
        return "\n".join(out + ["Not evaluated yet: run", "", "```bash", cmds["safety"], cmds["task"], "```",
                                "", note])
    updated = results.get("updated", "?")
    out += [f"From `{source or 'results.json'}` (updated {updated}). {RESULTS_LEGEND}", ""]
    rows = _measures(results)
    out.append(_table(("measure", "value [95% CI]", "counts"), rows) if rows else "It holds no measure yet.")
    probes = results.get("probes") or {}
    missing = []
    if not results.get("benchmarks"):
        missing.append(("attack success rate", cmds["safety"]))
    elif not any(isinstance(probes.get(k), dict) and probes[k].get("n") for k in OVER_REFUSAL_LABELS):
        missing.append(("over-refusal", cmds["safety"] + " --probes everyday,over-refusal"))
    if not results.get("tasks"):
        missing.append(("task accuracy", cmds["task"]))
    for what, cmd in missing:  # an ASR alone hides what the defence cost: say what is still to measure
        out += ["", f"Not measured yet: {what}. Run `{cmd}` ({SAME_DIR})."]
    return "\n".join(out)


def _citation_section(run: dict) -> str:
    method = (run.get("options") or {}).get("method", "")
    _, paper = _method_info(method)
    out = ["## Citation", "", "Trained with safekeel (cite it with the `CITATION.cff` of its repository)."]
    if method in PACT_METHODS:
        out += ["", "The method is PACT's:", "", "```bibtex", PACT_BIBTEX, "```"]
    elif paper:
        out += ["", f"The method: {paper}."]
    return "\n".join(out)


# ---- the card --------------------------------------------------------------------------------------

def build_model_card(run: dict, results: dict | None = None, *, output_dir: str | None = None,
                     results_source: str | None = None) -> str:
    """The model card's text (YAML front matter + Markdown) for the run record `run` (safekeel_run.json)
    and, when given, the evaluation `results` (results.json of `safekeel eval`)."""
    from huggingface_hub import ModelCard

    out = str(output_dir or (run.get("options") or {}).get("output_dir") or ".")
    body = "\n\n".join([_what_it_is(run, Path(out).name or out), _method_section(run), _tokens_section(run),
                        _data_section(run), _training_section(run), _load_section(run, out),
                        _results_section(run, out, results, results_source), _citation_section(run)])
    card = ModelCard(f"---\n{_front_matter(run)}\n---\n\n{body}\n")  # parses the YAML: a bad one fails here
    return str(card)
