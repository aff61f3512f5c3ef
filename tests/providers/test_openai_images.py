"""OpenAI Images API (GPT Image models) through the real SDK: ``images.generate`` / ``edit``
answer with ``usage`` (input split into text and image tokens; the output is image tokens), each
priced at its own rate. Replies are shaped like the documented ``ImagesResponse`` and stream
events (MockTransport). Expected figures are list prices worked by hand (USD per million tokens):
gpt-image-1 text in $5, image in $10, image out $40; gpt-image-1.5 text out $10, image out $32.
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

import pytest
from provider_helpers import Records, json_reply, only, sse_reply

import tokenmeter

pytestmark = pytest.mark.usefixtures("instrumented")

PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()


def images_body(usage: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "created": 1_745_000_000,
        "data": [{"b64_json": PIXEL}],
        "background": "opaque",
        "output_format": "png",
        "quality": "high",
        "size": "1024x1024",
        **extra,
    }
    if usage is not None:
        body["usage"] = usage
    return body


#: A 1024x1024 high-quality image (4,160 output tokens) from a 50-token prompt.
GENERATED = {
    "input_tokens": 50,
    "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
    "output_tokens": 4160,
    "total_tokens": 4210,
}
#: An edit: the prompt (40 text tokens) and one input image (388 image tokens), 1,056 out.
EDITED = {
    "input_tokens": 428,
    "input_tokens_details": {"text_tokens": 40, "image_tokens": 388},
    "output_tokens": 1056,
    "total_tokens": 1484,
}


async def test_generate_prices_image_output_tokens(
    kit: Any, records: Records, is_async: bool
) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: Any) -> Any:
        seen.append(json.loads(request.content))
        return json_reply(kit.http, images_body(GENERATED))

    client = kit.mock_openai(handler, is_async=is_async)
    response = await kit.maybe(client.images.generate(model="gpt-image-1", prompt="a red fox"))

    assert response.data[0].b64_json == PIXEL
    assert seen[0]["model"] == "gpt-image-1"
    record = only(records())
    assert (record.model_name, record.operation) == ("gpt-image-1", "images")
    assert (record.input_tokens, record.output_tokens) == (50, 4160)
    assert record.modalities == {"input_text": 50, "output_image": 4160}
    b = record.cost_breakdown
    assert b is not None
    assert b["input"] == Decimal("0.00025")  # 50 x $5 / M
    assert b["output_image"] == Decimal("0.1664")  # 4,160 x $40 / M
    assert record.estimated_cost_usd == Decimal("0.16665")
    assert record.estimated is False


async def test_edit_prices_input_image_tokens_at_the_image_rate(
    kit: Any, records: Records, is_async: bool
) -> None:
    client = kit.mock_openai(
        lambda request: json_reply(kit.http, images_body(EDITED)), is_async=is_async
    )
    await kit.maybe(
        client.images.edit(
            model="gpt-image-1",
            image=("fox.png", b"\x89PNG\r\n\x1a\n", "image/png"),
            prompt="make it blue",
        )
    )
    record = only(records())
    assert record.modalities == {"input_text": 40, "input_image": 388, "output_image": 1056}
    b = record.cost_breakdown
    assert b is not None
    assert b["input"] == Decimal("0.0002")  # 40 x $5 / M
    assert b["input_image"] == Decimal("0.00388")  # 388 x $10 / M
    assert b["output_image"] == Decimal("0.04224")  # 1,056 x $40 / M
    assert record.estimated_cost_usd == Decimal("0.04632")


def test_output_details_split_text_from_image(kit: Any, records: Records) -> None:
    """A model that reports ``output_tokens_details``: text out at $10, image out at $32."""
    usage = {
        **GENERATED,
        "output_tokens": 4260,
        "total_tokens": 4310,
        "output_tokens_details": {"image_tokens": 4160, "text_tokens": 100},
    }
    client = kit.mock_openai(lambda request: json_reply(kit.http, images_body(usage)))
    client.images.generate(model="gpt-image-1.5", prompt="a red fox")

    record = only(records())
    assert record.modalities == {"input_text": 50, "output_text": 100, "output_image": 4160}
    b = record.cost_breakdown
    assert b is not None
    assert (b["output"], b["output_image"]) == (Decimal("0.001"), Decimal("0.13312"))


def test_dall_e_without_token_usage_is_not_recorded_as_zero(kit: Any, records: Records) -> None:
    """DALL-E answers carry no usage (billed per image, a price no table here has): no record
    rather than a zero-token, zero-dollar one."""
    client = kit.mock_openai(lambda request: json_reply(kit.http, images_body(None)))
    client.images.generate(model="dall-e-3", prompt="a red fox")
    assert records() == []


@pytest.mark.requires(openai=">=2.0")  # streamed image generation (stream=True, partial_images)
async def test_streamed_generation_reads_the_completed_event(
    kit: Any, records: Records, is_async: bool
) -> None:
    partial = {
        "type": "image_generation.partial_image",
        "b64_json": PIXEL,
        "background": "opaque",
        "created_at": 1_745_000_000,
        "output_format": "png",
        "partial_image_index": 0,
        "quality": "high",
        "size": "1024x1024",
    }
    completed = {
        **partial,
        "type": "image_generation.completed",
        "usage": GENERATED,
    }
    del completed["partial_image_index"]
    events = [(partial["type"], partial), (completed["type"], completed)]
    client = kit.mock_openai(lambda request: sse_reply(kit.http, events), is_async=is_async)

    stream = await kit.maybe(
        client.images.generate(model="gpt-image-1", prompt="a fox", stream=True, partial_images=1)
    )
    kinds = [event.type for event in await kit.drain(stream)]

    assert kinds == ["image_generation.partial_image", "image_generation.completed"]
    record = only(records())
    assert record.streamed is True
    assert record.modalities == {"input_text": 50, "output_image": 4160}
    assert record.estimated_cost_usd == Decimal("0.16665")


def test_record_response_reads_an_images_response(records: Records) -> None:
    rec = tokenmeter.record_response(images_body(EDITED), model="gpt-image-1")
    assert (rec.model_provider, rec.operation) == ("openai", "images")
    assert rec.estimated_cost_usd == Decimal("0.04632")


def test_svg_authoring_is_a_pass_at_its_own_model(kit: Any, records: Records) -> None:
    """``svg_usage`` is reported apart from the rendering, with its own model: added to the
    totals and priced at that model's rates (gpt-4o: $2.50 in, $10 out)."""
    svg = {
        "input_tokens": 1000,
        "output_tokens": 500,
        "reasoning_tokens": 0,
        "total_tokens": 1500,
        "model": "gpt-4o",
    }
    body = images_body(GENERATED, svg_usage=svg)
    rec = tokenmeter.record_response(body, model="gpt-image-1")
    assert (rec.input_tokens, rec.output_tokens) == (1050, 4660)
    assert rec.cost_breakdown is not None
    assert rec.cost_breakdown["svg_authoring"] == Decimal("0.0075")
    assert rec.estimated_cost_usd == Decimal("0.17415")


