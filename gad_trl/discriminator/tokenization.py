"""A discriminator with its own tokenizer: the student's sequences re-encoded in the discriminator's tokens.

With one tokenizer (the default: the discriminator is built from the student) the discriminator reads the student's
token ids as they are. A discriminator from another family or size (`discriminator_model_name_or_path` with its own
tokenizer) cannot: the same ids mean other words in its vocabulary, or fall outside it. Then every sequence is
re-encoded, and both sides the same way (the symmetry rule, docs/algorithm.md):

- the prompt: the discriminator's chat template over the prompt's messages (a plain-text prompt: its tokens);
- the response: the student's tokens (a sampled completion, or a teacher answer already encoded and cut at
  `max_completion_length` by `gad_trl.data.teacher_completion_ids`) decoded to text, re-tokenised by the
  discriminator's tokenizer with special-token strings kept as text, then the discriminator's end-of-turn token when
  the response was finished (it ended with one of the student's stop tokens).
"""

from __future__ import annotations

from transformers.utils import logging

from ..data import GADDataError, prompt_ids, teacher_completion_ids
from ..end_of_turn import end_of_turn_token_id

logger = logging.get_logger(__name__)


def same_tokenizer(a, b) -> bool:
    """True when two tokenizers give the same ids for the same text and chat: vocabulary, added tokens, chat template
    and end-of-turn token agree."""
    if a is b:
        return True
    return (
        a.get_vocab() == b.get_vocab()
        and getattr(a, "chat_template", None) == getattr(b, "chat_template", None)
        and end_of_turn_token_id(a) == end_of_turn_token_id(b)
    )


def load_discriminator_tokenizer(source: str | None, trust_remote_code: bool = False):
    """The tokenizer saved with a discriminator checkpoint, or None when the folder / repo has none."""
    if source is None:
        return None
    import os

    from transformers import AutoTokenizer

    if os.path.isdir(source) and not any(
        os.path.exists(os.path.join(source, name)) for name in ("tokenizer.json", "tokenizer_config.json")
    ):
        return None  # transformers would build an empty tokenizer from config.json alone
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):  # no tokenizer files there: the discriminator shares the student's
        return None
    return tokenizer if len(tokenizer.get_vocab()) > 1 else None


def check_vocabulary_fits(discriminator, tokenizer) -> None:
    """A discriminator read with the student's tokenizer must have an embedding for every id it can produce; a
    smaller vocabulary is another tokenizer's (it would die with a bare IndexError, or read garbage)."""
    config = getattr(discriminator, "config", None)
    if config is None:
        return
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab_size = getattr(text_config, "vocab_size", None)
    if isinstance(vocab_size, int) and vocab_size < len(tokenizer):
        raise ValueError(
            f"The discriminator's vocabulary has {vocab_size} tokens but the student's tokenizer has {len(tokenizer)}: "
            "the discriminator was trained with another tokenizer. Save that tokenizer next to the discriminator's "
            "weights (tokenizer.save_pretrained(path)) or pass it as GADTrainer(discriminator_processing_class=...); "
            "the discriminator then re-tokenises every prompt and response with it."
        )


class DiscriminatorEncoding:
    """Re-encodes the student's sequences for a discriminator with its own tokenizer (module docstring)."""

    def __init__(self, student_tokenizer, discriminator_tokenizer, stop_token_ids):
        self.student_tokenizer = student_tokenizer
        self.tokenizer = discriminator_tokenizer
        self.stop_token_ids = {int(t) for t in stop_token_ids if t is not None}
        self.end_token_id = end_of_turn_token_id(discriminator_tokenizer)

    def check_prompts(self, dataset, split_name: str) -> None:
        """Conversational prompts need the discriminator's chat template too (checked once, before training)."""
        if dataset is None or not hasattr(dataset, "column_names") or "prompt" not in (dataset.column_names or []):
            return
        first = next(iter(dataset), None)
        if first is not None and isinstance(first["prompt"], list) and not getattr(self.tokenizer, "chat_template", None):
            raise GADDataError(
                f"The {split_name} set holds chat messages but the discriminator's tokenizer has no chat template, so "
                "it cannot render the prompts in its own tokens. Use a discriminator checkpoint with a chat template, "
                "or set discriminator_tokenizer.chat_template."
            )

    def prompt_ids(self, prompt) -> list[int]:
        if isinstance(prompt, list):
            return prompt_ids(self.tokenizer, prompt)
        return list(self.tokenizer(text=prompt)["input_ids"])

    def response_ids(self, student_ids: list[int]) -> list[int]:
        """A response in the student's tokens as the discriminator reads it: its text re-tokenised, then the
        discriminator's end-of-turn token if it ended with a student stop token."""
        ids = [int(t) for t in student_ids]
        finished = bool(ids) and ids[-1] in self.stop_token_ids
        text = self.student_tokenizer.decode(ids[:-1] if finished else ids, skip_special_tokens=False)
        response, _ = teacher_completion_ids(self.tokenizer, text, self.end_token_id if finished else None)
        return response

    def encode(self, prompt, student_ids: list[int]) -> tuple[list[int], int]:
        """(sequence, response start) for the discriminator."""
        head = self.prompt_ids(prompt)
        return head + self.response_ids(student_ids), len(head)

    def encode_batch(self, prompts: list, groups: list[list[int]], teacher_completions: list[list[int]],
                     completion_ids_list: list[list[int]]):
        """Teacher sequences (one per unique teacher answer, its prompt = that of its first row), student sequences,
        and the response starts of `teacher + student`, all in the discriminator's tokens. `groups[i]`: the teacher
        answers of row i's prompt."""
        prompt_cache: dict[str, list[int]] = {}  # a prompt repeats num_generations times in a batch

        def head(i: int) -> list[int]:
            key = repr(prompts[i])
            if key not in prompt_cache:
                prompt_cache[key] = self.prompt_ids(prompts[i])
            return prompt_cache[key]

        first_row = {}
        for i, group in enumerate(groups):
            for j in group:
                first_row.setdefault(j, i)
        teacher_seqs, starts = [], []
        for j, completion in enumerate(teacher_completions):
            p = head(first_row[j])
            teacher_seqs.append(p + self.response_ids(completion))
            starts.append(len(p))
        student_seqs = []
        for i, completion in enumerate(completion_ids_list):
            p = head(i)
            student_seqs.append(p + self.response_ids(completion))
            starts.append(len(p))
        return teacher_seqs, student_seqs, starts
