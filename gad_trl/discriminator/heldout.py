"""A fixed held-out set of (prompt, teacher response, student response) triples and the discriminator's accuracy on it.

Training-set discriminator accuracy is measured on fresh samples each step and can mislead (docs/algorithm.md,
"Monitoring"): these triples are drawn once with a fixed seed and reused, so successive evaluations are comparable.
This module is the one home of the draw (`draw_rows`, `sample_triples`), of the cache (`save_triples`,
`load_triples`, `load_or_sample`) and of the scoring (`evaluate_triples`, which reads the triples through the
discriminator's `InputEncoder`), used by `gad-trl eval-discriminator` and by `GADTrainer.evaluate`
(`GADConfig.discriminator_heldout_size`, through `Discriminator.evaluate_triples`).

A cache is keyed on what it was drawn from (data source, split, sample count, seed, student, length limit, ...): the
key is stored in its first line and checked on reuse, so other settings never silently reuse old triples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

from ..data import prompt_messages, text_answers

logger = logging.getLogger(__name__)

CACHE_FORMAT = "gad_trl.heldout_triples.v2"  # v2: the first line holds the key the triples were drawn with


class HeldoutCacheMismatch(ValueError):
    """A held-out cache drawn with other settings than the ones asked for."""


# --------------------------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------------------------


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
    found = lines[0].get("format") if lines and isinstance(lines[0], dict) else None
    if found != CACHE_FORMAT:
        if isinstance(found, str) and found.startswith("gad_trl.heldout_triples."):
            raise HeldoutCacheMismatch(
                f"{path} is a held-out cache of an older format ({found}) that does not record what it was drawn "
                "from; delete it to draw a new set."
            )
        raise ValueError(f"{path} is not a held-out triples cache ({CACHE_FORMAT}).")
    metadata = {k: v for k, v in lines[0].items() if k != "format"}
    return lines[1:], metadata


def check_cache_key(path: str | os.PathLike, stored: dict, expected: dict) -> None:
    """Raise `HeldoutCacheMismatch` naming every setting of `expected` (None = any) that the cache was not drawn with."""
    expected = json.loads(json.dumps(expected))  # compare as stored (tuples -> lists, ...)
    diff = {k: (stored.get(k), v) for k, v in expected.items() if v is not None and stored.get(k) != v}
    if diff:
        details = "; ".join(f"{k}: cache {old!r}, asked {new!r}" for k, (old, new) in sorted(diff.items()))
        raise HeldoutCacheMismatch(
            f"The held-out cache {path} was drawn with other settings ({details}), so its triples are not the set "
            "asked for. Use the settings it was drawn with, point to another cache file, or delete it to draw a new set."
        )


def load_or_sample(
    path: str | os.PathLike, key: dict, sample: Callable[[], list[dict]], reuse: bool = True, save: bool = True
) -> tuple[list[dict], dict, bool]:
    """The triples at `path` if it holds a set drawn with `key`, else `sample()`'s, saved there with `key`.

    Returns `(triples, metadata, created)`. With `reuse=True`, a cache drawn with other settings is an error
    (`HeldoutCacheMismatch`); with `reuse=False`, an existing file is replaced by a new draw, with a warning.
    `save=False` (processes other than the main one) reads but never writes.
    """
    path = Path(path)
    if path.exists():
        if reuse:
            triples, metadata = load_triples(path)
            check_cache_key(path, metadata, key)
            return triples, metadata, False
        if save:
            logger.warning(f"Replacing the held-out triples left in {path} by an earlier run with a new draw.")
    triples = sample()
    if save:
        save_triples(path, triples, key)
    return triples, json.loads(json.dumps(key)), True


def rows_digest(rows: list[dict]) -> str:
    """A short hash of drawn rows (prompts and teacher responses): identifies the data a set was drawn from."""
    payload = json.dumps([[r["prompt"], r["teacher_response"]] for r in rows], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------------
# Draw
# --------------------------------------------------------------------------------------------------------------------


def draw_rows(dataset, num_samples: int, seed: int, teacher_response_column: str = "teacher_response") -> list[dict]:
    """`num_samples` rows drawn without replacement with `seed`, in data set order, as
    `{"prompt": messages, "teacher_response": text (a list of texts for a row with k answers), "row": index}`."""
    import random

    n = len(dataset)
    indices = sorted(random.Random(seed).sample(range(n), min(num_samples, n)))
    rows = []
    for i in indices:
        row = dataset[i]
        rows.append(
            {
                "prompt": prompt_messages(row, i),
                "teacher_response": _one_or_list(text_answers(row, teacher_response_column, i,
                                                               "the held-out discriminator evaluation")),
                "row": i,
            }
        )
    return rows


def _one_or_list(answers: list[str]):
    return answers[0] if len(answers) == 1 else answers


def sample_triples(
    model, tokenizer, rows: list[dict], seed: int, max_new_tokens: int, temperature: float, batch_size: int = 8
) -> list[dict]:
    """One sampled student response per row: `{"prompt", "teacher_response", "student_response",
    "student_completion_ids", "student_finished"}` (plus the row's `row` index when it has one).

    `rows` hold `prompt` (messages) and `teacher_response` (text). Sampling is seeded, left-padded, batched
    (`gad_trl.local_generation.generate_completions`).
    """
    import torch

    from ..local_generation import generate_completions

    torch.manual_seed(seed)
    completions = generate_completions(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens, batch_size,
                                       do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
    triples = []
    for r, (completion, finished) in zip(rows, completions):
        # The completion as the trainer scores it: generated tokens up to and including the first EOS.
        body = completion[:-1] if finished else completion
        triple = {
            "prompt": r["prompt"],
            "teacher_response": r["teacher_response"],
            "student_response": tokenizer.decode(body, skip_special_tokens=True),
            "student_completion_ids": completion,
            "student_finished": finished,
        }
        if "row" in r:
            triple["row"] = r["row"]
        triples.append(triple)
    return triples


# --------------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------------


def evaluate_triples(model, encoder, triples: list[dict], batch_size: int = 8) -> dict:
    """Accuracy (fraction with teacher score > student score), score gap and score statistics of the discriminator.

    `encoder`: the discriminator's `InputEncoder` (`gad_trl.discriminator.inputs`), which lays the triples out as
    training does: teacher answers as finished completions cut at the student's length limit, student responses as
    sampled, both re-encoded for a discriminator with its own tokenizer. A triple whose `teacher_response` is a list
    of k answers counts each (answer, student) pair with weight 1/k, as the training loss does: every triple counts
    once. `teacher_scores` lists every answer's score.
    """
    import statistics

    import torch

    from .model import score_sequences

    batch = encoder.encode_triples(triples)
    tokenizer = encoder.discriminator_tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    starts = batch.response_starts
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        t_scores = score_sequences(model, batch.teacher_seqs, pad, device, batch_size,
                                   starts[: batch.num_teacher]).float().cpu().tolist()
        s_scores = score_sequences(model, batch.student_seqs, pad, device, batch_size,
                                   starts[batch.num_teacher :]).float().cpu().tolist()
    owner = batch.pairs.student.tolist()  # answer -> its triple
    answers_of = [owner.count(i) for i in range(len(triples))]
    # Per (answer, student) pair, weighted 1/k: each triple counts once.
    weighted = [(t - s_scores[i], 1.0 / answers_of[i]) for t, i in zip(t_scores, owner)]
    n = len(triples)
    return {
        "num_pairs": n,
        "accuracy": sum(w for d, w in weighted if d > 0) / n,
        "score_diff": sum(d * w for d, w in weighted) / n,
        "teacher_score_mean": statistics.fmean(t_scores),
        "teacher_score_std": statistics.pstdev(t_scores),
        "student_score_mean": statistics.fmean(s_scores),
        "student_score_std": statistics.pstdev(s_scores),
        "student_truncated_fraction": batch.student_truncated / n,
        "teacher_scores": t_scores,
        "student_scores": s_scores,
    }
