"""The provider registry: the one table every other part reads provider identity from."""

from __future__ import annotations

import importlib
from decimal import Decimal
from typing import Any

import pytest

import tokenmeter
from tokenmeter import _registry
from tokenmeter.pricing._names import normalise_provider
from tokenmeter.providers import PROVIDERS
from tokenmeter.providers._core import Adapter
from tokenmeter.sinks import InMemorySink
from tokenmeter.usage import extract

CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "llama-3.3-70b-versatile",
    "choices": [],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
}


@pytest.mark.parametrize(
    ("host", "provider"),
    [
        ("api.openai.com", "openai"),
        ("api.groq.com", "groq"),
        ("eu.api.groq.com", "groq"),  # a subdomain of a known host
        ("openrouter.ai", "openrouter"),
        ("api.x.ai", "x-ai"),
        ("generativelanguage.googleapis.com", "google"),
        ("api.anthropic.com", "anthropic"),  # Anthropic's OpenAI-compatible endpoint
        ("my-resource.openai.azure.com", "azure"),
        ("llm.internal.example", "openai"),  # unknown: priced as OpenAI
        ("api.groq.com.", "groq"),  # a fully qualified name: the same host
        ("my-resource.openai.azure.com.", "azure"),
        ("API.X.AI", "x-ai"),
        ("api.groq.com.evil.example", "openai"),  # a known host's name inside another's
        ("evilapi.groq.com", "openai"),
        ("bedrock-mantle.us-east-1.api.aws", "aws"),  # Bedrock's OpenAI-compatible endpoints
        ("bedrock-runtime.eu-west-1.amazonaws.com", "aws"),
        ("bedrock-runtime-fips.us-east-1.amazonaws.com", "aws"),
        ("us-central1-aiplatform.googleapis.com", "google"),  # Vertex AI: regional, global
        ("aiplatform.googleapis.com", "google"),
        ("s3.us-east-1.amazonaws.com", "openai"),  # AWS hosts that are not Bedrock's
        ("bedrock-mantle.api.aws", "openai"),
        ("bedrock-mantle.us-east-1.api.aws.evil.example", "openai"),
    ],
)
def test_the_openai_adapter_names_providers_by_host(host: str, provider: str) -> None:
    assert _registry.provider_for_host(host) == provider


def _provider_of_a_call(sink: InMemorySink, base_url: str) -> str:
    """The provider a chat call through the real OpenAI SDK at ``base_url`` is recorded under."""
    import httpx2
    import openai

    def reply(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=CHAT)

    client = openai.OpenAI(
        api_key="sk-test",
        base_url=base_url,
        http_client=httpx2.Client(transport=httpx2.MockTransport(reply)),
    )
    tokenmeter.wrap(client)
    client.chat.completions.create(model="llama-3.3-70b-versatile", messages=[])
    tokenmeter.flush()
    (record,) = sink.records
    return record.model_provider


@pytest.mark.parametrize(
    ("base_url", "provider"),
    [
        ("https://api.groq.com./openai/v1", "groq"),
        ("https://my-resource.openai.azure.com./openai/v1/", "azure"),
        ("https://API.DEEPSEEK.COM:443", "deepseek"),
    ],
)
def test_a_call_through_a_host_spelled_another_way_names_its_provider(
    sink: InMemorySink, base_url: str, provider: str
) -> None:
    """A trailing dot (a fully qualified name, as DNS and TLS take it), a port or capitals reach
    the same server: the call is that provider's, not OpenAI's (the default for unknown hosts)."""
    assert _provider_of_a_call(sink, base_url) == provider


LOCAL_CHAT = {
    **CHAT,
    "model": "deepseek-r1:8b",
    "usage": {"prompt_tokens": 200_000, "completion_tokens": 800_000, "total_tokens": 1_000_000},
}


