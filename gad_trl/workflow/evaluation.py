"""Judge a student with the paper's protocol (`gad_trl.workflow.judge`), score saved checkpoints, pick the best one.

Three phases, each a bounded-concurrency pass with a progress bar:
1. the student answers every prompt: through an OpenAI-compatible endpoint (a vLLM server) or with transformers
   locally, greedy by default;
2. the judge writes its reference answer to each prompt (reference mode), cached in a JSONL file keyed by row id so
   that every checkpoint is judged against the same references and each is asked for only once;
3. the judge rates reference vs student ("Assistant 1" vs "Assistant 2"), or, in pairwise mode, teacher vs student in
   both orders.
Every judgement is appended to `eval_judge_judgements.jsonl` as it finishes (resumable like `generate-teacher`); the
summary (`eval_judge.json`) holds the mean score with its 95% interval, the student's mean length in tokens, and the
counts of unparseable judgements and failed rows (whose errors are in `eval_judge_errors.jsonl`). Checkpoints: the
callback, the loop over a run's checkpoints and the best-checkpoint rule are in `gad_trl.workflow.checkpoint_selection`.
`judge_completions` rates several answers per prompt with the same protocol (per-answer scores, for the callback's
within-prompt reward-judge agreement).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import judge as J
from .endpoint import Endpoint, api_key_env_field, base_url_field, extra_body_field, max_retries_field, request_timeout_field

logger = logging.getLogger(__name__)

MODES = ("reference", "pairwise")
SUMMARY_FILE = "eval_judge.json"
JUDGEMENTS_FILE = "eval_judge_judgements.jsonl"
ERRORS_FILE = "eval_judge_errors.jsonl"
REFERENCES_FILE = "judge_references.jsonl"
AGREEMENT_FILE = "eval_judge_agreement.jsonl"  # JudgeEvalCallback's sampled completions, judge and discriminator scores


@dataclass
class EvaluationArguments:
    """Arguments of `gad-trl evaluate` (flags, or keys of a `--config` YAML)."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Eval prompts: Hub id, local directory or .parquet/.json/.jsonl file."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Data set configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split of the eval prompts."})
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    id_column: str = field(
        default="row_id", metadata={"help": "Column with a unique id per row (default: the row index)."}
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": f"Where {SUMMARY_FILE}, {JUDGEMENTS_FILE} and {ERRORS_FILE} go (re-running resumes)."},
    )
    mode: str = field(
        default="reference",
        metadata={"help": "`reference`: the paper's protocol (judge's own answer vs the student's, score = "
                  "student/(student+reference)x100). `pairwise`: win rate of the student against the teacher's "
                  "answers (`teacher_response_column`), judged in both orders.", "choices": list(MODES)},
    )
    teacher_response_column: str = field(
        default="teacher_response", metadata={"help": "Teacher answers, for `--mode pairwise`."}
    )
    # student
    student_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Student checkpoint generated locally with transformers."}
    )
    student_base_url: str | None = base_url_field("the student", note="Or --student_model_name_or_path.")
    student_model: str | None = field(
        default=None, metadata={"help": "Model name at --student_base_url (default: the endpoint's only model)."}
    )
    student_api_key_env: str = api_key_env_field("the student's endpoint")
    student_max_tokens: int = field(default=1536, metadata={"help": "Longest student answer. Paper: 1536."})
    student_temperature: float = field(default=0.0, metadata={"help": "0 = greedy (the paper's setting)."})
    student_batch_size: int = field(default=8, metadata={"help": "Prompts per batch for local generation."})
    trust_remote_code: bool = field(default=False, metadata={"help": "For the local student."})
    # judge
    judge_base_url: str | None = base_url_field("the judge", note="Paper: GPT-4o.")
    judge_model: str | None = field(
        default=None, metadata={"help": "Judge model name (default: the endpoint's only model)."}
    )
    judge_api_key_env: str = api_key_env_field("the judge")
    judge_temperature: float = field(default=0.0, metadata={"help": "Judge sampling temperature."})
    judge_max_tokens: int = field(default=512, metadata={"help": "Longest judge review."})
    reference_max_tokens: int = field(default=1536, metadata={"help": "Longest judge reference answer."})
    judge_extra_body: str | None = extra_body_field(
        "the judge", "vLLM structured outputs that force the score line: '{\"structured_outputs\": {\"regex\": ...}}', "
        "see gad_trl.workflow.judge.SCORE_LINE_REGEX")
    judge_template_file: str | None = field(
        default=None,
        metadata={"help": "Text file replacing the review prompt; it must contain {question}, {answer_1}, "
                  "{answer_2}. Default: MiniLLM's (FastChat's reviewer prompt)."},
    )
    reference_cache: str | None = field(
        default=None,
        metadata={"help": f"JSONL of the judge's reference answers, reused across runs and checkpoints. Default: "
                  f"<output_dir>/{REFERENCES_FILE} (or <checkpoints_dir>/{REFERENCES_FILE})."},
    )
    concurrency: int = field(default=8, metadata={"help": "Requests in flight at once."})
    request_timeout: float = request_timeout_field()  # both endpoints'
    max_retries: int = max_retries_field()
    # checkpoints
    checkpoints_dir: str | None = field(
        default=None,
        metadata={"help": "Evaluate every `checkpoint-N` in this training output_dir that has no eval_judge.json "
                  "yet (local transformers student); results go into each checkpoint."},
    )
    pick_best: str | None = field(
        default=None,
        metadata={"help": "Training output_dir: list the evaluated checkpoints and pick the best score within "
                  "--max_mean_length (no generation)."},
    )
    max_mean_length: float | None = field(
        default=None,
        metadata={"help": "For --pick_best (and the table printed after --checkpoints_dir): highest mean student "
                  "length (tokens) allowed."},
    )
    push_to_hub: bool = field(
        default=False,
        metadata={"help": "With --pick_best: upload the best checkpoint (weights, tokenizer, discriminator, "
                  "eval_judge.json; no optimizer state) to --hub_model_id, with its judge score in the model card."},
    )
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id for --push_to_hub."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})
    # reward-judge agreement (JudgeEvalCallback in a GAD run)
    discriminator_judge_samples: int = field(
        default=4,
        metadata={"help": "JudgeEvalCallback in a GAD run: student completions sampled per eval prompt, each scored by "
                  "the judge and by the run's current discriminator, for eval/discriminator_judge_auc (the "
                  "within-prompt reward-judge AUC, gad_trl.workflow.agreement). 0 = off; otherwise at least 2. "
                  "Costs that many more judge reviews per prompt and checkpoint; per-sample rows in "
                  f"{AGREEMENT_FILE}."},
    )
    discriminator_judge_temperature: float | None = field(
        default=None,
        metadata={"help": "Sampling temperature of those completions (> 0). Default: the trainer's `temperature`, "
                  "the groups GRPO ranks."},
    )
    discriminator_judge_max_prompts: int | None = field(
        default=None,
        metadata={"help": "Use only the first N eval prompts for the agreement (default: all of them)."},
    )

    def __post_init__(self):
        self.student_endpoint(), self.judge_endpoint()  # checked: URLs, key variables, timeout, retries, extra body
        if self.mode not in MODES:
            raise ValueError(f"--mode {self.mode!r}: choose one of {MODES}.")
        if self.discriminator_judge_samples != 0 and self.discriminator_judge_samples < 2:
            raise ValueError(
                f"--discriminator_judge_samples {self.discriminator_judge_samples}: the within-prompt agreement "
                "compares completions of the same prompt, so it needs at least 2 per prompt (default 4); 0 turns it off."
            )
        if self.discriminator_judge_temperature is not None and not self.discriminator_judge_temperature > 0:
            raise ValueError(
                f"--discriminator_judge_temperature must be > 0 (got {self.discriminator_judge_temperature}): greedy "
                "decoding gives one completion however many are asked for. Leave it unset for the trainer's "
                "temperature."
            )
        if self.discriminator_judge_max_prompts is not None and self.discriminator_judge_max_prompts < 1:
            raise ValueError(
                f"--discriminator_judge_max_prompts must be >= 1, got {self.discriminator_judge_max_prompts}.")
        if self.push_to_hub and not (self.pick_best and self.hub_model_id):
            raise ValueError("--push_to_hub pushes the checkpoint --pick_best chooses: give --pick_best and "
                             "--hub_model_id (e.g. your-name/Qwen2.5-7B-GAD).")
        if self.pick_best:
            return
        if not self.dataset_name:
            raise ValueError("--dataset_name is required (the eval prompts).")
        if not self.judge_base_url:
            raise ValueError("--judge_base_url is required (the judge's OpenAI-compatible endpoint).")
        if self.checkpoints_dir is not None and (self.student_model_name_or_path or self.student_base_url):
            raise ValueError("--checkpoints_dir loads each checkpoint as the student (transformers); drop "
                             "--student_model_name_or_path / --student_base_url.")
        if self.student_model_name_or_path and self.student_base_url:
            raise ValueError("Give the student as one of --student_model_name_or_path (transformers) or "
                             "--student_base_url (an OpenAI-compatible server), not both.")
        if self.concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {self.concurrency}.")
        self.judge_extra_body_dict()
        self.template()

    def student_endpoint(self) -> Endpoint:
        """The student's endpoint (`gad_trl.workflow.endpoint`), checked."""
        return Endpoint(self.student_base_url, self.student_api_key_env, self.request_timeout, self.max_retries,
                        prefix="--student_", shared_prefix="--").check()

    def judge_endpoint(self) -> Endpoint:
        """The judge's endpoint, checked."""
        return Endpoint(self.judge_base_url, self.judge_api_key_env, self.request_timeout, self.max_retries,
                        self.judge_extra_body, prefix="--judge_", shared_prefix="--").check()

    def judge_extra_body_dict(self) -> dict | None:
        return self.judge_endpoint().extra_body_dict()

    def template(self) -> str:
        if not self.judge_template_file:
            return J.JUDGE_TEMPLATE
        text = Path(self.judge_template_file).read_text()
        missing = [k for k in ("{question}", "{answer_1}", "{answer_2}") if k not in text]
        if missing:
            raise ValueError(f"--judge_template_file {self.judge_template_file}: missing {missing}.")
        return text


