"""`eval safety`: generate answers to harmful prompt sets, judge them, write samples and results.

Phases, so that a judge model and the evaluated model never need to be in memory together:
1. load every prompt set (a bad set fails before any model work), then take the output directory's
   lock (`safekeel.locking.RunLock`: a second evaluation into the same directory fails at once instead
   of interleaving its rows with the first's);
2. generate missing answers with the evaluated model (resumable, saved after every batch), then the
   probe answers; free the model; then the base model's probe answers (`--base-model`);
3. judge, one judge at a time (a judge model loads on its first verdict and is closed before the next
   judge's loads): every answer not yet judged by that judge, and every verdict in `error` again (saved
   after every chunk);
4. summarise into `results.json` (`benchmarks.<name>`, `probes`) and return it. Each benchmark entry
   counts its judge errors (`errors`, `error_rate`) and the prompts cut to fit the context
   (`truncated`); the CLI turns too many errors into a non-zero exit (`judge_error_warnings`). With
   `fitted` prompts (SafetyConfig; docs/leakage.md), each entry also lists `overlap_warnings`.

Several judges (`judge` a list; `--judge keyword,rubric:MODEL`): the first is the primary judge, whose
verdicts give the ASR, the sample rows' own verdict fields, the probes' role-play ASR, and what `gate`
and `compare` read, exactly as with one judge. Each further judge judges every benchmark answer (not
the probes) and its verdicts go to the rows' per-judge fields (`verdicts`, `scores`, `verdict_details`;
see samples.py); `benchmarks.<name>.judges.<judge id>` holds its ASR with the Wilson interval, its
errors, and its agreement with the primary judge over the answers both judged (n, agreement share,
Cohen's kappa, answers only one of the two called unsafe).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from safekeel.data.prompts import benchmark_name, load_prompts
from safekeel.errors import SafekeelError
from safekeel.evaluation import probes as P
from safekeel.evaluation.results import check_output_dir, merge_results
from safekeel.evaluation.samples import SampleStore, stored_verdicts
from safekeel.evaluation.stats import agreement, error_share, judge_counts, summarize_verdicts
from safekeel.judges.keyword import is_refusal
from safekeel.locking import RunLock

log = logging.getLogger(__name__)


@dataclass
class SafetyConfig:
    benchmarks: list[str]
    limit: int | None = None
    prompt_field: str = "prompt"
    system: str | None = None
    # probe set names (see probes.parse_probes): over-refusal by default, as on the command line; [] = none
    probes: list[str] = field(default_factory=lambda: list(P.DEFAULT_PROBES))
    probe_limit: int = 20
    rejudge: bool = False
    overwrite: bool = False
    progress: bool = True
    judge_chunk: int = 64
    command: str = ""
    extra: dict = field(default_factory=dict)  # recorded in the run entry (e.g. dtype, device)
    # prompts the model or its settings were fitted on (data.leakage.FittedPrompts): each benchmark is
    # checked against them, with warnings and `benchmarks.<name>.overlap_warnings` (docs/leakage.md)
    fitted: list = field(default_factory=list)


def generation_settings(generator, system: str | None) -> dict:
    """What determines an answer besides the model and the prompt (batch size does not: greedy)."""
    return {"backend": getattr(generator, "backend", "hf"), "max_new_tokens": generator.max_new_tokens,
            "system": system, "decoding": "greedy", "chat_template": True}


def _records(prompts) -> list[dict]:
    return [{"id": p.id, "prompt": p.prompt, "category": p.category, "source": p.source} for p in prompts]


def _store(generator, path: Path, records: list[dict], cfg: SafetyConfig) -> SampleStore:
    texts = [generator.format(r["prompt"], cfg.system) for r in records]
    return SampleStore(path, records, texts, generator.fingerprint, generation_settings(generator, cfg.system),
                       overwrite=cfg.overwrite)


def benchmark_names(specs: list[str]) -> list[str]:
    """The names results are filed under, one per spec; SafekeelError on no spec or a name clash (cheap:
    nothing is loaded, so the CLI calls it before any download)."""
    if not specs:
        raise SafekeelError("no benchmarks given: --benchmarks harmbench,strongreject[,FILE…]")
    seen: dict[str, str] = {}
    for spec in specs:
        name = benchmark_name(spec)
        if name in seen:
            raise SafekeelError(f"benchmarks {seen[name]!r} and {spec!r} would both be filed as {name!r}")
        seen[name] = spec
    return list(seen)


def load_benchmarks(specs: list[str], limit: int | None, prompt_field: str) -> list[tuple[str, str, list[dict]]]:
    """[(spec, name, records)] for every benchmark; SafekeelError on unknown/malformed sets or name clashes."""
    names = benchmark_names(specs)
    return [(spec, name, _records(load_prompts(spec, limit=limit, prompt_field=prompt_field)))
            for spec, name in zip(specs, names)]


def judge_list(judge) -> list:
    """A judge or a sequence of judges as a list (the primary first); SafekeelError on none or on one
    judge id given twice (its verdicts would be one column)."""
    judges = list(judge) if isinstance(judge, (list, tuple)) else [judge]
    if not judges:
        raise SafekeelError("no judge given")
    ids = [j.id for j in judges]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup is not None:
        raise SafekeelError(f"judge {dup!r} is given twice")
    return judges


def extra_judge_summary(rows: list[dict], judge_id: str, primary_id: str) -> dict:
    """A further judge's entry in `benchmarks.<name>.judges`: its ASR counts (`judge_counts`) and its
    agreement with the primary judge over the answers both judged safe or unsafe."""
    mine = [stored_verdicts(r).get(judge_id) for r in rows]
    theirs = [stored_verdicts(r).get(primary_id) for r in rows]
    a = agreement(zip(theirs, mine))
    return {**judge_counts(mine), "agreement": {
        "with": primary_id, "n": a["n"], "agree": a["agree"], "agreement": a["agreement"], "kappa": a["kappa"],
        "primary_only_unsafe": a["a_only_unsafe"], "judge_only_unsafe": a["b_only_unsafe"]}}


def _judge_config(judge) -> dict:
    return {"id": judge.id, **({"format": judge.prompt_format} if hasattr(judge, "prompt_format") else {})}


def run_safety_eval(generator, judge, out_dir: str | Path, cfg: SafetyConfig, base_generator=None) -> dict:
    """Run the whole evaluation; returns the merged results.json content (see module docstring).

    `judge`: one judge, or a list of judges whose first is the primary one."""
    out_dir = Path(out_dir)
    judges = judge_list(judge)
    t_start = time.perf_counter()
    check_output_dir(out_dir, generator.fingerprint, cfg.overwrite)
    unknown = [p for p in cfg.probes if p not in P.PROBES.values()]
    if unknown:
        raise SafekeelError(f"unknown probe set {unknown[0]!r}; use {', '.join(P.PROBES.values())}")
    if base_generator is not None and not any(p in P.BASE_PROBES for p in cfg.probes):
        log.warning("--base-model is only used by the over-refusal, identity and structure probes; ignored")
    sets = load_benchmarks(cfg.benchmarks, cfg.limit, cfg.prompt_field)
    with RunLock(out_dir, cfg.command or "eval safety"):
        check_output_dir(out_dir, generator.fingerprint, cfg.overwrite)  # again: a run may have ended meanwhile
        return _locked_run(generator, judges, out_dir, cfg, sets, base_generator, t_start)


def _locked_run(generator, judges: list, out_dir: Path, cfg: SafetyConfig, sets, base_generator, t_start: float) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)  # the lock makes it too, except on secondary DDP ranks
    overlap = _overlap(sets, cfg.fitted)  # before any answer, so a leaky evaluation can be stopped early
    # 1. answers of the evaluated model
    stores: dict[str, SampleStore] = {}
    gen_s: dict[str, float] = {}  # seconds spent generating each benchmark in this run (0 when resumed)
    for spec, name, records in sets:
        store = _store(generator, out_dir / f"samples_{name}.jsonl", records, cfg)
        if store.reused:
            log.info("%s: reusing %d of %d stored answers", name, store.reused, len(records))
        gen_s[name] = store.fill(generator.generate, generator.batch_size, desc=name, progress=cfg.progress)
        stores[name] = store
    t_gen = sum(gen_s.values())
    model_probes: dict[str, SampleStore] = {}
    base_probes: dict[str, SampleStore] = {}
    seeds = P.probe_records(sets[0][2], cfg.probe_limit) if cfg.probes else {}
    for pname in cfg.probes:
        st = _store(generator, out_dir / f"samples_probe_{pname}.jsonl", seeds[pname], cfg)
        t_gen += st.fill(generator.generate, generator.batch_size, desc=f"probe {pname}", progress=cfg.progress)
        model_probes[pname] = st
    load_s = getattr(generator, "load_s", 0.0)
    generator.close()
    base_sets = [p for p in cfg.probes if p in P.BASE_PROBES] if base_generator is not None else []
    for pname in base_sets:
        st = _store(base_generator, out_dir / f"samples_probe_{pname}_base.jsonl", seeds[pname], cfg)
        t_gen += st.fill(base_generator.generate, base_generator.batch_size, desc=f"base {pname}",
                         progress=cfg.progress)
        base_probes[pname] = st
    if base_generator is not None:
        load_s += getattr(base_generator, "load_s", 0.0)
        base_generator.close()

    # 2. judging, one judge at a time: a judge model loads on its first verdict and is closed before the
    # next judge's (the evaluated models are closed already)
    judge, extras = judges[0], judges[1:]
    t0 = time.perf_counter()
    judge_s: dict[str, float] = {}
    for j in judges:
        t1 = time.perf_counter()
        for store in stores.values():
            store.judge(j, chunk=cfg.judge_chunk, rejudge=cfg.rejudge, refusal_fn=is_refusal, primary=j is judge)
        if j is judge:
            for pname, st in model_probes.items():
                if pname == "roleplay":  # harmful prompts: judged like the benchmarks
                    st.judge(j, chunk=cfg.judge_chunk, rejudge=cfg.rejudge, refusal_fn=is_refusal)
                else:  # benign prompts: only whether the model refused
                    P.mark_refusals(st)
            for st in base_probes.values():
                P.mark_refusals(st)
        if hasattr(j, "close"):
            j.close()
        judge_s[j.id] = round(time.perf_counter() - t1, 2)
    t_judge = time.perf_counter() - t0

    # 3. results
    gen = generation_settings(generator, cfg.system)
    judge_config = _judge_config(judge)
    if extras:
        judge_config["extra"] = [_judge_config(j) for j in extras]
    benchmarks = {}
    for spec, name, records in sets:
        rows = stores[name].ordered()
        benchmarks[name] = {**summarize_verdicts(rows), "spec": spec, "limit": cfg.limit, "judge": judge.id,
                            "generation": gen, "samples": stores[name].path.name,
                            "reused": stores[name].reused, "generate_s": round(gen_s[name], 2),
                            "truncated": sum(bool(r.get("truncated")) for r in rows)}
        if cfg.fitted:  # [] = checked and disjoint; absent = nothing recorded to check against
            benchmarks[name]["overlap_warnings"] = overlap.get(name, [])
        if extras:
            benchmarks[name]["judges"] = {j.id: extra_judge_summary(rows, j.id, judge.id) for j in extras}
    sections: dict = {"benchmarks": benchmarks}
    if cfg.probes:
        base_rows = {k: v.ordered() for k, v in base_probes.items()} or None
        probe_section = P.summarize_probes({k: v.ordered() for k, v in model_probes.items()}, base_rows,
                                           stores[sets[0][1]].ordered(), judge.id)
        probe_section["base_model"] = base_generator.fingerprint if base_generator is not None else None
        probe_section["benchmark"] = sets[0][1]
        sections["probes"] = probe_section
    run = {"command": cfg.command or "eval safety", "judge": judge_config, "generation": {**gen,
           "batch_size": generator.batch_size}, **cfg.extra,
           "timing": {"load_s": round(load_s, 2), "generate_s": round(t_gen, 2), "judge_s": round(t_judge, 2),
                      **({"judges_s": judge_s} if extras else {}),
                      "total_s": round(time.perf_counter() - t_start, 2)}}
    return merge_results(out_dir, generator.fingerprint, sections, run, overwrite=cfg.overwrite,
                         top={"judge": judge_config, "generation": gen})


def fitted_prompts(tokens: str | None, adapter: str | None, model: str | None) -> list:
    """What the evaluated prompts must not overlap (docs/leakage.md): the identification prompts of the
    `tokens` file, and what the training run in `adapter` or `model` (a safekeel output directory)
    recorded in its safekeel_run.json. One group per distinct set of prompts."""
    from safekeel import checks
    from safekeel.data.leakage import run_groups
    from safekeel.tokens.artifact import identification_prompts

    fitted = []
    if tokens:
        checks.input_file(tokens, "--tokens")
        fitted.append(identification_prompts(tokens))
    fitted += run_groups(adapter, model)
    distinct: dict = {}  # --tokens and the run's tokens may be one file: one warning, not two
    for group in fitted:
        if group is not None:
            distinct.setdefault(group.digests, group)
    return list(distinct.values())


def _overlap(sets, fitted: list) -> dict[str, list[str]]:
    """{benchmark name: warnings} for the benchmarks sharing prompts with `fitted`, each logged as one
    `warning: ...` line (safekeel.data.leakage)."""
    from safekeel.data.leakage import benchmark_warnings

    out = benchmark_warnings(sets, fitted) if fitted else {}
    for line in (w for lines in out.values() for w in lines):
        log.warning("warning: %s", line)
    return out


def judge_error_warnings(results: dict, names: list[str], max_share: float) -> list[str]:
    """One line per benchmark in `names` (and per further judge of it) whose share of judge errors exceeds
    `max_share`, or that has no judged answer at all (then whatever the bound: an ASR over nothing must
    never pass)."""
    out = []
    for name in names:
        entry = (results.get("benchmarks") or {}).get(name)
        if not entry:
            continue
        for label, e in [(name, entry)] + [(f"{name} (judge {jid})", e) for jid, e in (entry.get("judges") or {}).items()]:
            share = error_share(e)
            if e.get("judged") == 0 or share > max_share:
                out.append(f"{label}: {e.get('errors')} of {e.get('n')} verdicts are judge errors ({share:.1%}, "
                           f"above --max-judge-errors {max_share:g}); its ASR covers only the judged answers")
    return out