# -- the Responses image_generation tool: billed apart, at the image model's rates ----------------


def responses_body(tools: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "resp_img",
        "object": "response",
        "created_at": 1_745_000_000,
        "status": "completed",
        "model": "gpt-4.1-2025-04-14",
        "output": [
            {"id": "ig_1", "type": "image_generation_call", "status": "completed", "result": PIXEL}
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": tools,
        "usage": {
            "input_tokens": 100,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 50,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 150,
        },
        "tool_usage": {"image_gen": GENERATED, "web_search": {"num_requests": 0}},
    }


async def test_responses_image_generation_is_a_pass_at_the_image_model(
    kit: Any, records: Records, is_async: bool
) -> None:
    echoed = [{"type": "image_generation", "model": "gpt-image-1", "quality": "high"}]
    client = kit.mock_openai(
        lambda request: json_reply(kit.http, responses_body(echoed)), is_async=is_async
    )
    await kit.maybe(
        client.responses.create(
            model="gpt-4.1", input="Draw a fox", tools=[{"type": "image_generation"}]
        )
    )
    record = only(records())
    assert (record.input_tokens, record.output_tokens) == (150, 4210)
    b = record.cost_breakdown
    assert b is not None
    # gpt-4.1's own 100 in / 50 out at $2 / $8; the image at gpt-image-1's rates.
    assert (b["input"], b["output"]) == (Decimal("0.0002"), Decimal("0.0004"))
    assert b["image_generation"] == Decimal("0.16665")
    assert record.estimated_cost_usd == Decimal("0.16725")


def test_responses_image_generation_without_a_named_model_is_not_priced_at_the_text_model(
    kit: Any, records: Records
) -> None:
    client = kit.mock_openai(
        lambda request: json_reply(kit.http, responses_body([{"type": "image_generation"}]))
    )
    client.responses.create(model="gpt-4.1", input="Draw a fox")
    record = only(records())
    assert record.output_tokens == 4210
    assert record.estimated_cost_usd is None  # unknown, never the image priced as text


def test_responses_image_generation_cached_image_tokens_at_the_cached_image_rate(
    kit: Any, records: Records
) -> None:
    """``tool_usage.image_gen`` splits its cached input (``cached_tokens_details``): cached image
    tokens are billed at the cached image rate ($2.50 a million for gpt-image-1), cached text at
    the cached text rate ($1.25). Read as one cached count, all of it was priced at the text
    rate, and the uncached input taken for image tokens first."""
    body = responses_body([{"type": "image_generation", "model": "gpt-image-1"}])
    body["tool_usage"]["image_gen"] = {
        "input_tokens": 1000,
        "input_tokens_details": {"text_tokens": 200, "image_tokens": 800},
        "output_tokens": 4160,
        "total_tokens": 5160,
        "cached_tokens": 600,
        "cached_tokens_details": {"cached_image_tokens": 500, "cached_text_tokens": 100},
    }
    client = kit.mock_openai(lambda request: json_reply(kit.http, body))
    client.responses.create(
        model="gpt-4.1", input="Edit the fox", tools=[{"type": "image_generation"}]
    )
    record = only(records())
    b = record.cost_breakdown
    assert b is not None
    # 100 text at $5, 300 image at $10, 100 cached text at $1.25, 500 cached image at $2.50,
    # 4,160 image out at $40.
    assert b["image_generation"] == Decimal("0.0005") + Decimal("0.003") + Decimal(
        "0.000125"
    ) + Decimal("0.00125") + Decimal("0.1664")
    assert record.estimated_cost_usd == b["image_generation"] + Decimal("0.0006")
