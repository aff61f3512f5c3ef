"""The one place that knows each provider: its id, aliases, hosts, usage family and price id, and
which SDK integrations tokenmeter can patch.

Everything else reads these tables: ``instrument()`` (which SDKs, which adapter), the OpenAI
adapter (which provider a base URL's host belongs to), ``usage.extract`` (which response shape a
provider speaks) and pricing (which genai-prices provider id a name means). A new
OpenAI-compatible host, or a new alias, is one entry here.

This module imports nothing of tokenmeter's, so any module may read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "INTEGRATIONS",
    "PROVIDERS",
    "Integration",
    "Provider",
    "billed",
    "canonical",
    "family_of",
    "gemini_path",
    "integration_names",
    "provider_for_host",
    "provider_of_sdk",
    "short_model",
]


@dataclass(frozen=True, slots=True)
class Provider:
    """A provider as records name it (``UsageRecord.provider``)."""

    id: str
    #: The response shape it answers with: "openai", "anthropic" or "google" (None: not read).
    family: str | None
    #: Other spellings callers, proxies and price tables use for it.
    aliases: tuple[str, ...] = ()
    #: API hosts (an OpenAI client pointed at one of them, or a subdomain, bills this provider).
    #: A ``*`` stands for part of one label: a region or location (``bedrock-mantle.*.api.aws``).
    hosts: tuple[str, ...] = ()
    #: genai-prices' provider id, when it differs from ``id``.
    price_id: str | None = None
    #: False for a server you run yourself (Ollama, vLLM): it bills nothing, so a call is never
    #: priced from a price table (another provider's model of the same name), only by your prices.
    billed: bool = True
    #: A port that names the provider on a host no provider has (Ollama's default, 11434).
    ports: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Integration:
    """An SDK tokenmeter patches (``instrument("name")``)."""

    name: str
    #: The module whose import triggers patching (tokenmeter itself imports no SDK).
    sdk_module: str
    #: Our adapter module: ``ADAPTER``, ``patch_targets()`` and ``wrap_instance()``.
    adapter_module: str
    #: The provider its calls are recorded under (the OpenAI adapter asks ``provider_for_host``).
    provider: str
    aliases: tuple[str, ...] = ()


_OPENAI = "openai"

PROVIDERS: tuple[Provider, ...] = (
    Provider("openai", _OPENAI, hosts=("api.openai.com",)),
    Provider(
        "azure",
        _OPENAI,
        aliases=("azure_openai", "azure-openai"),
        # Azure OpenAI resources, Azure AI services and Azure AI Foundry resources: each serves
        # the OpenAI API (``/openai/v1/``), which the plain OpenAI client calls.
        hosts=("openai.azure.com", "cognitiveservices.azure.com", "services.ai.azure.com"),
    ),
    Provider("anthropic", "anthropic", hosts=("api.anthropic.com",)),
    Provider(
        "google",
        "google",
        aliases=(
            "gemini",
            "vertex",
            "vertex_ai",
            "vertex-ai",
            "google-genai",
            "google-generativeai",
            "google-vertex",
        ),
        # Gemini's OpenAI-compatible endpoint, and Vertex AI's (the openai SDK's
        # ``providers.vertex()``, or ``.../endpoints/openapi`` as a base URL): global and regional.
        hosts=(
            "generativelanguage.googleapis.com",
            "aiplatform.googleapis.com",
            "*-aiplatform.googleapis.com",
        ),
    ),
    Provider(
        "aws",
        None,  # Bedrock answers in several shapes (Converse, InvokeModel, OpenAI's): not one
        aliases=("bedrock", "amazon", "amazon-bedrock", "aws-bedrock"),
        # Bedrock's OpenAI-compatible endpoints (the openai SDK's ``providers.bedrock()``, or a
        # base URL), per region: not every AWS host, which serve other services.
        hosts=(
            "bedrock-mantle.*.api.aws",
            "bedrock-runtime.*.amazonaws.com",
            "bedrock-runtime-fips.*.amazonaws.com",
        ),
    ),
    Provider("groq", _OPENAI, hosts=("api.groq.com",)),
    Provider("deepseek", _OPENAI, hosts=("api.deepseek.com",)),
    Provider("openrouter", _OPENAI, hosts=("openrouter.ai",)),
    Provider("mistral", _OPENAI, aliases=("mistralai",), hosts=("api.mistral.ai",)),
    Provider("x-ai", _OPENAI, aliases=("xai", "grok"), hosts=("api.x.ai",)),
    Provider(
        "together",
        _OPENAI,
        aliases=("together_ai", "togetherai"),
        hosts=("api.together.xyz", "api.together.ai"),
    ),
    Provider(
        "fireworks", _OPENAI, aliases=("fireworks_ai", "fireworks-ai"), hosts=("api.fireworks.ai",)
    ),
    Provider("perplexity", _OPENAI, hosts=("api.perplexity.ai",)),
    Provider("cerebras", _OPENAI, hosts=("api.cerebras.ai",)),
    Provider("ollama", _OPENAI, billed=False, ports=(11434,)),
    Provider("vllm", _OPENAI, billed=False),
)

INTEGRATIONS: tuple[Integration, ...] = (
    Integration("openai", "openai", "tokenmeter.providers.openai", "openai"),
    Integration("anthropic", "anthropic", "tokenmeter.providers.anthropic", "anthropic"),
    Integration(
        "google-genai",
        "google.genai",
        "tokenmeter.providers.google_genai",
        "google",
    ),
    Integration(
        "google-generativeai",
        "google.generativeai",
        "tokenmeter.providers.google_generativeai",
        "google",
        aliases=("google-legacy",),
    ),
)

_BY_NAME: dict[str, Provider] = {}
_BY_HOST: dict[str, str] = {}
_BY_PORT: dict[int, str] = {}
#: Hosts with a ``*`` (a region or location in the name), as patterns.
_HOST_PATTERNS: list[tuple[re.Pattern[str], str]] = []
_INTEGRATION_BY_NAME: dict[str, Integration] = {}


def _index() -> None:
    """Build the lookups from the two tables (at import; again if a test extends a table)."""
    _BY_NAME.clear()
    _BY_HOST.clear()
    _BY_PORT.clear()
    _HOST_PATTERNS.clear()
    _INTEGRATION_BY_NAME.clear()
    for provider in PROVIDERS:
        for name in (provider.id, *provider.aliases):
            _BY_NAME[name] = provider
        for host in provider.hosts:
            if "*" in host:
                _HOST_PATTERNS.append((_host_pattern(host), provider.id))
            else:
                _BY_HOST[host] = provider.id
        for port in provider.ports:
            _BY_PORT[port] = provider.id
    for found in INTEGRATIONS:
        for name in (found.name, *found.aliases):
            _INTEGRATION_BY_NAME[name] = found


def _host_pattern(host: str) -> re.Pattern[str]:
    """A host with ``*`` -> a pattern where each ``*`` is a non-empty part of one label."""
    return re.compile("[^.]+".join(re.escape(part) for part in host.split("*")))


_index()


def canonical(name: str) -> str:
    """A provider name (any case or alias) -> its id; an unknown name is returned lower-cased."""
    key = name.strip().lower()
    found = _BY_NAME.get(key)
    return found.id if found is not None else key


def family_of(name: str) -> str | None:
    """The response shape a provider answers with (None when unknown or not readable)."""
    found = _BY_NAME.get(name.strip().lower())
    return found.family if found is not None else None


def price_id(name: str) -> str:
    """genai-prices' provider id for a provider name."""
    key = name.strip().lower()
    found = _BY_NAME.get(key)
    if found is None:
        return key
    return found.price_id or found.id


