"""The event schema (uic/events.py): JSON round trips and every validation error."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uic.events import (
    BEHAVIOR_TYPES,
    FIELDS,
    INT64_MAX,
    MAX_EVENT_ID_LEN,
    Event,
    Impression,
    InvalidEvent,
)

ids = st.integers(min_value=0, max_value=INT64_MAX)
events = st.builds(
    Event,
    user_id=ids,
    item_id=ids,
    category_id=ids,
    behavior_type=st.sampled_from(BEHAVIOR_TYPES),
    event_time_ms=ids,
    event_id=st.text(min_size=1, max_size=MAX_EVENT_ID_LEN),
)
impressions = st.builds(
    Impression, user_id=ids, item_id=ids, category_id=ids, event_time_ms=ids,
    label=st.sampled_from([0, 1]),
)

GOOD = {"user_id": 42, "item_id": 1001, "category_id": 7, "behavior_type": "pv",
        "event_time_ms": 1511544070000, "event_id": "e-42-1"}


@given(events)
def test_event_json_round_trip(event):
    assert Event.from_json(event.to_json()) == event
    assert Event.from_json(event.to_json().encode("utf-8")) == event
    assert Event.from_dict(event.to_dict()) == event


@given(impressions)
def test_impression_json_round_trip(imp):
    assert Impression.from_json(imp.to_json()) == imp


def test_sort_key_orders_by_time_then_id():
    a = Event(**{**GOOD, "event_time_ms": 5, "event_id": "b"})
    b = Event(**{**GOOD, "event_time_ms": 5, "event_id": "c"})
    c = Event(**{**GOOD, "event_time_ms": 4, "event_id": "z"})
    assert sorted([a, b, c], key=lambda e: e.sort_key) == [c, a, b]


@pytest.mark.parametrize("field", ["user_id", "item_id", "category_id", "event_time_ms"])
@pytest.mark.parametrize(
    ("value", "needle"),
    [("12", "must be an integer"), (1.5, "must be an integer"), (None, "must be an integer"),
     (True, "must be an integer"), (-1, "must be in [0, 2^63-1]"),
     (INT64_MAX + 1, "must be in [0, 2^63-1]")],
)
def test_bad_integer_fields(field, value, needle):
    with pytest.raises(InvalidEvent) as info:
        Event.from_dict({**GOOD, field: value})
    assert info.value.field == field
    assert needle in info.value.reason
    assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize("value", ["click", "PV", "", None, 3])
def test_bad_behavior_type(value):
    with pytest.raises(InvalidEvent) as info:
        Event.from_dict({**GOOD, "behavior_type": value})
    assert info.value.field == "behavior_type"
    assert "must be one of" in info.value.reason


@pytest.mark.parametrize(
    ("value", "needle"),
    [("", "non-empty string"), (None, "non-empty string"), (17, "non-empty string"),
     ("x" * (MAX_EVENT_ID_LEN + 1), f"at most {MAX_EVENT_ID_LEN}")],
)
def test_bad_event_id(value, needle):
    with pytest.raises(InvalidEvent) as info:
        Event.from_dict({**GOOD, "event_id": value})
    assert info.value.field == "event_id"
    assert needle in info.value.reason


@pytest.mark.parametrize("field", FIELDS)
def test_missing_field(field):
    record = {k: v for k, v in GOOD.items() if k != field}
    with pytest.raises(InvalidEvent) as info:
        Event.from_dict(record)
    assert (info.value.field, info.value.reason) == (field, "missing")


def test_unknown_field():
    with pytest.raises(InvalidEvent) as info:
        Event.from_dict({**GOOD, "price": 3})
    assert info.value.field == "price"
    assert "unknown field" in info.value.reason


@pytest.mark.parametrize("text", ["[1, 2]", "42", '"pv"', "null"])
def test_not_an_object(text):
    with pytest.raises(InvalidEvent) as info:
        Event.from_json(text)
    assert info.value.field is None
    assert "must be a JSON object" in str(info.value)


@pytest.mark.parametrize("text", ["{", "{'user_id': 1}", "[1,"])
def test_not_json(text):
    with pytest.raises(InvalidEvent) as info:
        Event.from_json(text)
    assert info.value.field is None
    assert "not valid JSON" in str(info.value)


def test_invalid_event_is_a_value_error():
    assert issubclass(InvalidEvent, ValueError)


IMP = {"user_id": 1, "item_id": 2, "category_id": 3, "event_time_ms": 4, "label": 1}


@pytest.mark.parametrize("field", ["user_id", "item_id", "category_id", "event_time_ms"])
@pytest.mark.parametrize("value", [-1, "1", 2.0, True, INT64_MAX + 1])
def test_impression_bad_ints(field, value):
    with pytest.raises(InvalidEvent) as info:
        Impression.from_json(json.dumps({**IMP, field: value}))
    assert info.value.field == field


@pytest.mark.parametrize("value", [2, -1, "1", True, None])
def test_impression_bad_label(value):
    with pytest.raises(InvalidEvent) as info:
        Impression.from_json(json.dumps({**IMP, "label": value}))
    assert info.value.field == "label"
    assert "must be 0 or 1" in info.value.reason


@pytest.mark.parametrize("field", list(IMP))
def test_impression_missing_field(field):
    with pytest.raises(InvalidEvent) as info:
        Impression.from_json(json.dumps({k: v for k, v in IMP.items() if k != field}))
    assert (info.value.field, info.value.reason) == (field, "missing")


@pytest.mark.parametrize(("text", "needle"), [("{", "not valid JSON"), ("[]", "JSON object")])
def test_impression_bad_json(text, needle):
    with pytest.raises(InvalidEvent, match=needle):
        Impression.from_json(text)


# Hostile payloads: each is refused with InvalidEvent (never RecursionError, a bare
# ValueError or MemoryError), so the stream job can dead-letter it and go on.
GOOD_JSON = Event(1, 2, 3, "pv", 1_511_544_070_000, "e-1").to_json()


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ("[" * 3000 + "]" * 3000, "nested too deeply|bytes"),
        ("[" * 1500 + "]" * 1500, "nested too deeply"),
        ('{"user_id": ' + "9" * 6000 + "}", "bytes"),
        ('{"user_id": ' + "9" * 400 + "}", "digits"),
        (b'{"user_id": "\xff\xfe"}', "UTF-8"),
        ('{"user_id": NaN}', "NaN"),
        ('{"user_id": -Infinity}', "Infinity"),
        ("", "empty"),
        (b"", "empty"),
        (" " * 5000, "bytes"),
        (GOOD_JSON.replace('"e-1"', '"' + "x" * 5000 + '"'), "bytes"),
    ],
)
def test_hostile_json_is_an_invalid_event(payload, needle):
    with pytest.raises(InvalidEvent, match=needle):
        Event.from_json(payload)
    assert Event.from_json(GOOD_JSON).event_id == "e-1"  # the parser is still fine afterwards


def test_large_but_valid_ids_still_parse():
    text = GOOD_JSON.replace('"user_id":1', f'"user_id":{2**63 - 1}')
    assert Event.from_json(text).user_id == 2**63 - 1
    with pytest.raises(InvalidEvent, match="user_id"):
        Event.from_json(GOOD_JSON.replace('"user_id":1', f'"user_id":{2**63}'))
