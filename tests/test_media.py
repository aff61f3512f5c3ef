"""Estimates of what a request's media costs: images by their dimensions under each provider's
documented rule, audio by its duration, PDFs by their pages (tokenmeter._media reads the headers;
tokenmeter._estimate applies the rules). Media are built byte by byte here: real headers."""

from __future__ import annotations

import base64
import struct
from decimal import Decimal
from typing import Any

import pytest
from helpers import png

import tokenmeter
from tokenmeter._estimate import count_tokens, estimate_input
from tokenmeter._media import audio_seconds, image_size, media_bytes, pdf_pages


def jpeg(width: int, height: int, exif: int = 0) -> bytes:
    app1 = b"\xff\xe1" + struct.pack(">H", exif + 2) + b"\0" * exif if exif else b""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app1 + sof + b"\xff\xd9"


def wav(seconds: float, rate: int = 16_000, channels: int = 1, bits: int = 16) -> bytes:
    byte_rate = rate * channels * bits // 8
    data = b"\0" * int(seconds * byte_rate)
    fmt = struct.pack("<HHIIHH", 1, channels, rate, byte_rate, channels * bits // 8, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data))
    return b"RIFF" + struct.pack("<I", len(body) + len(data)) + body + data


def mp3(seconds: float) -> bytes:
    """MPEG-1 Layer III frames at 128 kbit/s (frame header 0xFFFB90)."""
    return (b"\xff\xfb\x90\x64" + b"\0" * 413) * int(seconds * 128_000 / 8 / 417)


def pdf(pages: int) -> bytes:
    objects = b"".join(
        b"%d 0 obj << /Type /Page /Parent 2 0 R >> endobj\n" % (i + 3) for i in range(pages)
    )
    tree = b"2 0 obj << /Type /Pages /Count %d >> endobj\n" % pages
    return b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n" + tree + objects + b"%%EOF"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{b64(data)}"


# -- headers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (png(2048, 4096), (2048, 4096)),
        (jpeg(640, 480), (640, 480)),
        (jpeg(1200, 900, exif=30_000), (1200, 900)),  # the frame header after a 30 KB EXIF block
        (b"GIF89a" + struct.pack("<HH", 320, 200) + b"\0" * 10, (320, 200)),
        (
            b"RIFF\0\0\0\0WEBPVP8X"
            + b"\0" * 8
            + (799).to_bytes(3, "little")
            + (599).to_bytes(3, "little"),
            (800, 600),
        ),
    ],
    ids=["png", "jpeg", "jpeg-exif", "gif", "webp"],
)
def test_image_dimensions_come_from_the_header(data: bytes, size: tuple[int, int]) -> None:
    head = media_bytes(data_url("image/x", data))
    assert head is not None
    assert image_size(head) == size


@pytest.mark.parametrize(
    "data",
    [
        "not base64 at all!",
        "data:image/png,raw",
        "https://x.invalid/a.png",
        "file-abc",
        "",
        7,
        None,
    ],
)
def test_what_is_not_inline_media_is_no_media(data: Any) -> None:
    head = media_bytes(data)
    assert head is None or image_size(head) is None


def test_audio_duration_from_wav_and_mp3_headers() -> None:
    clip = wav(10)
    assert audio_seconds(clip[:4096], len(clip), "wav") == pytest.approx(10)
    stereo = wav(2.5, rate=44_100, channels=2)
    assert audio_seconds(stereo[:4096], len(stereo), None) == pytest.approx(2.5)
    song = mp3(30)
    assert audio_seconds(song[:4096], len(song), "mp3") == pytest.approx(30, rel=0.01)
    # An unknown format: its size at 128 kbit/s.
    assert audio_seconds(b"OggS" + b"\0" * 100, 160_000, "ogg") == pytest.approx(10)


def test_pdf_pages_are_counted_not_its_pages_tree() -> None:
    assert pdf_pages(b64(pdf(3))) == 3
    assert pdf_pages(data_url("application/pdf", pdf(12))) == 12
    assert pdf_pages(b64(b"%PDF-1.7\n" + b"x" * 150_000)) == 3  # compressed: 50 KB a page
    assert pdf_pages(b64(b"not a pdf")) is None
    assert pdf_pages("file-abc") is None


# -- each provider's rule, through estimate_input -------------------------------------------


def openai_extra(model: str, part: dict[str, Any]) -> int:
    """The tokens one content part adds to an OpenAI chat request."""
    text = {"type": "text", "text": "What is this?"}

    def tokens(parts: list[Any]) -> int:
        request = {"model": model, "messages": [{"role": "user", "content": parts}]}
        return estimate_input("openai", request).input_tokens

    return tokens([text, part]) - tokens([text])


def image_part(data: bytes, detail: str | None = None) -> dict[str, Any]:
    url: dict[str, Any] = {"url": data_url("image/png", data)}
    if detail:
        url["detail"] = detail
    return {"type": "image_url", "image_url": url}


