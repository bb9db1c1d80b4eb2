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


def test_a_lora_student_under_zero3_with_checkpointing_and_the_sft_term_is_refused_naming_the_fixes():
    """Found by the ZeRO-3 LoRA-sync launch (2 CPU processes): DeepSpeed's backward asserts at the first GAD step;
    gradient_checkpointing=False or sft_loss_coef=0 trained (tests/vllm/test_lora_sync.py runs the first)."""
    from gad_trl.trainer import peft_zero3_checkpointing_problem

    problem = peft_zero3_checkpointing_problem(True, 3, True, 1.0)
    assert "ZeRO-3" in problem and "gradient_checkpointing=False" in problem and "sft_loss_coef=0" in problem
    for fine in ((False, 3, True, 1.0), (True, 2, True, 1.0), (True, None, True, 1.0), (True, 3, False, 1.0),
                 (True, 3, True, 0.0)):
        assert peft_zero3_checkpointing_problem(*fine) is None, fine
