"""Zero-copy framing of ModelInfer messages on the wire.

Protobuf's Python runtime copies a multi-MiB `bytes` field several times
(parse into the message, then again into a Python object on access), and
serialising one took ~5 ms for 8 MiB here. The tensor payloads are plain
length-delimited fields (ModelInferRequest.raw_input_contents = 7,
ModelInferResponse.raw_output_contents = 6), so these helpers split them out
as memoryviews of the received buffer, let protobuf parse only the small
remainder, and write outgoing payloads with a single join. The bytes on the
wire are exactly what protobuf would produce, so any KServe V2 client or
server interoperates.

Alignment: a received message is one Python `bytes` object whose data starts
16-byte aligned, so a payload at an odd offset inside it becomes a misaligned
numpy view, which numpy processes several times slower (and which the server
therefore copies). With `align=16` the framing inserts, before each payload
that needs it, an unknown field (number PAD_FIELD, which no KServe message
uses; every protobuf parser skips unknown fields) whose size puts the payload
at a multiple of 16. Our client and server frame this way; other peers'
frames are read as they come.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import DecodeError

from inference import grpc_predict_v2_pb2 as pb

RAW_INPUT_FIELD = 7  # ModelInferRequest.raw_input_contents
RAW_OUTPUT_FIELD = 6  # ModelInferResponse.raw_output_contents
PAD_FIELD = (1 << 29) - 1  # the largest field number: skipped by every parser as an unknown field
ALIGN = 16


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError("varint too long")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def split(data: bytes | memoryview, payload_field: int) -> tuple[bytes, list[memoryview]]:
    """(the message's other fields, re-encoded; views of every `payload_field` entry)."""
    view = memoryview(data)
    rest = bytearray()
    payloads: list[memoryview] = []
    pos = 0
    while pos < len(view):
        start = pos
        key, pos = _varint(view, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 2:
            length, pos = _varint(view, pos)
            end = pos + length
            if end > len(view):
                raise DecodeError("truncated field")
            if field == payload_field:
                payloads.append(view[pos:end])
            elif field != PAD_FIELD:
                rest += view[start:end]
            pos = end
        elif wire_type == 0:
            _, pos = _varint(view, pos)
            rest += view[start:pos]
        elif wire_type == 1:
            pos += 8
            rest += view[start:pos]
        elif wire_type == 5:
            pos += 4
            rest += view[start:pos]
        else:
            raise DecodeError(f"unsupported wire type {wire_type}")
    if pos != len(view):
        raise DecodeError("truncated message")
    return bytes(rest), payloads


_PAD_TAG = _encode_varint((PAD_FIELD << 3) | 2)


def _padding(gap: int, align: int) -> bytes:
    """An unknown length-delimited field of exactly `gap` bytes, or `gap + align` when `gap` is too small."""
    if gap == 0:
        return b""
    size = gap if gap >= len(_PAD_TAG) + 1 else gap + align
    filler = size - len(_PAD_TAG) - 1
    if filler > 127:
        raise ValueError(f"alignment {align} is too large")
    return _PAD_TAG + bytes([filler]) + bytes(filler)


def join(head: bytes, payload_field: int, payloads: Sequence[bytes | memoryview], align: int = 0) -> bytes:
    """`head` (a serialised message) followed by length-delimited payload fields, copied once.
    With `align`, each payload starts at a multiple of `align` bytes from the message start."""
    tag = _encode_varint((payload_field << 3) | 2)
    parts: list[bytes | memoryview] = [head]
    offset = len(head)
    for payload in payloads:
        size = payload.nbytes if isinstance(payload, memoryview) else len(payload)
        prefix = tag + _encode_varint(size)
        if align:
            pad = _padding(-(offset + len(prefix)) % align, align)
            parts.append(pad)
            offset += len(pad)
        parts += [prefix, payload]
        offset += len(prefix) + size
    return b"".join(parts)


def decode_request(data: bytes) -> tuple[pb.ModelInferRequest, list[memoryview]]:
    head, raws = split(data, RAW_INPUT_FIELD)
    return pb.ModelInferRequest.FromString(head), raws


def encode_request(request: pb.ModelInferRequest, raws: Sequence[bytes | memoryview], align: int = 0) -> bytes:
    return join(request.SerializeToString(), RAW_INPUT_FIELD, raws, align)


def decode_response(data: bytes) -> tuple[pb.ModelInferResponse, list[memoryview]]:
    head, raws = split(data, RAW_OUTPUT_FIELD)
    return pb.ModelInferResponse.FromString(head), raws


def encode_response(response: pb.ModelInferResponse, raws: Sequence[bytes | memoryview], align: int = 0) -> bytes:
    return join(response.SerializeToString(), RAW_OUTPUT_FIELD, raws, align)
