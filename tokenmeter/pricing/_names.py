"""Model and provider name normalisation, done before any table lookup.

SDKs, proxies and clouds spell the same model many ways (``models/gemini-2.5-pro``,
``openai/gpt-4o``, ``us.anthropic.claude-…-v1:0``, ``claude-sonnet-4@20250514``, ``ft:gpt-4o-…``,
a brand-new dated snapshot). ``name_candidates`` lists the spellings to try, most specific first,
so an exact table entry always wins over a guess such as the undated family.
"""

from __future__ import annotations

import re

from tokenmeter._registry import price_id

__all__ = [
    "is_fine_tune",
    "model_family",
    "name_candidates",
    "normalise_provider",
    "with_unversioned",
]

_BEDROCK_GEO = re.compile(r"^(?:us|eu|apac|ap|au|jp|ca|us-gov|global)\.")
_BEDROCK_VENDOR = re.compile(
    r"^(?:anthropic|meta|amazon|mistral|cohere|ai21|deepseek|openai|qwen|writer)\."
)
_BEDROCK_VERSION = re.compile(r"(?:-v\d+)?(?::\d+)?$")
#: The first version of a Bedrock model id (``openai.gpt-oss-120b-1:0``,
#: ``anthropic.claude-3-haiku-20240307-v1:0``), which the Mantle endpoint and gateways that
#: use it leave out (``openai.gpt-oss-120b``): tried after the name as given, so that the
#: provider's own entry prices it, not another provider's entry of the bare model.
_BEDROCK_FIRST_VERSIONS = ("-1:0", "-v1:0")
#: How Azure OpenAI (and an older OpenAI spelling) names a fine-tune: ``<base>.ft-<job id>``,
#: ``gpt-4o-2024-08-06.ft-d93dda6110004b4da3472d96f4dd4777-ft``.
_DOTTED_FINE_TUNE = ".ft-"
#: Azure OpenAI's spelling of OpenAI's GPT-3.5 models: ``gpt-35-turbo-0125`` for
#: ``gpt-3.5-turbo-0125`` (Azure's model list; a name may not hold a dot there).
_AZURE_GPT_35 = "gpt-35-"
_OPENAI_GPT_35 = "gpt-3.5-"
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")
#: What a family leaves out after the name: a date (``-2024-08-06``, ``-20250929``, ``-0613``,
#: a preview's ``-05-20``), a build number (``-001``) or ``-latest``.
_VERSION_SUFFIX = re.compile(r"(?:-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|\d{2}-\d{2}|\d{3}|latest))+$")
#: The dot of a Claude version as OpenRouter spells it (``claude-sonnet-4.5``,
#: ``claude-3.7-sonnet``) where Anthropic writes a dash (``claude-sonnet-4-5``).
_CLAUDE_VERSION_DOT = re.compile(r"(?<=\d)\.(?=\d)")
#: Far more than a version suffix takes (``-2024-08-06-latest``: 18 characters). The pattern is
#: searched for in a name's last characters only: over a whole stored name (unbounded in a JSONL
#: file) it backtracks quadratically, minutes for 100 KB of ``-1234``.
_VERSION_TAIL = 100


def normalise_provider(provider: str | None) -> str | None:
    """Lower-case provider id, with common aliases mapped to genai-prices' ids."""
    if provider is None:
        return None
    name = provider.strip().lower()
    if not name:
        return None
    return price_id(name)  # aliases live in the provider registry


def name_candidates(model: str) -> list[str]:
    """Spellings of ``model`` to look up, most specific first (all lower case, no duplicates)."""
    name = model.strip().lower()
    found = [name]
    if "models/" in name:  # models/x, publishers/google/models/x, projects/p/.../models/x
        name = name.rsplit("models/", 1)[1]
        found.append(name)
    fine_tune = name.startswith("ft:")
    if fine_tune:  # ft:<base>:<org>:<suffix>:<id>
        name = name[3:].split(":", 1)[0]
    elif _DOTTED_FINE_TUNE in name:  # Azure: <base>.ft-<job id>, tried as OpenAI's ft:<base>
        # (after a gateway's provider prefix: azure/gpt-4o-2024-08-06.ft-<job id>)
        name = name.split(_DOTTED_FINE_TUNE, 1)[0].rsplit("/", 1)[-1]
        fine_tune = True
    if fine_tune:
        bases = [name, _undated(name), *_gpt_35_dotted(name)]
        found += [*(f"ft:{base}" for base in bases), name]
    if "/" in name:  # openai/gpt-4o, meta-llama/llama-3-70b
        name = name.rsplit("/", 1)[1]
        found.append(name)
    if "@" in name:  # Vertex: claude-sonnet-4@20250514, gemini-1.5-pro@002
        found.append(name.replace("@", "-"))
        name = name.split("@", 1)[0]
        found.append(name)
    vendor_named = _BEDROCK_VENDOR.match(_BEDROCK_GEO.sub("", name)) is not None
    if vendor_named and ":" not in name:  # a Bedrock id without its version
        found += [name + version for version in _BEDROCK_FIRST_VERSIONS]
    bedrock = _BEDROCK_VERSION.sub("", _BEDROCK_VENDOR.sub("", _BEDROCK_GEO.sub("", name)))
    if bedrock != name and bedrock:
        name = bedrock
        found.append(name)
    found.append(_undated(name))
    found += _gpt_35_dotted(name)  # after Azure's own: a table entry of that spelling wins
    dashed = _claude_dashed(name)
    if dashed != name:  # after the dotted ones: a table entry of that spelling wins
        found += [dashed, _undated(dashed)]
    return list(dict.fromkeys(found))


