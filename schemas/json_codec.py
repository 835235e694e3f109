"""JSON framing of the JSON message types, checked against their JSON Schema files.

JSON documents (UTF-8, one object per Kafka value) are for downstream readers that know
nothing of streamscribe: kcat, ksqlDB, Kafka Connect. Each type has a JSON Schema file in
``schemas/json``; :func:`decode_json` checks a value against it. The message dataclasses
inherit :class:`JsonRecord`, which names their schema and gives them ``encode``/``decode``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import cache
from importlib import resources
from typing import Any, ClassVar, TypeVar

import jsonschema

from streamscribe.core.errors import ContractError


@cache
def json_schema(name: str) -> Any:
    """The JSON Schema ``schemas/json/<name>.schema.json`` as a validator."""
    text = resources.files("streamscribe.schemas").joinpath("json", f"{name}.schema.json")
    schema = json.loads(text.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def encode_json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def decode_json(data: bytes, schema_name: str) -> dict[str, Any]:
    """Parse and validate; :class:`ContractError` carrying the raw bytes if it fails."""
    try:
        doc = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
        raise ContractError(f"{schema_name}: not JSON ({exc})", raw=bytes(data)) from exc
    errors = sorted(json_schema(schema_name).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "(root)"
        raise ContractError(f"{schema_name}: {where}: {errors[0].message}", raw=bytes(data))
    if not isinstance(doc, dict):
        raise ContractError(f"{schema_name}: not a JSON object", raw=bytes(data))
    return doc


R = TypeVar("R")


def from_doc(cls: type[R], doc: dict[str, Any], data: bytes, schema_name: str) -> R:
    """Build dataclass ``cls`` from a checked document (unknown fields ignored)."""
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    try:
        return cls(**{k: v for k, v in doc.items() if k in fields and fields[k].init})
    except TypeError as exc:
        raise ContractError(f"{schema_name}: {exc}", raw=bytes(data)) from exc


class JsonRecord:
    """Mixin of the JSON message dataclasses: ``SCHEMA`` names the JSON Schema file.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Alert2(JsonRecord):
    ...     SCHEMA = "alert"
    ...     session_id: str
    >>> Alert2("s").encode()
    b'{"session_id":"s"}'
    """

    SCHEMA: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def encode(self) -> bytes:
        return encode_json(self.to_dict())

    @classmethod
    def decode(cls: type[R], data: bytes) -> R:
        schema = cls.SCHEMA  # type: ignore[attr-defined]
        return from_doc(cls, decode_json(data, schema), data, schema)
