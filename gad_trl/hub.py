"""Model cards and Hub uploads for GAD runs: the student card's GAD section, the discriminator's card and push.

`GADTrainer.save_model` writes the student to `output_dir` and the discriminator to `output_dir/discriminator/`
(with its card, `write_discriminator_card`). `push_to_hub(trainer, ...)` is `Trainer.push_to_hub` for GAD: it saves,
writes TRL's student card plus a GAD section (paper, teacher data set, the run's config), then uploads

- with `discriminator_hub_model_id=None`: one commit to the student repo, discriminator in its `discriminator/`
  sub-folder (`AutoModelForSequenceClassification.from_pretrained(repo, subfolder="discriminator")`);
- with `discriminator_hub_model_id="user/name"`: the student repo without `discriminator/`, and the discriminator to
  its own repo (`push_discriminator`).
"""

from __future__ import annotations

import dataclasses
import os
import textwrap
from pathlib import Path

DISCRIMINATOR_SUBFOLDER = "discriminator"
PAPER_ID = "2511.10643"
PAPER_TITLE = "Black-Box On-Policy Distillation of Large Language Models"
PAPER_URL = f"https://arxiv.org/abs/{PAPER_ID}"
# docstyle-ignore
CITATION = textwrap.dedent("""\
    @article{ye2025blackbox,
        title        = {{Black-Box On-Policy Distillation of Large Language Models}},
        author       = {Tianzhu Ye and Li Dong and Zewen Chi and Xun Wu and Shaohan Huang and Furu Wei},
        journal      = {arXiv preprint arXiv:2511.10643},
        year         = 2025,
        url          = {https://arxiv.org/abs/2511.10643},
    }""")
GAD_SECTION_MARKER = "<!-- gad_trl:run -->"
GAD_SECTION_END = "<!-- /gad_trl:run -->"

# Fields always shown in the run's config, even at their default value.
KEY_FIELDS = (
    "learning_rate",
    "num_generations",
    "temperature",
    "max_completion_length",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_grad_norm",
    "beta",
    "loss_type",
    "scale_rewards",
    "num_train_epochs",
    "max_steps",
    "critic_warmup_steps",
    "sft_warmup_steps",
    "teacher_response_column",
    "discriminator_model_name_or_path",
    "discriminator_loss_type",
    "discriminator_learning_rate",
    "discriminator_max_grad_norm",
    "use_vllm",
    "vllm_mode",
    "seed",
)
_SECRET_SUFFIXES = ("token", "api_key", "secret", "password")
# Bookkeeping fields and values that TrainingArguments.__post_init__ rewrites (they differ from the declared default
# on every run and say nothing about the recipe).
_NOISY_FIELDS = {
    "logging_dir", "output_dir", "hub_model_id", "push_to_hub", "_n_gpu", "local_rank", "accelerator_config",
    "debug", "disable_tqdm", "dataloader_pin_memory", "fsdp_config", "deepspeed", "hub_strategy", "log_level",
    "log_level_replica", "resume_from_checkpoint", "overwrite_output_dir", "model_init_kwargs",
}


# --------------------------------------------------------------------------------------------------------------------
# Run config
# --------------------------------------------------------------------------------------------------------------------


def _jsonable(value):
    import enum

    if isinstance(value, enum.Enum):  # IntervalStrategy, SchedulerType, ... (str enums: check before str)
        return _jsonable(value.value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def run_config(args) -> dict:
    """The run's config for a model card: the key GAD fields plus every field that differs from its default.

    Secrets (`*token`, `*api_key`, ...) are never included.
    """
    out = {}
    values = args.to_dict() if hasattr(args, "to_dict") else dataclasses.asdict(args)
    for f in dataclasses.fields(args):
        name = f.name
        if name.startswith("_") or name in _NOISY_FIELDS or name.lower().endswith(_SECRET_SUFFIXES):
            continue
        value = values.get(name, getattr(args, name, None))
        default = _default_of(f)
        value_j, default_j = _jsonable(value), _jsonable(default) if default is not dataclasses.MISSING else object()
        if name in KEY_FIELDS or value_j != default_j:
            out[name] = value_j
    return dict(sorted(out.items()))


def _config_yaml(config: dict) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=True, default_flow_style=False, allow_unicode=True).rstrip()


