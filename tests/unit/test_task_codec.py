"""The tasks' wire form (titanic.tasks.codec), without sockets."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from titanic.errors import ProtocolError
from titanic.tasks.codec import (
    TASK_FRAME,
    TaskRequestError,
    decode_call,
    decode_result,
    encode_call,
    encode_result,
    find_unpackable,
    from_json,
    to_json,
)


def round_trip(args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    return decode_call(encode_call(args, kwargs, "t"))


def test_a_call_round_trips_args_kwargs_bytes_and_nesting() -> None:
    args = [b"\x00\xff\x80", "ü text", 0, -(2**63), 2**64 - 1, 1.5, True, None,
            [1, [2, [b"x"]]], {"a": {"b": [None, b"\x01"]}}]
    kwargs = {"width": 100, "blob": b"", "options": {"sizes": [1, 2], "name": "n"}}
    assert round_trip(args, kwargs) == (args, kwargs)


def test_bytes_stay_bytes_and_text_stays_text() -> None:
    (blob, text), _ = round_trip([b"abc", "abc"], {})
    assert type(blob) is bytes and type(text) is str


def test_tuples_arrive_as_lists_and_tuple_keys_as_tuples() -> None:
    (pair, table), kwargs = round_trip([(1, (2, 3)), {(1, "a"): "x", 5: None, b"k": 1.0}],
                                       {"t": ()})
    assert pair == [1, [2, 3]]
    assert table == {(1, "a"): "x", 5: None, b"k": 1.0}
    assert kwargs == {"t": []}


def test_the_request_is_the_task_frame_and_one_msgpack_map() -> None:
    frames = encode_call([b"img", 3], {"width": 100}, "resize")
    assert frames[0] == TASK_FRAME == b"titanic.task/1"
    assert len(frames) == 2
    assert msgpack.unpackb(frames[1], raw=False) == {"args": [b"img", 3],
                                                     "kwargs": {"width": 100}}
    assert encode_result({"ok": b"\x01"}) == [TASK_FRAME, msgpack.packb({"ok": b"\x01"},
                                                                        use_bin_type=True)]


def test_a_call_from_another_writer_may_leave_out_empty_args_or_kwargs() -> None:
    assert decode_call([TASK_FRAME, msgpack.packb({})]) == ([], {})
    assert decode_call([TASK_FRAME, msgpack.packb({"kwargs": {"a": 1}})]) == ([], {"a": 1})


class Opaque:
    pass


@pytest.mark.parametrize(("args", "kwargs", "says"), [
    ([{1, 2}], {}, "resize: argument 0 is a set, which msgpack cannot carry"),
    ([b"ok", Opaque()], {}, "resize: argument 1 is an Opaque, which msgpack cannot carry"),
    ([], {"options": {"sizes": [1, 2, {3}]}},
     "resize: argument 'options' holds a set at ['sizes'][2], which msgpack cannot carry"),
    ([2**64], {}, "resize: argument 0 is an int outside -2**63 to 2**64 - 1"),
    ([], {"low": -(2**63) - 1}, "resize: argument 'low' is an int outside"),
    (["\udc80"], {}, "resize: argument 0 is a str that is not valid Unicode"),
    ([{frozenset(): 1}], {}, "resize: argument 0 holds a frozenset as a map key, which"),
    ([[1, {"m": {2: 3, frozenset(): 1}}]], {},
     "resize: argument 0 holds a frozenset as a map key at [1]['m'], which msgpack"),
])
def test_an_argument_msgpack_cannot_carry_is_a_type_error_naming_it(
        args: list[Any], kwargs: dict[str, Any], says: str) -> None:
    with pytest.raises(TypeError) as raised:
        encode_call(args, kwargs, "resize")
    assert str(raised.value).startswith(says), str(raised.value)


def test_nesting_deeper_than_msgpack_packs_is_named() -> None:
    deep: list[Any] = []
    for _ in range(2000):
        deep = [deep]
    with pytest.raises(TypeError, match=r"argument 0 holds lists or maps nested deeper than 1023"):
        encode_call([deep], {}, "t")
    assert find_unpackable([[[]]]) is None


def test_keyword_names_must_be_text() -> None:
    with pytest.raises(TypeError, match="keyword names must be str, not int"):
        encode_call([], {1: "x"}, "t")  # type: ignore[dict-item]


@pytest.mark.parametrize(("value", "says"), [
    ({1, 2}, "resize returned a set, which msgpack cannot carry"),
    ({"ok": [1, object()]},
     "resize returned a value holding an object at ['ok'][1], which msgpack cannot carry"),
])
def test_a_result_msgpack_cannot_carry_is_a_type_error_saying_where(value: object,
                                                                    says: str) -> None:
    with pytest.raises(TypeError) as raised:
        encode_result(value, "resize")
    assert str(raised.value) == says


@pytest.mark.parametrize(("value", "frames", "says"), [
    (None, [b"resize", b"x"], "a task request is two frames"),
    (None, [TASK_FRAME], "this one is 1 frame(s)"),
    (None, [TASK_FRAME, b"\x92\x01"], "not valid msgpack"),
    ([1, 2], None, 'the arguments must be a msgpack map of "args"'),
    ({"args": [], "other": 1}, None, 'the arguments must be a msgpack map of "args"'),
    ({"args": {"a": 1}}, None, '"args" must be an array, not a map'),
    ({"kwargs": {1: 2}}, None, '"kwargs" must be a map whose keys are all str'),
    ({"kwargs": []}, None, '"kwargs" must be a map whose keys are all str'),
    (msgpack.ExtType(7, b"x"), None, "msgpack extension type 7 is not part"),
])
def test_a_request_that_is_not_a_task_call_is_refused_saying_why(
        value: object, frames: list[bytes] | None, says: str) -> None:
    body = frames if frames is not None else [TASK_FRAME, msgpack.packb(value)]
    with pytest.raises(TaskRequestError, match=None) as raised:
        decode_call(body)
    assert says in str(raised.value)


def test_a_map_keyed_by_a_map_is_refused_not_raised_as_a_crash() -> None:
    # A map as a key: valid msgpack, but no Python dict can hold it.
    body = b"\x81\x81\x01\x02\x03"
    with pytest.raises(TaskRequestError, match="not valid msgpack"):
        decode_call([TASK_FRAME, msgpack.packb({"args": [0]})[:-2] + b"\x91" + body])


def test_a_reply_that_is_not_a_task_result_is_a_protocol_error() -> None:
    assert decode_result([TASK_FRAME, msgpack.packb([1, "a"])]) == [1, "a"]
    with pytest.raises(ProtocolError, match="the reply is not a task's result"):
        decode_result([b"hello"])
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        decode_result([TASK_FRAME, b"\xc1"])


def test_json_bytes_are_a_base64_object_both_ways() -> None:
    parsed = from_json(json.loads('{"img": {"$bytes": "AP8="}, "list": [{"$bytes": ""}], '
                                  '"not_bytes": {"$bytes": "AA==", "other": 1}}'))
    assert parsed == {"img": b"\x00\xff", "list": [b""],
                      "not_bytes": {"$bytes": "AA==", "other": 1}}
    assert to_json({"img": b"\x00\xff", "n": [1, (2, b"")]}) == {
        "img": {"$bytes": "AP8="}, "n": [1, [2, {"$bytes": ""}]]}


@pytest.mark.parametrize("text", ['{"$bytes": "not base64!"}', '{"$bytes": 5}'])
def test_malformed_json_bytes_are_refused_saying_where(text: str) -> None:
    with pytest.raises(ValueError, match=r"args\[0\]\[1\]: \"\$bytes\" must be base64 text"):
        from_json([[0, json.loads(text)]], "args")


def test_json_shows_keys_that_are_not_text_as_their_json() -> None:
    assert to_json({1: "a", None: "b", (1, 2): "c", b"k": "d"}) == {
        "1": "a", "null": "b", "[1, 2]": "c", '{"$bytes": "aw=="}': "d"}
