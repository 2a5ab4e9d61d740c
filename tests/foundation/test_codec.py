"""The state value format (pure functions of uic/codec.py, no Redis needed)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from uic.codec import (
    FP16_MAX,
    HEADER_SIZE,
    CorruptValue,
    StoredState,
    StoreError,
    decode_state,
    encode_state,
)

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
finite16 = st.floats(width=16, allow_nan=False, allow_infinity=False)
meta = {
    "events_applied": st.integers(0, 2**53 - 1),
    "last_event_time_ms": st.integers(0, 2**63 - 1),
    "last_event_id": st.text(max_size=128),
    "write_time_ms": st.integers(0, 2**63 - 1),
}


@settings(max_examples=150)
@given(state=hnp.arrays(np.float32, st.integers(1, 700), elements=finite32), **meta)
def test_fp32_round_trip_is_exact(state, events_applied, last_event_time_ms, last_event_id,
                                  write_time_ms):
    value = encode_state(state, events_applied=events_applied,
                         last_event_time_ms=last_event_time_ms, last_event_id=last_event_id,
                         write_time_ms=write_time_ms)
    n = len(last_event_id.encode())
    assert len(value) == HEADER_SIZE + n + 4 * state.size
    got = decode_state(value, "k")
    assert got.state.dtype == np.float32
    np.testing.assert_array_equal(got.state, state)
    assert (got.events_applied, got.last_event_time_ms, got.last_event_id, got.write_time_ms) == (
        events_applied, last_event_time_ms, last_event_id, write_time_ms)


@settings(max_examples=100)
@given(state=hnp.arrays(np.float32, st.integers(1, 700), elements=finite16), **meta)
def test_fp16_round_trip_within_half_precision(state, events_applied, last_event_time_ms,
                                               last_event_id, write_time_ms):
    value = encode_state(state, events_applied=events_applied,
                         last_event_time_ms=last_event_time_ms, last_event_id=last_event_id,
                         write_time_ms=write_time_ms, dtype="fp16")
    assert len(value) == HEADER_SIZE + len(last_event_id.encode()) + 2 * state.size
    got = decode_state(value)
    assert got.state.dtype == np.float32  # widened on read
    np.testing.assert_array_equal(got.state, state.astype(np.float16).astype(np.float32))
    assert got.events_applied == events_applied and got.last_event_id == last_event_id


def test_header_byte_layout():
    value = encode_state(np.array([1.5, -2.0], np.float32), events_applied=7,
                         last_event_time_ms=1_500_000_000_000, last_event_id="é1",
                         write_time_ms=99)
    assert value[0:3] == b"UIS"
    assert value[3] == 1  # format version
    assert value[4] == 1  # fp32
    assert value[5] == 0
    assert struct.unpack_from("<H", value, 6)[0] == 3  # "é1" is 3 bytes of UTF-8
    assert struct.unpack_from("<I", value, 8)[0] == 2
    assert struct.unpack_from("<q", value, 12)[0] == 7
    assert struct.unpack_from("<q", value, 20)[0] == 1_500_000_000_000
    assert struct.unpack_from("<q", value, 28)[0] == 99
    assert value[36:39] == "é1".encode()
    assert struct.unpack_from("<2f", value, 39) == (1.5, -2.0)
    half = encode_state(np.array([1.5]), events_applied=0, last_event_time_ms=0, dtype="fp16")
    assert half[4] == 2 and len(half) == HEADER_SIZE + 2


def test_stored_state_equality_compares_arrays():
    a = StoredState(np.ones(3, np.float32), 1, 2, "x", 3)
    assert a == StoredState(np.ones(3, np.float32), 1, 2, "x", 3)
    assert a != StoredState(np.zeros(3, np.float32), 1, 2, "x", 3)
    assert a.watermark == (2, "x")


GOOD = encode_state(np.arange(4, dtype=np.float32), events_applied=3, last_event_time_ms=5,
                    last_event_id="ev")


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (b"", "shorter than the 36-byte header"),
        (GOOD[:20], "shorter than the 36-byte header"),
        (b"XYZ" + GOOD[3:], "bad magic"),
        (GOOD[:3] + b"\x09" + GOOD[4:], "format version 9"),
        (GOOD[:4] + b"\x07" + GOOD[5:], "unknown dtype code 7"),
        (GOOD[:-1], "header implies"),
        (GOOD + b"\x00", "header implies"),
        (GOOD[:36] + b"\xff\xfe" + GOOD[38:], "not valid UTF-8"),
        ("a string", "expected bytes"),
    ],
    # GOOD carries its write time: name the cases so every process collects the same ids
    ids=["empty", "short", "magic", "version", "dtype", "truncated", "trailing", "utf8", "str"],
)
def test_decode_rejects_corrupt_values_naming_the_key(value, needle):
    with pytest.raises(CorruptValue) as info:
        decode_state(value, "uic:{u:1}:s:dien:1")
    assert info.value.key == "uic:{u:1}:s:dien:1"
    assert needle in str(info.value) and "uic:{u:1}:s:dien:1" in str(info.value)


@pytest.mark.parametrize(
    ("state", "kwargs", "needle"),
    [
        (np.array([1.0, np.nan]), {}, "NaN or infinity"),
        (np.array([np.inf]), {}, "NaN or infinity"),
        (np.array([FP16_MAX * 2]), {"dtype": "fp16"}, "beyond the fp16 range"),
        (np.ones((2, 2)), {}, "1-D"),
        (np.ones(0), {}, "non-empty"),
        (np.arange(3), {}, "must hold floats"),
        (np.ones(3), {"dtype": "bf16"}, "dtype must be one of"),
        (np.ones(3), {"events_applied": -1}, "events_applied must be in"),
        (np.ones(3), {"events_applied": 2**53}, "events_applied must be in"),
        (np.ones(3), {"events_applied": 1.0}, "must be an integer"),
        (np.ones(3), {"last_event_id": 5}, "last_event_id must be a string"),
    ],
)
def test_encode_rejects_bad_input(state, kwargs, needle):
    args = {"events_applied": 1, "last_event_time_ms": 1, **kwargs}
    with pytest.raises(StoreError, match=needle.replace("(", r"\(")):
        encode_state(state, **args)