@pytest.mark.parametrize("base_url", ["http://localhost:11434/v1", "http://ollama:11434/v1"])
def test_a_self_hosted_model_is_never_priced_from_a_hosted_providers_table(
    sink: InMemorySink, base_url: str
) -> None:
    """Ollama's deepseek-r1:8b (a distill run on your machine) was recorded under openai at
    DeepSeek's hosted deepseek-reasoner price, $0.467, and so was its reply given to
    ``record_response(provider="ollama")``. A server on Ollama's port is Ollama's; what a
    self-hosted provider serves is priced by your prices alone, else null (one warning)."""
    import httpx2
    import openai

    client = openai.OpenAI(
        api_key="ollama",
        base_url=base_url,
        http_client=httpx2.Client(
            transport=httpx2.MockTransport(lambda request: httpx2.Response(200, json=LOCAL_CHAT))
        ),
    )
    tokenmeter.wrap(client)
    client.chat.completions.create(model="deepseek-r1:8b", messages=[])
    for provider in ("ollama", "vllm"):
        tokenmeter.record_response(LOCAL_CHAT, provider=provider)
    tokenmeter.flush()
    assert [(r.model_provider, r.estimated_cost_usd) for r in sink.records] == [
        ("ollama", None),
        ("ollama", None),
        ("vllm", None),
    ]
    tokenmeter.configure(prices={"deepseek-r1:8b": {"input_per_mtok": 0, "output_per_mtok": 0}})
    usage = {"input_tokens": 1, "output_tokens": 1}
    assert tokenmeter.price("ollama", "deepseek-r1:8b", usage).total_usd == 0  # yours apply
    # Your alias names the model to price it as (what the call would cost on a hosted API).
    tokenmeter.configure(aliases={"llama3.1:8b": "gpt-4o-mini"})
    assert tokenmeter.price("ollama", "llama3.1:8b", usage) == tokenmeter.price(
        "openai", "gpt-4o-mini", usage
    )
    assert _registry.provider_for_host("api.groq.com", port=11434) == "groq"  # a host first


def test_together_on_either_of_its_api_hosts_is_together(sink: InMemorySink) -> None:
    """Together AI serves its API on api.together.ai as well as api.together.xyz (both in use):
    a call to the first was OpenAI's, and its Llama models had no price."""
    assert _provider_of_a_call(sink, "https://api.together.ai/v1") == "together"
    cost = tokenmeter.price(
        "together",
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        {"input_tokens": 1_000_000, "output_tokens": 1_000_000},
    )
    assert cost.total_usd == Decimal("1.76")


def _the_openai_sdks_provider_call(sink: InMemorySink, provider: Any, model: str) -> Any:
    """The record of a chat call (1M tokens in, 1M out) through ``OpenAI(provider=provider)``."""
    import httpx2
    import openai

    def reply(request: httpx2.Request) -> httpx2.Response:
        usage = {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000}
        return httpx2.Response(200, json={**CHAT, "model": model, "usage": usage})

    client = openai.OpenAI(
        provider=provider, http_client=httpx2.Client(transport=httpx2.MockTransport(reply))
    )
    tokenmeter.wrap(client)
    client.chat.completions.create(model=model, messages=[])
    tokenmeter.flush()
    (record,) = sink.records
    return record


@pytest.mark.parametrize("endpoint", ["mantle", "runtime"])
def test_the_openai_sdks_bedrock_provider_is_aws(sink: InMemorySink, endpoint: str) -> None:
    """``OpenAI(provider=openai.providers.bedrock(...))`` (openai 3.x) calls Bedrock's
    OpenAI-compatible endpoint: it was recorded under openai, where Bedrock's model ids have no
    price (cost null, where ``price("aws", ...)`` says $0.75)."""
    providers = pytest.importorskip("openai.providers")
    bedrock = providers.bedrock(endpoint=endpoint, region="us-east-1", api_key="k")
    record = _the_openai_sdks_provider_call(sink, bedrock, "openai.gpt-oss-120b-1:0")
    assert record.model_provider == "aws"
    assert record.estimated_cost_usd == Decimal("0.75")