def _final_metrics(trainer) -> dict:
    """The last logged value of the main GAD metrics in `trainer.state.log_history`."""
    wanted = (
        "discriminator/accuracy",
        "discriminator/score_diff",
        "discriminator/loss",
        "reward",
        "completions/mean_length",
    )
    found = {}
    for entry in reversed(getattr(getattr(trainer, "state", None), "log_history", None) or []):
        for key in wanted:
            if key not in found and isinstance(entry.get(key), (int, float)):
                found[key] = entry[key]
    return {k: found[k] for k in wanted if k in found}


def _split(trainer_or_args):
    """(trainer or None, args)."""
    if hasattr(trainer_or_args, "args") and hasattr(trainer_or_args, "state"):
        return trainer_or_args, trainer_or_args.args
    return None, trainer_or_args


def _dataset_name(trainer, dataset_name):
    if dataset_name:
        return dataset_name
    if trainer is not None:
        name = getattr(trainer, "_gad_dataset_name", None)
        if name:
            return name
        info = getattr(getattr(trainer, "train_dataset", None), "info", None)
        name = getattr(info, "dataset_name", None)
        if name:
            return name
    return None


def _hub_id(value: str | None) -> str | None:
    """A Hub repo id, or None for local paths (those don't belong in card metadata)."""
    if not value or os.path.exists(value) or os.path.isabs(value) or value.startswith((".", "~")):
        return None
    if Path(value).suffix.lower() in (".json", ".jsonl", ".parquet", ".csv", ".arrow", ".txt"):
        return None  # a data file, not a repo
    return value if value.count("/") <= 1 else None


def _student_source(trainer) -> str | None:
    if trainer is None:
        return None
    model = getattr(trainer, "model", None)
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None)


# --------------------------------------------------------------------------------------------------------------------
# Cards
# --------------------------------------------------------------------------------------------------------------------


def student_card_section(
    trainer_or_args, dataset_name: str | None = None, discriminator_location: str | None = None
) -> str:
    """Markdown appended to TRL's student card: GAD, the paper, the teacher data set, the discriminator, the config."""
    trainer, args = _split(trainer_or_args)
    dataset_name = _dataset_name(trainer, dataset_name)
    lines = [
        GAD_SECTION_MARKER,
        "## Generative Adversarial Distillation (GAD)",
        "",
        "This student was distilled from a black-box teacher with **GAD** (Generative Adversarial Distillation, "
        f"[{PAPER_TITLE}]({PAPER_URL}), arXiv {PAPER_ID}) using the `gad_trl` package on top "
        "of TRL's `GRPOTrainer`: the student samples responses, a discriminator trained jointly to tell them from the "
        "teacher's responses scores them, and those scores are the student's GRPO rewards.",
        "",
    ]
    if dataset_name:
        lines.append(f"- Teacher data set: [{dataset_name}](https://huggingface.co/datasets/{dataset_name})"
                     if _hub_id(dataset_name) else f"- Teacher data set: `{dataset_name}`")
    if discriminator_location:
        lines.append(f"- Discriminator: `{discriminator_location}`")
    metrics = _final_metrics(trainer) if trainer is not None else {}
    if metrics:
        lines.append("- Last logged metrics: " + ", ".join(f"`{k}` = {v:.4g}" for k, v in metrics.items()))
    lines += ["", "### Run configuration", "", "```yaml", _config_yaml(run_config(args)), "```", GAD_SECTION_END, ""]
    return "\n".join(lines)


