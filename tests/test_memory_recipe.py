"""`gad_trl.memory_recipe`: the estimate's mode of a run, from `discriminator_sharding` and the launch."""

import pytest

from gad_trl.cli.launch import resolve_accelerate_config
from gad_trl.memory import MODES
from gad_trl.memory_recipe import Launch, launch_from_args, recipe_mode


def launch(name=None, *flags):
    return launch_from_args((["--config_file", resolve_accelerate_config(name)] if name else []) + list(flags))


def test_launch_from_accelerate_configs_and_flags():
    assert launch() == Launch(None, None, "no launcher given")
    zero3, zero2, fsdp2, ddp = launch("zero3"), launch("zero2"), launch("fsdp2"), launch("ddp")
    assert (zero3.shards_student, zero3.num_processes) == (True, 8)
    assert (fsdp2.shards_student, zero2.shards_student, ddp.shards_student) == (True, False, False)
    assert "ZeRO-2" in zero2.description and "upper bound" in zero2.description
    assert launch("zero3", "--num_processes", "2").num_processes == 2  # flags override the file
    assert launch(None, "--use_fsdp", "--num_processes", "4") == Launch(True, 4, "FSDP, 4 processes (accelerate launch flags)")
    assert launch(None, "--num_processes", "2").shards_student is False


@pytest.mark.parametrize(
    "sharding, name, expected",
    [
        ("auto", None, "replicated"),
        ("auto", "ddp", "replicated"),
        ("auto", "zero3", "sharded"),
        ("auto", "fsdp2", "sharded"),
        ("none", "zero3", "sharded_student"),
        ("none", None, "replicated"),
        ("fsdp2", "zero3", "sharded"),
        ("fsdp2", None, "sharded"),  # fsdp2 needs a launch; assumed ZeRO-3/FSDP, and said so
        ("fsdp2", "ddp", None),  # sharded discriminator, replicated student: no mode models it
    ],
)
def test_recipe_mode(sharding, name, expected):
    mode, why = recipe_mode(sharding, launch(name))
    assert mode == expected and (mode is None or mode in MODES)
    assert f"discriminator_sharding: {sharding}" in why
    if name is None and sharding == "fsdp2":
        assert "assumed" in why


def test_recipe_mode_peft_student_and_bad_value():
    mode, why = recipe_mode("auto", launch(), student_peft=True, student_4bit=True)
    assert mode is None and "4-bit LoRA student" in why
    with pytest.raises(ValueError, match="choose one of auto, none, fsdp2"):
        recipe_mode("zero3", launch())
