"""Ready-made flows: importing this package registers every family.

Each module here holds the builders of one family, decorated with
:func:`flowrl.registry.register_flow`.  A new family needs only a new module
in this folder; it is imported automatically.
"""

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_info.name}")
