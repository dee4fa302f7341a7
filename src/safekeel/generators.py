"""Answer generators: Hugging Face (batched greedy, left padding) or vLLM, for evaluation and model judges.

A generator turns already-formatted prompt texts into greedy answers and carries the fingerprint of
the model it runs, so sample files can tell whether a stored answer came from the same model and
settings. `LazyGenerator` loads its model only when it first has something to generate: a fully
resumed evaluation never loads the model at all. Its fingerprint is computed from the model spec
without loading (file hashes for local and packaged models, the id for hub models).

Both backends cut a prompt longer than the model's context (minus max_new_tokens) from the left and
return `safekeel.generation.Answers`, whose `truncated` names the cut prompts, so that the caller
records it in the sample rows and warns once (see `safekeel.generation`).

They sit with the models (not in `safekeel.evaluation`) because the model judges (`safekeel.judges`) run
their judge model with `LazyGenerator` too; `safekeel.evaluation.generator` re-exports them.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING

from safekeel.chat import end_of_turn_ids, format_prompt
from safekeel.errors import SafekeelError
from safekeel.fingerprint import model_fingerprint

if TYPE_CHECKING:
    from safekeel.generation import Answers

log = logging.getLogger(__name__)

BACKENDS = ("hf", "vllm")
DEFAULT_BATCH = {"hf": 8, "vllm": 256}


def spec_fingerprint(spec: str, adapter: str | None = None) -> dict:
    """`model_fingerprint` of the model `spec` would load, computed without loading its weights."""
    from safekeel.models.loader import resolve_source

    source = resolve_source(spec)
    stub = SimpleNamespace(safekeel_source=source, safekeel_adapter=adapter, config=SimpleNamespace())
    if source.kind == "memory":  # a model passed loaded: its weights are at hand, so hash them
        from safekeel.models.in_memory import lookup

        model = lookup(spec)[0]
        stub.config, stub.named_parameters = model.config, model.named_parameters
    return model_fingerprint(stub)


class HFGenerator:
    """Greedy answers from an in-memory (model, tokenizer) via `safekeel.generation.generate`."""

    backend = "hf"

    def __init__(self, model, tokenizer, *, max_new_tokens: int = 256, batch_size: int = 8, progress: bool = False):
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.batch_size, self.progress = max_new_tokens, batch_size, progress
        self._fingerprint = None

    @property
    def fingerprint(self) -> dict:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    def format(self, prompt: str, system: str | None = None) -> str:
        return format_prompt(self.tokenizer, prompt, system)

    def generate(self, texts: Sequence[str]) -> Answers:
        from safekeel.generation import generate

        # warn=False: the caller (a sample store, a judge) reports cut prompts once, with its own context
        return generate(self.model, self.tokenizer, list(texts), max_new_tokens=self.max_new_tokens,
                        batch_size=self.batch_size, progress=self.progress, warn=False)

    def close(self) -> None:
        self.model = None
        free_memory()


class VLLMGenerator:
    """Greedy answers from vLLM. Prompts are tokenised by the model's HF tokenizer (no extra BOS), so
    both backends see exactly the same token ids; generation stops at the same end-of-turn tokens."""

    backend = "vllm"

    def __init__(self, spec: str, tokenizer, *, adapter: str | None = None, max_new_tokens: int = 256,
                 dtype: str = "auto", trust_remote_code: bool = False):
        require_vllm()
        from vllm import LLM

        from safekeel.models.loader import converted_dir, resolve_source, usable_converted_dir

        source = resolve_source(spec)
        if source.kind == "memory":
            raise SafekeelError("--backend vllm loads the model from a path; a model passed loaded needs --backend hf")
        model_path = source.path
        if source.gguf_file:
            # vLLM's GGUF support needs a separate HF tokenizer; the loader's dequantised safetensors copy
            # (made on the first HF load) is a plain model directory that vLLM loads directly. A damaged
            # copy is removed by `usable_converted_dir` and made again by the load below.
            model_path = str(converted_dir(source))
            if usable_converted_dir(source) is None:
                from safekeel.models.loader import load_model

                load_model(spec, device="cpu")  # writes the converted copy
                free_memory()
        self.tokenizer, self.max_new_tokens, self.adapter = tokenizer, max_new_tokens, adapter
        kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code, "enable_lora": bool(adapter)}
        try:
            self.llm = LLM(model=model_path, **kwargs)
        except Exception as exc:  # noqa: BLE001 - vLLM raises many types; the user needs one line
            raise SafekeelError(f"vLLM could not load {spec}: {str(exc).splitlines()[0] if str(exc) else exc!r}; "
                                "try --backend hf") from None

    def context_length(self) -> int | None:
        """vLLM's own limit (max_model_len) when it exposes one, else the tokenizer's."""
        from safekeel.generation import context_length

        try:
            limit = int(self.llm.llm_engine.model_config.max_model_len)
        except (AttributeError, TypeError, ValueError):
            limit = None
        limits = [x for x in (limit, context_length(None, self.tokenizer)) if x]
        return min(limits) if limits else None

    def generate(self, texts: Sequence[str]) -> Answers:
        from vllm import SamplingParams

        from safekeel.generation import Answers, fit_prompts, prompt_budget

        params = SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens,
                                stop_token_ids=end_of_turn_ids(self.tokenizer), skip_special_tokens=True)
        # cut over-long prompts exactly as the HF backend does (vLLM would refuse them with an error)
        budget = prompt_budget(self.context_length(), self.max_new_tokens)
        ids, cut = fit_prompts(self.tokenizer(list(texts), add_special_tokens=False)["input_ids"], budget)
        prompts = [{"prompt_token_ids": x} for x in ids]
        lora = None
        if self.adapter:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("adapter", 1, self.adapter)
        outputs = self.llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
        stopped = {i for i, o in enumerate(outputs) if o.outputs[0].finish_reason == "length"}
        return Answers([o.outputs[0].text.strip() for o in outputs], cut, budget, stopped)


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise SafekeelError("--backend vllm needs the vllm package (pip install 'safekeel[vllm]'); "
                            "or use --backend hf")


class LazyGenerator:
    """A model named by spec, loaded with `load_model` (or vLLM) on the first `generate` call."""

    def __init__(self, spec: str, *, adapter: str | None = None, backend: str = "hf", dtype: str = "auto",
                 device: str = "auto", trust_remote_code: bool = False, max_new_tokens: int = 256,
                 batch_size: int | None = None, progress: bool = False):
        if backend not in BACKENDS:
            raise SafekeelError(f"unknown backend {backend!r}; use hf or vllm")
        if backend == "vllm":
            require_vllm()
        self.spec, self.adapter, self.backend = spec, adapter, backend
        self.dtype, self.device, self.trust_remote_code = dtype, device, trust_remote_code
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size or DEFAULT_BATCH[backend]
        self.progress = progress
        self.fingerprint = spec_fingerprint(spec, adapter)  # also validates the spec before any work
        self._tokenizer = None
        self._impl = None
        self.load_s = 0.0

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from safekeel.models.loader import load_tokenizer

            self._tokenizer = load_tokenizer(self.spec, trust_remote_code=self.trust_remote_code)
        return self._tokenizer

    def format(self, prompt: str, system: str | None = None) -> str:
        return format_prompt(self.tokenizer, prompt, system)

    def _load(self):
        import time

        t0 = time.perf_counter()
        if self.backend == "vllm":
            self._impl = VLLMGenerator(self.spec, self.tokenizer, adapter=self.adapter,
                                       max_new_tokens=self.max_new_tokens, dtype=self.dtype,
                                       trust_remote_code=self.trust_remote_code)
        else:
            from safekeel.models.loader import load_model

            model, tok = load_model(self.spec, adapter=self.adapter, dtype=self.dtype, device=self.device,
                                    trust_remote_code=self.trust_remote_code)
            self._tokenizer = tok
            self._impl = HFGenerator(model, tok, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                                     progress=self.progress)
        self.load_s += time.perf_counter() - t0
        log.info("loaded %s (%s backend) in %.1f s", self.spec, self.backend, self.load_s)

    def generate(self, texts: Sequence[str]) -> Answers:
        if not texts:
            from safekeel.generation import Answers

            return Answers()
        if self._impl is None:
            self._load()
        return self._impl.generate(texts)

    def close(self) -> None:
        """Free the model (e.g. before the base model or a judge model is loaded)."""
        if self._impl is not None:
            if hasattr(self._impl, "close"):
                self._impl.close()
            self._impl = None
            free_memory()


def free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