def append_student_card_section(readme_path: str | os.PathLike, section: str) -> None:
    """Append (or replace) the GAD section of a README written by TRL's `create_model_card`."""
    path = Path(readme_path)
    text = path.read_text() if path.exists() else ""
    if GAD_SECTION_MARKER in text:  # replace the previous GAD section, keep what follows it
        start = text.index(GAD_SECTION_MARKER)
        end = text.find(GAD_SECTION_END, start)
        end = len(text) if end < 0 else end + len(GAD_SECTION_END)
        text = text[:start].rstrip() + "\n" + text[end:]
    # Keep TRL's citation block last-but-one readable: insert before "## Citations" when present.
    anchor = "\n## Citations"
    if anchor in text:
        i = text.index(anchor)
        text = text[:i].rstrip() + "\n\n" + section + text[i:]
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def discriminator_card(
    trainer_or_args,
    dataset_name: str | None = None,
    student_model_id: str | None = None,
    base_model: str | None = None,
) -> str:
    """The README.md of a GAD discriminator (YAML metadata + usage + training details + config + citation)."""
    trainer, args = _split(trainer_or_args)
    dataset_name = _dataset_name(trainer, dataset_name)
    base_model = base_model or getattr(args, "discriminator_model_name_or_path", None) or _student_source(trainer)
    student_model_id = student_model_id or getattr(args, "hub_model_id", None)
    meta = {
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "tags": ["gad", "discriminator", "reward-model", "trl", "generative-adversarial-distillation"],
    }
    if _hub_id(base_model):
        meta["base_model"] = base_model
    if _hub_id(dataset_name):
        meta["datasets"] = [dataset_name]
    import yaml

    header = "---\n" + yaml.safe_dump(meta, sort_keys=False).rstrip() + "\n---\n"
    title = f"# GAD discriminator for {student_model_id}" if student_model_id else "# GAD discriminator"
    student_line = (
        f"It was trained jointly with the student [`{student_model_id}`](https://huggingface.co/{student_model_id})"
        if _hub_id(student_model_id)
        else "It was trained jointly with the student saved next to it"
    )
    data_line = f" on teacher responses from `{dataset_name}`" if dataset_name else ""
    metrics = _final_metrics(trainer) if trainer is not None else {}
    steps = getattr(getattr(trainer, "state", None), "global_step", None) if trainer is not None else None
    loss_type = getattr(args, "discriminator_loss_type", "bradley_terry")
    body = [
        title,
        "",
        "The discriminator of a **GAD** (Generative Adversarial Distillation) run: "
        f"[{PAPER_TITLE}]({PAPER_URL}) (arXiv {PAPER_ID}). "
        f"{student_line}{data_line}, to score a student response higher the more it reads like the teacher's.",
        "",
        "It is a sequence-level reward model (`AutoModelForSequenceClassification`, `num_labels=1`): the score of "
        "`(prompt, response)` is the head's output at the **last token of the response** (the end-of-turn / EOS "
        "token of a finished response), on the chat-templated prompt followed by the response.",
        "",
        "## Usage",
        "",
        "```python",
        "import torch",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "",
        f'repo = "{student_model_id or "path/to/output_dir"}"  # discriminator in the `discriminator/` sub-folder'
        if not getattr(args, "discriminator_hub_model_id", None)
        else f'repo = "{args.discriminator_hub_model_id}"',
        "kwargs = {}" if getattr(args, "discriminator_hub_model_id", None) else 'kwargs = {"subfolder": "discriminator"}',
        "tokenizer = AutoTokenizer.from_pretrained(repo, **kwargs)",
        "model = AutoModelForSequenceClassification.from_pretrained(repo, num_labels=1, **kwargs)",
        'messages = [{"role": "user", "content": "Write a haiku about the sea."}]',
        "prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)",
        'ids = tokenizer(prompt + "Waves fold into foam", add_special_tokens=False)["input_ids"]',
        "ids = torch.tensor([ids + [tokenizer.eos_token_id]])",
        "hidden = model.base_model(input_ids=ids).last_hidden_state",
        "score = model.score(hidden[:, -1]).item()  # higher = more teacher-like",
        "```",
        "",
        "## Training",
        "",
        f"- Loss: `{loss_type}` on (teacher response, student response) pairs of the same prompt, every step",
        f"- Learning rate: {getattr(args, 'discriminator_learning_rate', None)}",
    ]
    if steps:
        body.append(f"- Steps: {steps}")
    if metrics:
        body.append("- Last logged metrics: " + ", ".join(f"`{k}` = {v:.4g}" for k, v in metrics.items()))
    body += [
        "",
        "### Run configuration",
        "",
        "```yaml",
        _config_yaml(run_config(args)),
        "```",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return header + "\n" + "\n".join(body)


def write_discriminator_card(
    trainer_or_args,
    save_dir: str | os.PathLike,
    dataset_name: str | None = None,
    student_model_id: str | None = None,
    base_model: str | None = None,
) -> str:
    """Write `save_dir/README.md` for the discriminator; returns its path. Accepts a trainer or a `GADConfig`."""
    path = Path(save_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(discriminator_card(trainer_or_args, dataset_name, student_model_id, base_model))
    return str(path)


# --------------------------------------------------------------------------------------------------------------------
# Push
# --------------------------------------------------------------------------------------------------------------------


def _api():
    from huggingface_hub import HfApi

    from . import __version__

    return HfApi(library_name="gad_trl", library_version=__version__)


def push_discriminator(
    save_dir: str | os.PathLike,
    repo_id: str,
    commit_message: str = "GAD discriminator",
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    blocking: bool = True,
):
    """Upload a saved discriminator folder (weights, tokenizer, README.md) to its own repo `repo_id`."""
    api = _api()
    repo_id = api.create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(save_dir),
        commit_message=commit_message,
        token=token,
        revision=revision,
        run_as_future=not blocking,
        ignore_patterns=["_*", "checkpoint-*", "*.pt"],
    )


def push_to_hub(
    trainer,
    commit_message: str | None = "End of training",
    blocking: bool = True,
    token: str | None = None,
    revision: str | None = None,
    **kwargs,
):
    """`Trainer.push_to_hub` for GAD: student + discriminator, with GAD model cards. Returns the student's commit.

    `kwargs` go to `trainer.create_model_card` (`dataset_name`, `tags`, `model_name`, ...).
    """
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
    from transformers.utils.hub import hf_api

    args = trainer.args
    trainer.callback_handler.on_push_begin(args, trainer.state, trainer.control)
    model_name = kwargs.pop("model_name", None)
    if model_name is None and args.should_save:
        model_name = Path(args.output_dir).name if args.hub_model_id is None else args.hub_model_id.split("/")[-1]
    token = token if token is not None else args.hub_token
    if trainer.hub_model_id is None:
        trainer.init_hf_repo(token=token)
    trainer.save_model(_internal_call=True)
    if not trainer.is_world_process_zero():
        return None

    dataset_name = kwargs.get("dataset_name")
    if dataset_name:
        trainer._gad_dataset_name = dataset_name
    tags = kwargs.pop("tags", None)
    tags = [tags] if isinstance(tags, str) else list(tags or [])
    for tag in getattr(trainer.model, "model_tags", None) or []:
        if tag not in tags:
            tags.append(tag)
    # TRL's card links `dataset_name` as a Hub data set: pass local paths only to the GAD section, which names them.
    card_kwargs = dict(kwargs, dataset_name=dataset_name if _hub_id(dataset_name) else None)
    trainer.create_model_card(model_name=model_name, tags=tags or None, **card_kwargs)

    separate = getattr(args, "discriminator_hub_model_id", None)
    disc_dir = Path(args.output_dir) / DISCRIMINATOR_SUBFOLDER
    location = separate or f"{trainer.hub_model_id}/{DISCRIMINATOR_SUBFOLDER}"
    append_student_card_section(
        Path(args.output_dir) / "README.md",
        student_card_section(trainer, dataset_name, discriminator_location=location),
    )
    if disc_dir.is_dir():
        write_discriminator_card(trainer, disc_dir, dataset_name, student_model_id=trainer.hub_model_id)

    revision = revision if revision is not None else args.hub_revision
    finish = getattr(trainer, "_finish_current_push", None)
    if callable(finish):
        finish()
    ignore = ["_*", f"{PREFIX_CHECKPOINT_DIR}-*"]
    if separate:
        ignore.append(f"{DISCRIMINATOR_SUBFOLDER}/*")
    result = hf_api().upload_folder(
        repo_id=trainer.hub_model_id,
        folder_path=args.output_dir,
        commit_message=commit_message,
        token=token,
        run_as_future=not blocking,
        ignore_patterns=ignore,
        revision=revision,
    )
    if separate and disc_dir.is_dir():
        push_discriminator(
            disc_dir,
            separate,
            commit_message=commit_message or "GAD discriminator",
            token=token,
            private=args.hub_private_repo,
            revision=revision,
            blocking=blocking,
        )
    return result


__all__ = [
    "CITATION",
    "DISCRIMINATOR_SUBFOLDER",
    "append_student_card_section",
    "discriminator_card",
    "push_discriminator",
    "push_to_hub",
    "run_config",
    "student_card_section",
    "write_discriminator_card",
]
