"""A PEFT (LoRA) student: its adapters train while the discriminator stays a full model."""

import pytest

from tests.helpers.gad_helpers import params_of, same_params


def test_lora_student_trains_and_discriminator_is_full(tiny_model_dir, tmp_path):
    peft = pytest.importorskip("peft")
    from datasets import Dataset

    from gad_trl import GADTrainer
    from gad_trl.tiny import tiny_gad_rows
    from tests.helpers.gad_helpers import make_args

    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = GADTrainer(tiny_model_dir, args=make_args(tmp_path, max_steps=2), train_dataset=Dataset.from_list(tiny_gad_rows(8)),
                         peft_config=config)
    lora0 = {k: v for k, v in params_of(trainer.model).items() if "lora_B" in k}
    disc0 = params_of(trainer.discriminator)
    trainer.train()
    lora1 = {k: v for k, v in params_of(trainer.model).items() if "lora_B" in k}
    assert lora0 and not same_params(lora0, lora1)
    assert not same_params(disc0, params_of(trainer.discriminator))
