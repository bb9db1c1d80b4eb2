"""Judge scores per checkpoint and the paper's checkpoint rule: the highest score whose mean length stays in bounds.

- `JudgeEvalCallback`: judges each checkpoint as the Trainer saves it (`checkpoint-N/eval_judge.json`);
- `evaluate_checkpoints`: the same afterwards, for every `checkpoint-N` of a run that has no complete score yet;
- `pick_best`: the table of scores and the best checkpoint within a length bound; `push_checkpoint` uploads it with its
  score in the model card.
The judging itself is `gad_trl.workflow.evaluation.evaluate`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from transformers import TrainerCallback

from .evaluation import (
    ERRORS_FILE,
    JUDGEMENTS_FILE,
    REFERENCES_FILE,
    SUMMARY_FILE,
    EvaluationArguments,
    evaluate,
    load_student,
)

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """`checkpoint-N` folders of a training output_dir, by step."""
    root = Path(output_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{output_dir} is not a directory.")
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def evaluate_checkpoints(args: EvaluationArguments, judge_client=None) -> list[dict]:
    """Evaluate every checkpoint of `args.checkpoints_dir` that has no complete summary yet (local student)."""
    dirs = checkpoint_dirs(args.checkpoints_dir)
    if not dirs:
        raise FileNotFoundError(f"No checkpoint-N folder in {args.checkpoints_dir}.")
    if args.reference_cache is None:
        args.reference_cache = str(Path(args.checkpoints_dir) / REFERENCES_FILE)
    summaries = []
    for path in dirs:
        previous = _read_summary(path)
        if previous is not None and previous["failed"] == 0 and previous["judged"] == previous["rows"]:
            summaries.append(previous)
            continue
        logger.info("Evaluating %s", path)
        model, tokenizer = load_student(str(path), args.trust_remote_code)
        summaries.append(evaluate(args, path, model=model, tokenizer=tokenizer, student_name=str(path.resolve()),
                                  judge_client=judge_client))
        del model  # before the next checkpoint loads: one student in memory at a time
        _free_accelerator_memory()
    return summaries


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _read_summary(path: Path) -> dict | None:
    file = path / SUMMARY_FILE
    if not file.exists():
        return None
    with open(file) as f:
        return json.load(f)


def pick_best(output_dir: str | os.PathLike, max_mean_length: float | None = None) -> tuple[Path | None, list[dict]]:
    """The evaluated checkpoint with the highest mean score whose mean student length is within `max_mean_length`
    (the paper's rule; ties go to the earlier checkpoint), and one row per checkpoint. Only complete evaluations
    (no failed row) compete."""
    table = []
    for path in checkpoint_dirs(output_dir):
        summary = _read_summary(path)
        row = {"checkpoint": str(path), "evaluated": summary is not None}
        if summary is not None:
            length = summary["mean_student_tokens"]
            row.update(score=summary["score"]["mean"], ci95_low=summary["score"]["ci95_low"],
                       ci95_high=summary["score"]["ci95_high"], mean_student_tokens=length,
                       unparseable=summary["unparseable"], failed=summary["failed"])
            # An evaluation with failed rows scored fewer prompts: not comparable until re-run and complete.
            row["complete"] = summary["failed"] == 0 and summary["judged"] == summary["rows"]
            row["eligible"] = row["complete"] and row["score"] is not None and (
                max_mean_length is None or (length is not None and length <= max_mean_length))
        else:
            row["eligible"] = False
        table.append(row)
    eligible = [r for r in table if r["eligible"]]
    best = max(eligible, key=lambda r: r["score"]) if eligible else None
    return (Path(best["checkpoint"]) if best else None), table


def format_pick_best(best: Path | None, table: list[dict], max_mean_length: float | None) -> str:
    lines = [f"{'checkpoint':<40} {'score':>7} {'95% CI':>15} {'mean len':>9} {'unparsed':>8}  eligible"]
    for r in table:
        if not r["evaluated"]:
            lines.append(f"{Path(r['checkpoint']).name:<40} not evaluated (gad-trl evaluate --checkpoints_dir ...)")
            continue
        ci = (f"{r['ci95_low']:.1f}-{r['ci95_high']:.1f}" if r["ci95_low"] is not None else "-")
        score = f"{r['score']:.2f}" if r["score"] is not None else "n/a"
        length = f"{r['mean_student_tokens']:.1f}" if r["mean_student_tokens"] is not None else "n/a"
        eligible = "yes" if r["eligible"] else "no" if r["complete"] else f"no ({r['failed']} rows failed: re-run)"
        lines.append(f"{Path(r['checkpoint']).name:<40} {score:>7} {ci:>15} {length:>9} {r['unparseable']:>8}  "
                     f"{eligible}")
    bound = f" with mean length <= {max_mean_length:g} tokens" if max_mean_length is not None else ""
    lines.append(f"Best checkpoint{bound}: {best}" if best else f"No completely evaluated checkpoint{bound}.")
    return "\n".join(lines)


JUDGE_CARD_MARKER = "<!-- gad-trl evaluate -->"
PUSH_IGNORE = ["*.pt", "*.pth", "rng_state*", "training_args.bin", JUDGEMENTS_FILE, ERRORS_FILE]


def judge_card_section(summary: dict) -> str:
    s = summary["score"]
    interval = f" (95% CI {s['ci95_low']:.2f}-{s['ci95_high']:.2f})" if s["ci95_low"] is not None else ""
    length = summary["mean_student_tokens"]
    return "\n".join([
        JUDGE_CARD_MARKER,
        "## Judge evaluation",
        "",
        f"Scored with `gad-trl evaluate` ({summary['mode']} mode; judge `{summary['judge_model']}`), the protocol of "
        "GAD (arXiv 2511.10643, Appendix A.3): "
        + ("the judge rates its own reference answer and this model's answer 1-10; score = student / (student + "
           "reference) x 100, 50 = parity with the judge." if summary["mode"] == "reference"
           else "win rate against the teacher's answers, judged in both orders."),
        "",
        f"- {summary['metric']}: **{s['mean']:.2f}**{interval} over {s['n']} prompts"
        if s["mean"] is not None else "- no parseable judgement",
        f"- mean answer length: {length:.1f} tokens" if length is not None else "- mean answer length: n/a",
        f"- unparseable judgements: {summary['unparseable']}",
        "",
    ])


def push_checkpoint(path: str | os.PathLike, repo_id: str, private: bool = False, commit_message: str | None = None):
    """Upload a checkpoint folder (no optimizer/RNG state, no per-row judgements) with its judge score in README.md."""
    from huggingface_hub import HfApi

    from ..version import __version__

    path = Path(path)
    summary = _read_summary(path)
    if summary is not None:
        readme = path / "README.md"
        text = readme.read_text() if readme.exists() else (
            f"---\nlibrary_name: transformers\ntags:\n- gad\n- trl\n---\n\n# {repo_id.split('/')[-1]}\n")
        if JUDGE_CARD_MARKER in text:
            text = text[: text.index(JUDGE_CARD_MARKER)]
        readme.write_text(text.rstrip() + "\n\n" + judge_card_section(summary))
    api = HfApi(library_name="gad_trl", library_version=__version__)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    return api.upload_folder(repo_id=repo_id, folder_path=str(path), ignore_patterns=PUSH_IGNORE,
                             commit_message=commit_message or f"{path.name}, picked by gad-trl evaluate")


class JudgeEvalCallback(TrainerCallback):
    """Judges every saved checkpoint with the in-memory student and writes `checkpoint-N/eval_judge.json`.

    `JudgeEvalCallback(EvaluationArguments(dataset_name=..., judge_base_url=..., judge_model=...))`. The
    score is also recorded in `trainer.state.log_history` as `eval_judge/score` and `eval_judge/mean_student_tokens`
    (hence in later checkpoints' trainer_state.json; not sent to `report_to` integrations). Generation uses the training
    model on the main process with transformers (other processes wait at their next collective meanwhile: mind
    `ddp_timeout`); with ZeRO-3/FSDP, which shard the student, it refuses to start: judge the saved checkpoints
    afterwards (`gad-trl evaluate --checkpoints_dir`).
    """

    def __init__(self, eval_args: EvaluationArguments, dataset=None, judge_client=None):
        self.eval_args = eval_args
        self.dataset = dataset
        self.judge_client = judge_client
        self.last = None

    def on_train_begin(self, args, state, control, **kwargs):
        from transformers.integrations import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled() or getattr(args, "fsdp", None):
            raise ValueError(
                "JudgeEvalCallback generates with the in-memory student, which ZeRO-3/FSDP shard across processes. "
                "Remove the callback and judge the saved checkpoints after training: gad-trl evaluate "
                f"--checkpoints_dir {args.output_dir} ..."
            )

    def on_save(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.eval_args.reference_cache is None:
            self.eval_args.reference_cache = str(Path(args.output_dir) / REFERENCES_FILE)
        tokenizer = getattr(processing_class, "tokenizer", processing_class)  # a processor wraps the tokenizer
        # The same name as `evaluate_checkpoints` gives it, so that either can resume the other's partial run.
        self.last = evaluate(self.eval_args, checkpoint, dataset=self.dataset, model=model, tokenizer=tokenizer,
                             student_name=str(checkpoint.resolve()), judge_client=self.judge_client)
        score, length = self.last["score"]["mean"], self.last["mean_student_tokens"]
        state.log_history.append({"eval_judge/score": score, "eval_judge/mean_student_tokens": length,
                                  "step": state.global_step})
        logger.info("checkpoint-%d: judge score %s, mean length %s", state.global_step, score, length)

