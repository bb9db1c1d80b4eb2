"""`gad_trl.preflight`: checks on a run's inputs that fail before anything heavy loads, naming the fix."""

from __future__ import annotations

import pytest
from datasets import Dataset

from gad_trl.data import GADDataError
from gad_trl.tiny import build_tiny_tokenizer, tiny_gad_rows
from tests.helpers.gad_helpers import make_args, make_trainer


def test_model_instance_without_a_path_and_beta_names_the_two_ways_out(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gad_trl import GADTrainer

    model = AutoModelForCausalLM.from_config(AutoModelForCausalLM.from_pretrained(tiny_model_dir).config)
    model.config._name_or_path = ""  # built in memory: nothing to reload a reference model from
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = Dataset.from_list(tiny_gad_rows(4, seed=0))
    with pytest.raises(ValueError, match=r"beta=0.001.*save_pretrained.*beta=0\.0"):
        GADTrainer(model, args=make_args(tmp_path, beta=1e-3), train_dataset=data, processing_class=tokenizer)
    # beta=0 needs no reference model: the same instance builds.
    trainer = GADTrainer(model, args=make_args(tmp_path, beta=0.0), train_dataset=data, processing_class=tokenizer)
    assert trainer.ref_model is None


def test_a_prompt_longer_than_the_context_fails_at_construction_naming_max_prompt_length(tiny_model_dir, tmp_path):
    from gad_trl.cli.utils import filter_long_prompts

    rows = tiny_gad_rows(8, seed=0)
    rows[6]["prompt"] = [{"role": "user", "content": " ".join(["the"] * 1100)}]  # tiny model: 1024 positions
    with pytest.raises(GADDataError, match=r"Row 6: the prompt is \d+ tokens.*max_position_embeddings=1024 minus "
                                           r"max_completion_length=8.*--max_prompt_length 1016"):
        make_trainer(tiny_model_dir, tmp_path, rows=rows)
    # `--max_prompt_length` at the limit drops exactly that row, and the trainer then accepts the data.
    kept = filter_long_prompts(Dataset.from_list(rows), build_tiny_tokenizer(), 1016)
    assert len(kept) == 7
    make_trainer(tiny_model_dir, tmp_path, rows=list(kept))


def test_max_completion_length_filling_the_context_is_an_error(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="max_completion_length=1024 leaves no room for a prompt"):
        make_trainer(tiny_model_dir, tmp_path, max_completion_length=1024)

