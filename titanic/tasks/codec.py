"""The tasks' wire form: a call's arguments and a task's result as msgpack frames.

A task request is an ordinary Titanic request for the service named after the task, its body
two frames: `TASK_FRAME` and one msgpack map, {"args": [...], "kwargs": {...}}. The worker's
reply to it is two frames too: `TASK_FRAME` and the return value as one msgpack value. A task
that raises is answered with a failure report (titanic.protocol.failure), not in msgpack.
docs/concepts.md ("Tasks") describes the layout for clients and workers in other languages.

Values are msgpack's own types, with bytes as bin and text as str (`use_bin_type=True`,
`raw=False`): None, bool, int (-2**63 to 2**64 - 1), float, str, bytes, lists (tuples are sent
as lists) and maps. Map keys may be any of those but maps; an array key arrives as a tuple.
Extension types are not part of the layout. Nothing is ever pickled.

This module imports msgpack; `import titanic` does not import it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type hints

from titanic.errors import ProtocolError
from titanic.protocol.tsp import TASK_FRAME, canonical_uuid

#: The first frame of each part of a task that yields (a generator): every value it yields is
#: a part of its streamed reply, [TASK_PART_FRAME, the msgpack value]; the reply joined is those
#: pairs one after another (a task that yields nothing: this frame alone).
TASK_PART_FRAME = b"titanic.task/1 part"
#: Deepest nesting of lists and maps that msgpack unpacks (its own limit; it packs one more).
MAX_DEPTH = 1023
_INT_RANGE = range(-(2**63), 2**64)


class TaskRequestError(ProtocolError):
    """The request is not a task call in the titanic.task/1 wire form."""


# -- packing ---------------------------------------------------------------------------------------

def encode_call(args: Sequence[Any], kwargs: Mapping[str, Any], task: str = "the task"
                ) -> list[bytes]:
    """A task request's body; TypeError naming the argument (its position, or its keyword)
    when a value is one msgpack cannot carry."""
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    packer.pack_map_header(2)
    packer.pack("args")
    packer.pack_array_header(len(args))
    for index, value in enumerate(args):
        _pack(packer, value, f"{task}: argument {index}", "is", "holds")
    packer.pack("kwargs")
    packer.pack_map_header(len(kwargs))
    for name, value in kwargs.items():
        if not isinstance(name, str):
            raise TypeError(f"{task}: keyword names must be str, not {type(name).__name__}")
        packer.pack(name)
        _pack(packer, value, f"{task}: argument {name!r}", "is", "holds")
    return [TASK_FRAME, packer.bytes()]


def encode_result(value: Any, task: str = "the task") -> list[bytes]:
    """A task's reply; TypeError saying where, when the value is one msgpack cannot carry."""
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    _pack(packer, value, f"{task} returned", "", "a value holding")
    return [TASK_FRAME, packer.bytes()]


def encode_part(value: Any, task: str = "the task") -> list[bytes]:
    """One part of a task's streamed reply, a value it yielded; TypeError as encode_result."""
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    _pack(packer, value, f"{task} yielded", "", "a value holding")
    return [TASK_PART_FRAME, packer.bytes()]


def _pack(packer: msgpack.Packer, value: Any, subject: str, is_: str, holds: str) -> None:
    """Pack `value`; TypeError saying what in it msgpack cannot carry, `subject` and a verb
    (`is_` for the value itself, `holds` for a part of it) in front."""
    try:
        packer.pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        found = find_unpackable(value)
        if found is None:
            raise TypeError(f"{subject}: msgpack cannot pack it: {exc}") from None
        if found.nested:
            said = f"{holds} {found.what}" + (f" at {found.path}" if found.path else "")
        else:
            said = f"{is_} {found.what}".lstrip()
        raise TypeError(f"{subject} {said}, which msgpack cannot carry") from None


class Unpackable(NamedTuple):
    """What msgpack cannot carry in a value: where (`[2]['name']`, "" for the value itself or
    a key of the top map), what it is, and whether it is inside the value."""

    path: str
    what: str
    nested: bool


def find_unpackable(value: Any) -> Unpackable | None:
    """The first part of `value` msgpack cannot carry; None if there is none. Iterative:
    nesting deeper than Python's recursion is found and named too."""
    stack: list[tuple[Any, str, int, bool]] = [(value, "", 0, False)]
    while stack:
        item, path, depth, key = stack.pop()
        if depth > MAX_DEPTH:
            return Unpackable(path, f"lists or maps nested deeper than {MAX_DEPTH} levels",
                              True)
        if isinstance(item, list | tuple):
            stack.extend((inner, f"{path}[{index}]", depth + 1, False)
                         for index, inner in reversed(list(enumerate(item))))
        elif isinstance(item, dict):
            for name, inner in reversed(list(item.items())):
                stack.append((inner, f"{path}[{name!r}]", depth + 1, False))
                stack.append((name, path, depth + 1, True))
        elif (why := _scalar_problem(item)) is not None:
            return Unpackable(path, f"{why} as a map key" if key else why, depth > 0)
    return None


def _scalar_problem(value: Any) -> str | None:
    """Why msgpack cannot carry a value that is not a list or map; None if it can."""
    if value is None or isinstance(value, bool | float | bytes | bytearray | memoryview):
        return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "a str that is not valid Unicode (a lone surrogate)"
        return None
    if isinstance(value, int):
        return None if value in _INT_RANGE else "an int outside -2**63 to 2**64 - 1"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


