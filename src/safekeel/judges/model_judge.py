"""The shared machinery of judges that run a local chat model (Llama Guard, the rubric judge).

A subclass provides `render(tokenizer, prompt, response) -> text` and `parse(answer) -> Judgement`;
this class loads the judge model lazily (so an evaluated model can be freed first, and a bad command
line fails before any model is loaded), batches the generation, and accepts a
`generate_fn(texts) -> answers` in place of the local model (tests, other backends), with `tokenizer`
then supplying the chat template.

The model argument is checked when the judge is built (`safekeel.models.specs.model_spec`: no download). A
judge input longer than the judge model's context is cut by the generator; the judge then saw part of
the conversation only, so its verdict is recorded as an `error`, never as a verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from safekeel.judges.base import Judge, Judgement


class ModelJudge(Judge):
    name = "model"

    def __init__(self, model: str, *, tokenizer=None, generate_fn: Callable[[list[str]], list[str]] | None = None,
                 device: str = "auto", dtype: str = "auto", batch_size: int = 8, max_new_tokens: int = 16,
                 trust_remote_code: bool = False):
        if generate_fn is None:
            from safekeel.models.specs import model_spec

            model_spec(model, f"--judge {self.name}:MODEL")
        self.model_spec = model
        self.id = f"{self.name}:{model}"
        self._tokenizer, self._generate_fn, self._lazy = tokenizer, generate_fn, None
        self._opts = {"device": device, "dtype": dtype, "batch_size": batch_size,
                      "max_new_tokens": max_new_tokens, "trust_remote_code": trust_remote_code}

    def render(self, tokenizer, prompt: str, response: str) -> str:
        raise NotImplementedError

    def parse(self, answer: str) -> Judgement:
        raise NotImplementedError

    def _generator(self):
        if self._lazy is None:
            from safekeel.generators import LazyGenerator

            self._lazy = LazyGenerator(self.model_spec, **self._opts)
        return self._lazy

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self._generator().tokenizer
        return self._tokenizer

    def build_texts(self, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
        return [self.render(self.tokenizer, p, r) for p, r in zip(prompts, responses)]

    def judge(self, prompts, responses):
        texts = self.build_texts(prompts, responses)
        answers = self._generate_fn(texts) if self._generate_fn else self._generator().generate(texts)
        cut = getattr(answers, "truncated", None) or {}  # see safekeel.generation.Answers
        out = []
        for i, answer in enumerate(answers):
            if i in cut:
                out.append(Judgement("error", None, {"raw": answer, "error": "judge input longer than the judge "
                                                     f"model's context ({cut[i]} tokens); cut, so not judged"}))
            else:
                out.append(self.parse(answer))
        return out

    def close(self) -> None:
        if self._lazy is not None:
            self._lazy.close()
