"""Chat formatting through the model's own chat template.

Every prompt the library sends to a model goes through `format_prompt`, so identification, training and
evaluation see the same formatting. `assistant_header` is the string the template appends for a
generation prompt (e.g. "<|im_start|>assistant\\n"); PACT's no-prompt reference view starts with it.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

PLAIN_TEMPLATE = "User: {prompt}\n\nAssistant: "  # the authors' code feeds the base model this
_DUMMY = "\x00safekeel-dummy\x00"
_warned_no_template = False


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def build_messages(prompt: str, system: str | None = None, response: str | None = None) -> list[dict]:
    messages = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return messages


def format_prompt(tokenizer, prompt: str, system: str | None = None, plain: bool = False) -> str:
    """The text a model sees before its answer: chat template with a generation prompt.

    `plain=True`, or a tokenizer without a chat template, gives the "User: …\\n\\nAssistant: " format.
    """
    global _warned_no_template
    if plain or not has_chat_template(tokenizer):
        if not plain and not _warned_no_template:
            log.warning("tokenizer has no chat template; using the plain 'User: …\\n\\nAssistant: ' format")
            _warned_no_template = True
        text = PLAIN_TEMPLATE.format(prompt=prompt)
        return (system + "\n\n" + text) if system else text
    return tokenizer.apply_chat_template(
        build_messages(prompt, system), tokenize=False, add_generation_prompt=True
    )


def assistant_header(tokenizer) -> str:
    """What the chat template adds for a generation prompt: render a dummy user turn with and without
    `add_generation_prompt` and take the difference (docs/design.md, "PACT formulas")."""
    if not has_chat_template(tokenizer):
        return "Assistant: "
    messages = [{"role": "user", "content": _DUMMY}]
    without = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    with_gen = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not with_gen.startswith(without):
        raise ValueError("chat template output with add_generation_prompt does not extend the one without")
    header = with_gen[len(without):]
    if not header:
        raise ValueError("chat template adds nothing for a generation prompt; cannot find the assistant header")
    return header


def end_of_turn_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn: eos plus the usual end-of-turn markers present in the vocab."""
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"):
        if marker in vocab and vocab[marker] not in ids:
            ids.append(int(vocab[marker]))
    return ids


def prepare_tokenizer(tokenizer):
    """Set a tokenizer up for batched generation (left padding, a pad token), in place; returns it. Used by
    the loader and for a tokenizer passed to the Python API, so both generate alike."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        # Reusing eos as pad is safe because attention masks hide padding and labels mask it out.
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer
