"""Agentic GAD: TRL's tool-calling rollouts through GADTrainer, teacher trajectories laid out as the student's."""

from __future__ import annotations

import logging

import pytest
import torch
from datasets import Dataset

from gad_trl import GADConfig, GADTrainer
from gad_trl.data import GADDataError, normalize_trajectory, prepare_gad_dataset
from gad_trl.tiny import add, tiny_tool_rows
from tests.helpers.gad_helpers import TOOL_RELEASE, make_args, params_of, same_params, scripted_tool_rollout
from tests.helpers.gad_helpers import add as hanging_add  # hangs for a=1, returns megabytes for a=2


def tool_args(output_dir, **overrides):
    kwargs = dict(
        output_dir=str(output_dir), report_to="none", use_cpu=True, seed=0, disable_tqdm=True,
        per_device_train_batch_size=4, num_generations=4, max_completion_length=128, max_steps=2, logging_steps=1,
        save_strategy="no", learning_rate=1e-3, discriminator_learning_rate=1e-3, beta=0.0,
        warn_on_unhealthy_metrics=False, temperature=1.0,
    )  # fmt: skip
    kwargs.update(overrides)
    return GADConfig(**kwargs)


def test_trajectories_are_normalised_to_one_message_shape():
    row = tiny_tool_rows(1)[0]
    messages = normalize_trajectory(row["teacher_response"], 0, "teacher_response")
    assert [m["role"] for m in messages] == ["assistant", "tool", "assistant"]
    assert all(set(m) == {"role", "content", "name", "tool_calls", "tool_call_id"} for m in messages)
    assert messages[0]["tool_calls"][0]["function"]["arguments"].startswith('{"a": ')  # JSON text: Arrow-safe
    ds = prepare_gad_dataset(Dataset.from_list(tiny_tool_rows(3)))
    assert ds[0]["teacher_response"][2]["content"] == row["teacher_response"][2]["content"]
    bad = dict(row, teacher_response=row["teacher_response"][:2])
    with pytest.raises(GADDataError, match="must end with the final assistant answer"):
        prepare_gad_dataset(Dataset.from_list([bad]))
    user_turn = dict(row, teacher_response=[{"role": "user", "content": "x"}, *row["teacher_response"]])
    with pytest.raises(GADDataError, match="role 'user'"):
        prepare_gad_dataset(Dataset.from_list([user_turn]))


def test_text_only_readers_refuse_trajectories_and_judges_compare_final_answers():
    from gad_trl.baselines.soda import preference_slots
    from gad_trl.data import final_answer_text, text_answers
    from gad_trl.discriminator.heldout import draw_rows

    rows = tiny_tool_rows(2)
    with pytest.raises(GADDataError, match="held-out discriminator evaluation reads text answers only"):
        draw_rows(Dataset.from_list(rows), 2, seed=0)
    with pytest.raises(GADDataError, match="SODA reads text answers only"):
        preference_slots(rows)
    assert text_answers({"t": ["a", "b"]}, "t", 0, "x") == ["a", "b"]
    assert final_answer_text(rows[0]["teacher_response"]) == rows[0]["teacher_response"][-1]["content"]
    assert final_answer_text("plain") == "plain"


def test_same_content_gives_identical_ids_on_both_sides(tool_caller_dir, tmp_path):
    """The student's rollout built by TRL's own tool loop (its generation replaced by scripted turns, tokenised as the
    tokenizer does) and the teacher trajectory with the same messages encode to the same ids and the same mask."""
    rows = tiny_tool_rows(4, seed=1)
    trainer = GADTrainer(tool_caller_dir, args=tool_args(tmp_path), train_dataset=Dataset.from_list(rows),
                         tools=[add])
    tok = trainer.processing_class
    eos = tok.eos_token_id
    turns = {}  # prompt position -> scripted assistant turns

    def scripted(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        out = []
        for ids in prompt_ids:
            i = next(k for k, p in enumerate(prompt_texts) if tok.decode(ids).startswith(p))
            first = len(ids) == len(prompt_tokens[i])
            text = turns[i][0] if first else turns[i][1]
            out.append(tok(text, add_special_tokens=False)["input_ids"] + [eos])
        return out, None

    prompt_tokens = [tok.apply_chat_template(r["prompt"], tools=[add], add_generation_prompt=True, tokenize=True,
                                             return_dict=False) for r in rows]
    prompt_texts = [tok.decode(p) for p in prompt_tokens]
    for i, r in enumerate(rows):
        a, b = (r["teacher_response"][0]["tool_calls"][0]["function"]["arguments"][k] for k in "ab")
        turns[i] = (f'<tool_call>\n{{"name": "add", "arguments": {{"a": {a}, "b": {b}}}}}\n</tool_call>',
                    r["teacher_response"][2]["content"])
    outputs, _ = scripted_tool_rollout(trainer, scripted, [r["prompt"] for r in rows], [add])
    prompt_ids, completion_ids, tool_mask, completions, *_ = outputs
    for i, r in enumerate(rows):
        assert [m["role"] for m in completions[i]] == ["assistant", "tool", "assistant"]  # TRL ran the tool
        assert completions[i][1]["content"] == r["teacher_response"][1]["content"]
        teacher = normalize_trajectory(completions[i], i, "teacher_response")
        encoder = trainer.discriminator_component.encoder.trajectory_encoder()
        ids, mask, cut = encoder.encode(r["prompt"], teacher, trainer.max_completion_length)
        assert not cut and prompt_ids[i] == prompt_tokens[i]
        assert ids == completion_ids[i] and mask == tool_mask[i]
        assert ids[-1] == eos and 0 in mask and mask[-1] == 1  # scored at the final answer's end of turn


def test_gad_trains_on_live_tool_rollouts(tool_caller_dir, tmp_path):
    rows = tiny_tool_rows(8, seed=2)
    rows[1]["prompt"] = [{"role": "user", "content": "add 1 and 1"}, {"role": "assistant", "content": "1 plus 1 equals 2"},
                         {"role": "user", "content": rows[1]["prompt"][0]["content"]}]  # a multi-turn prompt
    trainer = GADTrainer(tool_caller_dir, args=tool_args(tmp_path, discriminator_pooling="mean", sft_loss_coef=0.1),
                         train_dataset=Dataset.from_list(rows), tools=[add])
    seen = []
    update = trainer.discriminator_component.update

    def spy(batch, step):
        seen.append((batch.teacher_seqs, batch.student_seqs, batch.response_starts))
        return update(batch, step)

    trainer.discriminator_component.update = spy
    disc0, student0 = params_of(trainer.discriminator), params_of(trainer.model)
    trainer.train()
    assert not same_params(disc0, params_of(trainer.discriminator))
    assert not same_params(student0, params_of(trainer.model))
    calls = [h["tools/call_frequency"] for h in trainer.state.log_history if "tools/call_frequency" in h]
    assert calls and max(calls) > 0  # the student really called the tool
    response = trainer.processing_class("<tool_response>", add_special_tokens=False)["input_ids"]
    called = {"teacher": 0, "student": 0}

    def check(side, seq, start):
        assert isinstance(start, list) and len(start) == len(seq)
        hits = [k for k in range(len(seq)) if seq[k:k + len(response)] == response]
        if hits:  # tool results are context, excluded from mean pooling
            called[side] += 1
            assert all(start[k] == 0 for k in hits)
        assert start[-1] == 1  # the final assistant turn is pooled

    for teacher_seqs, student_seqs, starts in seen:
        num_teacher = len(teacher_seqs)
        for seq, start in zip(teacher_seqs, starts[:num_teacher]):
            assert seq[-1] == trainer.processing_class.eos_token_id
            check("teacher", seq, start)
        for seq, start in zip(student_seqs, starts[num_teacher:]):
            check("student", seq, start)
    assert called["teacher"] > 0 and called["student"] > 0


def test_environment_factory_reaches_trl(tool_caller_dir, tmp_path):
    class Calculator:
        def __init__(self):
            self.calls = 0

        def reset(self, **kwargs):
            self.calls = 0

        def add(self, a: int, b: int) -> int:
            """Add two integers.

            Args:
                a: The first number.
                b: The second number.
            """
            self.calls += 1
            return a + b

    trainer = GADTrainer(tool_caller_dir, args=tool_args(tmp_path, max_steps=1),
                         train_dataset=Dataset.from_list(tiny_tool_rows(8, seed=3)), environment_factory=Calculator)
    assert [t.__name__ for t in trainer.tools] == ["add"]
    trainer.train()
    assert trainer.state.global_step == 1


def test_mean_pooling_reads_the_given_mask():
    from gad_trl.discriminator.model import _response_mask

    mask = _response_mask([2, [0, 1, 0, 1, 0]], [4, 5], 6, "cpu")
    assert mask.tolist() == [[0, 0, 1, 1, 0, 0], [0, 1, 0, 1, 1, 0]]  # the last token always counts
    with pytest.raises(ValueError, match="response mask of 3 entries"):
        _response_mask([[0, 1, 1]], [4], 4, "cpu")


def test_trajectories_with_a_discriminator_tokenizer_of_its_own_are_refused(tool_caller_dir, tmp_path):
    from gad_trl.tiny import build_tiny_tokenizer, save_tiny_model

    other = save_tiny_model(tmp_path / "other", tokenizer=build_tiny_tokenizer(400, other_family=True))
    trainer = GADTrainer(tool_caller_dir, args=tool_args(tmp_path / "run", max_steps=1),
                         train_dataset=Dataset.from_list(tiny_tool_rows(4)), tools=[add],
                         discriminator=other)
    with pytest.raises(ValueError, match="tool-using trajectories are laid out in the student's tokens"):
        trainer.train()


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_tool_rollouts_through_the_real_vllm_server(vllm_tool_server, tool_caller_dir, tmp_path):
    from tests.helpers.vllm_server import restore_weights

    server = vllm_tool_server
    trainer = GADTrainer(tool_caller_dir, args=tool_args(
        tmp_path, use_vllm=True, vllm_mode="server", vllm_weight_sync="reload", vllm_server_base_url=server.url,
        vllm_server_timeout=10, vllm_importance_sampling_mode="token_truncate"),
        train_dataset=Dataset.from_list(tiny_tool_rows(8, seed=4)), tools=[add])
    disc0 = params_of(trainer.discriminator)
    try:
        trainer.train()
    finally:
        restore_weights(server, tool_caller_dir)  # the shared server serves the taught model again
    assert trainer.state.global_step == 2 and not same_params(disc0, params_of(trainer.discriminator))
    calls = [h["tools/call_frequency"] for h in trainer.state.log_history if "tools/call_frequency" in h]
    assert calls and max(calls) > 0
    assert torch.isfinite(torch.tensor([h["discriminator/loss"] for h in trainer.state.log_history
                                        if "discriminator/loss" in h])).all()


def test_seqkd_trains_on_the_tokens_gads_sft_trains_on(tool_caller_dir):
    from transformers import AutoTokenizer

    from gad_trl.baselines.seqkd import to_seqkd_dataset
    from gad_trl.discriminator.trajectory import TrajectoryEncoder

    tok = AutoTokenizer.from_pretrained(tool_caller_dir)
    rows = tiny_tool_rows(3)
    with pytest.raises(ValueError, match="pass the student's tokenizer"):
        to_seqkd_dataset(Dataset.from_list(rows))
    ds = to_seqkd_dataset(Dataset.from_list(rows), tokenizer=tok, tools=[add])
    assert ds.column_names == ["input_ids", "labels"] and len(ds) == 3
    encoder = TrajectoryEncoder(tok, [add])
    ids, mask, _ = encoder.encode(rows[0]["prompt"], normalize_trajectory(rows[0]["teacher_response"], 0, "t"))
    head = encoder.prompt_ids(rows[0]["prompt"])
    assert ds[0]["input_ids"] == head + ids
    trained = [t for t, label in zip(ds[0]["input_ids"], ds[0]["labels"]) if label != -100]
    assert trained == [t for t, m in zip(ids, mask) if m]  # the assistant turns, no prompt, no tool result
    assert "<tool_response>" not in tok.decode(trained) and "<tool_response>" in tok.decode(ds[0]["input_ids"])
    # A teacher that answers without calling a tool: its answer is a trajectory of the final turn alone.
    direct = [rows[0], dict(rows[1], teacher_response=[{"role": "assistant", "content": "5 plus 2 equals 7"}])]
    ds = to_seqkd_dataset(Dataset.from_list(direct), tokenizer=tok, tools=[add])
    assert tok.decode([t for t, label in zip(ds[1]["input_ids"], ds[1]["labels"]) if label != -100]) \
        == "5 plus 2 equals 7<|im_end|>"
    prepared = prepare_gad_dataset(Dataset.from_list(direct))
    assert prepared[1]["teacher_response"][0]["content"] == "5 plus 2 equals 7"
    assert isinstance(prepared[1]["teacher_response"], list) and len(prepared[1]["teacher_response"]) == 1


def test_tiny_tool_recipes_run_end_to_end(tmp_path, monkeypatch):
    """`make-tiny --tools`, then the agentic recipe with `gad-trl gad` and SeqKD on the same trajectories."""
    import gad_trl.cli.main as cli_main
    from tests.recipes.test_recipes import RECIPES

    monkeypatch.chdir(tmp_path)
    assert cli_main.main(["make-tiny", "outputs/tiny-tools", "--tools", "--num_train", "8", "--num_test", "2"]) == 0
    assert cli_main.main(["gad", "--config", str(RECIPES / "tiny" / "gad_tools.yaml"), "--max_steps", "3",
                          "--critic_warmup_steps", "1", "--sft_warmup_steps", "1", "--per_device_train_batch_size",
                          "8", "--disable_tqdm", "true", "--report_to", "none"]) == 0
    assert (tmp_path / "outputs" / "tiny-gad-tools" / "discriminator" / "model.safetensors").exists()
    assert cli_main.main(["seqkd", "--config", str(RECIPES / "tiny" / "seqkd.yaml"), "--model_name_or_path",
                          "outputs/tiny-tools/model", "--dataset_name", "outputs/tiny-tools/data", "--tools",
                          "gad_trl.tiny:add", "--max_steps", "2", "--output_dir", "outputs/seqkd-tools",
                          "--disable_tqdm", "true", "--report_to", "none"]) == 0
    assert (tmp_path / "outputs" / "seqkd-tools" / "model.safetensors").exists()
    with pytest.raises(ValueError, match="--tools: cannot import module 'no_such_tools'"):
        cli_main.main(["gad", "--config", str(RECIPES / "tiny" / "gad_tools.yaml"), "--tools", "no_such_tools:f"])


def test_every_grpo_trainer_argument_is_accepted():
    """GADTrainer takes each of GRPOTrainer's arguments (tools, environment_factory, rollout_func included)."""
    import inspect

    from trl import GRPOTrainer

    ours = inspect.signature(GADTrainer.__init__).parameters
    assert [p for p in inspect.signature(GRPOTrainer.__init__).parameters if p not in ours] == []


def _tool_trainer(tmp_path, rows, **kwargs):
    from gad_trl import GADTrainer
    from gad_trl.tiny import build_tiny_model, build_tiny_tool_tokenizer

    tok = build_tiny_tool_tokenizer()
    return GADTrainer(build_tiny_model(tok), args=make_args(tmp_path, max_completion_length=16),
                      processing_class=tok, train_dataset=Dataset.from_list(rows), **kwargs)


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a * b


def test_call_to_a_tool_the_student_lacks_is_refused(tmp_path):
    rows = tiny_tool_rows(4)
    rows[2]["teacher_response"][0]["tool_calls"][0]["function"]["name"] = "multiply"
    with pytest.raises(GADDataError, match=r"Row 2 of the train set: .*calls the tool 'multiply', which the student "
                                           r"does not have \(its tools: add\)"):
        _tool_trainer(tmp_path, rows, tools=[add])
    _tool_trainer(tmp_path, rows, tools=[add, multiply])  # the student has it: accepted


@pytest.mark.timeout(300)
def test_training_tool_calls_time_out_and_huge_results_are_cut(tool_caller_dir, tmp_path, caplog):
    """A tool that never returned hung the run forever; a 2 MB result went whole into the rollout."""
    import time

    from datasets import Dataset

    from gad_trl import GADTrainer
    from gad_trl.tiny import tiny_tool_rows
    from tests.test_trainer_agentic import tool_args

    rows = tiny_tool_rows(4, seed=1)
    trainer = GADTrainer(tool_caller_dir, args=tool_args(tmp_path, tool_timeout=1.0, max_tool_result_chars=40,
                                                         max_completion_length=256),
                         train_dataset=Dataset.from_list(rows), tools=[hanging_add])
    tok = trainer.processing_class
    prompt_texts = [tok.decode(tok.apply_chat_template(r["prompt"], tools=[hanging_add], add_generation_prompt=True,
                                                       tokenize=True, return_dict=False)) for r in rows]

    def scripted(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        out = []
        for ids in prompt_ids:  # row i calls add(a=i+1, b=5) first, then answers
            text = tok.decode(ids)
            i = next(k for k, p in enumerate(prompt_texts) if text.startswith(p))
            turn = (f'<tool_call>\n{{"name": "add", "arguments": {{"a": {i + 1}, "b": 5}}}}\n</tool_call>'
                    if text == prompt_texts[i] else "done")
            out.append(tok(turn, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        return out, None

    start = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING):
            (_, _, _, completions, *_), metrics = scripted_tool_rollout(trainer, scripted, [r["prompt"] for r in rows],
                                                                        [hanging_add])
    finally:
        TOOL_RELEASE.set()
    assert time.monotonic() - start < 30
    results = [c[1]["content"] for c in completions]
    assert "timed out" in results[0] and "tool_timeout" in results[0]  # TRL's error result for a raising tool
    assert results[1].startswith("x" * 40) and "cut: the tool returned 2000000 characters" in results[1]
    assert len(results[1]) < 200 and results[2] == "8" and [m["content"] for m in completions[3][-1:]] == ["done"]
    assert metrics["tools/timeouts"] == [1.0] and metrics["tools/cut_results"] == [1.0]
    assert metrics["tools/failure_frequency"][-1] > 0
    assert "tool_timeout=1 s" in caplog.text