@pytest.mark.parametrize(
    ("model", "size", "detail", "tokens"),
    [
        ("gpt-4o", (1024, 1024), None, 765),  # OpenAI's worked examples
        ("gpt-4o", (2048, 4096), "high", 1105),
        ("gpt-4o", (4096, 8192), "low", 85),
        ("gpt-4o", (512, 512), None, 255),
        ("gpt-4o-mini", (1024, 1024), None, 2833 + 4 * 5667),
        ("gpt-4.1-mini", (1024, 1024), None, round(1024 * 1.62)),  # 32 px patches
        ("gpt-4.1-nano", (1800, 2400), None, round(1452 * 2.46)),  # capped at 1,536 patches
    ],
)
def test_openai_images_by_their_dimensions(
    model: str, size: tuple[int, int], detail: str | None, tokens: int
) -> None:
    assert openai_extra(model, image_part(png(*size), detail)) == tokens


def test_responses_input_image_and_unknown_images_at_a_typical_rate() -> None:
    request = {
        "model": "gpt-4o",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": data_url("image/png", png(2048, 4096))},
                    {"type": "input_image", "file_id": "file-123"},  # no dimensions: 1024 x 1024
                ],
            }
        ],
    }
    found = estimate_input("openai", request, "responses")
    assert found.modalities["input_image"] == 1105 + 765


def test_a_computer_use_screenshot_is_an_image() -> None:
    """A Responses computer_call_output carries the screenshot the model looks at next; it was
    counted as nothing (its image_url skipped as media, its type not known as an image)."""
    screenshot = data_url("image/png", png(1024, 768))
    request = {
        "model": "computer-use-preview",
        "input": [
            {"role": "user", "content": "Open the browser."},
            {"type": "computer_call", "call_id": "c1", "action": {"type": "screenshot"}},
            {
                "type": "computer_call_output",
                "call_id": "c1",
                "output": {"type": "computer_screenshot", "image_url": screenshot},
            },
        ],
    }
    found = estimate_input("openai", request, "responses")
    assert found.modalities["input_image"] == 65 + 4 * 129  # 1024 x 768: 4 tiles


def test_claude_images_by_their_dimensions() -> None:
    def part(data: bytes) -> dict[str, Any]:
        source = {"type": "base64", "media_type": "image/jpeg", "data": b64(data)}
        return {"type": "image", "source": source}

    def image_tokens(*parts: dict[str, Any]) -> int:
        request = {
            "model": "claude-sonnet-4-5",
            "messages": [{"role": "user", "content": list(parts)}],
        }
        return estimate_input("anthropic", request).modalities["input_image"]

    assert image_tokens(part(jpeg(1092, 1092))) == 1590  # 1092 x 1092 / 750
    assert image_tokens(part(jpeg(200, 200))) == 54
    assert image_tokens(part(jpeg(4000, 3000))) == 1600  # scaled to about 1.2 megapixels
    url = {"type": "image", "source": {"type": "url", "url": "https://x.invalid/a.jpg"}}
    assert image_tokens(url) == 1500


def test_gemini_images_audio_and_pdfs_from_inline_data() -> None:
    def inline(mime: str, data: Any) -> dict[str, Any]:
        return {"inline_data": {"mime_type": mime, "data": data}}

    parts = [
        {"text": "Describe these."},
        inline("image/png", b64(png(300, 300))),  # within 384 px: 258
        inline("image/png", png(1536, 1000)),  # raw bytes, as the SDK's Part.from_bytes holds them
        inline("audio/wav", b64(wav(10))),
        inline("application/pdf", b64(pdf(4))),
    ]
    found = estimate_input(
        "google", {"model": "gemini-2.5-flash", "contents": [{"role": "user", "parts": parts}]}
    )
    assert found.modalities["input_image"] == 258 + 4 * 258
    assert found.modalities["input_audio"] == 320  # 10 s at 32 tokens a second
    assert found.modalities["input_document"] == 4 * 258
    assert found.input_audio_tokens == 320
    assert found.input_tokens == sum(found.modalities.values())


def test_google_genai_sdk_parts_are_read_too() -> None:
    from google.genai import types

    parts = [
        types.Part.from_bytes(data=wav(5), mime_type="audio/wav"),
        types.Part(text="Transcribe."),
    ]
    found = estimate_input(
        "google",
        {"model": "gemini-2.5-flash", "contents": [types.Content(role="user", parts=parts)]},
    )
    assert found.modalities["input_audio"] == 160


def test_openai_input_audio_and_files() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": b64(wav(12)), "format": "wav"}}
    assert openai_extra("gpt-4o-audio-preview", audio) == 120  # 10 tokens a second
    document = {
        "type": "file",
        "file": {"filename": "a.pdf", "file_data": data_url("application/pdf", pdf(2))},
    }
    assert openai_extra("gpt-4o", document) == 1500
    by_id = {"type": "file", "file": {"file_id": "file-abc"}}
    assert openai_extra("gpt-4o", by_id) == 750  # unknown: one page at least