def billed(name: str) -> bool:
    """Whether a provider bills its calls (False for a server you run yourself); an unknown
    provider is taken to (a proxy of a billed API)."""
    found = _BY_NAME.get(name.strip().lower())
    return found is None or found.billed


def provider_for_host(host: str, azure_client: bool = False, port: int | None = None) -> str:
    """Which provider an OpenAI client talks to: Azure for an Azure OpenAI client (whatever its
    endpoint: an API Management gateway or a custom domain is no ``*.azure.com`` host), else
    from its base URL's host (default: openai), or on a host no provider has, from its port
    (``localhost:11434``: Ollama's).

    Matched in any case and without a trailing dot: ``api.groq.com.`` (a fully qualified name)
    reaches the same server as ``api.groq.com``."""
    host = host.lower().rstrip(".")
    if azure_client:
        return "azure"
    found = _BY_HOST.get(host)
    if found is not None:
        return found
    found = next((p for known, p in _BY_HOST.items() if host.endswith("." + known)), None)
    if found is not None:
        return found
    found = next((p for pattern, p in _HOST_PATTERNS if pattern.fullmatch(host)), None)
    if found is not None:
        return found
    return _BY_PORT.get(port, "openai") if port is not None else "openai"


def integration_names() -> list[str]:
    """Every SDK integration's name, in patching order."""
    return [i.name for i in INTEGRATIONS]


