"""Avro framing shared by the binary message types.

Wire format of a value: ``MAGIC`` (1 byte), message type id (1 byte), writer schema
version (1 byte), then the Avro binary body (fastavro, schemaless).

Compatibility rule of the contract: a new version only *appends* fields, each with a
default. So a reader of version N decodes a version N+1 body with its own schema and
ignores the appended bytes, and a reader of N+1 resolves a version N body with the
writer's schema (every version's ``.avsc`` file is kept).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final

import fastavro

from streamscribe.core.errors import ContractError

MAGIC: Final = 0xA5
HEADER_BYTES: Final = 3


@cache
def load_schema(filename: str) -> Any:
    """Parse an ``.avsc`` file shipped in ``schemas/avro`` (or at an absolute path)."""
    if filename.startswith("/"):
        with open(filename) as fh:
            text = fh.read()
    else:
        text = resources.files("streamscribe.schemas").joinpath("avro", filename).read_text()
    return fastavro.parse_schema(json.loads(text))


@dataclass(frozen=True)
class AvroType:
    """One Avro message type: its id on the wire and its schema per version."""

    name: str
    type_id: int
    versions: dict[int, str]  # version -> .avsc file name

    @property
    def current(self) -> int:
        return max(self.versions)

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(bytes((MAGIC, self.type_id, self.current)))
        fastavro.schemaless_writer(buf, load_schema(self.versions[self.current]), record)
        return buf.getvalue()

    def decode(self, data: bytes, *, reader_version: int | None = None) -> dict[str, Any]:
        """Decode ``data``; raises :class:`ContractError` carrying the raw bytes."""
        reader_version = reader_version or self.current
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ContractError(f"{self.name}: value is {type(data).__name__}, not bytes")
        data = bytes(data)
        if len(data) < HEADER_BYTES or data[0] != MAGIC:
            raise ContractError(f"{self.name}: not a streamscribe Avro message", raw=data)
        if data[1] != self.type_id:
            raise ContractError(
                f"{self.name}: wrong message type id {data[1]} (expected {self.type_id})",
                raw=data,
            )
        writer_version = data[2]
        buf = io.BytesIO(data[HEADER_BYTES:])
        reader = load_schema(self.versions[reader_version])
        try:
            if writer_version in self.versions and writer_version != reader_version:
                record = fastavro.schemaless_reader(
                    buf, load_schema(self.versions[writer_version]), reader
                )
            elif writer_version == reader_version or writer_version > reader_version:
                # A newer writer only appended fields: read our prefix, ignore the rest.
                record = fastavro.schemaless_reader(buf, reader, reader)
            else:
                raise ContractError(
                    f"{self.name}: unknown schema version {writer_version}", raw=data
                )
        except ContractError:
            raise
        except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError...
            raise ContractError(
                f"{self.name}: undecodable Avro body ({type(exc).__name__}: {exc})", raw=data
            ) from exc
        if writer_version <= reader_version and buf.tell() != len(data) - HEADER_BYTES:
            raise ContractError(
                f"{self.name}: {len(data) - HEADER_BYTES - buf.tell()} trailing bytes", raw=data
            )
        if not isinstance(record, dict):
            raise ContractError(f"{self.name}: body is not a record", raw=data)
        return record
