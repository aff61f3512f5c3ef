"""Compact JSON text for the sinks, from one encoder built once."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["compact_json"]


def _compact_encoder() -> Callable[[Any], str]:
    """Compact JSON like ``json.dumps(obj, separators=(",", ":"), ensure_ascii=False)``.

    ``json.dumps`` with any argument builds a new encoder for every call, which costs more than
    encoding a record; CPython's C encoder is built once here and reused. Falls back to the
    public API where it is missing (PyPy).
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    encode = make(
        None,  # markers: records hold no cycles to check for
        json.JSONEncoder().default,  # raises TypeError for what JSON cannot encode
        json.encoder.encode_basestring,  # ensure_ascii=False
        None,  # indent
        ":",  # key separator
        ",",  # item separator
        False,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan, as json.dumps
    )
    return lambda obj: "".join(encode(obj, 0))


compact_json = _compact_encoder()
