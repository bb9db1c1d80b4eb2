"""Judge scores per checkpoint and the paper's checkpoint rule: the highest score whose mean length stays in bounds.

- `JudgeEvalCallback`: judges each checkpoint as the Trainer saves it (`checkpoint-N/eval_judge.json`);
- `evaluate_checkpoints`: the same afterwards, for every `checkpoint-N` of a run that has no complete score yet;
- `pick_best`: the table of scores and the best checkpoint within a length bound; `push_checkpoint` uploads it with its
  score in the model card;
- `discriminator_judge_agreement`: in a GAD run, does the discriminator's reward track the judge? Several sampled
  completions per eval prompt, scored by both, and their within-prompt AUC (`gad_trl.workflow.agreement`).
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
    AGREEMENT_FILE,
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
PUSH_IGNORE = ["*.pt", "*.pth", "rng_state*", "training_args.bin", JUDGEMENTS_FILE, ERRORS_FILE, AGREEMENT_FILE]


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


# ----------------------------------------------------------------------------------------------------------------------
# Reward-judge agreement
# ----------------------------------------------------------------------------------------------------------------------

AUC_KEY = "eval/discriminator_judge_auc"
PAIRS_KEY = "eval/discriminator_judge_pairs"
SHAPED_AUC_KEY = "eval/shaped_reward_judge_auc"


def discriminator_judge_agreement(eval_args: EvaluationArguments, trainer, model, tokenizer,
                                  output_dir: str | os.PathLike, dataset=None, judge_client=None,
                                  seed: int = 0) -> dict:
    """The within-prompt reward-judge AUC of `trainer`'s discriminator on the eval prompts.

    For each eval prompt (the first `discriminator_judge_max_prompts`), `discriminator_judge_samples` completions are
    sampled from `model` (seeded with `seed`, without moving the training RNG) at `discriminator_judge_temperature`
    (default: the trainer's `temperature`) and up to the trainer's `max_completion_length` tokens: completions like
    the ones GRPO ranks. Each is rated by the judge on its own (`evaluation.judge_completions`, `eval_args.mode`) and
    scored by the discriminator as in training (`Discriminator.score_triples`); `gad_trl.workflow.agreement
    .within_prompt_auc` compares the two orders within each prompt. Completions without a judge score (unparseable
    review, failed request) are left out. Writes one row per completion to `output_dir/eval_judge_agreement.jsonl`.

    Returns `{"auc" (None when no prompt has two completions the judge tells apart), "pairs", "prompts",
    "samples_per_prompt", "temperature", "completions", "unscored", "failed", "file"}`, plus `shaped_reward_auc` when
    the run shapes its rewards (`discriminator_length_penalty` / `discriminator_score_clip`): the same AUC on the
    rewards GRPO actually receives.
    """
    import torch

    from ..data import prompt_messages
    from ..discriminator.heldout import sample_triples
    from .agreement import within_prompt_auc
    from .evaluation import judge_completions, load_eval_rows
    from .jsonl_store import write_jsonl_atomic

    k = eval_args.discriminator_judge_samples
    if k < 2:
        raise ValueError(f"discriminator_judge_samples={k}: the within-prompt agreement needs at least 2 completions "
                         "per prompt.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = load_eval_rows(eval_args, dataset)
    if eval_args.discriminator_judge_max_prompts is not None:
        rows = rows[: eval_args.discriminator_judge_max_prompts]
    temperature = eval_args.discriminator_judge_temperature or getattr(trainer, "temperature", None) or 1.0
    max_new_tokens = getattr(trainer, "max_completion_length", None) or eval_args.student_max_tokens
    draws = [{"prompt": prompt_messages(row, key), "teacher_response": None, "row": key}
             for key, row in rows for _ in range(k)]
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):  # the training random stream does not move (resumed runs)
        triples = sample_triples(model, tokenizer, draws, seed, max_new_tokens, temperature,
                                 eval_args.student_batch_size)
    completions: dict[str, list[str]] = {}
    for t in triples:
        completions.setdefault(t["row"], []).append(t["student_response"])
    judged, failures = judge_completions(eval_args, rows, completions, output_dir, judge_client)
    discriminator = trainer.discriminator_component
    scores = discriminator.score_triples(triples, trainer.args.per_device_eval_batch_size)
    shaping = discriminator.shaping
    rewards = None
    if shaping.active:  # the reward GRPO reads: shaped by the completion's length (EOS included, as in training)
        rewards = shaping(torch.tensor(scores), [len(t["student_completion_ids"]) for t in triples]).tolist()

    errors = {(f["row_id"], f["sample"]): f["error"] for f in failures}
    records, groups, shaped_groups, position = [], {}, {}, {}
    for n, t in enumerate(triples):
        key = t["row"]
        i = position[key] = position.get(key, -1) + 1
        judgement = judged.get(key, [None] * k)[i]
        judge_score = judgement["score"] if judgement is not None else None
        record = {"row_id": key, "sample": i, "student_answer": t["student_response"],
                  "student_tokens": len(t["student_completion_ids"]), "finished": t["student_finished"],
                  "judge_score": judge_score, "discriminator_score": scores[n]}
        if rewards is not None:
            record["shaped_reward"] = rewards[n]
        if judgement is not None:
            record["judgement"] = judgement
        elif (key, i) in errors or (key, None) in errors:
            record["error"] = errors.get((key, i)) or errors[(key, None)]
        records.append(record)
        if judge_score is not None:
            groups.setdefault(key, ([], []))
            groups[key][0].append(scores[n])
            groups[key][1].append(judge_score)
            if rewards is not None:
                shaped_groups.setdefault(key, ([], []))
                shaped_groups[key][0].append(rewards[n])
                shaped_groups[key][1].append(judge_score)
    path = output_dir / AGREEMENT_FILE
    write_jsonl_atomic(records, path)
    result = within_prompt_auc(list(groups.values()))
    result.update(samples_per_prompt=k, temperature=temperature, completions=len(records),
                  unscored=sum(r["judge_score"] is None for r in records), failed=len(failures), file=str(path))
    if rewards is not None:
        result["shaped_reward_auc"] = within_prompt_auc(list(shaped_groups.values()))["auc"]
    return result


class JudgeEvalCallback(TrainerCallback):
    """Judges every saved checkpoint with the in-memory student and writes `checkpoint-N/eval_judge.json`.

    `JudgeEvalCallback(EvaluationArguments(dataset_name=..., judge_base_url=..., judge_model=...))`. The
    score is also recorded in `trainer.state.log_history` as `eval_judge/score` and `eval_judge/mean_student_tokens`
    (hence in later checkpoints' trainer_state.json; not sent to `report_to` integrations). Generation uses the training
    model on the main process with transformers (other processes wait at their next collective meanwhile: mind
    `ddp_timeout`); with ZeRO-3/FSDP, which shard the student, it refuses to start: judge the saved checkpoints
    afterwards (`gad-trl evaluate --checkpoints_dir`).

    In a GAD run (a trainer with a discriminator) it also measures whether the discriminator's reward tracks the
    judge (`discriminator_judge_agreement`; `EvaluationArguments.discriminator_judge_samples`, default 4, 0 = off):
    logged as `eval/discriminator_judge_auc` (absent when no pair of completions of a prompt differs in the judge's
    eyes) and `eval/discriminator_judge_pairs` (0 then), with `eval/shaped_reward_judge_auc` for shaped rewards, and
    saved under `discriminator_judge` in eval_judge.json. The trainer is `trainer`, or the `GADTrainer` the callback is
    given to (`bind_trainer`).
    """

    def __init__(self, eval_args: EvaluationArguments, dataset=None, judge_client=None, trainer=None):
        self.eval_args = eval_args
        self.dataset = dataset
        self.judge_client = judge_client
        self.trainer = trainer
        self.agreement = False  # set when training starts: a GAD trainer and discriminator_judge_samples > 0
        self.last = None

    def bind_trainer(self, trainer) -> JudgeEvalCallback:
        """Use `trainer`'s discriminator for the reward-judge agreement. `GADTrainer` calls this for the callbacks it
        is given (also through `add_callback`): a callback built before its trainer (`--judge_eval_config`) needs no
        wiring."""
        self.trainer = trainer
        return self

    def on_train_begin(self, args, state, control, **kwargs):
        from transformers.integrations import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled() or getattr(args, "fsdp", None):
            raise ValueError(
                "JudgeEvalCallback generates with the in-memory student, which ZeRO-3/FSDP shard across processes. "
                "Remove the callback and judge the saved checkpoints after training: gad-trl evaluate "
                f"--checkpoints_dir {args.output_dir} ..."
            )
        self.agreement = self._agreement_applies()

    def _agreement_applies(self) -> bool:
        if self.eval_args.discriminator_judge_samples == 0:
            return False
        component = getattr(self.trainer, "discriminator_component", None)
        if component is None:  # SeqKD, SODA, or no trainer found: the judge score only
            logger.info("JudgeEvalCallback: no discriminator in this run, so no %s.", AUC_KEY)
            return False
        if getattr(component, "sharded", False):
            raise ValueError(
                "discriminator_judge_samples scores sampled completions with the discriminator on the main process "
                "only, but this run shards it across processes (discriminator_sharding). Set "
                "discriminator_judge_samples: 0 in the judge_eval_config YAML, or discriminator_sharding: none."
            )
        if getattr(self.trainer, "tools", None) or getattr(self.trainer, "environment_factories", None):
            logger.warning("JudgeEvalCallback: %s is not measured in a run with tools or environments (the judge "
                           "evaluation samples plain chat answers, not the run's trajectories).", AUC_KEY)
            return False
        return True

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
        entry = {"eval_judge/score": score, "eval_judge/mean_student_tokens": length}
        if self.agreement:
            agreement = discriminator_judge_agreement(self.eval_args, self.trainer, model, tokenizer, checkpoint,
                                                      self.dataset, self.judge_client, seed=args.seed)
            self.last["discriminator_judge"] = agreement
            with open(checkpoint / SUMMARY_FILE, "w") as f:
                json.dump(self.last, f, indent=2)
            entry[PAIRS_KEY] = agreement["pairs"]
            if agreement["auc"] is not None:
                entry[AUC_KEY] = agreement["auc"]
            if agreement.get("shaped_reward_auc") is not None:
                entry[SHAPED_AUC_KEY] = agreement["shaped_reward_auc"]
            logger.info("checkpoint-%d: discriminator-judge AUC %s over %d pairs of %d prompts", state.global_step,
                        agreement["auc"], agreement["pairs"], agreement["prompts"])
        state.log_history.append({**entry, "step": state.global_step})
        logger.info("checkpoint-%d: judge score %s, mean length %s", state.global_step, score, length)
