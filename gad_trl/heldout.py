"""A fixed held-out set of (prompt, teacher response, student response) triples and the discriminator's accuracy on it.

Training-set discriminator accuracy is measured on fresh samples each step and can mislead (GAD_SPEC.md): these
triples are sampled once with a fixed seed and reused, so successive evaluations are comparable. Used by
`gad-trl eval-discriminator` and by `GADTrainer.evaluate` (`GADConfig.discriminator_heldout_size`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .end_of_turn import end_of_turn_token_id

CACHE_FORMAT = "gad_trl.heldout_triples.v1"


def save_triples(path: str | os.PathLike, triples: list[dict], metadata: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps({"format": CACHE_FORMAT, **metadata}) + "\n")
        for t in triples:
            f.write(json.dumps(t) + "\n")
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache that later calls would trust


def load_triples(path: str | os.PathLike) -> tuple[list[dict], dict]:
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    if not lines or lines[0].get("format") != CACHE_FORMAT:
        raise ValueError(f"{path} is not a held-out triples cache ({CACHE_FORMAT}).")
    metadata = {k: v for k, v in lines[0].items() if k != "format"}
    return lines[1:], metadata


def sample_triples(
    model, tokenizer, rows: list[dict], seed: int, max_new_tokens: int, temperature: float, batch_size: int = 8
) -> list[dict]:
    """One sampled student response per row: `{"prompt", "teacher_response", "student_response", "student_finished"}`.

    `rows` hold `prompt` (messages) and `teacher_response` (text). Sampling is seeded, left-padded, batched.
    """
    import torch

    torch.manual_seed(seed)
    eos_ids = set(_eos_ids(model, tokenizer))
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    triples = []
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            texts = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in batch]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    do_sample=True,
                    temperature=temperature,
                    top_p=1.0,
                    top_k=0,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=sorted(eos_ids) or None,
                )
            for r, ids in zip(batch, out[:, enc["input_ids"].shape[1] :].tolist()):
                cut = next((i for i, t in enumerate(ids) if t in eos_ids), None)
                finished = cut is not None
                # The completion as the trainer scores it: generated tokens up to and including the first EOS.
                completion = ids[: cut + 1] if finished else [t for t in ids if t != tokenizer.pad_token_id]
                body = completion[:-1] if finished else completion
                triples.append(
                    {
                        "prompt": r["prompt"],
                        "teacher_response": r["teacher_response"],
                        "student_response": tokenizer.decode(body, skip_special_tokens=True),
                        "student_completion_ids": completion,
                        "student_finished": finished,
                    }
                )
    finally:
        tokenizer.padding_side = old_side
    return triples


def _eos_ids(model, tokenizer) -> list[int]:
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


def encode_pair(
    tokenizer, prompt: list[dict], response: str, finished: bool = True, end_token_id: int | None = None
) -> list[int]:
    """Token ids the discriminator reads: chat-templated prompt + response (no special tokens) + the end-of-turn token
    if finished (`end_token_id`, default: the one the chat template closes assistant turns with, as in training)."""
    ids = _prompt_ids(tokenizer, prompt) + tokenizer(response, add_special_tokens=False)["input_ids"]
    if finished:
        ids.append(end_token_id if end_token_id is not None else end_of_turn_token_id(tokenizer))
    return ids


def last_token_scores(model, sequences: list[list[int]], pad_token_id: int, batch_size: int = 8) -> list[float]:
    """Scores at the last token of each sequence, computed exactly as `GADTrainer` does (`score_sequences`)."""
    import torch

    from .discriminator import score_sequences

    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        return score_sequences(model, sequences, pad_token_id, device, batch_size).float().cpu().tolist()


def _student_sequence(tokenizer, triple: dict, end_token_id: int) -> list[int]:
    if triple.get("student_completion_ids") is not None:
        # Exact sampled tokens: decoding and re-tokenising a sample need not round-trip.
        return _prompt_ids(tokenizer, triple["prompt"]) + list(triple["student_completion_ids"])
    finished = triple.get("student_finished", True)
    return encode_pair(tokenizer, triple["prompt"], triple["student_response"], finished, end_token_id)


def _prompt_ids(tokenizer, prompt: list[dict]) -> list[int]:
    prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return tokenizer(prompt_text, add_special_tokens=False)["input_ids"]


def evaluate_triples(model, tokenizer, triples: list[dict], batch_size: int = 8) -> dict:
    """Accuracy (fraction with teacher score > student score), score gap and score statistics of the discriminator."""
    import statistics

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    end = end_of_turn_token_id(tokenizer)
    teacher_seqs = [encode_pair(tokenizer, t["prompt"], t["teacher_response"], True, end) for t in triples]
    student_seqs = [_student_sequence(tokenizer, t, end) for t in triples]
    t_scores = last_token_scores(model, teacher_seqs, pad, batch_size)
    s_scores = last_token_scores(model, student_seqs, pad, batch_size)
    diffs = [t - s for t, s in zip(t_scores, s_scores)]
    n = len(diffs)
    return {
        "num_pairs": n,
        "accuracy": sum(d > 0 for d in diffs) / n,
        "score_diff": sum(diffs) / n,
        "teacher_score_mean": statistics.fmean(t_scores),
        "teacher_score_std": statistics.pstdev(t_scores),
        "student_score_mean": statistics.fmean(s_scores),
        "student_score_std": statistics.pstdev(s_scores),
        "student_truncated_fraction": sum(not t.get("student_finished", True) for t in triples) / n,
        "teacher_scores": t_scores,
        "student_scores": s_scores,
    }
