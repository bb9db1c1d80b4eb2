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


def row_seeded_sampling(seeds: list[int], temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0):
    """A logits processor that samples each row's next token from its own `torch.Generator` (seeded by `seeds[i]`)
    after temperature / top-p / top-k, and leaves only that token: with greedy decoding (`do_sample=False`) the
    generated text of a row then depends on its seed, not on which rows share its batch nor on the order batches
    are drawn in (a resumed run draws the same samples; floating-point effects of padding aside)."""
    import torch
    from transformers import LogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = [TemperatureLogitsWarper(temperature)]
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))

    class RowSeededSampling(LogitsProcessor):
        def __init__(self):
            self.generators = None

        def __call__(self, input_ids, scores):
            if self.generators is None:  # on the scores' device
                self.generators = [torch.Generator(device=scores.device).manual_seed(int(s)) for s in seeds]
            for warper in warpers:
                scores = warper(input_ids, scores)
            probs = torch.softmax(scores.float(), dim=-1)
            chosen = torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])
            out = torch.full_like(scores, float("-inf"))
            out[torch.arange(len(chosen), device=scores.device), chosen] = 0.0
            return out

    return RowSeededSampling()


def generate_completions(
    model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 8, progress: str | None = None,
    row_seeds: list[int] | None = None, **sampling,
) -> list[tuple[list[int], bool]]:
    """For each chat prompt, `(completion_ids, finished)`: the generated ids up to and including the first stop token
    (`stop_token_ids`; `finished` False when `max_new_tokens` cut the answer first).

    Left-padded batches of `batch_size`, in eval mode (the model's mode is restored afterwards). `sampling`:
    `model.generate` keywords (`do_sample`, `temperature`, ...), the generation config's when none. `progress`: the
    description of a progress bar over the batches, or None for none. `row_seeds` (with `do_sample=True`): one seed
    per prompt, each sampled from its own random stream (`row_seeded_sampling`) instead of the global one.
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
            kwargs = dict(sampling)
            if row_seeds is not None and kwargs.pop("do_sample", False):
                from transformers import LogitsProcessorList

                warp = {k: kwargs.pop(k) for k in ("temperature", "top_p", "top_k") if k in kwargs}
                processor = row_seeded_sampling(row_seeds[start : start + batch_size], **{
                    k: v for k, v in warp.items() if v is not None})
                kwargs.update(do_sample=False, logits_processor=LogitsProcessorList([processor]),
                              temperature=None, top_p=None, top_k=None)
            with torch.no_grad():
                generated = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                           eos_token_id=sorted(eos_ids) or None, **kwargs)
            for ids in generated[:, batch["input_ids"].shape[1] :].tolist():
                cut = next((i for i, t in enumerate(ids) if t in eos_ids), None)
                completions.append((ids, False) if cut is None else (ids[: cut + 1], True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return completions
