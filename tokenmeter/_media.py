"""What an estimate can learn cheaply from the media a request carries: an image's dimensions,
an audio clip's duration, a PDF's page count. Only headers are read (the first bytes of the
base64 text decoded, never the whole file, except a PDF's page objects up to a bound), so an
estimate costs little even for a request carrying megabytes. Each answer is None when the
format is not known or the header is not where it should be: the caller then falls back to a
typical figure.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import stat
import struct
import tempfile
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FileHead",
    "audio_seconds",
    "decoded_size",
    "file_head",
    "image_size",
    "media_bytes",
    "mp4_seconds",
    "pdf_pages",
]

#: Base64 characters decoded to read a header: 64 KiB of text, 48 KiB of bytes (a JPEG's frame
#: header may come after its EXIF block).
_HEAD = 65_536
#: Bytes of a PDF searched for its page objects (beyond: pages extrapolated from the size).
_PDF_SCAN = 1024 * 1024
#: Typical bitrates (bits a second) when only a compressed clip's size is known.
_BITRATE = {"flac": 700_000, "wav": 1_411_200, "pcm16": 384_000}
_DEFAULT_BITRATE = 128_000
#: A PDF page's typical size when its page objects cannot be counted (compressed object streams).
_PDF_PAGE_BYTES = 50_000


@dataclass(frozen=True, slots=True)
class FileHead:
    """An uploaded file object as an estimate sees it: its first bytes and its size."""

    head: bytes
    size: int


def file_head(file: Any) -> FileHead | None:
    """The first ``_HEAD`` bytes and the size of a file object a request uploads (a multipart
    ``file``), read when the call is made: the SDK reads it as it sends it, so later (when a
    call without usage is recorded) it is consumed, or closed. Read from its start, as httpx
    sends it, without moving it, and only from what can be read so unseen: an in-memory
    ``BytesIO`` or a regular file opened in binary mode (``pread``). Anything else (a wrapper
    that counts or hashes what is read, an upload progress bar, a pipe) is never read by us: it
    would see reads that were never sent. Never raises: None when it is not read."""
    try:
        if type(file) in _TEMPORARY_FILES:  # what a web framework's upload holds (UploadFile)
            file = getattr(file, "_file", None) or getattr(file, "file", None)
        if type(file) is io.BytesIO:
            with file.getbuffer() as view:
                return FileHead(bytes(view[:_HEAD]), len(view))
        if type(file) in _PLAIN_FILES:
            descriptor = file.fileno()
            status = os.fstat(descriptor)
            if stat.S_ISREG(status.st_mode):
                return FileHead(os.pread(descriptor, _HEAD, 0), status.st_size)
    except Exception:
        return None
    return None


#: File objects ``open(path, "rb")`` makes, which ``file_head`` reads by their descriptor.
_PLAIN_FILES = (io.BufferedReader, io.BufferedRandom, io.FileIO)
#: The standard library's wrappers of one of those or of a ``BytesIO``, read through.
_TEMPORARY_FILES = (tempfile.SpooledTemporaryFile, tempfile._TemporaryFileWrapper)


def media_bytes(data: Any, limit: int | None = _HEAD, tail: bool = False) -> bytes | None:
    """The first (``tail``: last) ``limit`` bytes (None: all) of inline media: raw bytes, base64
    text (standard or URL-safe, as Gemini's JSON sends it), a ``data:`` URL, or the head of an
    uploaded file (``FileHead``: what of it was read). None when it is none of these (a URL, a
    file id)."""
    if isinstance(data, FileHead):
        whole = len(data.head) >= data.size
        if tail:
            return (data.head if limit is None else data.head[-limit:]) if whole else None
        if limit is None:
            return data.head if whole else None
        return data.head[:limit]
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        return raw if limit is None else raw[-limit:] if tail else raw[:limit]
    if not isinstance(data, str) or not data:
        return None
    if data.startswith("data:"):
        comma = data.find(",", 0, 300)
        if comma < 0 or ";base64" not in data[:comma]:
            return None
        data = data[comma + 1 :]
    elif data.startswith(("http://", "https://", "gs://", "file-")):
        return None
    text = data
    if limit is not None:
        chars = (limit // 3 + 1) * 4
        if tail:
            start = max(len(data) - chars, 0)
            text = data[start - start % 4 :]
        else:
            text = data[:chars]
            text = text[: len(text) - len(text) % 4]
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def decoded_size(data: Any) -> int:
    """Bytes the inline media holds once decoded (counted from its text, never decoded)."""
    if isinstance(data, FileHead):
        return data.size
    if isinstance(data, bytes | bytearray | memoryview):
        return len(data)
    if not isinstance(data, str):
        return 0
    text: str = data[data.find(",") + 1 :] if data.startswith("data:") else data
    return max(0, len(text) * 3 // 4 - text[-2:].count("="))


# -- images ---------------------------------------------------------------------------------------
def image_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG, JPEG, GIF or WebP from its first bytes."""
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
        elif head[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", head[6:10])
        elif head.startswith(b"\xff\xd8"):
            found = _jpeg_size(head)
            if found is None:
                return None
            width, height = found
        elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            found = _webp_size(head)
            if found is None:
                return None
            width, height = found
        else:
            return None
    except struct.error:
        return None
    return (width, height) if 0 < width <= 100_000 and 0 < height <= 100_000 else None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 < len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            at += 2
            continue
        (length,) = struct.unpack(">H", head[at + 2 : at + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header
            height, width = struct.unpack(">HH", head[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    kind = head[12:16]
    if kind == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return width, height
    if kind == b"VP8 ":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


# -- audio ----------------------------------------------------------------------------------------
def audio_seconds(head: bytes, size: int, fmt: str | None) -> float:
    """An audio clip's duration: exact from a WAV header; from the first frame's bitrate for
    an MP3 (exact for constant bitrate); else from its size at a typical bitrate."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        found = _wav_seconds(head, size)
        if found is not None:
            return found
    if head[:3] == b"ID3" or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"\xff\xfa"):
        rate = _mp3_bitrate(head)
        if rate:
            return size * 8 / rate
    kind = (fmt or "").lower().rsplit("/", 1)[-1]
    return size * 8 / _BITRATE.get(kind, _DEFAULT_BITRATE)


def _wav_seconds(head: bytes, size: int) -> float | None:
    at, byte_rate = 12, 0
    while at + 8 <= len(head):
        chunk, length = head[at : at + 4], int.from_bytes(head[at + 4 : at + 8], "little")
        if chunk == b"fmt ":
            byte_rate = int.from_bytes(head[at + 16 : at + 20], "little")
        elif chunk == b"data":
            if not byte_rate:
                return None
            if length in (0, 0xFFFFFFFF) or length > size:  # a streamed WAV: whatever is there
                length = max(size - at - 8, 0)
            return length / byte_rate
        at += 8 + length + (length & 1)
    return None


#: MPEG-1 Layer III bitrates (kbit/s) by index; MPEG-2/2.5 Layer III below.
_MP3_V1 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 0)
_MP3_V2 = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 0)


def _mp3_bitrate(head: bytes) -> int:
    at = 0
    if head[:3] == b"ID3" and len(head) >= 10:
        tag = head[6:10]
        at = 10 + ((tag[0] << 21) | (tag[1] << 14) | (tag[2] << 7) | tag[3])
    while at + 4 <= len(head):
        if head[at] == 0xFF and head[at + 1] & 0xE0 == 0xE0:
            version, layer = (head[at + 1] >> 3) & 3, (head[at + 1] >> 1) & 3
            if layer == 1:  # Layer III
                table = _MP3_V1 if version == 3 else _MP3_V2
                return table[head[at + 2] >> 4] * 1000
        at += 1
        if at > 4096:
            break
    return 0


def mp4_seconds(head: bytes) -> float | None:
    """An MP4 / QuickTime clip's duration from its ``mvhd`` box, when the file starts with its
    index (``moov`` first, as files prepared for streaming do); None otherwise."""
    at = head.find(b"mvhd")
    if at < 4 or at + 32 > len(head):
        return None
    box = head[at + 4 :]
    try:
        if box[0] == 1:  # version 1: 64-bit times
            timescale, duration = struct.unpack(">IQ", box[20:32])
        else:
            timescale, duration = struct.unpack(">II", box[12:20])
    except struct.error:
        return None
    return duration / timescale if timescale and duration < 2**40 else None


# -- documents ------------------------------------------------------------------------------------
_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


def pdf_pages(data: Any) -> int | None:
    """A PDF's page count: its page objects, counted in the first MiB (extrapolated beyond),
    or its size at a typical 50 KB a page when they sit in compressed object streams. None
    when it is not an inline PDF."""
    size = decoded_size(data)
    body = media_bytes(data, _PDF_SCAN)
    if body is None or not body.startswith(b"%PDF"):
        return None
    pages = len(_PAGE.findall(body))
    if pages and size > len(body):
        pages = round(pages * size / len(body))
    return pages or max(1, round(size / _PDF_PAGE_BYTES))
