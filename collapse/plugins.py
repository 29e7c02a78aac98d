"""Extensions from outside the package: ``COLLAPSE_PLUGINS`` names modules or ``.py`` files to import first.

A plugin registers what it adds (a model kind, a figure, a regime; docs/extending.md) when it is imported.
The variable holds comma-separated entries, each an importable module name (``mylab.kinds``) or a path to
a ``.py`` file; every ``collapse`` command imports them before reading its config, in every process (so
``accelerate launch`` workers see them too; ``collapse bench`` excepted). A ``.py`` file is imported by its
path alone: its folder is not put on ``sys.path``. Imports only collapse.errors.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from collapse.errors import ConfigError, first_line

ENV = "COLLAPSE_PLUGINS"


def load_plugins(spec: str | None = None) -> list[str]:
    """Import every plugin named in ``spec`` (default: ``$COLLAPSE_PLUGINS``); returns the module names."""
    spec = os.environ.get(ENV, "") if spec is None else spec
    names = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        name = None
        try:
            if entry.endswith(".py"):
                path = Path(entry).expanduser().resolve()
                if not path.is_file():
                    raise ConfigError(f"{ENV} names {entry}, which is not a file: fix the path or unset {ENV}.")
                # one module per file: two plugins both named figures.py are two modules
                name = f"collapse_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
                if name not in sys.modules:
                    loader = importlib.util.spec_from_file_location(name, path)
                    module = importlib.util.module_from_spec(loader)
                    sys.modules[name] = module
                    loader.loader.exec_module(module)
            else:
                name = entry
                importlib.import_module(name)
        except ConfigError as e:  # the plugin's own check, or a missing file: say which plugin
            if str(e).startswith(ENV):
                raise
            raise ConfigError(f"the plugin {entry} ({ENV}): {e}") from None
        except Exception as e:  # noqa: BLE001 - whatever the plugin's own code raises
            if name and entry.endswith(".py"):
                sys.modules.pop(name, None)
            raise ConfigError(f"the plugin {entry} ({ENV}) failed to import: {type(e).__name__}: "
                              f"{first_line(e, 160)}") from None
        names.append(name)
    return names
