"""``templates_loaded``: the issuance log says which templates were loaded, when, from where, and who signed them.

Every start-up and every reload appends one entry (type ``templates_loaded``, actor ``broker``) whose
``details`` are::

    {"reason": "start-up" | "reload", "load_id": UUID,
     "templates": [{"name", "digest", "source", "signed_by": [owner...], "previous_digest"?}],
     "removed": [{"name", "previous_digest"}],
     "signatures": {"enforced": bool, "required": N}}

``previous_digest`` is there when the template's digest differs from the one the last
``templates_loaded`` entry recorded (a template new since then has ``previous_digest: null``).  The
entry is written before the catalog is used.  A reload whose entry cannot be written keeps the running
catalog (no entry, no change).  A start-up whose database is down still starts (readiness says why, and
every request is refused): its entry is then written by the first unit of work that issues or opens a
request, before anything else in it (an issuance gate), or by the next periodic sweep, whichever is first.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.domain.events import EventType, log_entry

@dataclass(frozen=True)
class LoadedVersion:
    name: str
    digest: str
    source: str
    signed_by: tuple[str, ...] = ()


def templates_loaded_entry(*, now: datetime, reason: str, loaded: Sequence[LoadedVersion],
                           previous: dict[str, str] | None, enforced: bool, required: int,
                           load_id: str | None = None) -> dict[str, Any]:
    templates = []
    for version in loaded:
        item: dict[str, Any] = {"name": version.name, "digest": version.digest, "source": version.source,
                                "signed_by": list(version.signed_by)}
        if previous is not None and previous.get(version.name) != version.digest:
            item["previous_digest"] = previous.get(version.name)
        templates.append(item)
    names = {v.name for v in loaded}
    removed = [{"name": name, "previous_digest": digest} for name, digest in sorted((previous or {}).items())
               if name not in names]
    return log_entry(EventType.TEMPLATES_LOADED, now=now, actor="broker",
                     details={"reason": reason, "load_id": load_id or str(uuid.uuid4()), "templates": templates,
                              "removed": removed,
                              "signatures": {"enforced": enforced, "required": required if enforced else 0}})


def previous_digests(entry: dict[str, Any] | None) -> dict[str, str] | None:
    if entry is None:
        return None
    details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
    return {t["name"]: t["digest"] for t in details.get("templates") or ()
            if isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("digest"), str)}


def append_templates_loaded(repo, *, now: datetime, reason: str, loaded: Sequence[LoadedVersion],
                            enforced: bool, required: int, load_id: str | None = None) -> dict[str, Any]:
    """In the caller's unit of work: read the last ``templates_loaded`` entry, append this one (under the
    log's lock, so two replicas loading at once each name the other's digests correctly)."""
    repo.lock_log_head()
    latest = repo.latest_event(EventType.TEMPLATES_LOADED)
    if load_id is not None and latest is not None and (latest.get("details") or {}).get("load_id") == load_id:
        return latest   # this very load is logged already (a retry after the entry committed)
    return repo.append_event(templates_loaded_entry(now=now, reason=reason, loaded=loaded,
                                                    previous=previous_digests(latest), enforced=enforced,
                                                    required=required, load_id=load_id))


def record_templates_loaded(database, **load: Any) -> dict[str, Any]:
    """One unit of work of its own (see :func:`append_templates_loaded`)."""
    with database.transaction() as repo:
        return append_templates_loaded(repo, **load)
