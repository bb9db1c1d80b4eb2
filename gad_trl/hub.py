"""Model cards of a GAD run from `gad_trl/templates/`, as TRL renders its own: the student's is TRL's plus
`student_card_section` (`GADTrainer.create_model_card`), the discriminator's is `discriminator_card` (written by
`GADTrainer.save_model`). `run_config_yaml` renders a config into a card; `push_discriminator` uploads to its own repo."""

from __future__ import annotations

import dataclasses
import json
import os
from importlib.resources import files
from pathlib import Path

DISCRIMINATOR_SUBFOLDER = "discriminator"
GAD_SECTION_MARKER, GAD_SECTION_END = "<!-- gad_trl:run -->", "<!-- /gad_trl:run -->"
PAPER_ID, PAPER_TITLE = "2511.10643", "Black-Box On-Policy Distillation of Large Language Models"
PAPER = {"paper_id": PAPER_ID, "paper_url": f"https://arxiv.org/abs/{PAPER_ID}", "paper_title": PAPER_TITLE}
CITATION = """@article{ye2025blackbox,
    title        = {{Black-Box On-Policy Distillation of Large Language Models}},
    author       = {Tianzhu Ye and Li Dong and Zewen Chi and Xun Wu and Shaohan Huang and Furu Wei},
    journal      = {arXiv preprint arXiv:2511.10643},
    year         = 2025,
    url          = {https://arxiv.org/abs/2511.10643},
}"""
# Fields always shown in the run's config, even at their default value.
KEY_FIELDS = set("""learning_rate num_generations temperature max_completion_length per_device_train_batch_size
    gradient_accumulation_steps max_grad_norm beta loss_type scale_rewards num_train_epochs max_steps critic_warmup_steps
    sft_warmup_steps teacher_response_column discriminator_model_name_or_path discriminator_loss_type
    discriminator_learning_rate discriminator_max_grad_norm discriminator_pooling use_vllm vllm_mode seed""".split())
_SECRET_SUFFIXES = ("token", "api_key", "secret", "password")
# Bookkeeping fields that TrainingArguments.__post_init__ rewrites on every run: they say nothing about the recipe.
_NOISY_FIELDS = {
    "logging_dir", "output_dir", "hub_model_id", "push_to_hub", "_n_gpu", "local_rank", "accelerator_config",
    "debug", "disable_tqdm", "dataloader_pin_memory", "fsdp_config", "deepspeed", "hub_strategy", "log_level",
    "log_level_replica", "resume_from_checkpoint", "overwrite_output_dir", "model_init_kwargs",
}
_FINAL_METRICS = ("discriminator/accuracy", "discriminator/score_diff", "discriminator/loss", "reward",
                  "completions/mean_length")


def _jsonable(value):  # as a card shows it: enums as their values, tuples as lists, other objects as strings
    return json.loads(json.dumps(value, default=str))


def run_config(args) -> dict:
    """The key GAD fields plus every field that differs from its default; secrets (`*token`, ...) never."""
    out, values = {}, args.to_dict()
    for f in dataclasses.fields(args):
        if f.name.startswith("_") or f.name in _NOISY_FIELDS or f.name.lower().endswith(_SECRET_SUFFIXES):
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else object())  # type: ignore[misc]
        value = _jsonable(values.get(f.name, getattr(args, f.name, None)))
        if f.name in KEY_FIELDS or value != _jsonable(default):
            out[f.name] = value
    return dict(sorted(out.items()))


def run_config_yaml(args) -> str:
    """The run's config as the YAML block of both cards (the one place a config is written into a card)."""
    import yaml

    from .redact import redact  # secrets at any depth (a token in *_init_kwargs, a password in a URL)

    return yaml.safe_dump(redact(run_config(args)), sort_keys=True, default_flow_style=False, allow_unicode=True).rstrip()


def hub_id(value: str | None) -> str | None:
    """A Hub repo id, or None for local paths and data files (those don't belong in card metadata)."""
    if not value or os.path.exists(value) or os.path.isabs(value) or value.startswith((".", "~")):
        return None
    data_file = Path(value).suffix.lower() in (".json", ".jsonl", ".parquet", ".csv", ".arrow", ".txt")
    return value if value.count("/") <= 1 and not data_file else None


def _context(trainer_or_args, dataset_name):
    """(args, values shared by both templates) from a trainer or a config alone."""
    trainer = trainer_or_args if hasattr(trainer_or_args, "state") else None
    args = trainer.args if trainer is not None else trainer_or_args
    from .redact import public_dataset_name  # an absolute local path is never published

    dataset_name = public_dataset_name(dataset_name or getattr(trainer, "dataset_name", None))
    found = {}
    for entry in reversed(trainer.state.log_history if trainer is not None else []):
        found.update({k: entry[k] for k in _FINAL_METRICS if k not in found and isinstance(entry.get(k), (int, float))})
    metrics = ", ".join(f"`{k}` = {found[k]:.4g}" for k in _FINAL_METRICS if k in found)
    return trainer, args, {**PAPER, "dataset_name": dataset_name, "metrics": metrics, "run_config": run_config_yaml(args)}


def student_card_section(trainer_or_args, dataset_name=None, discriminator_location=None,
                         discriminator_merged_location=None, discriminator_merged=False) -> str:
    """The GAD section of the student's card: the method, the paper, the teacher data, the discriminator, the config.
    The discriminator's place: `discriminator_locations`."""
    from jinja2 import Template

    _, _, context = _context(trainer_or_args, dataset_name)
    template = Template(files("gad_trl").joinpath("templates", "student_card_section.md").read_text())
    return template.render(**context, dataset_is_hub_id=hub_id(context["dataset_name"]) is not None,
                           discriminator_location=discriminator_location,
                           discriminator_merged_location=discriminator_merged_location,
                           discriminator_merged=discriminator_merged)