# ----------------------------------------------------------------------------------------------------------------------
# Student answers
# ----------------------------------------------------------------------------------------------------------------------


def local_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, temperature: float = 0.0,
                  batch_size: int = 8) -> list[tuple[str, int]]:
    """(text, completion tokens) for each prompt, generated with transformers (left padding, greedy by default)."""
    from ..local_generation import generate_completions

    sampling = dict(do_sample=True, temperature=temperature) if temperature > 0 else dict(do_sample=False)
    completions = generate_completions(model, tokenizer, prompts, max_new_tokens, batch_size, "student answers",
                                       **sampling)
    return [(tokenizer.decode(ids, skip_special_tokens=True), len(ids)) for ids, _ in completions]


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------------


def load_eval_rows(args: EvaluationArguments, dataset=None) -> list[tuple[str, dict]]:
    from .teacher import keyed_rows, load_prompts

    if dataset is None:
        dataset = load_prompts(args.dataset_name, args.dataset_config, args.dataset_split, args.max_samples)
    elif args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    return keyed_rows(dataset, args.id_column)


def _judge_inputs(args: EvaluationArguments, rows, judge_client=None):
    """What every judging pass needs: the rows' prompts, their teacher answers in pairwise mode (a row's first answer;
    a trajectory's final answer), the judge's client (made from `args` unless given) and its model name."""
    from ..data import final_answer_text, prompt_messages, teacher_texts
    from .openai_chat import resolve_model

    prompts = {key: prompt_messages(row, key) for key, row in rows}
    teacher = {}
    if args.mode == "pairwise":
        teacher = {key: final_answer_text(teacher_texts(row, args.teacher_response_column, key)[0])
                   for key, row in rows}
    if judge_client is None:
        judge_client = args.judge_endpoint().client()
    return prompts, teacher, judge_client, resolve_model(judge_client, args.judge_model)


