"""GRPOTrainer behaviour GADTrainer keeps: `trust_remote_code` reaches the discriminator's `from_pretrained`, a student
passed already wrapped by PEFT initialises the discriminator from its base weights, TRL's rollout-dispatch helpers
work on a trainer built without `__init__` (as TRL's own tests build one), and GAD's errors that pre-empt TRL's checks
carry TRL's wording."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset

from gad_trl.data import GADDataError, prepare_gad_dataset
from gad_trl.discriminator.model import backbone
from gad_trl.tiny import save_tiny_model
from tests.helpers.gad_helpers import TRL_MODEL, make_args, make_trainer

CONFIG_CODE = '''
from transformers import Qwen2Config


class GadCustomConfig(Qwen2Config):
    model_type = "gad_custom"
'''
MODELING_CODE = '''
from torch import nn
from transformers import Qwen2ForCausalLM, Qwen2ForSequenceClassification, Qwen2Model, Qwen2PreTrainedModel

from .configuration_gad_custom import GadCustomConfig


class GadCustomModel(Qwen2Model):
    config_class = GadCustomConfig


class GadCustomForCausalLM(Qwen2ForCausalLM):
    config_class = GadCustomConfig


class GadCustomForSequenceClassification(Qwen2ForSequenceClassification):
    config_class = GadCustomConfig

    def __init__(self, config):  # its own body class, as remote-code checkpoints define it
        Qwen2PreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = GadCustomModel(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()
'''


@pytest.fixture(scope="module")
def remote_code_model_dir(tmp_path_factory):
    """A tiny model whose classes live in the checkpoint folder (loading it needs trust_remote_code=True)."""
    path = tmp_path_factory.mktemp("remote-code")
    save_tiny_model(path)
    (path / "configuration_gad_custom.py").write_text(CONFIG_CODE)
    (path / "modeling_gad_custom.py").write_text(MODELING_CODE)
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "gad_custom"
    config["architectures"] = ["GadCustomForCausalLM"]
    config["auto_map"] = {
        "AutoConfig": "configuration_gad_custom.GadCustomConfig",
        "AutoModel": "modeling_gad_custom.GadCustomModel",  # the body of the classes below
        "AutoModelForCausalLM": "modeling_gad_custom.GadCustomForCausalLM",
        "AutoModelForSequenceClassification": "modeling_gad_custom.GadCustomForSequenceClassification",
    }
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def test_trust_remote_code_reaches_the_discriminator(remote_code_model_dir, tmp_path):
    trainer = make_trainer(remote_code_model_dir, tmp_path, max_steps=1, trust_remote_code=True,
                           discriminator_model_name_or_path=remote_code_model_dir)
    assert type(trainer.discriminator).__name__ == "GadCustomForSequenceClassification"
    trainer.train()  # scores and updates


def test_a_peft_wrapped_student_initialises_the_discriminator_from_its_base_weights(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = {k: v.clone() for k, v in backbone(base).state_dict().items()}
    student = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    trainer = make_trainer(student, tmp_path, max_steps=1)
    disc_body = backbone(trainer.discriminator).state_dict()
    assert set(disc_body) == set(reference)
    assert all(torch.equal(disc_body[k], reference[k]) for k in reference)
    trainer.train()


# ------------------------------------------------------------------- 9. a trainer built without __init__ (TRL's tests)
def _bare_trainer(cls):
    """TRL's `TestGRPORolloutDispatch._make_trainer`, plus what `_generate` reads after the rollout."""
    from collections import defaultdict
    from types import SimpleNamespace
    from unittest.mock import MagicMock

    import torch

    trainer = object.__new__(cls)
    trainer.accelerator = SimpleNamespace(device=torch.device("cpu"), is_main_process=True, gather=lambda t: t)
    trainer.args = SimpleNamespace(report_to=[])
    trainer.model = SimpleNamespace(training=True)
    trainer.state = SimpleNamespace(global_step=2, num_input_tokens_seen=0)
    trainer._last_loaded_step = 1
    trainer.use_vllm = False
    trainer.use_transformers_paged = False
    trainer.vllm_generation = SimpleNamespace(sync_weights=MagicMock())
    trainer.tools = None
    trainer.processing_class = MagicMock(batch_decode=lambda ids, **kw: ["x" for _ in ids])
    trainer._tokenizer = SimpleNamespace(pad_token_id=0)
    trainer.eos_token_ids = [3]
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    return trainer


