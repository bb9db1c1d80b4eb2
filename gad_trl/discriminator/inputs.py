"""What the discriminator is shown: one batch value (`DiscriminatorBatch`) and the one encoder that builds it
(`InputEncoder`), for training and for the held-out / judge triples alike.

Why one home: the discriminator must read a teacher answer and a student completion of the same prompt laid out the
same way (the symmetry rule, docs/algorithm.md), whatever reads them: the training step, the fixed held-out
evaluation, judge agreement or `gad-trl eval-discriminator`. Written once here, a layout change (another tokenizer,
trajectories, k answers) cannot drift between those readers. The encoder's strategies stay in their modules:
`gad_trl.data.teacher_completion_ids` (a text answer as a finished completion: the one symmetry rule),
`trajectory.TrajectoryEncoder` (tool-using trajectories in the student's rollout layout) and
`tokenization.DiscriminatorEncoding` (a discriminator with its own tokenizer: both sides re-encoded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import torch

from ..data import prompt_ids, teacher_answers, teacher_completion_ids
from ..end_of_turn import end_of_turn_token_id


@dataclass
class Pairs:
    """Which (teacher sequence, student sequence) pairs the loss compares: pair p is (`teacher[p]`, `student[p]`),
    indices into a batch's teacher and student sequences, with weight `weight[p]` (None: all 1).

    One teacher answer per prompt: one pair per completion (`one_per_student`). k answers: every completion is paired
    with each of its prompt's answers, weight 1/k each (`from_groups`), so each completion counts once in the loss and
    the metrics (docs/algorithm.md, "Several teacher answers per prompt")."""

    teacher: torch.Tensor
    student: torch.Tensor
    weight: torch.Tensor | None = None

    @classmethod
    def one_per_student(cls, index: torch.Tensor) -> Pairs:
        """Completion i against teacher `index[i]` (the paper's pairing)."""
        return cls(index, torch.arange(len(index), device=index.device, dtype=index.dtype))

    @classmethod
    def from_groups(cls, groups: list[list[int]], device=None) -> Pairs:
        """Completion i against every teacher in `groups[i]` (its prompt's answers)."""
        if all(len(g) == 1 for g in groups):
            return cls.one_per_student(torch.tensor([g[0] for g in groups], device=device, dtype=torch.long))
        teacher = [t for g in groups for t in g]
        student = [i for i, g in enumerate(groups) for _ in g]
        weight = [1.0 / len(g) for g in groups for _ in g]
        return cls(torch.tensor(teacher, device=device, dtype=torch.long),
                   torch.tensor(student, device=device, dtype=torch.long),
                   torch.tensor(weight, device=device, dtype=torch.float32))

    @classmethod
    def of(cls, index) -> Pairs:
        """`index` as pairs: already `Pairs`, or a tensor of one teacher index per completion."""
        return index if isinstance(index, Pairs) else cls.one_per_student(index)

    def __len__(self) -> int:
        return len(self.teacher)

    def extended(self, teacher: torch.Tensor, student: torch.Tensor) -> Pairs:
        """These pairs plus more of weight 1 (replayed pairs: one per past completion)."""
        weight = self.weight
        if weight is not None:
            weight = torch.cat([weight, torch.ones(len(teacher), device=weight.device, dtype=weight.dtype)])
        return Pairs(torch.cat([self.teacher, teacher]), torch.cat([self.student, student]), weight)

    def for_students(self, kept: list[int], num_students: int) -> Pairs:
        """The pairs of the completions `kept` (every pair of each, so a completion with k answers is kept or left
        out whole), their students renumbered 0..len(kept)-1 in that order: a replace-mode update's current pairs."""
        position = torch.full((num_students,), -1, device=self.student.device, dtype=self.student.dtype)
        position[torch.tensor(kept, device=self.student.device, dtype=torch.long)] = torch.arange(
            len(kept), device=self.student.device, dtype=self.student.dtype)
        new_student = position[self.student]
        keep = new_student >= 0
        return Pairs(self.teacher[keep], new_student[keep], None if self.weight is None else self.weight[keep])

    def scores(self, scores: torch.Tensor, num_teacher: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher side, student side) of every pair, from the scores of `teacher_seqs + student_seqs`."""
        return scores[:num_teacher][self.teacher], scores[num_teacher:][self.student]

    def primary_teacher(self, num_students: int) -> list[int]:
        """One teacher per completion (its first pair's): what the replay buffer keeps of a completion."""
        first: dict[int, int] = {}
        for t, i in zip(self.teacher.tolist(), self.student.tolist()):
            first.setdefault(i, t)
        return [first[i] for i in range(num_students)]


@dataclass(frozen=True)
class TeacherTargets:
    """Per completion row, the teacher answer the student's cross-entropy term reads, in the student's tokens:
    its ids, its label mask (0 on a trajectory's tool results) and which teacher sequence it is (the SFT warm-up
    trains once per distinct answer)."""

    completions: list[list[int]]
    label_masks: list[list[int]]
    index: list[int]


@dataclass
class DiscriminatorBatch:
    """Everything the discriminator reads for one batch, in its own tokens.

    `teacher_seqs` (one per distinct teacher answer of the batch's prompts) and `student_seqs` (one per completion)
    are prompt + response ids; `response_starts[j]` says where the response of `(teacher_seqs + student_seqs)[j]`
    begins (an int, the prompt's length) or, for a trajectory, its 0/1 token mask (assistant tokens 1, prompt and tool
    results 0): mean pooling reads it. `pairs` says which sequences the loss compares, with their weights.
    `student_lengths` are the student's own tokens per completion (score shaping); `teacher_truncated` /
    `student_truncated` count responses cut by the length limit; `sft` is what the student's teacher-SFT term needs
    (None outside training)."""

    teacher_seqs: list[list[int]]
    student_seqs: list[list[int]]
    response_starts: list | None
    pairs: Pairs
    student_lengths: list[int] | None = None
    answers_per_prompt: float = 1.0
    teacher_truncated: int = 0
    student_truncated: int = 0
    sft: TeacherTargets | None = None

    @classmethod
    def of_sequences(cls, teacher_seqs, student_seqs, index, response_starts=None) -> DiscriminatorBatch:
        """A batch of sequences already encoded: `index` is `Pairs` or one teacher index per completion (a tensor)."""
        return cls(list(teacher_seqs), list(student_seqs), response_starts, Pairs.of(index))

    @property
    def num_teacher(self) -> int:
        return len(self.teacher_seqs)

    @property
    def sequences(self) -> list[list[int]]:
        """`teacher_seqs + student_seqs`: the order of every score and of `response_starts`."""
        return self.teacher_seqs + self.student_seqs

    def metrics(self) -> dict:
        """What the batch itself says (logged as `discriminator/*`): truncation ratios and teacher answer counts."""
        return {
            "student_truncated_ratio": self.student_truncated / max(len(self.student_seqs), 1),
            "teacher_truncated_ratio": self.teacher_truncated / max(len(self.teacher_seqs), 1),
            "num_teacher_sequences": float(len(self.teacher_seqs)),
            "teacher_answers_per_prompt": self.answers_per_prompt,
        }


class InputEncoder:
    """Builds `DiscriminatorBatch`es from rows and completions (training) or from held-out triples.

    `tokenizer`: the student's; `max_completion_length`: the student's response limit (teacher answers are cut there,
    as completions are); `stop_token_ids`: what the student's generation stops at (TRL's `eos_token_ids`); `encoding`:
    a `DiscriminatorEncoding` when the discriminator has a tokenizer of its own; `tools_of(name)`: the tools the
    prompts of environment `name` (None: the trainer's own tools) are rendered with, for teacher trajectories.
    """

    def __init__(self, tokenizer, max_completion_length: int | None = None, stop_token_ids=None, encoding=None,
                 teacher_response_column: str = "teacher_response", tools_of: Callable | None = None,
                 chat_template=None, chat_template_kwargs: dict | None = None):
        self.tokenizer = tokenizer
        text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's text tokenizer
        self.max_completion_length = max_completion_length
        self.stop_token_ids = [int(t) for t in (stop_token_ids or []) if t is not None]
        # The token a finished response ends with: what a completion stops at, appended to every teacher answer.
        self.end_token_id = end_of_turn_token_id(text_tokenizer, self.stop_token_ids or None)
        self.pad_token_id = text_tokenizer.pad_token_id
        self.encoding = encoding
        self.teacher_response_column = teacher_response_column
        self.tools_of = tools_of or (lambda name: None)
        self.chat_template, self.chat_template_kwargs = chat_template, chat_template_kwargs
        self._trajectory_encoders: dict = {}  # one per tool set (environment)

    @property
    def discriminator_tokenizer(self):
        """The tokenizer of the ids the discriminator reads."""
        return self.tokenizer if self.encoding is None else self.encoding.tokenizer

    # ------------------------------------------------------------------ strategies
    def teacher_completion_ids(self, text: str) -> tuple[list[int], bool]:
        """A text answer as a finished completion (`gad_trl.data.teacher_completion_ids`, the symmetry rule) with this
        run's tokenizer, end-of-turn token and length limit; returns (ids, truncated)."""
        return teacher_completion_ids(self.tokenizer, text, self.end_token_id, self.max_completion_length)

    def trajectory_encoder(self, environment: str | None = None):
        """The encoder of teacher trajectories rendered with the tools of `environment`."""
        from .trajectory import TrajectoryEncoder

        if environment not in self._trajectory_encoders:
            self._trajectory_encoders[environment] = TrajectoryEncoder(
                self.tokenizer, self.tools_of(environment), self.end_token_id, self.chat_template,
                self.chat_template_kwargs)
        return self._trajectory_encoders[environment]

    # ------------------------------------------------------------------ training
    def encode(self, rows: list[dict], prompt_ids_list: list[list[int]], completion_ids_list: list[list[int]],
               tool_masks: list[list[int]] | None = None, environments: list | None = None,
               device=None) -> DiscriminatorBatch:
        """The batch of a generation step: `rows` (each with `prompt` and the teacher column), the prompt ids the
        completions continue (TRL's), the completions, their tool masks (0 on tool-result tokens; None without tools)
        and, with several environments, each row's environment name.

        One teacher sequence per distinct answer of a prompt (scored once); each completion is paired with every
        answer of its prompt, an answer given twice listed twice, so each of k answers weighs 1/k as in `gad-trl
        seqkd` (one example per answer) and the held-out evaluation."""
        column = self.teacher_response_column
        groups, teacher_seqs, teacher_completions, keys, masks = [], [], [], {}, []
        teacher_cut = 0
        for i, row in enumerate(rows):
            group = []
            for answer in teacher_answers(row[column]):
                key = (tuple(prompt_ids_list[i]), answer if isinstance(answer, str) else json.dumps(answer))
                if key not in keys:
                    if isinstance(answer, str):
                        ids, was_cut = self.teacher_completion_ids(answer)
                        mask = None
                    else:
                        environment = environments[i] if environments is not None else None
                        ids, mask, was_cut = self.trajectory_encoder(environment).encode(
                            row["prompt"], answer, self.max_completion_length)
                    teacher_cut += was_cut
                    keys[key] = len(teacher_seqs)
                    teacher_seqs.append(list(prompt_ids_list[i]) + ids)
                    teacher_completions.append(ids)
                    masks.append(mask)
                group.append(keys[key])
            groups.append(group)
        student_seqs = [list(p) + list(c) for p, c in zip(prompt_ids_list, completion_ids_list, strict=True)]
        # Where each response starts (the prompt's length), for mean pooling; a tool-using trajectory gives its token
        # mask instead (assistant tokens 1, prompt and tool results 0).
        starts = [len(s) - len(c) if m is None else [0] * (len(s) - len(c)) + m
                  for s, c, m in zip(teacher_seqs, teacher_completions, masks)]
        starts += [len(s) - len(c) if tool_masks is None else [0] * (len(s) - len(c)) + list(tool_masks[i])
                   for i, (s, c) in enumerate(zip(student_seqs, completion_ids_list))]
        if self.encoding is not None:
            if tool_masks is not None or any(m is not None for m in masks):
                raise ValueError(
                    "A discriminator with its own tokenizer re-encodes text answers; tool-using trajectories are laid "
                    "out in the student's tokens only. Use a discriminator that shares the student's tokenizer."
                )
            teacher_seqs, student_seqs, starts = self.encoding.encode_batch(
                [row["prompt"] for row in rows], groups, teacher_completions, completion_ids_list)
        index = sft_teacher_per_row(groups)
        sft = TeacherTargets([teacher_completions[j] for j in index],
                             [masks[j] or [1] * len(teacher_completions[j]) for j in index],  # no CE on tool results
                             index)
        ends = {*self.stop_token_ids, self.pad_token_id}
        return DiscriminatorBatch(
            teacher_seqs, student_seqs, starts, Pairs.from_groups(groups, device),
            student_lengths=([len(c) for c in completion_ids_list] if tool_masks is None
                             else [sum(m) for m in tool_masks]),  # the student's own tokens, not tool results
            answers_per_prompt=sum(len(g) for g in groups) / max(len(groups), 1),
            teacher_truncated=teacher_cut,
            student_truncated=sum(1 for ids in completion_ids_list if len(ids) == 0 or ids[-1] not in ends),
            sft=sft,
        )

    # ------------------------------------------------------------------ held-out and judge triples
    def student_sequences(self, triples: list[dict]) -> tuple[list[list[int]], list[int]]:
        """(sequences, response starts) of triples' student responses, in the discriminator's tokens: the prompt's ids
        and the exact sampled ids when the triple has them (decoding and re-tokenising a sample need not
        round-trip), else its text encoded as a (finished or cut) response."""
        heads = [prompt_ids(self.tokenizer, t["prompt"]) for t in triples]
        responses = []
        for t in triples:
            if t.get("student_completion_ids") is not None:
                responses.append(list(t["student_completion_ids"]))
            else:
                finished = t.get("student_finished", True)
                responses.append(teacher_completion_ids(self.tokenizer, t["student_response"],
                                                        self.end_token_id if finished else None)[0])
        return self._in_discriminator_tokens(triples, heads, responses)

    def encode_triples(self, triples: list[dict]) -> DiscriminatorBatch:
        """The held-out triples as a batch: every teacher answer of a triple (k answers: k sequences, each paired with
        the triple's student response at weight 1/k), cut at `max_completion_length` as in training."""
        groups, heads, responses = [], [], []
        for i, t in enumerate(triples):
            head = prompt_ids(self.tokenizer, t["prompt"])
            group = []
            for answer in teacher_answers(t["teacher_response"]):
                group.append(len(responses))
                heads.append(head)
                responses.append(self.teacher_completion_ids(answer)[0])
            groups.append(group)
        owner = [i for i, g in enumerate(groups) for _ in g]
        teacher_seqs, teacher_starts = self._in_discriminator_tokens([triples[i] for i in owner], heads, responses)
        student_seqs, student_starts = self.student_sequences(triples)
        return DiscriminatorBatch(teacher_seqs, student_seqs, teacher_starts + student_starts, Pairs.from_groups(groups),
                                  student_truncated=sum(not t.get("student_finished", True) for t in triples))

    def _in_discriminator_tokens(self, triples, heads, responses):
        if self.encoding is None:
            return [h + r for h, r in zip(heads, responses)], [len(h) for h in heads]
        # Both sides re-encoded after the same prompt, rendered in the discriminator's tokens.
        own_heads = [self.encoding.prompt_ids(t["prompt"]) for t in triples]
        return ([h + self.encoding.response_ids(r) for h, r in zip(own_heads, responses)],
                [len(h) for h in own_heads])


def sft_teacher_per_row(groups: list[list[int]]) -> list[int]:
    """The teacher answer each completion row carries for the SFT loss: the rows of a prompt take its answers in turn
    (row r of the prompt -> answer r mod k), so the k answers share the SFT signal."""
    seen: dict[tuple, int] = {}
    chosen = []
    for group in groups:
        key = tuple(group)
        r = seen.get(key, 0)
        seen[key] = r + 1
        chosen.append(group[r % len(group)])
    return chosen
