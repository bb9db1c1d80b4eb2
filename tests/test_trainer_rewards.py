"""Discriminator pooling, reward mixing and the frozen-discriminator switch (issue 10)."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, TrainerCallback

from gad_trl import GADTrainer
from gad_trl.discriminator.model import backbone, score_head, score_sequences
from gad_trl.discriminator.pooling import set_discriminator_pooling
from gad_trl.tiny import tiny_gad_rows

from tests.helpers.gad_helpers import make_args, make_trainer, params_of, response_sequences, same_params


def test_mean_pooling_scores_the_response_mean_and_survives_a_reload(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=1, discriminator_pooling="mean")
    trainer.train()
    disc = trainer.discriminator.eval()
    seqs, starts = response_sequences(trainer)
    with torch.no_grad():
        mean_scores = score_sequences(disc, seqs, trainer.processing_class.pad_token_id, "cpu", None, starts)
        # By hand, one sequence at a time (no padding): head(mean of the response's hidden states).
        for seq, start, got in zip(seqs, starts, mean_scores):
            hidden = backbone(disc)(input_ids=torch.tensor([seq])).last_hidden_state[0]
            expected = score_head(disc)(hidden[start:].mean(0)).item()
            assert got.item() == pytest.approx(expected, abs=1e-5)
        set_discriminator_pooling(disc, "last")
        last_scores = score_sequences(disc, seqs, trainer.processing_class.pad_token_id, "cpu", None, starts)
        set_discriminator_pooling(disc, "mean")
    assert not torch.allclose(mean_scores, last_scores, atol=1e-3)

    trainer.save_model(str(tmp_path / "saved"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "saved" / "discriminator"), num_labels=1)
    assert reloaded.config.discriminator_pooling == "mean"
    assert "mean hidden state over the response tokens" in (tmp_path / "saved" / "discriminator" / "README.md").read_text()
    with torch.no_grad():
        again = score_sequences(reloaded.eval(), seqs, trainer.processing_class.pad_token_id, "cpu", None, starts)
    assert torch.allclose(again, mean_scores, atol=1e-5)
    with pytest.raises(ValueError, match="response_starts"):
        score_sequences(reloaded, seqs, trainer.processing_class.pad_token_id, "cpu")
    # A reloaded discriminator keeps its pooling when the config does not choose one.
    resumed = GADTrainer(tiny_model_dir, args=make_args(tmp_path / "r"), discriminator=reloaded,
                         train_dataset=Dataset.from_list(tiny_gad_rows(4, seed=0)))
    assert resumed.discriminator.config.discriminator_pooling == "mean"


def _length_reward(completions, **kwargs):
    return [float(len(c[0]["content"] if isinstance(c, list) else c)) for c in completions]


@pytest.mark.parametrize("weights", [[1.0, 0.5], [0.0, 1.0]])
def test_reward_funcs_are_mixed_with_the_discriminator_by_reward_weights(tiny_model_dir, tmp_path, weights):
    trainer = GADTrainer(
        tiny_model_dir,
        args=make_args(tmp_path, max_steps=2, reward_weights=weights),
        train_dataset=Dataset.from_list(tiny_gad_rows(8, seed=0)),
        reward_funcs=[_length_reward],
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for h in logs:
        d, r = h["rewards/discriminator/mean"], h["rewards/_length_reward/mean"]
        assert d == pytest.approx(h["discriminator/student_score_mean"], abs=1e-5)
        assert r > 0
        assert h["reward"] == pytest.approx(weights[0] * d + weights[1] * r, rel=1e-4, abs=1e-5)


def test_reward_weights_must_cover_the_discriminator_column(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="discriminator's first"):
        GADTrainer(tiny_model_dir, args=make_args(tmp_path, reward_weights=[1.0]),
                   train_dataset=Dataset.from_list(tiny_gad_rows(4, seed=0)), reward_funcs=[_length_reward])
    with pytest.raises(ValueError, match="discriminator_pooling"):
        make_args(tmp_path, discriminator_pooling="max")
    with pytest.raises(ValueError, match="discriminator_freeze_after_step"):
        make_args(tmp_path, discriminator_freeze_after_step=-1)


class _Snapshots(TrainerCallback):
    def __init__(self, trainer):
        self.trainer, self.by_step = trainer, {0: params_of(trainer.discriminator)}

    def on_step_end(self, args, state, control, **kwargs):
        self.by_step[state.global_step] = params_of(self.trainer.discriminator)


def test_frozen_discriminator_stops_updating_after_the_step_and_still_logs(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=4, critic_warmup_steps=1, sft_warmup_steps=1,
                           discriminator_freeze_after_step=2)
    snapshots = _Snapshots(trainer)
    trainer.add_callback(snapshots)
    trainer.train()
    s = snapshots.by_step
    assert not same_params(s[0], s[1]) and not same_params(s[1], s[2])  # learns during the warm-ups
    assert same_params(s[2], s[3]) and same_params(s[3], s[4])  # frozen from global step 2 on
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["discriminator/frozen"] for h in logs] == [0.0, 0.0, 1.0, 1.0]
    for h in logs[2:]:
        assert 0.0 <= h["discriminator/accuracy"] <= 1.0 and "discriminator/score_diff" in h
        assert h["reward"] == pytest.approx(h["discriminator/student_score_mean"], abs=1e-5)
    state = trainer.discriminator_optimizer.state_dict()["state"]
    assert max(int(v["step"]) for v in state.values()) == 2


def test_resume_keeps_the_checkpoint_pooling_and_refuses_another(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path / "a", max_steps=1, save_strategy="steps", save_steps=1,
                           discriminator_pooling="mean")
    trainer.train()
    checkpoint = str(tmp_path / "a" / "checkpoint-1")
    resumed = make_trainer(tiny_model_dir, tmp_path / "b", max_steps=2)  # pooling unset: a new one would be `last`
    assert resumed.discriminator.config.discriminator_pooling == "last"
    resumed.train(resume_from_checkpoint=checkpoint)
    assert resumed.discriminator.config.discriminator_pooling == "mean"
    other = make_trainer(tiny_model_dir, tmp_path / "c", max_steps=2, discriminator_pooling="last")
    with pytest.raises(ValueError, match="trained with discriminator_pooling='mean'.*sets discriminator_pooling='last'"):
        other.train(resume_from_checkpoint=checkpoint)
