"""Property-based fuzzing (hypothesis) of the entry points that are not the model server:
event JSON, Taobao CSV lines, stored state values and the client's command line. Each input
must give the documented error (or a valid result), never another exception.

The normal run tries a few dozen cases per entry point; `UIC_FUZZ_EXAMPLES=2000` (what
`make fuzz` sets) runs the long profile and prints the number of cases tried (-s shows it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.__main__ import main as client_main
from uic.codec import DTYPES, HEADER_SIZE, CorruptValue, StoredState, decode_state, encode_state
from uic.events import INT64_MAX, Event, InvalidEvent
from uic.taobao import parse_taobao_line

EXAMPLES = int(os.environ.get("UIC_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, database=None, deadline=timedelta(seconds=10),
                suppress_health_check=list(HealthCheck))


def report(entry_point: str, tried: int) -> None:
    if "UIC_FUZZ_EXAMPLES" in os.environ:
        print(f"\nfuzz {entry_point}: {tried} cases tried")


def check_event(event: Event) -> None:
    """A parsed event is a valid one: it survives its own validation and a JSON round trip."""
    assert isinstance(event, Event)
    assert Event.from_json(event.to_json()) == event


# -- event JSON -------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=15), inner,
                                                                max_size=7),
    max_leaves=30)
ids = st.integers(min_value=-5, max_value=2**64) | st.sampled_from([0, INT64_MAX, INT64_MAX + 1])
event_like = st.fixed_dictionaries(
    {"user_id": ids, "item_id": ids, "category_id": ids,
     "behavior_type": st.sampled_from(["pv", "cart", "fav", "buy", "click", ""]),
     "event_time_ms": ids, "event_id": st.text(max_size=140)},
    optional={"extra": json_values})
hostile_texts = st.sampled_from([
    "[" * 100_000, '{"a":' * 5000, "9" * 6000, "NaN", "-Infinity", "", "\x00", "{}", "[]",
    '{"user_id": 1e400}', '"\\ud800"'])


@pytest.mark.parametrize("encode", ["text", "bytes"])
def test_event_json(encode):
    tried = 0

    @FUZZ
    @given(st.one_of(event_like.map(json.dumps), json_values.map(json.dumps), st.text(),
                     hostile_texts, st.binary().map(lambda b: b.decode("latin-1"))))
    def case(text):
        nonlocal tried
        tried += 1
        payload = text.encode("utf-8", "surrogatepass") if encode == "bytes" else text
        try:
            event = Event.from_json(payload)
        except InvalidEvent:
            return
        check_event(event)

    case()
    report(f"Event.from_json ({encode})", tried)


def test_event_json_raw_bytes():
    tried = 0

    @FUZZ
    @given(st.binary(max_size=5000))
    def case(data):
        nonlocal tried
        tried += 1
        try:
            event = Event.from_json(data)
        except InvalidEvent:
            return
        check_event(event)

    case()
    report("Event.from_json (raw bytes)", tried)


# -- Taobao CSV lines --------------------------------------------------------------------------
csv_field = st.one_of(st.integers(min_value=-10, max_value=2**70).map(str),
                      st.sampled_from(["pv", "buy", "cart", "fav", "", " 7 ", "1e3", "٣",
                                       "9" * 5000]),
                      st.text(max_size=12))


def test_taobao_lines():
    tried = 0

    @FUZZ
    @given(st.one_of(st.lists(csv_field, max_size=7).map(",".join), st.text()),
           st.integers(min_value=1, max_value=10**9))
    def case(line, line_no):
        nonlocal tried
        tried += 1
        try:
            event = parse_taobao_line(line, line_no)
        except InvalidEvent:
            return
        check_event(event)

    case()
    report("parse_taobao_line", tried)


# -- stored state values -----------------------------------------------------------------------
valid_states = st.builds(
    lambda dtype, values, applied, t, event_id, written: encode_state(
        np.asarray(values, np.float32), events_applied=applied, last_event_time_ms=t,
        last_event_id=event_id, write_time_ms=written, dtype=dtype),
    st.sampled_from(list(DTYPES)),
    st.lists(st.floats(-1000, 1000, width=16), min_size=1, max_size=40),
    st.integers(0, 2**53 - 1), st.integers(0, INT64_MAX), st.text(max_size=30),
    st.integers(0, INT64_MAX))


@st.composite
def mutated(draw, value_strategy):
    """A valid value with some bytes overwritten, a tail cut off or bytes appended."""
    value = bytearray(draw(value_strategy))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["byte", "header_byte", "truncate", "append"]))
        if how == "byte" and value:
            value[draw(st.integers(0, len(value) - 1))] = draw(st.integers(0, 255))
        elif how == "header_byte" and value:
            value[draw(st.integers(0, min(HEADER_SIZE, len(value)) - 1))] = draw(
                st.integers(0, 255))
        elif how == "truncate":
            del value[draw(st.integers(0, len(value))):]
        else:
            value += draw(st.binary(min_size=1, max_size=8))
    return bytes(value)


def check_decoded(value: bytes) -> None:
    """Only CorruptValue, or a StoredState whose re-encoding gives back the same bytes."""
    try:
        stored = decode_state(value, key="fuzz")
    except CorruptValue:
        return
    assert isinstance(stored, StoredState)
    dtype = next(name for name, (code, _) in DTYPES.items() if code == value[4])
    again = encode_state(stored.state, events_applied=stored.events_applied,
                         last_event_time_ms=stored.last_event_time_ms,
                         last_event_id=stored.last_event_id,
                         write_time_ms=stored.write_time_ms, dtype=dtype)
    assert again == value


# Found by this fuzzing: decode_state used to accept headers that encode_state refuses
# (here a negative write_time_ms), so a corrupt value was not reported as CorruptValue.
KNOWN_UNCHECKED = (b"UIS\x01\x01\x00\x00\x00\x01\x00\x00\x00" + bytes(16)
                   + b"\x00" * 7 + b"\x80" + bytes(4))


def test_decode_state_refuses_what_encode_state_refuses():
    check_decoded(KNOWN_UNCHECKED)


@pytest.mark.parametrize("source", ["arbitrary", "mutated"])
def test_stored_state_values(source):
    tried = 0
    values = st.binary(max_size=300) if source == "arbitrary" else mutated(valid_states)

    @FUZZ
    @given(values)
    def case(value):
        nonlocal tried
        tried += 1
        check_decoded(value)

    case()
    report(f"decode_state ({source})", tried)


# -- the client's command line -----------------------------------------------------------------
OPTIONS = ["--user", "--items", "--cates", "--candidates", "--model", "--arch", "--transport",
           "--server", "--redis_url", "--version", "--history_length", "--deadline_ms",
           "--redis_timeout_ms", "--fallback", "--json", "--max_candidates", "--tls",
           "--tls_ca", "--tls_cert", "--tls_key", "-h", "--help"]
VALUES = ["1", "0", "-1", "1,2,3", "7,,9", "abc", "dien", "mimn", "A", "B", "grpc", "rest",
          "nan", "inf", "1e9", "", " ", "99999999999999999999", "/nonexistent", "/dev/null",
          "127.0.0.1:1", "host:port", "redis://127.0.0.1:1/0", "redis://:pw@[::1", "\x00"]
argv_token = st.one_of(st.sampled_from(OPTIONS), st.sampled_from(VALUES), st.text(max_size=15))
# Appended last, so whatever the fuzzed part says, nothing real is ever reached: Redis and
# the model server are closed ports and every wait is short.
UNREACHABLE = ["--redis_url", "redis://127.0.0.1:1/0", "--server", "127.0.0.1:1",
               "--deadline_ms", "300", "--redis_timeout_ms", "100"]


def test_client_cli_arguments():
    tried = 0

    @FUZZ
    @given(st.lists(argv_token, max_size=12), st.booleans())
    def case(tokens, safe_tail):
        nonlocal tried
        tried += 1
        argv = ["score", *tokens, *UNREACHABLE] if safe_tail else tokens
        if not safe_tail and "score" in argv:
            argv = [t for t in argv if t != "score"]  # no command: argparse refuses it
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = client_main(argv)
            except SystemExit as exit_:
                code = exit_.code
        assert code in (0, 1, 2), (argv, code, err.getvalue())
        assert "Traceback" not in err.getvalue()
        if code == 0:
            assert out.getvalue(), argv  # help text (nothing can be scored here)
        else:
            assert "error" in err.getvalue(), (argv, err.getvalue())

    case()
    report("python -m client (argv)", tried)