def test_openai_text_files_are_counted_as_their_text() -> None:
    """A code or CSV file sent inline is passed on as its text: it was counted as one PDF
    page (750 tokens), whatever its size; a binary document (docx) still is."""
    source = ("def add(a, b):\n    return a + b  # été\n\n" * 800).encode()  # ~30 kB
    for mime, kind in [("text/x-python", "file"), ("application/octet-stream", "input_file")]:
        file = {"filename": "add.py", "file_data": data_url(mime, source)}
        part = {"type": "file", "file": file} if kind == "file" else {"type": kind, **file}
        tokens = openai_extra("gpt-4o", part)
        text = openai_extra("gpt-4o", {"type": "text", "text": source.decode()})
        assert abs(tokens - text) <= 0.02 * text, (tokens, text)
        assert tokens > 5_000
    zipped = {"type": "file", "file": {"file_data": data_url("application/zip", b"PK\3\4" * 9)}}
    assert openai_extra("gpt-4o", zipped) == 750


def test_claude_documents() -> None:
    def tokens(source: dict[str, Any]) -> int:
        content = [{"type": "document", "source": source}, {"type": "text", "text": "Summarise."}]
        request = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": content}]}
        return estimate_input("anthropic", request).input_tokens

    pages = tokens({"type": "base64", "media_type": "application/pdf", "data": b64(pdf(3))})
    plain = tokens(
        {"type": "text", "media_type": "text/plain", "data": "The grass is green. " * 50}
    )
    assert pages - tokens({"type": "url", "url": "https://x.invalid/a.pdf"}) == 2 * 2250
    assert 200 < plain < 400  # its text, counted as text


def test_broken_media_never_raise_and_count_a_typical_figure() -> None:
    parts = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!!"}},
        {"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}},
        {
            "type": "input_audio",
            "input_audio": {"data": b64(b"RIFF\0\0\0\0WAVEdata\xff\xff\xff\xff")},
        },
        {"type": "file", "file": {"file_data": 12}},
    ]
    request = {"model": "gpt-4o", "messages": [{"role": "user", "content": parts}]}
    found = estimate_input("openai", request)
    assert found.modalities["input_image"] == 765
    assert found.modalities["input_document"] == 750


def test_public_estimate_prices_audio_as_audio() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": b64(wav(60)), "format": "wav"}}
    usage = tokenmeter.estimate(
        "gpt-4o-audio-preview", messages=[{"role": "user", "content": [audio]}]
    )
    assert usage.modalities["input_audio"] == 600
    assert usage.input_audio_tokens == 600
    cost = tokenmeter.price("openai", "gpt-4o-audio-preview", usage)
    assert cost.total_usd is not None
    assert cost.breakdown is not None and cost.breakdown["input_audio"] == Decimal(
        "0.024"
    )  # $40 / M


def mp4(seconds: float, index_first: bool) -> bytes:
    """An MP4 with an ``mvhd`` box (timescale 1000) before or after its media data."""
    mvhd = (
        b"mvhd" + b"\0\0\0\0" + struct.pack(">IIII", 0, 0, 1000, int(seconds * 1000)) + b"\0" * 80
    )
    moov = struct.pack(">I", len(mvhd) + 16) + b"moov" + struct.pack(">I", len(mvhd) + 4) + mvhd
    mdat = struct.pack(">I", 200_008) + b"mdat" + b"\0" * 200_000
    ftyp = b"\0\0\0\x1cftypmp42\0\0\0\x01isommp41mp42"
    return ftyp + (moov + mdat if index_first else mdat + moov)


@pytest.mark.parametrize("index_first", [True, False], ids=["moov-first", "moov-last"])
def test_gemini_video_counts_263_tokens_a_second_of_its_index_duration(index_first: bool) -> None:
    clip = mp4(7.6, index_first)
    # Gemini's JSON carries bytes as URL-safe base64.
    data = base64.urlsafe_b64encode(clip).decode().rstrip("=")
    part = {"inlineData": {"mimeType": "video/mp4", "data": data}}
    found = estimate_input("google", {"model": "gemini-2.5-flash", "contents": [{"parts": [part]}]})
    assert found.modalities["input_video"] == 7 * 263  # sampled at one frame a second


@pytest.mark.parametrize("encode", [bytes, b64], ids=["bytes", "base64"])
def test_a_long_inline_text_file_counts_all_of_its_text(encode: Any) -> None:
    """A text file sent inline (a CSV, a log, Part.from_bytes(mime_type="text/plain")) is read
    as text: only its first 64 KB were counted, so a 1 MB file estimated at 6% of its tokens."""
    text = "".join(f"row {n}, the quick brown fox, {n * 7919 % 1000}\n" for n in range(25_000))
    part = {"inline_data": {"mime_type": "text/csv", "data": encode(text.encode())}}
    found = estimate_input("google", {"model": "gemini-2.5-flash", "contents": [{"parts": [part]}]})
    lines = text.splitlines(keepends=True)
    exact = sum(  # counted a thousand lines at a time: the tokenizer refuses a text this long
        count_tokens("".join(lines[at : at + 1_000]), "google") for at in range(0, 25_000, 1_000)
    )
    assert abs(found.input_tokens / exact - 1) < 0.05