def discriminator_locations(args, repo_id: str | None) -> dict:
    """Where the student's card says the discriminator is (`student_card_section`'s keywords). Its own repo
    (`discriminator_hub_model_id`) receives a plain model, for a PEFT discriminator its merged export. Otherwise
    sub-folders of the student's repo `repo_id` (next to the student when it has none): `discriminator/`, which for a
    PEFT discriminator is its adapter, and then the merged export `discriminator_merged/`."""
    from .discriminator.adapters import MERGED_DIR, wants_peft_discriminator

    peft = wants_peft_discriminator(args)
    if args.discriminator_hub_model_id:
        return {"discriminator_location": args.discriminator_hub_model_id, "discriminator_merged": peft}

    def where(folder: str) -> str:
        return f"{repo_id}/{folder}" if repo_id else f"{folder}/"

    return {"discriminator_location": where(DISCRIMINATOR_SUBFOLDER),
            "discriminator_merged_location": where(MERGED_DIR) if peft else None}


def append_student_card_section(readme_path: str | os.PathLike, section: str) -> None:
    """Put (or replace) the GAD section of a README written by TRL's `create_model_card`, before its citations."""
    path = Path(readme_path)
    text = path.read_text() if path.exists() else ""
    if GAD_SECTION_MARKER in text:
        start, end = text.index(GAD_SECTION_MARKER), text.find(GAD_SECTION_END)
        text = text[:start].rstrip() + "\n" + (text[end + len(GAD_SECTION_END) :] if end >= 0 else "")
    i = text.find("\n## Citations")
    path.write_text(text.rstrip() + "\n\n" + section if i < 0 else text[:i].rstrip() + "\n\n" + section + text[i:])


def discriminator_card(trainer_or_args, dataset_name=None, student_model_id=None, base_model=None) -> str:
    """The discriminator's README.md (metadata, usage, training details, config, citation), from its template."""
    from huggingface_hub import ModelCard, ModelCardData

    from .discriminator.adapters import MERGED_DIR, wants_peft_discriminator

    trainer, args, context = _context(trainer_or_args, dataset_name)
    peft = wants_peft_discriminator(args)  # the plain model is discriminator_merged/, the adapter discriminator/
    student_source = getattr(getattr(getattr(trainer, "model", None), "config", None), "_name_or_path", None)
    base_model = base_model or args.discriminator_model_name_or_path or student_source
    student_model_id = student_model_id or getattr(trainer, "hub_model_id", None) or args.hub_model_id
    card_data = ModelCardData(
        library_name="transformers", pipeline_tag="text-classification", base_model=hub_id(base_model),
        datasets=[hub_id(context["dataset_name"])] if hub_id(context["dataset_name"]) else None,
        tags=["gad", "discriminator", "reward-model", "trl", "generative-adversarial-distillation"],
    )
    card = ModelCard.from_template(
        card_data, template_str=files("gad_trl").joinpath("templates", "discriminator_card.md").read_text(), **context,
        student_model_id=student_model_id, student_is_hub_id=hub_id(student_model_id) is not None,
        own_repo=args.discriminator_hub_model_id, loss_type=args.discriminator_loss_type,
        peft=peft, subfolder=MERGED_DIR if peft else DISCRIMINATOR_SUBFOLDER,
        learning_rate=args.discriminator_learning_rate, steps=trainer.state.global_step if trainer else None,
        citation=CITATION, mean_pooled=_pooling(trainer, args) == "mean", value_head=_is_value_head(trainer),
    )
    return str(card)


def _is_value_head(trainer) -> bool:
    """Whether the saved discriminator is a `GADValueHeadModel` (an architecture without a seq-cls class), which
    `AutoModelForSequenceClassification` cannot load: the card then shows gad_trl's class."""
    from .discriminator.value_head import uses_value_head

    config = getattr(getattr(trainer, "discriminator", None), "config", None)
    return config is not None and uses_value_head(config)


def _pooling(trainer, args) -> str:
    """The discriminator's pooling as saved in its config (a trainer's), else as configured."""
    config = getattr(getattr(trainer, "discriminator", None), "config", None)
    return getattr(config, "discriminator_pooling", None) or getattr(args, "discriminator_pooling", None) or "last"


def write_discriminator_card(trainer_or_args, save_dir, dataset_name=None, student_model_id=None, base_model=None):
    """Write `save_dir/README.md` for the discriminator; returns its path. Accepts a trainer or a `GADConfig`."""
    (path := Path(save_dir) / "README.md").parent.mkdir(parents=True, exist_ok=True)
    path.write_text(discriminator_card(trainer_or_args, dataset_name, student_model_id, base_model))
    return str(path)


def push_discriminator(save_dir, repo_id, commit_message="GAD discriminator", token=None, private=None,
                       revision=None, blocking=True):
    """Upload a saved discriminator folder (weights, tokenizer, README.md) to its own repo `repo_id`."""
    from huggingface_hub import HfApi
    from .version import __version__

    api = HfApi(library_name="gad_trl", library_version=__version__)
    repo_id = api.create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
    return api.upload_folder(repo_id=repo_id, folder_path=str(save_dir), commit_message=commit_message, token=token,
                             revision=revision, run_as_future=not blocking,
                             ignore_patterns=["_*", "checkpoint-*", "*.pt"])


def push_to_hub(trainer, *args, **kwargs):
    """`trainer.push_to_hub(...)`, as a function (earlier versions' entry point)."""
    return trainer.push_to_hub(*args, **kwargs)
