"""Judge through an OpenAI-compatible chat server (vLLM, llama.cpp server, TGI, …): `openai:URL[#MODEL]`.

POSTs to `URL/v1/chat/completions` with the standard library (no extra dependency), temperature 0.
`prompt_format` picks what the server is asked:
- `rubric` (default): the StrongREJECT-style rubric of `safekeel.judges.rubric` (any chat model);
- `llamaguard`: the conversation itself ([user prompt, assistant response]); a server running
  Llama-Guard-3 applies its own template and answers `safe` / `unsafe\\nS…`.
Without `#MODEL` the first model listed by `URL/v1/models` is used. `OPENAI_API_KEY`, when set, is
sent as a bearer token. Each request has a timeout and is retried with exponential backoff on
connection errors, timeouts, HTTP 408/429 and 5xx; an endpoint that stays unreachable raises one
SafekeelError line. Requests run `concurrency` at a time.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from safekeel.errors import SafekeelError
from safekeel.judges.base import Judge, Judgement
from safekeel.judges.llamaguard import parse_llamaguard
from safekeel.judges.rubric import THRESHOLD, parse_rubric, rubric_messages

FORMATS = ("rubric", "llamaguard")
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


def split_spec(spec: str) -> tuple[str, str | None]:
    """'http://host:8000/v1#my-model' -> ('http://host:8000', 'my-model')."""
    url, _, model = spec.partition("#")
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise SafekeelError(f"openai judge needs an http(s) URL: openai:http://HOST:PORT[#MODEL], got {spec!r}")
    url = url.removesuffix("/v1")
    return url, (model.strip() or None)


class OpenAIJudge(Judge):
    def __init__(self, spec: str | None = None, *, prompt_format: str = "rubric", timeout: float = 60.0,
                 retries: int = 3, backoff: float = 1.0, concurrency: int = 4, max_tokens: int | None = None,
                 threshold: float = THRESHOLD, api_key: str | None = None):
        if not spec:
            raise SafekeelError("the openai judge needs a server: --judge openai:http://HOST:PORT[#MODEL]")
        if prompt_format not in FORMATS:
            raise SafekeelError(f"unknown judge format {prompt_format!r}; use one of {', '.join(FORMATS)}")
        self.url, self.model = split_spec(spec)
        self.prompt_format, self.timeout, self.retries, self.backoff = prompt_format, timeout, max(1, retries), backoff
        self.concurrency, self.threshold = max(1, concurrency), threshold
        self.max_tokens = max_tokens or (512 if prompt_format == "rubric" else 32)
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        # everything that changes verdicts goes into the id (the format, a non-default rubric threshold)
        params = [] if prompt_format == "rubric" else [f"format={prompt_format}"]
        if prompt_format == "rubric" and threshold != THRESHOLD:
            params.append(f"threshold={threshold:g}")
        self.id = f"openai:{self.url}#{self.model or 'default'}" + ("?" + "&".join(params) if params else "")

    # -- HTTP -------------------------------------------------------------------------------------
    def _request(self, path: str, payload: dict | None = None) -> dict:
        url = self.url + path
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(payload).encode() if payload is not None else None
        last = "no attempt"
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                body = exc.read().decode("utf-8", "replace")[:200].replace("\n", " ")
                if exc.code not in _RETRY_STATUS:
                    raise SafekeelError(f"judge endpoint {url} answered HTTP {exc.code}: {body}") from None
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                last = str(getattr(exc, "reason", exc))
            except json.JSONDecodeError:
                raise SafekeelError(f"judge endpoint {url} did not answer JSON") from None
        raise SafekeelError(f"judge endpoint {url} unreachable after {self.retries} attempts: {last}")

    def _model_name(self) -> str:
        if self.model is None:
            listing = self._request("/v1/models")
            try:
                self.model = listing["data"][0]["id"]
            except (KeyError, IndexError, TypeError):
                raise SafekeelError(f"{self.url}/v1/models lists no model; name one: openai:URL#MODEL") from None
        return self.model

    def messages(self, prompt: str, response: str) -> list[dict]:
        if self.prompt_format == "llamaguard":
            return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return rubric_messages(prompt, response)

    def _one(self, prompt: str, response: str) -> Judgement:
        payload = {"model": self._model_name(), "messages": self.messages(prompt, response),
                   "temperature": 0, "max_tokens": self.max_tokens}
        out = self._request("/v1/chat/completions", payload)
        try:
            text = out["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            return Judgement("error", None, {"error": "malformed chat completion", "raw": json.dumps(out)[:500]})
        if self.prompt_format == "llamaguard":
            return parse_llamaguard(text)
        return parse_rubric(text, self.threshold)

    def judge(self, prompts, responses):
        if not prompts:
            return []
        self._model_name()  # resolve once, before the worker threads start
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, prompts, responses))
