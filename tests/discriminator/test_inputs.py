"""`gad_trl.discriminator.inputs`: what the discriminator is shown, built once for training and for held-out triples."""

from __future__ import annotations

from datasets import Dataset

from gad_trl.data import encode_pair
from gad_trl.tiny import tiny_gad_rows
from tests.helpers.gad_helpers import SMUGGLED, make_trainer, special_ids


def test_the_trainer_and_the_heldout_encoding_agree_on_smuggled_text(tiny_model_dir, tmp_path, tok):
    rows = tiny_gad_rows(8, seed=0)
    rows[3]["teacher_response"] = SMUGGLED
    trainer = make_trainer(tiny_model_dir, tmp_path, rows=rows, max_completion_length=64)
    encoder = trainer.discriminator_component.encoder
    ids, _ = encoder.teacher_completion_ids(SMUGGLED)
    assert [i for i in ids if i in special_ids(tok)] == [encoder.end_token_id]
    heldout = encode_pair(trainer.processing_class, rows[3]["prompt"], SMUGGLED, True, encoder.end_token_id)
    assert heldout[-len(ids):] == ids


# ------------------------------------------------------------------------------ 2. duplicate teacher answers
def test_duplicate_answers_keep_weight_one_over_k_as_in_seqkd_and_heldout(tiny_model_dir, tmp_path):
    """A row with answers [a, a, b]: the trainer scores `a` once but pairs every completion with a, a and b at 1/3
    each (a weighs 2/3), as seqkd trains on three examples and the held-out set weighs each answer 1/3."""
    import math

    from gad_trl.baselines.seqkd import to_seqkd_dataset
    from gad_trl.tiny import tiny_gad_rows
    from tests.helpers.gad_helpers import make_trainer

    rows = tiny_gad_rows(2, seed=3)
    a, b = rows[0]["teacher_response"], rows[1]["teacher_response"]
    row = {"prompt": rows[0]["prompt"], "teacher_response": [a, a, b]}
    trainer = make_trainer(tiny_model_dir, tmp_path, rows=[row, dict(row)], max_steps=1, num_generations=2,
                           per_device_train_batch_size=2)
    inputs = [{"prompt": row["prompt"], "teacher_response": [a, a, b]}] * 2
    batch = trainer.discriminator_component.encoder.encode(inputs, [[1, 2], [1, 2]], [[5], [6]])
    assert len(batch.teacher_seqs) == 2  # a and b, each scored once
    pairs = batch.pairs
    assert pairs.teacher.tolist() == [0, 0, 1, 0, 0, 1] and pairs.student.tolist() == [0, 0, 0, 1, 1, 1]
    weight_of_a = sum(w for t, s, w in zip(pairs.teacher.tolist(), pairs.student.tolist(), pairs.weight.tolist())
                      if s == 0 and t == 0)
    assert math.isclose(weight_of_a, 2 / 3, rel_tol=1e-6)

    assert len(to_seqkd_dataset(Dataset.from_list([row]))) == 3  # seqkd: one example per answer, duplicates kept
    triple = {"prompt": row["prompt"], "teacher_response": [a, a, b], "student_response": "A B",
              "student_finished": True}
    heldout = trainer.discriminator_component.evaluate_triples([triple])
    t_a, _, t_b = heldout["teacher_scores"]
    s = heldout["student_scores"][0]
    assert math.isclose(heldout["score_diff"], (2 * (t_a - s) + (t_b - s)) / 3, rel_tol=1e-5, abs_tol=1e-6)

