"""Which provider SDK versions are installed: tests of an API a newer SDK added skip on older ones.

tokenmeter supports each SDK from the oldest version it declares to the newest; CI runs the
instrumentation tests at both ends. ``unmet`` backs the ``requires`` test marker, for example
``@pytest.mark.requires(openai=">=1.92")``, so such a skip always says what it needs and what
is installed.
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["unmet"]


def unmet(**requirements: str) -> str | None:
    """Why the installed SDKs miss ``requirements`` (``google_genai=">=1.20"``), or None.

    Keyword names are distribution names with ``-`` written as ``_``.
    """
    from packaging.specifiers import SpecifierSet  # pytest's own dependency: tests only

    for name, spec in requirements.items():
        dist = name.replace("_", "-")
        try:
            installed = metadata.version(dist)
        except metadata.PackageNotFoundError:
            return f"needs {dist}{spec} (not installed)"
        if not SpecifierSet(spec).contains(installed, prereleases=True):
            return f"needs {dist}{spec} (installed: {installed})"
    return None
