"""The YAML loader every file opsbot reads goes through.

libyaml's safe loader when PyYAML was built with it, else PyYAML's own (safe either way): the
pure-Python parser took about a second on the rules file, 0.2 s on the three shipped runbooks
and ten times libyaml's time on a large inventory, at every cold start.
"""

from __future__ import annotations

import yaml

SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