def with_unversioned(names: list[str]) -> list[str]:
    """``names`` (``name_candidates``' list), then each without its version suffix, as
    ``model_family`` strips it: ``gpt-4`` after ``gpt-4-0613``, ``gemini-2.0-flash`` after
    ``gemini-2.0-flash-001``, ``claude-3-5-sonnet`` after ``claude-3-5-sonnet-latest``.

    For the user's prices and aliases only: providers answer with the snapshot that served a
    call, and a price (or alias) set under the model's name is meant for all of them. Never for
    a table look-up, where an unversioned name would find a family's entry by prefix for a model
    the table does not price (``gemini-2.0-flash-live-001`` at ``gemini-2.0-flash``'s text
    rates). Last, so that any spelling of the name as given, or its ``_undated`` family, wins.
    """
    return list(dict.fromkeys([*names, *map(_unversioned, names)]))


def _unversioned(name: str) -> str:
    """``name`` less its version suffix (a date, a build number, ``-latest``); itself when that
    would leave nothing. The pattern runs over the name's tail alone (see ``_VERSION_TAIL``)."""
    head, tail = name[:-_VERSION_TAIL], name[-_VERSION_TAIL:]
    return head + _VERSION_SUFFIX.sub("", tail) or name


def _gpt_35_dotted(name: str) -> list[str]:
    """OpenAI's spelling of Azure's ``gpt-35-turbo-0125`` and its family, dated and not (none for
    any other name)."""
    if not name.startswith(_AZURE_GPT_35):
        return []
    dotted = _OPENAI_GPT_35 + name.removeprefix(_AZURE_GPT_35)
    return [dotted, _undated(dotted)]


def is_fine_tune(name: str) -> bool:
    """Whether a model name, or a table entry's, is a fine-tune's: OpenAI's ``ft:<base>:...``
    or Azure's ``<base>.ft-<job id>``. A fine-tune priced by its base's card is billed below
    what the provider charges, and says so."""
    return name.startswith("ft:") or _DOTTED_FINE_TUNE in name


def _undated(name: str) -> str:
    """``gpt-4o-2099-01-01`` -> ``gpt-4o``: an unknown snapshot is priced like its family."""
    return _DATE_SUFFIX.sub("", name)


def _claude_dashed(name: str) -> str:
    """``claude-sonnet-4.5`` -> ``claude-sonnet-4-5``: a Claude model in Anthropic's spelling,
    the one a user's price (and a report's family) names it by."""
    return _CLAUDE_VERSION_DOT.sub("-", name) if name.startswith("claude-") else name


def model_family(name: str) -> str:
    """The family a served model name belongs to, for grouping reports: ``gpt-4o`` for
    ``gpt-4o-2024-08-06``, ``claude-sonnet-4-5`` for ``claude-sonnet-4-5-20250929`` or
    ``us.anthropic.claude-sonnet-4-5-20250929-v1:0``, ``gemini-2.0-flash`` for
    ``models/gemini-2.0-flash-001``. Provider prefixes, cloud spellings, dates, build numbers and
    ``-latest`` go; the model's generation and size stay. A fine-tune keeps ``ft:`` before its
    base's family (it is priced differently), Azure's ``<base>.ft-<job id>`` too. Lower case; a
    name with nothing to strip is itself.
    """
    name = name.strip().lower()
    fine_tune = is_fine_tune(name)
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    elif fine_tune:
        name = name.split(_DOTTED_FINE_TUNE, 1)[0]
    if "models/" in name:
        name = name.rsplit("models/", 1)[1]
    if "/" in name:
        name = name.rsplit("/", 1)[1]
    name = name.split("@", 1)[0]
    name = _BEDROCK_VERSION.sub("", _BEDROCK_VENDOR.sub("", _BEDROCK_GEO.sub("", name))) or name
    family = _claude_dashed(_unversioned(name))
    return f"ft:{family}" if fine_tune else family
