"""A tool-using teacher trajectory in the token layout of a student's tool-calling rollout (docs/algorithm.md,
"Agents and tools").

TRL's `GRPOTrainer` builds a student rollout as: the prompt rendered with the tools, the generated assistant tokens
(ending with the end-of-turn token), the chat template's tokens for the tool results up to the next generation prompt
(`_get_tool_suffix_ids`), the next generated assistant tokens, ... and a `tool_mask` that is 0 on the tool-result
tokens. The teacher's trajectory (messages) is rendered by the same chat template, turn by turn, into the same layout:
each assistant turn = the template's tokens for it up to and including its end-of-turn token, each run of tool
results = the template's tokens from there to the next generation prompt. That is the symmetry rule extended: the same
content gives the same ids on both sides (tested), the last token is the final answer's end-of-turn token (the scored
one), and the mask that mean pooling reads is 1 on assistant tokens and 0 on tool-result tokens.
"""

from __future__ import annotations

import json


def render_messages(messages: list[dict]) -> list[dict]:
    """Messages as chat templates expect them: no None-valued keys (the data set's fixed message shape), tool-call
    arguments as dicts (the data set stores them as JSON strings)."""
    out = []
    for message in messages:
        m = {k: v for k, v in message.items() if v is not None}
        if m.get("tool_calls"):
            m["tool_calls"] = [
                {k: v for k, v in {**call, "function": {
                    "name": call["function"]["name"],
                    "arguments": json.loads(call["function"]["arguments"])
                    if isinstance(call["function"]["arguments"], str) else call["function"]["arguments"],
                }}.items() if v is not None}
                for call in m["tool_calls"]
            ]
        out.append(m)
    return out


class TrajectoryEncoder:
    """Encode teacher trajectories after a prompt the way the student's rollouts are laid out.

    `tokenizer`: the student's; `tools`: the tools the prompts are rendered with (TRL's `trainer.tools`, or one
    environment's); `end_token_id`: the end-of-turn token a generated turn ends with; `chat_template` and
    `chat_template_kwargs`: as the trainer renders prompts (TRL's `args.chat_template_kwargs`)."""

    def __init__(self, tokenizer, tools=None, end_token_id: int | None = None, chat_template=None,
                 chat_template_kwargs: dict | None = None):
        self.tokenizer = tokenizer
        self.tools = tools or None
        self.end_token_id = tokenizer.eos_token_id if end_token_id is None else end_token_id
        self.chat_template = chat_template
        self.kwargs = dict(chat_template_kwargs or {})

    def _ids(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            render_messages(messages), tools=self.tools, add_generation_prompt=add_generation_prompt, tokenize=True,
            return_dict=False, chat_template=self.chat_template, **self.kwargs,
        )
        return list(ids)

    def prompt_ids(self, prompt: list[dict]) -> list[int]:
        """The prompt rendered with the tools and the generation prompt, as TRL renders a tool-calling rollout's."""
        return self._ids(list(prompt), add_generation_prompt=True)

    def sft_example(self, prompt: list[dict], trajectory: list[dict], max_length: int | None = None) -> dict:
        """A tokenized SFT example of a trajectory: `input_ids` (prompt + trajectory) and `labels` (-100 on the prompt
        and on tool-result tokens: the student learns its own turns only, as GAD's teacher-SFT loss does)."""
        head = self.prompt_ids(prompt)
        ids, mask, _ = self.encode(prompt, trajectory)
        input_ids = head + ids
        labels = [-100] * len(head) + [t if m else -100 for t, m in zip(ids, mask)]
        if max_length is not None:
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        return {"input_ids": input_ids, "labels": labels}

    def _through_end_of_turn(self, ids: list[int], after: int) -> list[int]:
        # Templates write "<|im_end|>\n" after a turn; a generated turn stops at the end-of-turn token (as TRL aligns).
        ends = [i for i in range(after, len(ids)) if ids[i] == self.end_token_id]
        if not ends:
            raise ValueError(
                f"The chat template does not close an assistant turn with the end-of-turn token (id {self.end_token_id}):"
                " a tool-using trajectory cannot be laid out as the student's rollouts are."
            )
        return ids[: ends[-1] + 1]

    def encode(self, prompt: list[dict], trajectory: list[dict], max_completion_length: int | None = None
               ) -> tuple[list[int], list[int], bool]:
        """(completion ids after the prompt, their mask: 1 = assistant token, 0 = tool-result token, truncated)."""
        conversation = list(prompt)
        previous = self._ids(conversation, add_generation_prompt=True)
        start = len(previous)
        ids, mask = [], []
        i = 0
        while i < len(trajectory):
            message = trajectory[i]
            if message["role"] == "assistant":
                conversation.append(message)
                current = self._through_end_of_turn(self._ids(conversation, False), len(previous))
                is_model = 1
                i += 1
            else:  # a run of tool results, up to the next generation prompt
                while i < len(trajectory) and trajectory[i]["role"] == "tool":
                    conversation.append(trajectory[i])
                    i += 1
                current = self._ids(conversation, True)
                is_model = 0
            if current[: len(previous)] != previous:
                raise ValueError(
                    "The chat template is not prefix-preserving (rendering one more turn changed the tokens of the "
                    "earlier ones), so a trajectory cannot be laid out as the student's rollouts are; TRL's tool "
                    "calling needs such a template too (trl.chat_template_utils.is_chat_template_prefix_preserving)."
                )
            ids += current[len(previous):]
            mask += [is_model] * (len(current) - len(previous))
            previous = current
        assert len(previous) - start == len(ids)
        if max_completion_length is not None and len(ids) > max_completion_length:
            return ids[:max_completion_length], mask[:max_completion_length], True
        return ids, mask, False
