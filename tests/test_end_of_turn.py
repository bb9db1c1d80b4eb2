"""The teacher's responses end with the token that closes a student's assistant turn, also for models whose
generation config lists another stop token first (Llama-3.x-Instruct, Gemma-it)."""

import copy

import pytest
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from gad_trl import GADTrainer
from gad_trl.end_of_turn import end_of_turn_token_id
from gad_trl.data import encode_pair
from gad_trl.tiny import tiny_gad_rows

from tests.helpers.gad_helpers import make_args


@pytest.fixture
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def ids_of(tok, *tokens):
    return [tok.convert_tokens_to_ids(t) for t in tokens]


def test_chat_template_decides_among_the_stop_tokens(tok):
    end_of_text, im_end = ids_of(tok, "<|endoftext|>", "<|im_end|>")
    # Llama-3 style: the generation config lists the end-of-text token first; the template closes turns with im_end.
    assert end_of_turn_token_id(tok, [end_of_text, im_end]) == im_end
    assert end_of_turn_token_id(tok, [im_end, end_of_text]) == im_end
    # A stop list without the template's token: the tokenizer's EOS if it is a stop token, else the first stop token.
    unk = tok.convert_tokens_to_ids("<unk>")
    assert end_of_turn_token_id(tok, [end_of_text, unk]) == end_of_text


def test_gemma_style_tokenizer_eos_is_not_the_turn_end(tok):
    gemma_like = copy.deepcopy(tok)
    gemma_like.eos_token = "<|endoftext|>"  # like Gemma-it: eos_token <eos>, turns end with <end_of_turn>
    assert end_of_turn_token_id(gemma_like) == tok.convert_tokens_to_ids("<|im_end|>")
    # the held-out evaluation encodes finished responses with it too
    pair = encode_pair(gemma_like, [{"role": "user", "content": "write sum"}], "SUM")
    assert pair[-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_without_a_usable_chat_template_falls_back_to_eos(tok):
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    end_of_text, im_end = ids_of(tok, "<|endoftext|>", "<|im_end|>")
    assert end_of_turn_token_id(plain, [end_of_text, im_end]) == im_end  # the tokenizer's eos_token
    assert end_of_turn_token_id(plain) == im_end
    rejecting = copy.deepcopy(tok)
    rejecting.chat_template = "{{ raise_exception('assistant turns not allowed') }}"
    assert end_of_turn_token_id(rejecting, [end_of_text]) == end_of_text
    no_eos = copy.deepcopy(plain)
    no_eos.eos_token = None
    with pytest.raises(ValueError, match="set tokenizer.eos_token"):
        end_of_turn_token_id(no_eos)


def test_trainer_appends_the_turn_end_not_the_first_stop_token(tiny_model_dir, tok, tmp_path):
    end_of_text, im_end = ids_of(tok, "<|endoftext|>", "<|im_end|>")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.generation_config.eos_token_id = [end_of_text, im_end]  # as Llama-3.1-Instruct: [end_of_text, ..., eot_id]
    trainer = GADTrainer(
        model, args=make_args(tmp_path, max_steps=1), train_dataset=Dataset.from_list(tiny_gad_rows(8, seed=0)),
        processing_class=tok,
    )
    assert trainer.eos_token_ids[0] == end_of_text  # TRL's stop list starts with the other token
    ids, cut = trainer.discriminator_component.encoder.teacher_completion_ids("SOME HER")
    assert not cut and ids[-1] == im_end
