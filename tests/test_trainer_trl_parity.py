"""GRPOTrainer behaviour GADTrainer keeps (issue 20, item 7): `trust_remote_code` reaches the discriminator's
`from_pretrained`, and a student passed already wrapped by PEFT initialises the discriminator from its base weights."""

from __future__ import annotations

import json

import pytest
import torch

from gad_trl.discriminator.model import backbone
from gad_trl.tiny import save_tiny_model
from tests.helpers.gad_helpers import make_trainer

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
