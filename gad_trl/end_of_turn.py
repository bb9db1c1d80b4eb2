"""The token a finished assistant turn ends with: what the teacher's responses get appended (docs/algorithm.md,
"Symmetry").

The first of a model's `generation_config.eos_token_id` is not always that token: Llama-3.x-Instruct lists
`<|end_of_text|>` before `<|eot_id|>`, Gemma-it lists `<eos>` before `<end_of_turn>`, yet their student completions
end with the second. A teacher response ending with another token than the student's would let the discriminator tell
the two sides apart by their last token alone, and would teach the SFT warm-up the wrong stop token. The chat template
says which token closes an assistant turn, so that is asked first.
"""

from __future__ import annotations

_MARKER = "GADENDOFTURNPROBE"


def end_of_turn_token_id(tokenizer, stop_token_ids=None) -> int:
    """The token id that ends an assistant turn.

    `stop_token_ids`: the ids the student's generation stops at (TRL's `GRPOTrainer.eos_token_ids`). The answer is
    the first of them that the chat template writes after an assistant message's content; without a chat template
    (or if the template writes none of them), the tokenizer's `eos_token_id` when it is a stop token, else the first
    stop token. Without `stop_token_ids`, any special token the template writes after the content counts.
    """
    stops = [int(t) for t in (stop_token_ids or []) if t is not None]
    accept = set(stops) if stops else _special_ids(tokenizer)
    for token in _ids_after_assistant_content(tokenizer):
        if token in accept:
            return token
    eos = tokenizer.eos_token_id
    if stops:
        return eos if eos in stops else stops[0]
    if eos is None:
        raise ValueError(
            "The tokenizer has no eos_token and its chat template ends assistant turns with no special token: set "
            "tokenizer.eos_token to the token that ends a response."
        )
    return eos


def _ids_after_assistant_content(tokenizer) -> list[int]:
    """Tokens the chat template writes after an assistant message's content (empty without a usable template)."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARKER}]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that rejects this probe just gives no answer; the fallback decides
        return []
    if not isinstance(text, str) or _MARKER not in text:
        return []
    tail = text[text.rindex(_MARKER) + len(_MARKER) :]
    return list(tokenizer(tail, add_special_tokens=False)["input_ids"])


def _special_ids(tokenizer) -> set[int]:
    """Named special tokens plus added tokens marked special (e.g. Gemma's `<end_of_turn>` is only the latter)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            ids.add(int(token_id))
    return ids