def evaluate(args: EvaluationArguments, output_dir: str | os.PathLike | None = None, dataset=None, model=None,
             tokenizer=None, student_name: str | None = None, judge_client=None, student_client=None) -> dict:
    """Judge one student; writes the judgements, errors and summary in `output_dir`; returns the summary.

    The student is `model` + `tokenizer` (in memory, e.g. from a callback), else `args.student_model_name_or_path`
    (loaded here), else the endpoint `args.student_base_url`.
    """
    from .jsonl_store import JsonlStore, write_jsonl_atomic
    from .openai_chat import chat, describe_error, map_bounded, resolve_model

    # Checked here, not in EvaluationArguments: the callback and the checkpoint loop supply the student and the folder.
    if model is None and not (args.student_model_name_or_path or args.student_base_url):
        raise ValueError("No student: give --student_model_name_or_path (transformers) or --student_base_url (an "
                         "OpenAI-compatible server), or --checkpoints_dir.")
    if output_dir is None and not args.output_dir:
        raise ValueError("--output_dir is required (where the judgements and the summary go).")
    output_dir = Path(output_dir or args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = load_eval_rows(args, dataset)
    prompts, teacher, judge_client, judge_model = _judge_inputs(args, rows, judge_client)
    local = model is not None or bool(args.student_model_name_or_path)
    if not local:
        if student_client is None:
            student_client = args.student_endpoint().client()
        student_model = resolve_model(student_client, args.student_model)
    if student_name is None:
        student_name = args.student_model_name_or_path if local else f"{student_model} at {args.student_base_url}"

    store = JsonlStore(output_dir / JUDGEMENTS_FILE, "row_id")
    # Resuming reuses the stored judgements: only if they are of this student, judge, mode and these prompts.
    current = {"student": student_name, "judge_model": judge_model, "mode": args.mode}
    for key, record in store.done.items():
        expected = dict(current, question=J.question_text(prompts[key]) if key in prompts else None)
        differs = [k for k, v in expected.items() if record.get(k) != v]
        if differs:
            store.close()
            raise ValueError(
                f"{store.path}: the judgement of row {key!r} was made with another {', '.join(differs)} "
                f"({', '.join(f'{k}={record.get(k)!r:.80}' for k in differs)}). Use another --output_dir."
            )
    pending = [key for key, _ in rows if key not in store]
    failures: list[dict] = []

    def fail(key, phase, err):
        failures.append({"row_id": key, "phase": phase, "error": describe_error(err, judge_client, student_client)})
        logger.warning("Row %s failed (%s): %s", key, phase, failures[-1]["error"])

    # 1. student answers
    answers: dict[str, tuple[str, int | None]] = {}
    if pending and local:
        if model is None:
            model, tokenizer = load_student(args.student_model_name_or_path, args.trust_remote_code)
        texts = local_answers(model, tokenizer, [prompts[k] for k in pending], args.student_max_tokens,
                              args.student_temperature, args.student_batch_size)
        answers = dict(zip(pending, texts))
    elif pending:

        def answer(key):
            result = chat(student_client, student_model, prompts[key], max_tokens=args.student_max_tokens,
                          temperature=args.student_temperature)
            return result.text, result.completion_tokens

        for key, result, error in map_bounded(answer, pending, args.concurrency, "student answers"):
            if error is not None:
                fail(key, "student", error)
            else:
                answers[key] = result

    # 2. the judge's reference answers (cached across runs and checkpoints)
    references: dict[str, str] = {}
    if args.mode == "reference" and answers:
        references = reference_answers(args, prompts, list(answers), judge_client, judge_model,
                                       Path(args.reference_cache or output_dir / REFERENCES_FILE), fail)

    # 3. judgements
    judgement = judge_function(args, judge_client, judge_model)

    def judge_row(key):
        question = J.question_text(prompts[key])
        student_text, tokens = answers[key]
        record = {"row_id": key, "student": student_name, "judge_model": judge_model, "mode": args.mode,
                  "question": question, "student_answer": student_text, "student_tokens": tokens}
        record.update(judgement(question, student_text, references.get(key), teacher.get(key)))
        return record

    judgeable = [k for k in pending if k in answers and (args.mode == "pairwise" or k in references)]
    try:
        for key, record, error in map_bounded(judge_row, judgeable, args.concurrency, "judgements"):
            if error is not None:
                fail(key, "judge", error)
            else:
                store.append(record)
    finally:
        store.close()
    write_jsonl_atomic(failures, output_dir / ERRORS_FILE)

    summary = summarize([store.done[k] for k, _ in rows if k in store.done], args.mode, len(rows), len(failures))
    summary.update(student=student_name, judge_model=judge_model, output_dir=str(output_dir),
                   errors_file=str(output_dir / ERRORS_FILE))
    with open(output_dir / SUMMARY_FILE, "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def reference_answers(args: EvaluationArguments, prompts: dict[str, list[dict]], keys: list[str], judge_client,
                      judge_model: str, cache_path: Path, fail) -> dict[str, str]:
    """The judge's own answer to each prompt of `keys` (reference mode), from the JSONL cache at `cache_path` or asked
    for (and appended to it); `fail(key, phase, error)` gets the rows whose reference could not be had."""
    from .jsonl_store import JsonlStore
    from .openai_chat import chat, map_bounded

    references: dict[str, str] = {}
    cache = JsonlStore(cache_path, "row_id")
    for key in keys:
        cached = cache.done.get(key)
        if cached is not None:
            if cached.get("prompt") != prompts[key] or cached.get("judge_model") != judge_model:
                cache.close()
                raise ValueError(f"{cache_path}: the reference for row {key!r} was written for another prompt or "
                                 "judge model; use another --reference_cache.")
            references[key] = cached["reference"]

    def reference(key):
        return chat(judge_client, judge_model, prompts[key], max_tokens=args.reference_max_tokens,
                    temperature=args.judge_temperature).text

    todo = [k for k in keys if k not in references]
    try:
        for key, text, error in map_bounded(reference, todo, args.concurrency, "judge references"):
            if error is not None:
                fail(key, "reference", error)
                continue
            references[key] = text
            cache.append({"row_id": key, "prompt": prompts[key], "judge_model": judge_model, "reference": text})
    finally:
        cache.close()
    return references


def judge_function(args: EvaluationArguments, judge_client, judge_model: str):
    """`judgement(question, student_text, reference, teacher) -> dict`: the judge's verdict on one student answer in
    `args.mode` (reference: against the judge's `reference` answer; pairwise: against the `teacher` answer, in both
    orders), as the fields of a judgement record; `score` is None when no review could be parsed."""
    from .openai_chat import chat

    template, extra_body = args.template(), args.judge_extra_body_dict()

    def review(question, answer_1, answer_2) -> tuple[str, tuple[float, float] | None]:
        messages = J.judge_messages(question, answer_1, answer_2, template)
        text = chat(judge_client, judge_model, messages, max_tokens=args.judge_max_tokens, extra_body=extra_body,
                    temperature=args.judge_temperature).text
        return text, J.parse_ratings(text)

    def judgement(question: str, student_text: str, reference: str | None = None, teacher: str | None = None) -> dict:
        if args.mode == "reference":
            text, ratings = review(question, reference, student_text)
            return dict(reference_answer=reference, review=text, parseable=ratings is not None,
                        reference_rating=ratings and ratings[0], student_rating=ratings and ratings[1],
                        score=ratings and J.relative_score(*ratings))
        text_ts, r_ts = review(question, teacher, student_text)  # teacher = Assistant 1
        text_st, r_st = review(question, student_text, teacher)  # student = Assistant 1
        outcomes = ([J.pairwise_outcome(r_ts[1], r_ts[0])] if r_ts else []) + (
            [J.pairwise_outcome(r_st[0], r_st[1])] if r_st else [])
        return dict(teacher_answer=teacher, reviews=[text_ts, text_st], ratings=[r_ts, r_st], parseable=bool(outcomes),
                    score=sum(outcomes) / len(outcomes) if outcomes else None)

    return judgement


def judge_completions(args: EvaluationArguments, rows: list[tuple[str, dict]], completions: dict[str, list[str]],
                      output_dir: str | os.PathLike,
                      judge_client=None) -> tuple[dict[str, list[dict | None]], list[dict]]:
    """Judge several student answers per prompt, each on its own, with `evaluate`'s protocol (`args.mode`): per-answer
    judge scores, e.g. for the within-prompt reward-judge agreement (`JudgeEvalCallback`).

    `rows`: keyed eval rows (`load_eval_rows`); `completions[key]`: the answers to row `key`'s prompt. Reference mode
    reuses (and fills) the reference cache `evaluate` uses (`args.reference_cache`, default
    `<output_dir>/judge_references.jsonl`), so every answer of a prompt is rated against the same reference; pairwise
    mode reads the row's teacher answer. Returns, per key, one judgement record per answer in order (its `score`:
    None when unparseable; the record None when a request failed) and the failures (`row_id`, `sample`, `phase`,
    `error`). Nothing is written but the reference cache.
    """
    from .openai_chat import describe_error, map_bounded

    rows = [(key, row) for key, row in rows if completions.get(key)]
    prompts, teacher, judge_client, judge_model = _judge_inputs(args, rows, judge_client)
    failures: list[dict] = []

    def fail(key, phase, err, sample=None):
        failures.append({"row_id": key, "sample": sample, "phase": phase, "error": describe_error(err, judge_client)})
        logger.warning("Row %s%s failed (%s): %s", key, "" if sample is None else f" sample {sample}", phase,
                       failures[-1]["error"])

    references: dict[str, str] = {}
    if args.mode == "reference" and rows:
        references = reference_answers(args, prompts, list(prompts), judge_client, judge_model,
                                       Path(args.reference_cache or Path(output_dir) / REFERENCES_FILE), fail)
    judgement = judge_function(args, judge_client, judge_model)
    results = {key: [None] * len(completions[key]) for key, _ in rows}
    items = [(key, i) for key, _ in rows for i in range(len(completions[key]))
             if args.mode == "pairwise" or key in references]

    def judge_one(item):
        key, i = item
        return judgement(J.question_text(prompts[key]), completions[key][i], references.get(key), teacher.get(key))

    for (key, i), record, error in map_bounded(judge_one, items, args.concurrency, "judgements (samples)",
                                               unit="answer"):
        if error is not None:
            fail(key, "judge", error, i)
        else:
            results[key][i] = record
    return results, failures


def load_student(path: str, trust_remote_code: bool = False):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, tokenizer


def summarize(records: list[dict], mode: str, rows: int, failed: int) -> dict:
    """The summary of a list of judgement records (see `evaluate`)."""
    scores = [r["score"] for r in records if r["parseable"]]
    lengths = [r["student_tokens"] for r in records if r.get("student_tokens") is not None]
    summary = {
        "mode": mode,
        "metric": "score (student/(student+reference) x 100)" if mode == "reference" else "win rate vs teacher",
        "score": J.mean_ci95([s if mode == "reference" else 100.0 * s for s in scores]),
        "mean_student_tokens": sum(lengths) / len(lengths) if lengths else None,
        "rows": rows, "judged": len(records), "unparseable": len(records) - len(scores), "failed": failed,
    }  # fmt: skip
    if mode == "reference" and scores:
        parsed = [r for r in records if r["parseable"]]
        summary["mean_reference_rating"] = sum(r["reference_rating"] for r in parsed) / len(parsed)
        summary["mean_student_rating"] = sum(r["student_rating"] for r in parsed) / len(parsed)
    return summary


def format_summary(summary: dict) -> str:
    s = summary["score"]
    interval = (f" (95% CI {s['ci95_low']:.2f}-{s['ci95_high']:.2f})" if s["ci95_low"] is not None else "")
    mean = f"{s['mean']:.2f}{interval}" if s["mean"] is not None else "n/a (no parseable judgement)"
    length = summary["mean_student_tokens"]
    lines = [
        f"{summary['student']} judged by {summary['judge_model']} ({summary['mode']} mode)",
        f"{summary['metric']}: {mean} over {s['n']} prompts",
        f"mean student length: {length:.1f} tokens" if length is not None else "mean student length: n/a",
        f"rows {summary['rows']}, judged {summary['judged']}, unparseable judgements {summary['unparseable']}, "
        f"failed {summary['failed']}",
    ]
    if summary["failed"]:
        lines.append(f"Failed rows are listed in {summary['errors_file']}; run the same command again to retry them.")
    return "\n".join(lines)
