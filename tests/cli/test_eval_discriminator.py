"""`gad-trl eval-discriminator` (`gad_trl.cli.eval_discriminator`): the held-out cache, seeded sampling, the command."""

import json
from pathlib import Path

import gad_trl.cli.main as cli_main


def _eval_args(disc, student, data, cache, **kw):
    from gad_trl.cli.eval_discriminator import EvalDiscriminatorArguments

    return EvalDiscriminatorArguments(
        discriminator_name_or_path=disc, student_name_or_path=student, dataset_name=data, dataset_split="test",
        num_samples=kw.pop("num_samples", 5), max_new_tokens=6, heldout_cache=cache, **kw,
    )


def test_heldout_set_is_sampled_once_and_reused(tiny_discriminator, tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    from gad_trl.cli import eval_discriminator as ev

    cache = str(tmp_path / "heldout.jsonl")
    first = ev.evaluate(_eval_args(tiny_discriminator, tiny_model_dir, tiny_data_dir, cache))
    assert first["heldout_created"] and first["num_pairs"] == 5
    content = Path(cache).read_text()

    def no_resampling(*a, **k):
        raise AssertionError("the held-out set must not be sampled again")

    monkeypatch.setattr(ev, "sample_triples", no_resampling)
    second = ev.evaluate(_eval_args(tiny_discriminator, tiny_model_dir, tiny_data_dir, cache))
    assert not second["heldout_created"] and Path(cache).read_text() == content
    for key in ("accuracy", "score_diff", "teacher_scores", "student_scores"):
        assert second[key] == first[key]
    assert second["heldout"]["seed"] == 42 and second["heldout"]["student"] == str(Path(tiny_model_dir).resolve())
    # Only the cache path and the discriminator: the cache's own settings are used.
    third = ev.evaluate(ev.EvalDiscriminatorArguments(
        discriminator_name_or_path=tiny_discriminator, heldout_cache=cache, num_samples=5, max_new_tokens=6))
    assert third["teacher_scores"] == first["teacher_scores"]


def test_heldout_sampling_is_seeded(tiny_discriminator, tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    from gad_trl.cli import eval_discriminator as ev

    monkeypatch.setenv("GAD_TRL_CACHE", str(tmp_path / "cache"))
    a, _, path_a, _ = ev.load_or_create_heldout(_eval_args(tiny_discriminator, tiny_model_dir, tiny_data_dir, str(tmp_path / "a.jsonl")))
    b, _, _, _ = ev.load_or_create_heldout(_eval_args(tiny_discriminator, tiny_model_dir, tiny_data_dir, str(tmp_path / "b.jsonl")))
    assert a == b  # same seed, fresh caches: identical triples
    # The default cache path depends on the sampling settings, so another seed is another set.
    c, _, path_c, created = ev.load_or_create_heldout(_eval_args(tiny_discriminator, tiny_model_dir, tiny_data_dir, None, seed=3, num_samples=8))
    d, _, path_d, created_d = ev.load_or_create_heldout(_eval_args(tiny_discriminator, tiny_model_dir, tiny_data_dir, None, seed=4, num_samples=8))
    assert created and created_d and path_c != path_d and str(path_c).startswith(str(tmp_path / "cache"))
    assert [t["student_completion_ids"] for t in c] != [t["student_completion_ids"] for t in d]


def test_eval_discriminator_command(tiny_discriminator, tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    argv = ["eval-discriminator", "--discriminator_name_or_path", tiny_discriminator, "--student_name_or_path",
            tiny_model_dir, "--dataset_name", tiny_data_dir, "--num_samples", "4", "--max_new_tokens", "4",
            "--heldout_cache", str(tmp_path / "h.jsonl"), "--output_json", str(out)]
    assert cli_main.main(argv) == 0
    assert "sampled and cached" in capsys.readouterr().out
    assert cli_main.main(argv) == 0
    assert "reused" in capsys.readouterr().out
    metrics = json.loads(out.read_text())
    assert metrics["num_pairs"] == 4 and 0.0 <= metrics["accuracy"] <= 1.0


def test_eval_discriminator_refuses_a_folder_without_a_trained_value_head(tiny_model_dir, tiny_data_dir, tmp_path):
    """A plain causal LM (the student's folder) or a causal-LM LoRA adapter would load with a randomly initialised
    head and score noise: refused, naming the folder, before anything is sampled."""
    import pytest

    from gad_trl.cli import eval_discriminator as ev

    cache = tmp_path / "h.jsonl"
    with pytest.raises(ValueError, match="has no trained value head") as err:
        ev.evaluate(_eval_args(tiny_model_dir, tiny_model_dir, tiny_data_dir, str(cache)))
    assert tiny_model_dir in str(err.value) and "Qwen2ForCausalLM" in str(err.value)
    assert not cache.exists()  # refused before sampling the held-out set
    argv = ["eval-discriminator", "--discriminator_name_or_path", tiny_model_dir, "--student_name_or_path",
            tiny_model_dir, "--dataset_name", tiny_data_dir, "--heldout_cache", str(cache)]
    with pytest.raises(ValueError, match="has no trained value head"):
        cli_main.main(argv)

    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "student-adapter"
    lora = peft.LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")
    peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(adapter)
    with pytest.raises(ValueError, match=f"{adapter} has no trained value head: it is a LoRA adapter"):
        ev.evaluate(_eval_args(str(adapter), tiny_model_dir, tiny_data_dir, str(cache)))
