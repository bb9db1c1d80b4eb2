"""Batched generation with transformers in this process: the student's answers for the judge evaluation
(`gad_trl.workflow.evaluation.local_answers`, greedy) and for the fixed held-out set (`gad_trl.discriminator.heldout.sample_triples`,
seeded sampling). One home for how a batch is padded and where a generated answer ends."""

from __future__ import annotations


def stop_token_ids(model, tokenizer) -> list[int]:
    """The ids that end a generated answer: the model's generation-config EOS id(s) and the tokenizer's EOS."""
    ids = []
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(eos, int):
        ids.append(eos)
    elif eos:
        ids.extend(eos)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def generate_completions(
    model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 8, progress: str | None = None,
    **sampling,
) -> list[tuple[list[int], bool]]:
    """For each chat prompt, `(completion_ids, finished)`: the generated ids up to and including the first stop token
    (`stop_token_ids`; `finished` False when `max_new_tokens` cut the answer first).

    Left-padded batches of `batch_size`, in eval mode (the model's mode is restored afterwards). `sampling`:
    `model.generate` keywords (`do_sample`, `temperature`, ...), the generation config's when none. `progress`: the
    description of a progress bar over the batches, or None for none.
    """
    import torch

    from .data import prompt_text

    model = getattr(model, "module", model)  # a DDP-wrapped student generates through its module
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = stop_token_ids(model, tokenizer)
    device = next(model.parameters()).device
    starts = range(0, len(prompts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=progress, unit="batch", dynamic_ncols=True)
    completions = []
    try:
        for start in starts:
            texts = [prompt_text(tokenizer, p) for p in prompts[start : start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                generated = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                           eos_token_id=sorted(eos_ids) or None, **sampling)
            for ids in generated[:, batch["input_ids"].shape[1] :].tolist():
                cut = next((i for i, t in enumerate(ids) if t in eos_ids), None)
                completions.append((ids, False) if cut is None else (ids[: cut + 1], True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return completions
