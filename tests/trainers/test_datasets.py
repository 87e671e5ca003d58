"""Dataset formats and refusals: every error names the line and field, nothing is stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.datasets import (
    DatasetError,
    DatasetTooLargeError,
    import_dataset,
    load_records,
    remove_files,
    upload_path,
)
from contracts.store import SqliteJobStore
from tests.trainers.conftest import jsonl, pairs, pointwise


def _nothing_stored(store: SqliteJobStore, home: Path) -> None:
    assert store.list_datasets() == []
    folder = home / "datasets"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_pairs_import_is_canonical_and_registered(store: SqliteJobStore, home: Path) -> None:
    record = import_dataset(store, home, jsonl(pairs(3)), filename="p.jsonl")
    assert (record.format, record.records) == ("pairs", 3)
    rows = load_records(record.path)
    assert rows[0]["messages"] == [{"role": "user", "content": "question 0 please"}]
    assert store.get_dataset(record.id) == record


def test_openai_preference_is_stored_as_pairs(store: SqliteJobStore, home: Path) -> None:
    row = {"input": {"messages": [{"role": "user", "content": "hi"}]},
           "preferred_output": [{"role": "assistant", "content": "good"}],
           "non_preferred_output": [{"role": "assistant", "content": "bad"}]}
    record = import_dataset(store, home, jsonl([row]))
    assert record.format == "pairs"
    assert load_records(record.path)[0]["chosen"] == "good"


def test_pointwise_labels_bool_and_float(store: SqliteJobStore, home: Path) -> None:
    rows = [*pointwise(2), {"prompt": "p", "completion": "c", "label": 0.25}]
    labels = [r["label"] for r in load_records(import_dataset(store, home, jsonl(rows)).path)]
    assert labels == [0.0, 1.0, 0.25]


def test_demonstrations_and_prompts_formats(store: SqliteJobStore, home: Path) -> None:
    demo = import_dataset(store, home, jsonl([{"prompt": "a", "completion": "b"}]))
    prompts = import_dataset(store, home, jsonl([{"messages": [{"role": "user", "content": "x"}]}]))
    assert (demo.format, prompts.format) == ("demonstrations", "prompts")


BAD = [
    ("bad_json", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": oops}\n',
     "line 2", None),
    ("missing_field", jsonl([pairs(1)[0], {"prompt": "a", "chosen": "b"}]), "line 2",
     "'rejected'"),
    ("wrong_label_type", jsonl([*pointwise(2), {"prompt": "a", "completion": "b",
                                                 "label": "yes"}]), "line 3", "'label'"),
    ("wrong_role", jsonl([{"messages": [{"role": "bot", "content": "x"}], "completion": "y"}]),
     "line 1", "'messages[0].role'"),
    ("empty_file", b"\n\n", "line 1", None),
    ("not_an_object", b"[1, 2]\n", "line 1", None),
]


@pytest.mark.parametrize(("data", "line", "field"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_files_are_refused_with_line_and_field(
    store: SqliteJobStore, home: Path, data: bytes, line: str, field: str | None
) -> None:
    with pytest.raises(DatasetError) as err:
        import_dataset(store, home, data)
    assert line in str(err.value)
    if field:
        assert f"field {field}" in str(err.value)
    _nothing_stored(store, home)


def test_oversized_file_is_refused(store: SqliteJobStore, home: Path) -> None:
    data = jsonl(pairs(50))
    with pytest.raises(DatasetTooLargeError, match="limit"):
        import_dataset(store, home, data, max_bytes=len(data) - 1)
    _nothing_stored(store, home)


def test_error_late_in_a_large_file_stores_nothing(store: SqliteJobStore, home: Path) -> None:
    rows = [json.dumps(r) for r in pairs(500)] + ['{"prompt": "x", "chosen": 3, "rejected": "y"}']
    with pytest.raises(DatasetError, match="line 501: field 'chosen'"):
        import_dataset(store, home, "\n".join(rows).encode())
    _nothing_stored(store, home)


ROBUST = [
    ("lone_surrogate", b'{"prompt": "a", "chosen": "b \\ud800", "rejected": "c"}\n', "line 1",
     "'chosen'"),
    ("surrogate_in_message", jsonl([{"messages": [{"role": "user", "content": "x"}],
                                     "completion": "y"}])
     + b'{"messages": [{"role": "user", "content": "\\udfff"}], "completion": "y"}\n',
     "line 2", "'messages[0].content'"),
    ("deep_nesting", b'{"prompt": "a", "completion": "b", "x": ' + b"[" * 5000 + b"]" * 5000
     + b"}\n", "line 1", None),
    ("huge_integer", b'{"prompt": "a", "completion": "b", "x": 1' + b"0" * 5000 + b"}\n",
     "line 1", None),
    ("label_past_float", b'{"prompt": "a", "completion": "b", "label": 1' + b"0" * 400 + b"}\n",
     "line 1", "'label'"),
    ("unhashable_role", jsonl([{"messages": [{"role": ["user"], "content": "x"}],
                                "completion": "y"}]), "line 1", "'messages[0].role'"),
    ("chat_without_answer", jsonl([{"messages": [{"role": "user", "content": "q"},
                                                 {"role": "assistant", "content": "a"}]},
                                   {"messages": [{"role": "user", "content": "q"}]}]),
     "line 2", "'messages[0].role'"),
    ("image_part", jsonl([{"messages": [{"role": "user", "content": [{"type": "image_url"}]},
                                        {"role": "assistant", "content": "a"}]}]),
     "line 1", "'messages[0].content[0]'"),
]


@pytest.mark.parametrize(("data", "line", "field"), [b[1:] for b in ROBUST],
                         ids=[b[0] for b in ROBUST])
def test_hostile_lines_are_refused_with_their_line(
    store: SqliteJobStore, home: Path, data: bytes, line: str, field: str | None
) -> None:
    """Never anything but a DatasetError (a 400): no UnicodeEncodeError when writing, no
    RecursionError or ValueError from the parser, no OverflowError from a label."""
    with pytest.raises(DatasetError) as err:
        import_dataset(store, home, data)
    assert line in str(err.value)
    if field:
        assert f"field {field}" in str(err.value)
    _nothing_stored(store, home)


def test_openai_chat_format_and_uploads_kept(store: SqliteJobStore, home: Path) -> None:
    row = {"messages": [{"role": "developer", "content": "Be brief."},
                        {"role": "user", "content": [{"type": "text", "text": "Capital "},
                                                     {"type": "text", "text": "of France?"}]},
                        {"role": "assistant", "content": "Paris.", "weight": 1}]}
    data = jsonl([row])
    record = import_dataset(store, home, data)
    assert record.format == "demonstrations"
    assert load_records(record.path) == [{
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Capital of France?"}],
        "completion": "Paris."}]
    assert upload_path(record).read_bytes() == data
    remove_files(record)
    assert list((home / "datasets").iterdir()) == []
