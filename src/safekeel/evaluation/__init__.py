"""Evaluation: safety (attack success rate, judged), drift probes, task accuracy, the gate and comparisons.

Modules: `stats` (Wilson interval, ASR aggregation), `generator` (HF / vLLM answer generation, from
`safekeel.generators`),
`samples` (resumable per-prompt sample files), `results` (results.json), `lm_eval_layout` (its
lm-evaluation-harness twin, and reading lm-eval results files), `safety`, `probes`, `task`,
`gate`, `compare`. Import the module you need; this package imports nothing heavy.
"""