def instrument_names() -> list[str]:
    """Every name ``instrument()`` takes (``integrations_named``): each SDK's name and aliases,
    then the names and aliases of the providers an SDK is made for ("google", "gemini", ...)."""
    names = [name for found in INTEGRATIONS for name in (found.name, *found.aliases)]
    made_for = {found.provider for found in INTEGRATIONS}
    for provider in PROVIDERS:
        if provider.id in made_for:
            names += [name for name in (provider.id, *provider.aliases) if name not in names]
    return names


def sdk_reaching(name: str) -> str | None:
    """The SDK a provider no SDK is made for is called through (Azure, Groq, ... answer in the
    OpenAI shape, through the openai SDK), by the provider's name or alias; else None."""
    provider = _BY_NAME.get(name.strip().lower())
    if provider is None or provider.family is None or integrations_named(name):
        return None
    return next((i.name for i in INTEGRATIONS if i.provider == provider.family), None)


def integration(name: str) -> Integration | None:
    """An integration by name or alias."""
    return _INTEGRATION_BY_NAME.get(name)


def integrations_named(name: str) -> list[Integration]:
    """The integrations a name given to ``instrument()`` means: an integration by its name; a
    provider's name or alias, every SDK recorded under it ("google", "gemini", "vertex": both
    Gemini SDKs); else an integration by alias. None for any other name."""
    found = _INTEGRATION_BY_NAME.get(name)
    if found is not None and found.name == name:
        return [found]
    provider = _BY_NAME.get(name.strip().lower())
    if provider is not None:
        recorded = [i for i in INTEGRATIONS if i.provider == provider.id]
        if recorded:
            return recorded
    return [found] if found is not None else []


def integrations_for_module(top_module: str) -> list[Integration]:
    """The integrations whose SDK lives under a top-level package (``wrap()`` asks each)."""
    return [i for i in INTEGRATIONS if i.sdk_module.split(".")[0] == top_module]


def provider_of_sdk(name: str) -> str:
    """The provider an integration's calls are recorded under."""
    return _INTEGRATION_BY_NAME[name].provider


def gemini_path(model: str) -> bool:
    """Whether ``model`` is a Gemini model's path (``models/x``, ``publishers/google/models/x``,
    a full Vertex path), not another provider's id that holds ``models/`` (Fireworks':
    ``accounts/fireworks/models/x``)."""
    return model.startswith("models/") or "/publishers/google/models/" in f"/{model}"


def short_model(model: str | None) -> str | None:
    """A Gemini model's path as the legacy SDK and Vertex AI spell it (``models/x``,
    ``publishers/google/models/x`` or a full Vertex path) -> ``x``, the name its calls have."""
    if not model:
        return None
    return model.rsplit("models/", 1)[-1] or model
