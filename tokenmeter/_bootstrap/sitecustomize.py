"""Start-up hook of ``tokenmeter run``: every Python a command starts imports this first.

Written for any Python, 2.7 included (a build may run old interpreters beside the program):
tokenmeter's own Pythons run the hook (``_tokenmeter_run``); an older one goes on unmetered, with
one line on stderr, and still runs the ``sitecustomize`` this one hides. Python 2.7 and 3.6 could
not read the hook, and printed "Error in sitecustomize" at every start.
"""

import os
import sys

if sys.version_info >= (3, 11):
    __import__("_tokenmeter_run")
else:
    sys.stderr.write(
        "tokenmeter run: "
        + sys.executable
        + " is Python %d.%d, older than tokenmeter supports: unmetered\n" % sys.version_info[:2]
    )
    # Run the next sitecustomize on the path, as Python would have without this one.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _here]
    _this = sys.modules.pop("sitecustomize", None)
    try:
        __import__("sitecustomize")
    except ImportError:
        if "sitecustomize" not in sys.modules:  # there is none: the import goes on with this one
            sys.modules["sitecustomize"] = _this
