"""`gad_trl.workflow.jsonl_store`: records appended durably; a torn last line is cut and redone, other damage is an error."""

import pytest

from gad_trl.workflow.jsonl_store import JsonlStore

from tests.helpers.gad_helpers import read_jsonl


def test_torn_last_line_is_redone(tmp_path):
    path = tmp_path / "store.jsonl"
    path.write_text('{"id": "a", "v": 1}\n{"id": "b", "v": 2}\n{"id": "c", "v"')
    store = JsonlStore(path, "id")
    assert set(store.done) == {"a", "b"} and store.dropped_torn_line
    store.append({"id": "c", "v": 3})
    store.close()
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c"]
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ValueError, match="line 2"):
        JsonlStore(path, "id")
