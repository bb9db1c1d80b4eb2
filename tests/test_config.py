"""`gad_trl.config`: every field the package adds is documented in its class docstring with the text of its `help`."""

import dataclasses
import re

import pytest

from gad_trl.config import GADConfig, GADScriptArguments, SeqKDConfig


def _words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.mark.parametrize("cls", [GADConfig, SeqKDConfig, GADScriptArguments], ids=lambda c: c.__name__)
def test_every_own_field_is_documented_with_its_help(cls):
    doc = _words(cls.__doc__)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    own = [name for name in cls.__annotations__ if not name.startswith("_")]
    assert own
    for name in own:
        help_text = fields[name].metadata.get("help")
        assert help_text, f"{cls.__name__}.{name} has no help"
        assert re.search(rf"\b{name} \(`", doc), f"{cls.__name__}.{name} is not in the docstring"
        assert _words(help_text) in doc, f"{cls.__name__}.{name}: docstring and help differ"