# -- unpacking -------------------------------------------------------------------------------------

def is_task_frames(frames: Sequence[bytes]) -> bool:
    """True if these frames have the shape of a task request or result."""
    return len(frames) == 2 and frames[0] == TASK_FRAME


def is_task_stream(frames: Sequence[bytes]) -> bool:
    """True if these frames are the parts of a task that yields, or some of them."""
    if list(frames) == [TASK_PART_FRAME]:
        return True
    return (len(frames) >= 2 and len(frames) % 2 == 0
            and all(frame == TASK_PART_FRAME for frame in frames[::2]))


def decode_parts(frames: Sequence[bytes]) -> list[Any]:
    """The values a yielding task's parts carry, in order; ProtocolError if these are not
    such parts."""
    if not is_task_stream(frames):
        raise ProtocolError(f"not the parts of a task that yields: {_shape(frames)}")
    return [_unpack(data, ProtocolError) for data in frames[1::2]]


def split_request_id(frames: Sequence[bytes]) -> tuple[Sequence[bytes], str | None]:
    """A task call as its two frames and the request UUID a dispatcher added as a third
    (titanic.protocol.tsp.task_call_with_id); other frames as they are, with None."""
    if len(frames) == 3 and frames[0] == TASK_FRAME:
        request_id = canonical_uuid(frames[2].decode("ascii", "replace"))
        if request_id is not None:
            return frames[:2], request_id
    return frames, None


def decode_call(frames: Sequence[bytes]) -> tuple[list[Any], dict[str, Any]]:
    """A task request's positional and keyword arguments; TaskRequestError saying what is
    wrong when the frames are not a task call."""
    if not is_task_frames(frames):
        raise TaskRequestError(f"a task request is two frames, {TASK_FRAME.decode()!r} and "
                               f"the msgpack arguments; this one is {_shape(frames)}")
    call = _unpack(frames[1], TaskRequestError)
    if not isinstance(call, dict) or not set(call) <= {"args", "kwargs"}:
        raise TaskRequestError('the arguments must be a msgpack map of "args" (an array) and '
                               '"kwargs" (a map of str keys)')
    args, kwargs = call.get("args", []), call.get("kwargs", {})
    if not isinstance(args, list):
        raise TaskRequestError(f'"args" must be an array, not {_kind(args)}')
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        raise TaskRequestError('"kwargs" must be a map whose keys are all str')
    return args, kwargs


def decode_result(frames: Sequence[bytes]) -> Any:
    """A task's return value from its reply frames (for a task that yields, the list of the
    values it yielded); ProtocolError if they are not a task's result."""
    if is_task_stream(frames):
        return decode_parts(frames)
    if not is_task_frames(frames):
        raise ProtocolError(f"the reply is not a task's result ({TASK_FRAME.decode()!r} and a "
                            f"msgpack value): it is {_shape(frames)}")
    return _unpack(frames[1], ProtocolError)


def _unpack(data: bytes, error: type[ProtocolError]) -> Any:
    try:
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_no_ext)
        except TypeError:  # an array as a map key: unhashable as a list, kept as a tuple
            return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_no_ext,
                                   object_pairs_hook=_map_of_pairs)
    except Exception as exc:  # noqa: BLE001 - msgpack's errors for malformed input are many
        raise error(f"not valid msgpack: {type(exc).__name__}: {exc}") from None


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not part of the task wire form")


def _map_of_pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    return {_frozen(key): value for key, value in pairs}


def _frozen(key: Any) -> Any:
    return tuple(_frozen(item) for item in key) if isinstance(key, list) else key


def _shape(frames: Sequence[bytes]) -> str:
    if not frames:
        return "empty"
    return f"{len(frames)} frame(s) starting {frames[0][:40]!r}"


def _kind(value: Any) -> str:
    return "a map" if isinstance(value, dict) else f"a {type(value).__name__}"


# -- JSON, for the command line --------------------------------------------------------------------

#: The one key of the JSON object that stands for bytes: {"$bytes": "<base64>"}.
BYTES_KEY = "$bytes"


def from_json(value: Any, where: str = "") -> Any:
    """A value parsed from JSON, with every {"$bytes": "<base64>"} object as bytes;
    ValueError saying where for a malformed one."""
    if isinstance(value, dict):
        if BYTES_KEY in value and len(value) == 1:
            text = value[BYTES_KEY]
            try:
                if not isinstance(text, str):
                    raise ValueError
                return base64.b64decode(text, validate=True)
            except (ValueError, binascii.Error):
                raise ValueError(f'{where or "the value"}: "{BYTES_KEY}" must be base64 '
                                 "text") from None
        return {key: from_json(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item, f"{where}[{index}]") for index, item in enumerate(value)]
    return value


def to_json(value: Any) -> Any:
    """A decoded msgpack value as JSON can hold it: bytes as {"$bytes": "<base64>"}, a map
    key that is not str as its JSON text."""
    if isinstance(value, bytes):
        return {BYTES_KEY: base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {key if isinstance(key, str) else _key_text(key): to_json(item)
                for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, msgpack.Timestamp):
        return value.to_datetime().isoformat()
    return value


def _key_text(key: Any) -> str:
    import json

    return json.dumps(to_json(key), ensure_ascii=False)
