"""pydantic, without its search for plugins.

For every model class it builds, pydantic asks `pydantic.plugin._loader.get_plugins()` for the
plugins that observe validation (logfire's, for one). That module imports `importlib.metadata`
(with email, zipfile and csv) and reads the entry points of every installed package: about 70 M
instructions, 3% of a cold `opsbot run`'s CPU. opsbot's models use no plugin, so a loader
that finds none stands in for it, imported before opsbot defines its first model. A process
that imported pydantic's own loader first (another library using plugins) keeps it.
"""

from __future__ import annotations

import sys
import types

LOADER = "pydantic.plugin._loader"


def _no_plugins() -> tuple[()]:
    return ()


if LOADER not in sys.modules:
    _loader = types.ModuleType(LOADER, "opsbot: pydantic plugins are not searched for")
    _loader.get_plugins = _no_plugins  # type: ignore[attr-defined]
    sys.modules[LOADER] = _loader