@pytest.mark.parametrize(
    ("model", "expected"), [("openai.gpt-oss-120b", "0.75"), ("openai.gpt-oss-20b", "0.37")]
)
def test_a_bedrock_id_without_its_version_is_priced_from_bedrocks_table(
    sink: InMemorySink, model: str, expected: str
) -> None:
    """The Mantle endpoint names gpt-oss ``openai.gpt-oss-120b`` (no ``-1:0``, as gateways
    built on it document): it was priced from OpenAI's own gpt-oss entry ($0.219 for 1M in and
    1M out, where Bedrock bills $0.15 / $0.60 a million: $0.75)."""
    providers = pytest.importorskip("openai.providers")
    bedrock = providers.bedrock(endpoint="mantle", region="us-east-1", api_key="k")
    record = _the_openai_sdks_provider_call(sink, bedrock, model)
    assert (record.model_provider, record.estimated_cost_usd) == ("aws", Decimal(expected))
    usage = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
    assert tokenmeter.price("aws", model, usage).total_usd == Decimal(expected)


def test_the_openai_sdks_vertex_provider_is_google(sink: InMemorySink) -> None:
    """``OpenAI(provider=openai.providers.vertex(...))`` calls Vertex AI: its Gemini calls were
    priced right but recorded under openai, so a ``google`` budget or report missed them."""
    providers = pytest.importorskip("openai.providers")
    vertex = providers.vertex(project="p", location="us-central1", token_provider=lambda: "t")
    record = _the_openai_sdks_provider_call(sink, vertex, "google/gemini-2.5-flash")
    assert record.model_provider == "google"
    assert record.estimated_cost_usd == Decimal("2.8")


@pytest.mark.parametrize(
    "base_url",
    [
        "https://my-resource.cognitiveservices.azure.com/openai/v1/",
        "https://my-foundry.services.ai.azure.com/openai/v1/",
    ],
)
def test_azure_openai_through_the_plain_openai_client_is_azure(
    sink: InMemorySink, base_url: str
) -> None:
    """Azure OpenAI's v1 API on an Azure AI services or an Azure AI Foundry resource (the
    endpoints the Azure portal shows for them), called with ``openai.OpenAI(base_url=...)``."""
    assert _provider_of_a_call(sink, base_url) == "azure"


def _company_client(base: str, reply: Any) -> Any:
    """An application's subclass of the openai SDK's ``base`` client, named as an application
    might ("AzureGateway" for a plain OpenAI client in front of a proxy)."""
    import httpx2
    import openai

    http_client = httpx2.Client(transport=httpx2.MockTransport(reply))
    if base == "AzureOpenAI":
        company = type("CompanyLLM", (openai.AzureOpenAI,), {})
        return company(
            api_key="k",
            api_version="2024-10-21",
            azure_endpoint="https://contoso-apim.azure-api.net",
            http_client=http_client,
        )
    gateway = type("AzureGateway", (openai.OpenAI,), {})
    return gateway(api_key="k", base_url="https://llm-proxy.internal/v1", http_client=http_client)


@pytest.mark.parametrize(("base", "provider"), [("AzureOpenAI", "azure"), ("OpenAI", "openai")])
def test_an_azure_client_is_known_by_its_class_hierarchy_not_its_name(
    sink: InMemorySink, base: str, provider: str
) -> None:
    """A subclass of ``openai.AzureOpenAI`` on an Azure API Management gateway (no
    ``*.azure.com`` host) was recorded under openai (Phi-4, priced in Azure's table only: cost
    null, $0.000375 per 1,000 in and 500 out through AzureOpenAI itself), and a plain OpenAI
    client whose class name holds "Azure" was recorded under azure, whatever its host."""
    import httpx2

    def reply(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={**CHAT, "model": "Phi-4"})

    client = _company_client(base, reply)
    tokenmeter.wrap(client)
    client.chat.completions.create(model="Phi-4", messages=[])
    tokenmeter.flush()
    (record,) = sink.records
    assert record.model_provider == provider
    assert (record.estimated_cost_usd is not None) is (provider == "azure")


