"""Helpers shared by the CKV_BQD_* checks (imported by name: checkov puts this
folder on sys.path while it loads external checks).

checkov hands a check each attribute as a one-element list and each block as
a list of dicts; values it could not resolve stay as expression strings.
"""

from __future__ import annotations

import re
from typing import Any

# Block types whose presence makes a subscription push, not pull.
PUSH_BLOCKS = ("push_config", "bigquery_config", "cloud_storage_config")
# The label that marks a dead-letter subscription (see pubsub_subscription.py).
DEAD_LETTER_LABEL = ("role", "dead-letter")


def value(conf: dict, key: str, default: Any = None) -> Any:
    """An attribute's value (checkov wraps each in a list)."""
    raw = conf.get(key)
    if isinstance(raw, list):
        return raw[0] if raw else default
    return default if raw is None else raw


def block(conf: dict, key: str) -> dict | None:
    """The first instance of a nested block, or None if absent."""
    raw = conf.get(key)
    if isinstance(raw, list) and raw and isinstance(raw[0], dict):
        return raw[0]
    return None


def has_label(conf: dict, key: str, expected: str) -> bool:
    """labels[key] == expected, whether checkov resolved the map or not."""
    labels = value(conf, "labels")
    if isinstance(labels, dict):
        return labels.get(key) == expected
    if isinstance(labels, str):  # e.g. "merge(local.labels, {role = \"dead-letter\"})"
        return re.search(rf'"?{re.escape(key)}"?\s*[=:]\s*"{re.escape(expected)}"', labels) is not None
    return False


def is_pull_subscription(conf: dict) -> bool:
    return all(block(conf, name) is None for name in PUSH_BLOCKS)


def is_dead_letter_subscription(conf: dict) -> bool:
    return has_label(conf, *DEAD_LETTER_LABEL)
