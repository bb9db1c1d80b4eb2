"""`gad-trl eval-discriminator`: discriminator accuracy and score gap on a fixed held-out set of triples.

Training-set discriminator accuracy is measured on fresh student samples every step and can mislead
(docs/algorithm.md).
This command measures it on a *fixed* held-out set: `num_samples` prompts drawn with `seed` from the evaluation split,
their teacher responses, and one student response per prompt sampled with the same seed. The triples are written
once to `heldout_cache` (JSONL, first line = the settings they were drawn with) and reused by every later call with
the same settings (other settings are an error, never a silent reuse), so numbers from successive checkpoints are
comparable. Scores are the discriminator head's output at the last token of the response (the
end-of-turn token when the response is finished), computed by the trainer's own `score_sequences`; student responses
are scored on their sampled token ids (kept in the cache next to the decoded text).

    gad-trl eval-discriminator --discriminator_name_or_path outputs/tiny-gad/discriminator \
        --student_name_or_path outputs/tiny/model --dataset_name outputs/tiny/data --dataset_split test
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from ..discriminator.heldout import draw_rows, evaluate_triples, load_or_sample, sample_triples
from ..discriminator.inputs import InputEncoder


@dataclass
class EvalDiscriminatorArguments:
    discriminator_name_or_path: str = field(
        metadata={"help": "Discriminator checkpoint (AutoModelForSequenceClassification, num_labels=1), e.g. "
                  "`<output_dir>/discriminator`."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub id, local directory or .parquet/.json/.jsonl file (needed to sample)."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Data set configuration name."})
    dataset_split: str = field(default="test", metadata={"help": "Split the held-out prompts are drawn from."})
    teacher_response_column: str = field(default="teacher_response", metadata={"help": "Teacher response column."})
    student_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Student that samples the held-out responses (first call only). Default: the parent "
                  "folder of the discriminator when it holds a model (`save_model` layout)."},
    )
    num_samples: int = field(default=64, metadata={"help": "Held-out prompts (one student response each)."})
    seed: int = field(default=42, metadata={"help": "Seed of the prompt draw and the student sampling."})
    max_new_tokens: int = field(default=256, metadata={"help": "Student response length limit."})
    temperature: float = field(default=0.8, metadata={"help": "Student sampling temperature (paper: 0.8)."})
    batch_size: int = field(default=8, metadata={"help": "Sequences per forward (sampling and scoring)."})
    heldout_cache: str | None = field(
        default=None,
        metadata={"help": "JSONL file of the held-out triples: written on the first call, reused by calls with the same "
                  "sampling settings (other settings are an error naming them). "
                  "Default: $GAD_TRL_CACHE (or ~/.cache/gad_trl)/heldout-<hash of the sampling settings>.jsonl."},
    )
    output_json: str | None = field(default=None, metadata={"help": "Also write the metrics to this JSON file."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Passed to from_pretrained."})


# --------------------------------------------------------------------------------------------------------------------
# Held-out triples
# --------------------------------------------------------------------------------------------------------------------


def _local_or_id(name: str | None) -> str | None:
    """A local path made absolute (so the same relative path typed in two projects is two keys); a Hub id as is."""
    if not name:
        return name
    path = Path(os.path.expanduser(name))
    if path.exists() or ("{split}" in name and path.parent.is_dir()):
        return str(path.parent.resolve() / path.name) if "{split}" in name else str(path.resolve())
    return name


def _sampling_key(args: EvalDiscriminatorArguments, student: str | None) -> dict:
    """What a held-out set is drawn from; stored in the cache and checked on reuse (None: not asked, any value)."""
    return {
        "dataset_name": _local_or_id(args.dataset_name),
        "dataset_config": args.dataset_config,
        "dataset_split": args.dataset_split,
        "teacher_response_column": args.teacher_response_column,
        "student": _local_or_id(student),
        "num_samples": args.num_samples,
        "seed": args.seed,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
    }


def default_cache_path(key: dict) -> Path:
    root = Path(os.environ.get("GAD_TRL_CACHE", Path.home() / ".cache" / "gad_trl"))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return root / f"heldout-{digest}.jsonl"


def load_or_create_heldout(args: EvalDiscriminatorArguments) -> tuple[list[dict], dict, Path, bool]:
    """(triples, metadata, cache path, created): reuse the cache when it was drawn with these settings (an error when
    it was drawn with others), else sample it once and save it."""
    student = args.student_name_or_path or _default_student(args.discriminator_name_or_path)
    key = _sampling_key(args, student)
    path = Path(args.heldout_cache) if args.heldout_cache else default_cache_path(key)

    def sample() -> list[dict]:
        if not args.dataset_name:
            raise ValueError(f"No held-out cache at {path}; `dataset_name` is needed to sample one.")
        if student is None:
            raise ValueError(f"No held-out cache at {path}; `student_name_or_path` is needed to sample one.")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .utils import load_any_dataset

        dataset = load_any_dataset(args.dataset_name, args.dataset_config)
        if args.dataset_split not in dataset:
            raise KeyError(f"Split {args.dataset_split!r} not in {args.dataset_name!r} (splits: {list(dataset)}).")
        rows = draw_rows(dataset[args.dataset_split], args.num_samples, args.seed, args.teacher_response_column)
        tokenizer = AutoTokenizer.from_pretrained(student, trust_remote_code=args.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(student, trust_remote_code=args.trust_remote_code)
        return sample_triples(model, tokenizer, rows, args.seed, args.max_new_tokens, args.temperature, args.batch_size)

    triples, metadata, created = load_or_sample(path, key, sample)
    return triples, metadata, path, created


def _default_student(discriminator_path: str) -> str | None:
    parent = Path(discriminator_path).resolve().parent
    if Path(discriminator_path).name == "discriminator" and (parent / "config.json").exists():
        return str(parent)
    return None


# --------------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------------


def evaluate(args: EvalDiscriminatorArguments) -> dict:
    from ..discriminator.adapters import load_saved_discriminator, require_trained_value_head

    # Before any sampling: a folder without a trained head (e.g. the student's model/) would score with a random one.
    require_trained_value_head(args.discriminator_name_or_path)
    triples, metadata, path, created = load_or_create_heldout(args)
    if not triples:
        raise ValueError(f"The held-out cache {path} holds no triples.")
    disc_path = args.discriminator_name_or_path

    # A plain folder, or the adapter folder of a LoRA / QLoRA / shared-base discriminator.
    model = load_saved_discriminator(disc_path, trust_remote_code=args.trust_remote_code)
    tokenizer, encoding = _tokenizers(disc_path, metadata.get("student"), args.trust_remote_code)
    # Teacher responses are cut at the student's length limit, as the trainer cuts them.
    max_length = metadata.get("max_new_tokens", args.max_new_tokens)
    encoder = InputEncoder(tokenizer, max_length, encoding=encoding)
    metrics = evaluate_triples(model, encoder, triples, args.batch_size)
    metrics.update(
        {"discriminator": disc_path, "heldout_cache": str(path), "heldout_created": created, "heldout": metadata}
    )
    return metrics


def _tokenizers(disc_path: str, student: str | None, trust_remote_code: bool):
    """(the student's tokenizer, the encoding for the discriminator or None). The triples hold the student's tokens;
    `save_model` writes the discriminator's tokenizer next to its weights, which is the student's unless the run gave
    the discriminator its own (`discriminator_processing_class`); then every triple is re-encoded for it."""
    from transformers import AutoTokenizer

    from ..discriminator.tokenization import DiscriminatorEncoding, load_discriminator_tokenizer, same_tokenizer
    from ..end_of_turn import end_of_turn_token_id

    disc_tokenizer = load_discriminator_tokenizer(disc_path, trust_remote_code)
    student_tokenizer = AutoTokenizer.from_pretrained(student, trust_remote_code=trust_remote_code) if student else None
    if student_tokenizer is None and disc_tokenizer is None:
        raise ValueError(
            f"No tokenizer for the discriminator {disc_path!r}: the folder holds none and the held-out cache names no "
            "student. Save the tokenizer next to the discriminator (tokenizer.save_pretrained) or pass "
            "--student_name_or_path."
        )
    if student_tokenizer is None or disc_tokenizer is None or same_tokenizer(student_tokenizer, disc_tokenizer):
        return student_tokenizer or disc_tokenizer, None
    stops = {end_of_turn_token_id(student_tokenizer), student_tokenizer.eos_token_id}
    return student_tokenizer, DiscriminatorEncoding(student_tokenizer, disc_tokenizer, stops)


def make_parser(prog: str | None = None) -> TrlParser:
    return TrlParser((EvalDiscriminatorArguments,), prog=prog or "gad-trl eval-discriminator")


def run(argv: list[str]) -> int:
    (args,) = make_parser().parse_args_and_config(list(argv))
    metrics = evaluate(args)
    verb = "sampled and cached" if metrics["heldout_created"] else "reused"
    print(f"Held-out set ({metrics['num_pairs']} triples) {verb}: {metrics['heldout_cache']}")
    print(
        f"discriminator/accuracy={metrics['accuracy']:.4f}  discriminator/score_diff={metrics['score_diff']:.4f}  "
        f"teacher_score_mean={metrics['teacher_score_mean']:.4f}  student_score_mean={metrics['student_score_mean']:.4f}"
        f"  student_truncated_fraction={metrics['student_truncated_fraction']:.3f}"
    )
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.output_json, "w") as f:
            json.dump(metrics, f, indent=2)
    return 0