def test_aliases_resolve_the_same_everywhere() -> None:
    """Pricing, usage reading and instrument() all take a provider's aliases from the registry."""
    for entry in _registry.PROVIDERS:
        for alias in (entry.id, *entry.aliases):
            assert normalise_provider(alias.upper()) == (entry.price_id or entry.id)
            assert _registry.canonical(alias) == entry.id
            assert _registry.family_of(alias) == entry.family
    found = extract(CHAT, "xai")
    assert found is not None and found.provider == "x-ai" and found.usage.input_tokens == 12
    with pytest.raises(ValueError, match="unknown provider"):
        extract(CHAT, "aws")  # known, but its responses are not read in one shape


def test_a_new_openai_compatible_provider_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _registry.Provider("newcloud", "openai", aliases=("nc",), hosts=("api.newcloud.ai",))
    monkeypatch.setattr(_registry, "PROVIDERS", (*_registry.PROVIDERS, entry))
    try:
        _registry._index()
        assert _registry.provider_for_host("api.newcloud.ai") == "newcloud"
        assert normalise_provider("NC") == "newcloud"
        found = extract(CHAT, "nc")
        assert found is not None and found.provider == "newcloud"
    finally:
        monkeypatch.undo()
        _registry._index()
    assert _registry.provider_for_host("api.newcloud.ai") == "openai"


def test_every_integration_is_an_adapter_module_the_one_loop_runs() -> None:
    assert list(PROVIDERS) == _registry.integration_names()
    for integration in _registry.INTEGRATIONS:
        module = importlib.import_module(integration.adapter_module)
        assert callable(module.patch_targets) and callable(module.wrap_instance)
        assert hasattr(module.ADAPTER, "active")
    from tokenmeter.providers import anthropic, google_genai, google_generativeai, openai

    adapters: list[Adapter] = [openai.ADAPTER, anthropic.ADAPTER]
    adapters += [method for *_, method in google_genai._METHODS]
    adapters.append(google_generativeai._CLASS_ADAPTER)
    for adapter in adapters:
        assert isinstance(adapter.name, str) and adapter.name
        assert callable(adapter.plan) and callable(adapter.deliver)
        assert adapter.active in (True, False)


def test_instrument_takes_integration_aliases() -> None:
    with pytest.raises(ValueError, match="unknown provider 'nope'"):
        tokenmeter.instrument("nope")
    assert _registry.integration("google-legacy") is _registry.integration("google-generativeai")
    # A provider's name means every SDK recorded under it: "google" left google-generativeai
    # unmetered, silently.
    both = ["google-genai", "google-generativeai"]
    for name in ("google", "gemini", "Vertex", "google-vertex"):
        assert [i.name for i in _registry.integrations_named(name)] == both
    assert [i.name for i in _registry.integrations_named("google-genai")] == both[:1]
    assert [i.name for i in _registry.integrations_named("google-legacy")] == both[1:]
    assert _registry.integrations_named("azure") == []  # recorded by the openai integration
    tokenmeter.uninstrument()
    assert tokenmeter.instrument("google").providers == both
    tokenmeter.uninstrument(["gemini", "google-genai"])
    assert tokenmeter.instrument(["gemini", "google-genai"]).providers == both
    tokenmeter.uninstrument()
    assert [i.name for i in _registry.integrations_for_module("google")] == [
        "google-genai",
        "google-generativeai",
    ]


@pytest.mark.parametrize(
    "providers", [5, 1.5, object(), {"openai": 1}], ids=["int", "float", "object", "dict"]
)
def test_instrument_with_providers_of_the_wrong_type_names_the_argument(providers: Any) -> None:
    """A ValueError naming ``providers``, like every other bad argument, not a TypeError from
    iterating it; a dict (whose keys would be iterated) is refused too."""
    with pytest.raises(ValueError, match="providers must be"):
        tokenmeter.instrument(providers)
    with pytest.raises(ValueError, match="providers must be"):
        tokenmeter.uninstrument(providers)
