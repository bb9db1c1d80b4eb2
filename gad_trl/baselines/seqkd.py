"""SeqKD (sequence-level knowledge distillation, Kim & Rush 2016): supervised fine-tuning on the teacher's answers,
GAD's baseline and its SFT warm-up's data. Training is TRL's `SFTTrainer` (`gad-trl seqkd`); this module converts GAD
rows to its data set, laid out as GAD's own teacher-SFT term reads them."""

from __future__ import annotations

from ..data import prompt_messages, teacher_texts


def to_seqkd_dataset(dataset, teacher_response_column: str = "teacher_response", tokenizer=None, tools=None):
    """Convert GAD rows to a data set for `SFTTrainer` (SeqKD), one example per teacher answer: a row with k answers
    gives k examples (SeqKD learns from every answer GAD's discriminator sees). Other columns are dropped. Raises on
    the first row without a usable teacher response.

    Text answers: TRL's conversational prompt-completion format, `{"prompt": [messages], "completion": [{"role":
    "assistant", "content": answer}]}`, so the loss is on the answer only. Tool-using trajectories (which need
    `tokenizer`, the student's, and the run's `tools`): tokenized examples laid out as GAD lays them out
    (`TrajectoryEncoder.sft_example`: `input_ids`, `labels` -100 on the prompt and on tool results), so SeqKD trains
    on exactly the tokens GAD's teacher-SFT loss trains on.
    """
    from ..data import as_trajectory

    encoders = []

    def encoder():
        if not encoders:
            if tokenizer is None:
                raise ValueError("Teacher trajectories are laid out with the student's chat template: pass the "
                                 "student's tokenizer to to_seqkd_dataset.")
            from ..discriminator.trajectory import TrajectoryEncoder
            from ..end_of_turn import end_of_turn_token_id

            encoders.append(TrajectoryEncoder(tokenizer, tools, end_of_turn_token_id(tokenizer)))
        return encoders[0]

    def convert(batch, indices):
        out = {"prompt": [], "completion": []} if not trajectories else {"input_ids": [], "labels": []}
        for j, idx in enumerate(indices):
            row = {name: values[j] for name, values in batch.items()}
            messages = prompt_messages(row, idx)
            for answer in teacher_texts(row, teacher_response_column, idx):
                if trajectories:  # a text answer among trajectories: one given without calling a tool
                    example = encoder().sft_example(messages, as_trajectory(answer, idx, teacher_response_column))
                    out["input_ids"].append(example["input_ids"])
                    out["labels"].append(example["labels"])
                else:
                    out["prompt"].append(messages)
                    out["completion"].append([{"role": "assistant", "content": answer}])
        return out

    trajectories = any(not isinstance(answer, str) for i, row in enumerate(dataset)
                       for answer in teacher_texts(row, teacher_response_column, i))
    return dataset.map(convert, with_indices=True, batched=True, remove_columns=dataset.column_names)
