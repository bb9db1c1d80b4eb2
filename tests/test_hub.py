"""Model cards and Hub uploads of a GAD run, offline: the Hub API is replaced by recorders that keep a copy of what
would be uploaded (after the ignore patterns), and that copy is reloaded with `from_pretrained`."""

import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from gad_trl import GADConfig
from gad_trl import hub as gad_hub
from gad_trl.tiny import tiny_gad_rows

DATASET = "someone/teacher-answers"


class FakeHub:
    """Stands in for `huggingface_hub.HfApi`: records repos and uploads, copies uploaded files to `root/<repo>`."""

    def __init__(self, root):
        self.root = Path(root)
        self.repos, self.uploads = [], []

    def install(self, monkeypatch):
        from huggingface_hub import HfApi, RepoUrl
        from huggingface_hub.utils import filter_repo_objects

        hub = self

        def create_repo(api_self, repo_id, *args, **kwargs):
            hub.repos.append((repo_id, kwargs))
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(api_self, *, repo_id, folder_path, path_in_repo=None, ignore_patterns=None,
                          allow_patterns=None, **kwargs):
            folder = Path(folder_path)
            files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
            files = list(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
            dest = hub.root / repo_id / (path_in_repo or "")
            for name in files:
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(folder / name, dest / name)
            hub.uploads.append({"repo_id": repo_id, "files": files, "path_in_repo": path_in_repo, **kwargs})
            return f"https://huggingface.co/{repo_id}/commit/fake"

        def forbidden(*args, **kwargs):
            raise AssertionError("unexpected Hub call (network) in an offline test")

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        for name in ("upload_file", "create_commit", "preupload_lfs_files", "whoami"):
            monkeypatch.setattr(HfApi, name, forbidden)
        return self

    def repo(self, repo_id):
        return self.root / repo_id


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    return FakeHub(tmp_path / "hub").install(monkeypatch)


def _trainer(model_dir, output_dir, **overrides):
    from gad_trl import GADTrainer

    kwargs = dict(
        output_dir=str(output_dir), use_cpu=True, bf16=False, report_to="none", per_device_train_batch_size=4,
        num_generations=4, max_completion_length=6, max_steps=2, critic_warmup_steps=1, logging_steps=1,
        save_strategy="no", learning_rate=1e-3, discriminator_learning_rate=1e-3, seed=0, disable_tqdm=True,
        hub_model_id="me/tiny-gad", hub_token="hf_SECRET_do_not_leak", warn_on_unhealthy_metrics=False,
    )
    kwargs.update(overrides)
    trainer = GADTrainer(model_dir, args=GADConfig(**kwargs), train_dataset=Dataset.from_list(tiny_gad_rows(8)))
    trainer.train()
    return trainer


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------ cards, no trainer


def test_discriminator_card_from_a_config_alone():
    args = GADConfig(output_dir="/tmp/x", use_cpu=True, discriminator_loss_type="balanced", critic_warmup_steps=10,
                     hub_token="hf_SECRET_do_not_leak")
    card = gad_hub.discriminator_card(args, dataset_name=DATASET, student_model_id="me/student",
                                      base_model="Qwen/Qwen2.5-7B-Instruct")
    meta, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "base_model: Qwen/Qwen2.5-7B-Instruct" in meta and f"- {DATASET}" in meta and "- gad" in meta
    assert "Generative Adversarial Distillation" in body and "arxiv.org/abs/2511.10643" in body
    assert "@article{ye2025blackbox" in body and "Black-Box On-Policy Distillation" in body
    assert "last token of the response" in body and "me/student" in body
    assert "discriminator_loss_type: balanced" in body and "critic_warmup_steps: 10" in body
    assert "hf_SECRET" not in card


def test_run_config_has_key_fields_and_changes_but_no_secrets():
    args = GADConfig(output_dir="/tmp/x", use_cpu=True, warmup_steps=7, hub_token="hf_SECRET_do_not_leak")
    config = gad_hub.run_config(args)
    assert config["warmup_steps"] == 7  # changed from its default
    assert config["num_generations"] == 8 and config["temperature"] == 0.8  # key fields, even at their default
    assert "adam_epsilon" not in config  # unchanged, not a key field
    assert not any("token" in k for k in config) and "hf_SECRET" not in str(config)


def test_local_paths_stay_out_of_card_metadata():
    args = GADConfig(output_dir="/tmp/x", use_cpu=True)
    card = gad_hub.discriminator_card(args, dataset_name="/data/train.parquet", base_model="/models/student")
    meta = card.split("---\n")[1]
    assert "base_model" not in meta and "datasets" not in meta
    assert "`.../train.parquet`" in card and "/data/train.parquet" not in card  # named in the text, not by its abs. path
    card = gad_hub.discriminator_card(args, dataset_name="data/train.jsonl", base_model="./student")
    meta = card.split("---\n")[1]
    assert "base_model" not in meta and "datasets" not in meta


def test_student_card_section_is_inserted_once(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Model\n\nTRL text.\n\n## Citations\n\nTRL bibtex\n")
    args = GADConfig(output_dir="/tmp/x", use_cpu=True)
    for _ in range(2):
        gad_hub.append_student_card_section(readme, gad_hub.student_card_section(args, DATASET, "me/s/discriminator"))
    text = readme.read_text()
    assert text.count(gad_hub.GAD_SECTION_MARKER) == 1
    assert text.index("## Generative Adversarial Distillation") < text.index("## Citations")
    assert f"https://huggingface.co/datasets/{DATASET}" in text and "me/s/discriminator" in text


def test_student_card_says_where_a_peft_discriminator_and_its_merged_export_are():
    def section(repo_id, **fields):
        args = GADConfig(output_dir="/tmp/x", use_cpu=True, **fields)
        return gad_hub.student_card_section(args, DATASET, **gad_hub.discriminator_locations(args, repo_id))

    full = section("me/s")
    assert "- Discriminator: `me/s/discriminator`\n" in full and "LoRA" not in full and "merged" not in full
    lora = section("me/s", discriminator_use_peft=True)
    assert "`me/s/discriminator`, a LoRA adapter with its value head" in lora and "load_saved_discriminator" in lora
    assert "plain `AutoModelForSequenceClassification`: `me/s/discriminator_merged`" in lora
    local = section(None, discriminator_use_peft=True)  # create_model_card without a Hub repo: next to the student
    assert "`discriminator/`, a LoRA adapter" in local and "`discriminator_merged/`" in local and "None" not in local
    own = section("me/s", discriminator_use_peft=True, discriminator_hub_model_id="me/d")  # pushed: the merged model
    assert "- Discriminator: `me/d` (trained as a LoRA adapter, merged into its base" in own
    assert "me/s/discriminator" not in own


# ------------------------------------------------------------------------------------------------ trained runs


def test_save_model_writes_reloadable_student_and_discriminator_with_card(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    trainer = _trainer(tiny_model_dir, tmp_path / "run")
    trainer.save_model(str(tmp_path / "saved"))
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    disc = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved" / "discriminator", num_labels=1)
    live_student, live_disc = _state(trainer.model), _state(trainer.discriminator)
    assert all(torch.equal(v, live_student[k]) for k, v in student.state_dict().items())
    assert all(torch.equal(v, live_disc[k]) for k, v in disc.state_dict().items())
    card = (tmp_path / "saved" / "discriminator" / "README.md").read_text()
    assert "GAD" in card and "2511.10643" in card and "Steps: 2" in card


@pytest.mark.parametrize("entry", ["gad_trl.hub.push_to_hub", "trainer.push_to_hub"])
def test_push_to_hub_discriminator_in_subfolder(entry, tiny_model_dir, tmp_path, fake_hub):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    trainer = _trainer(tiny_model_dir, tmp_path / "run")
    if entry == "trainer.push_to_hub":
        trainer.push_to_hub(dataset_name=DATASET)
    else:
        gad_hub.push_to_hub(trainer, dataset_name=DATASET)

    assert [u["repo_id"] for u in fake_hub.uploads] == ["me/tiny-gad"]  # one commit for both models
    files = fake_hub.uploads[0]["files"]
    assert {"model.safetensors", "config.json", "README.md", "discriminator/model.safetensors",
            "discriminator/config.json", "discriminator/README.md"} <= set(files)

    repo = fake_hub.repo("me/tiny-gad")
    student = AutoModelForCausalLM.from_pretrained(repo)
    disc = AutoModelForSequenceClassification.from_pretrained(repo, subfolder="discriminator", num_labels=1)
    live_disc = _state(trainer.discriminator)
    assert all(torch.equal(v, live_disc[k]) for k, v in disc.state_dict().items())
    assert student.config.vocab_size == disc.config.vocab_size

    student_card = (repo / "README.md").read_text()
    assert "GAD" in student_card and "2511.10643" in student_card and DATASET in student_card
    assert "### Run configuration" in student_card and "critic_warmup_steps: 1" in student_card
    assert "me/tiny-gad/discriminator" in student_card
    disc_card = (repo / "discriminator" / "README.md").read_text()
    assert DATASET in disc_card and "me/tiny-gad" in disc_card and "@article{ye2025blackbox" in disc_card
    assert 'subfolder": "discriminator"' in disc_card  # usage snippet points at the sub-folder
    for text in (student_card, disc_card):
        assert "hf_SECRET" not in text


@pytest.mark.parametrize("entry", ["gad_trl.hub.push_to_hub", "trainer.push_to_hub"])
def test_push_to_hub_discriminator_in_its_own_repo(entry, tiny_model_dir, tmp_path, fake_hub):
    from transformers import AutoModelForSequenceClassification

    trainer = _trainer(tiny_model_dir, tmp_path / "run", discriminator_hub_model_id="me/tiny-gad-discriminator",
                       hub_private_repo=True)
    if entry == "trainer.push_to_hub":
        trainer.push_to_hub(dataset_name=DATASET)
    else:
        gad_hub.push_to_hub(trainer, dataset_name=DATASET)

    by_repo = {u["repo_id"]: u for u in fake_hub.uploads}
    assert set(by_repo) == {"me/tiny-gad", "me/tiny-gad-discriminator"}
    assert not any(f.startswith("discriminator/") for f in by_repo["me/tiny-gad"]["files"])
    assert {"model.safetensors", "config.json", "README.md"} <= set(by_repo["me/tiny-gad-discriminator"]["files"])
    assert ("me/tiny-gad-discriminator", {"token": "hf_SECRET_do_not_leak", "private": True, "exist_ok": True}) in [
        (r, {k: kw.get(k) for k in ("token", "private", "exist_ok")}) for r, kw in fake_hub.repos
    ]
    disc = AutoModelForSequenceClassification.from_pretrained(fake_hub.repo("me/tiny-gad-discriminator"), num_labels=1)
    live_disc = _state(trainer.discriminator)
    assert all(torch.equal(v, live_disc[k]) for k, v in disc.state_dict().items())
    assert "me/tiny-gad-discriminator" in (fake_hub.repo("me/tiny-gad") / "README.md").read_text()
    disc_card = (fake_hub.repo("me/tiny-gad-discriminator") / "README.md").read_text()
    assert "https://huggingface.co/me/tiny-gad" in disc_card and 'repo = "me/tiny-gad-discriminator"' in disc_card


def test_cli_push_to_hub_sends_student_discriminator_and_cards(tiny_model_dir, tmp_path, fake_hub):
    """`gad-trl train ... --push_to_hub true`: the end-of-run push carries the data set name into both cards."""
    import json

    import gad_trl.cli.main as cli_main

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_gad_rows(8)))
    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "gad.yaml")
    argv = ["train", "--config", recipe, "--model_name_or_path", tiny_model_dir, "--dataset_name", str(data),
            "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--report_to", "none", "--disable_tqdm", "true",
            "--push_to_hub", "true", "--hub_model_id", "me/cli-gad"]
    assert cli_main.main(argv) == 0
    # Trainer.save_model pushes too when push_to_hub is set (as in `trl grpo`); the last commit is the final one.
    assert {u["repo_id"] for u in fake_hub.uploads} == {"me/cli-gad"}
    assert fake_hub.uploads[-1]["commit_message"] == "End of training"
    repo = fake_hub.repo("me/cli-gad")
    assert (repo / "model.safetensors").exists() and (repo / "discriminator" / "model.safetensors").exists()
    student_card = (repo / "README.md").read_text()
    # The data set is named by its folder, never by its absolute local path (issue 11).
    assert "`.../data`" in student_card and "2511.10643" in student_card and "### Run configuration" in student_card
    disc_card = (repo / "discriminator" / "README.md").read_text()
    assert "`.../data`" in disc_card and str(data) not in disc_card and str(data) not in student_card