@pytest.fixture(params=["GRPOTrainer", "GADTrainer"])
def bare_trainer(request):
    import trl

    import gad_trl

    return _bare_trainer(getattr(gad_trl if request.param == "GADTrainer" else trl, request.param))


def _reward(completions, **kwargs):
    return [0.0] * len(completions)


def test_generate_prefers_rollout_func(bare_trainer):
    from unittest.mock import MagicMock

    bare_trainer.rollout_func = MagicMock(return_value={
        "prompt_ids": [[1]], "completion_ids": [[2]], "logprobs": [[-0.1]], "env_mask": [[1]]})
    prompt_ids, completion_ids, tool_mask, _, logprobs, extra_fields, _, _ = bare_trainer._generate(["prompt"])
    assert (prompt_ids, completion_ids, tool_mask, logprobs, extra_fields) == ([[1]], [[2]], [[1]], [[-0.1]], {})
    bare_trainer.rollout_func.assert_called_once_with(["prompt"], bare_trainer)


def test_generate_rollout_func_syncs_vllm_weights_when_needed(bare_trainer):
    from unittest.mock import MagicMock

    bare_trainer.use_vllm = True
    bare_trainer.rollout_func = MagicMock(return_value={"prompt_ids": [[1]], "completion_ids": [[2]],
                                                        "logprobs": [[0.0]]})
    bare_trainer._generate(["prompt"])
    bare_trainer.vllm_generation.sync_weights.assert_called_once()
    assert bare_trainer._last_loaded_step == bare_trainer.state.global_step


def test_generate_rollout_func_raises_when_required_keys_are_missing(bare_trainer):
    from unittest.mock import MagicMock

    bare_trainer.rollout_func = MagicMock(return_value={"prompt_ids": [[1]], "completion_ids": [[2]]})
    with pytest.raises(ValueError, match="rollout_func must return keys"):
        bare_trainer._generate(["prompt"])


def test_dataset_required_without_environment(tmp_path):
    from gad_trl import GADTrainer

    with pytest.raises(ValueError, match="`train_dataset` is required.*teacher's responses"):
        GADTrainer(model=TRL_MODEL, reward_funcs=_reward, args=make_args(tmp_path))


def test_mismatched_reward_processing_classes_length(tmp_path):
    from gad_trl import GADTrainer
    from gad_trl.tiny import build_tiny_tokenizer, tiny_gad_rows

    with pytest.raises(ValueError, match="must match") as info:
        GADTrainer(model=TRL_MODEL, reward_funcs=[_reward, _reward], reward_processing_classes=build_tiny_tokenizer(),
                   args=make_args(tmp_path), train_dataset=Dataset.from_list(tiny_gad_rows(4)))
    assert "The number of reward processing classes (1) must match the number of reward functions (2)" in str(
        info.value)


def test_mismatched_reward_weights_carry_trl_wording(tmp_path):
    from gad_trl import GADTrainer
    from gad_trl.tiny import tiny_gad_rows

    with pytest.raises(ValueError, match=r"Number of reward weights \(1\) must match number of reward functions \(2\)"):
        GADTrainer(model=TRL_MODEL, reward_funcs=_reward, args=make_args(tmp_path, reward_weights=[1.0]),
                   train_dataset=Dataset.from_list(tiny_gad_rows(4)))


def test_unsupported_dataset_dict_is_a_type_error_in_trl_wording(tmp_path):
    from datasets import DatasetDict

    from gad_trl.tiny import tiny_gad_rows

    splits = DatasetDict({"train": Dataset.from_list(tiny_gad_rows(4))})
    trl_wording = r"`train_dataset` must be a `Dataset` or `IterableDataset`"
    with pytest.raises(TypeError, match=trl_wording + r".*dataset\['train'\]"):
        prepare_gad_dataset(splits)
    with pytest.raises(GADDataError, match="`eval_dataset` must be a `Dataset` or `IterableDataset`, got `list`"):
        prepare_gad_dataset(tiny_gad_rows(4), split_name="eval")

