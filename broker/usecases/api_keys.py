"""Broker API keys and the principals they belong to: create, list, revoke, rotate; disable and enable a principal.

Admins only (the ``admin`` role over the API; ``broker keys`` on the broker's own machine acts as a local admin:
whoever can write the database can do all of this anyway).  Every change is one unit of work with its entry in
the issuance log; no entry, no change.

* A key may expire (``expires_at``); an expired key is refused with ``api_key_expired``.
* Revoking a key is final.  Rotating a key issues a new one for the same principal and ends the old one, now
  or after a grace period (its expiry moves forward, never back).
* Disabling a principal refuses it whichever way it authenticates (API key or OIDC) and revokes every key it
  has, so enabling it again brings back none of them: it needs a new key.  ``create_key`` refuses a disabled
  principal (``principal_disabled``) instead of silently enabling it.

The key's secret is in the answer of ``create_key`` / ``rotate_key`` only; the log and the database hold its
key id and hash.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from broker.domain.events import EventType, log_entry
from broker.domain.principals import Principal, Role
from broker.domain.records import ApiKey, PrincipalEntry
from broker.domain.text import unsafe_characters
from broker.domain.times import as_utc, iso
from broker.errors import Conflict, Forbidden, InvalidInput, NotFound
from broker.ports import Clock, Store
from broker.usecases.refusal_budget import RefusalBudget
from broker.usecases.refusal_log import append_refusal


PRINCIPAL_ID = re.compile(r"^(agent|human):[A-Za-z0-9][A-Za-z0-9._@+=/:-]{0,190}$")
KEY_ID = re.compile(r"^[0-9a-f]{12}$")
MAX_REASON = 1000


class KeyNotFound(NotFound):
    code = "api_key_not_found"


class PrincipalNotFound(NotFound):
    code = "principal_not_found"


@dataclass(frozen=True)
class CreatedKey:
    """A new key: ``token`` is shown to its holder once and stored nowhere."""

    view: dict[str, Any]
    token: str = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {**self.view, "token": self.token}


def key_status(row: ApiKey, principal: PrincipalEntry | None, now: datetime) -> str:
    if row.revoked:
        return "revoked"
    if principal is not None and principal.disabled:
        return "principal_disabled"
    expires = as_utc(row.expires_at)
    if expires is not None and expires <= now:
        return "expired"
    return "active"


def key_view(row: ApiKey, principal: PrincipalEntry | None, now: datetime) -> dict[str, Any]:
    return {
        "key_id": row.key_id, "principal": row.principal_id, "status": key_status(row, principal, now),
        "roles": list(principal.roles) if principal is not None else [],
        "acts_for": principal.acts_for if principal is not None else None,
        "attributes": dict(principal.attributes) if principal is not None and principal.attributes else {},
        "created_at": iso(row.created_at), "expires_at": iso(row.expires_at),
        "revoked_at": iso(row.revoked_at), "revoked_by": row.revoked_by,
    }


def _clean_reason(reason: str | None, *, required: bool) -> str | None:
    if reason is None or not str(reason).strip():
        if required:
            raise InvalidInput("a reason is required (it is recorded in the issuance log)", code="missing_reason",
                               field="reason")
        return None
    text = str(reason).strip()
    if len(text) > MAX_REASON or unsafe_characters(text):
        raise InvalidInput(f"reason must be at most {MAX_REASON} printable characters", code="invalid_reason",
                           field="reason")
    return text


# A directory attribute (read by templates as attribute:NAME): a name, a string value of printable ASCII.
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ATTRIBUTE_VALUE = re.compile(r"^[\x21-\x7e]{1,256}$")
MAX_ATTRIBUTES = 32


def _check_attributes(attributes: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The directory attributes to store (None: keep the principal's); a template checks a value again where it
    uses one (broker.domain.caller_identity), this only keeps the directory tidy."""
    if attributes is None:
        return None
    if not isinstance(attributes, Mapping) or len(attributes) > MAX_ATTRIBUTES:
        raise InvalidInput(f"attributes are at most {MAX_ATTRIBUTES} NAME=VALUE pairs", code="invalid_attribute",
                           field="attributes")
    for name, value in attributes.items():
        if not isinstance(name, str) or not ATTRIBUTE_NAME.fullmatch(name):
            raise InvalidInput("an attribute name is 1..64 letters, digits and _.-", code="invalid_attribute",
                               field="attributes")
        if not isinstance(value, str) or not ATTRIBUTE_VALUE.fullmatch(value):
            raise InvalidInput(f"attribute {name!r} must be 1..256 printable ASCII characters, no spaces",
                               code="invalid_attribute", field=f"attributes.{name}")
    return dict(attributes)


def _check_principal_id(principal_id: str) -> str:
    if not isinstance(principal_id, str) or not PRINCIPAL_ID.fullmatch(principal_id):
        raise InvalidInput("principal ids are namespaced: agent:NAME or human:NAME", code="invalid_principal_id",
                           field="principal")
    return principal_id


def _future_expiry(expires_at: datetime | None, now: datetime) -> datetime | None:
    expires_at = as_utc(expires_at)
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("the expiry must be in the future", code="invalid_expiry", field="expires_at")
    return expires_at


def _check_key_id(key_id: str) -> str:
    if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
        raise KeyNotFound("no such API key (a key id is the 12 hex characters after brk_)", field="key_id")
    return key_id


class NewKey(Protocol):
    """A freshly generated key (``broker.identity.apikeys.generate_api_key`` makes them)."""

    key_id: str
    token: str
    token_hash: str


@dataclass
class ApiKeyAdministration:
    database: Store
    clock: Clock
    generate_key: Callable[[], NewKey]
    refusal_budget: RefusalBudget = field(default_factory=RefusalBudget.disabled)

    # ------------------------------------------------------------------ helpers
    def _event(self, kind: EventType, *, now: datetime, actor: Principal, source_ip: str | None,
               **details: Any) -> dict[str, Any]:
        return log_entry(kind, now=now, actor=actor.id, source_ip=source_ip,
                         details={k: v for k, v in details.items() if v is not None})

    def _require_admin(self, actor: Principal, *, action: str, source_ip: str | None) -> None:
        if actor.has_role(Role.ADMIN):
            return
        error = Forbidden("only admins manage API keys and principals", code="admin_required")
        body = self._event(EventType.REFUSED, now=self.clock.now(), actor=actor, source_ip=source_ip, action=action,
                           message=error.message)
        body["reason_code"] = error.code
        append_refusal(self.database, self.refusal_budget, actor.id, body)
        raise error

    @staticmethod
    def _revoke(row: ApiKey, *, by: str, now: datetime) -> ApiKey:
        return replace(row, revoked=True, revoked_at=now, revoked_by=by)

    # ------------------------------------------------------------------ create
    def create_key(self, *, actor: Principal, principal_id: str, roles: Sequence[str], groups: Sequence[str] = (),
                   acts_for: str | None = None, expires_at: datetime | None = None, reason: str | None = None,
                   source_ip: str | None = None, attributes: Mapping[str, str] | None = None) -> CreatedKey:
        """``attributes``: the principal's directory attributes (templates read them as ``attribute:NAME``);
        None keeps the ones it has."""
        self._require_admin(actor, action="api_key_create", source_ip=source_ip)
        principal_id = _check_principal_id(principal_id)
        attributes = _check_attributes(attributes)
        reason = _clean_reason(reason, required=False)
        try:
            role_values = sorted({Role(r).value for r in roles})
        except ValueError as exc:
            raise InvalidInput(f"roles are {', '.join(r.value for r in Role)}", code="invalid_role",
                               field="roles") from exc
        if not role_values:
            raise InvalidInput("a key's principal needs at least one role", code="invalid_role", field="roles")
        if Role.AGENT.value in role_values and not acts_for:
            raise InvalidInput("an agent must act for a human: give acts_for human:NAME", code="missing_acts_for",
                               field="acts_for")
        if acts_for is not None and not (PRINCIPAL_ID.fullmatch(acts_for) and acts_for.startswith("human:")):
            raise InvalidInput("acts_for names a human: human:NAME", code="invalid_acts_for", field="acts_for")
        now = self.clock.now()
        expires_at = _future_expiry(expires_at, now)
        issued = self.generate_key()
        with self.database.transaction() as repo:
            repo.lock_log_head()
            existing = repo.get_principal_entry(principal_id)
            if existing is not None and existing.disabled:
                raise Conflict(f"{principal_id} is disabled; enable it first (broker keys enable {principal_id})",
                               code="principal_disabled", field="principal")
            repo.upsert_principal(principal_id=principal_id, roles=role_values, groups=groups, acts_for=acts_for,
                                  now=now, attributes=attributes)
            repo.add_api_key(key_id=issued.key_id, token_hash=issued.token_hash, principal_id=principal_id, now=now,
                             expires_at=expires_at)
            extra = {"attributes": dict(sorted(attributes.items()))} if attributes is not None else {}
            repo.append_event(self._event(
                EventType.API_KEY_CREATED, now=now, actor=actor, source_ip=source_ip, key_id=issued.key_id,
                principal=principal_id, roles=role_values, groups=sorted(set(groups)), acts_for=acts_for,
                expires_at=iso(expires_at), reason=reason, new_principal=existing is None, **extra))
            view = key_view(repo.get_api_key(issued.key_id), repo.get_principal_entry(principal_id), now)
        return CreatedKey(view=view, token=issued.token)

    # ------------------------------------------------------------------ read
    def list_keys(self, *, actor: Principal, principal_id: str | None = None,
                  source_ip: str | None = None) -> list[dict[str, Any]]:
        self._require_admin(actor, action="api_key_list", source_ip=source_ip)
        now = self.clock.now()
        with self.database.read() as repo:
            rows = repo.list_api_keys(principal_id=principal_id)
            principals = {pid: repo.get_principal_entry(pid) for pid in {r.principal_id for r in rows}}
            return [key_view(row, principals[row.principal_id], now) for row in rows]

    # ------------------------------------------------------------------ revoke / rotate
    def revoke_key(self, *, actor: Principal, key_id: str, reason: str,
                   source_ip: str | None = None) -> dict[str, Any]:
        self._require_admin(actor, action="api_key_revoke", source_ip=source_ip)
        key_id = _check_key_id(key_id)
        reason = _clean_reason(reason, required=True)
        now = self.clock.now()
        with self.database.transaction() as repo:
            repo.lock_log_head()
            row = repo.get_api_key(key_id)
            if row is None:
                raise KeyNotFound("no such API key", field="key_id")
            if row.revoked:
                raise Conflict(f"key {key_id} is already revoked", code="api_key_revoked", field="key_id")
            row = self._revoke(row, by=actor.id, now=now)
            repo.save_api_key(row)
            repo.append_event(self._event(EventType.API_KEY_REVOKED, now=now, actor=actor, source_ip=source_ip,
                                          key_id=key_id, principal=row.principal_id, reason=reason))
            return key_view(row, repo.get_principal_entry(row.principal_id), now)

    def rotate_key(self, *, actor: Principal, key_id: str, reason: str, grace_seconds: int = 0,
                   expires_at: datetime | None = None, source_ip: str | None = None) -> CreatedKey:
        """A new key for the old key's principal; the old one ends now, or ``grace_seconds`` from now.

        The new key expires at ``expires_at``, else after as long as the old key was given (else never)."""
        self._require_admin(actor, action="api_key_rotate", source_ip=source_ip)
        key_id = _check_key_id(key_id)
        reason = _clean_reason(reason, required=True)
        if not isinstance(grace_seconds, int) or not 0 <= grace_seconds <= 30 * 86400:
            raise InvalidInput("the grace period is 0 to 30 days, in seconds", code="invalid_grace",
                               field="grace_seconds")
        now = self.clock.now()
        expires_at = _future_expiry(expires_at, now)
        issued = self.generate_key()
        with self.database.transaction() as repo:
            repo.lock_log_head()
            old = repo.get_api_key(key_id)
            if old is None:
                raise KeyNotFound("no such API key", field="key_id")
            if old.revoked:
                raise Conflict(f"key {key_id} is revoked; create a new key instead", code="api_key_revoked",
                               field="key_id")
            principal = repo.get_principal_entry(old.principal_id)
            if principal is None or principal.disabled:
                raise Conflict(f"{old.principal_id} is disabled; enable it first", code="principal_disabled")
            if expires_at is None and old.expires_at is not None:
                expires_at = now + (as_utc(old.expires_at) - as_utc(old.created_at))
            repo.add_api_key(key_id=issued.key_id, token_hash=issued.token_hash, principal_id=old.principal_id,
                             now=now, expires_at=expires_at)
            if grace_seconds == 0:
                old = self._revoke(old, by=actor.id, now=now)
            else:
                grace_end = now + timedelta(seconds=grace_seconds)
                current = as_utc(old.expires_at)
                old = replace(old, expires_at=grace_end if current is None or current > grace_end else current)
            repo.save_api_key(old)
            repo.append_event(self._event(
                EventType.API_KEY_ROTATED, now=now, actor=actor, source_ip=source_ip, key_id=issued.key_id,
                replaces=key_id, principal=old.principal_id, expires_at=iso(expires_at),
                old_key_ends_at=iso(now if grace_seconds == 0 else old.expires_at), reason=reason))
            view = key_view(repo.get_api_key(issued.key_id), principal, now)
            view["replaces"] = key_view(old, principal, now)
        return CreatedKey(view=view, token=issued.token)

    # ------------------------------------------------------------------ principals
    def disable_principal(self, *, actor: Principal, principal_id: str, reason: str,
                          source_ip: str | None = None) -> dict[str, Any]:
        """Refuse the principal from now on, whichever way it authenticates; revoke every key it has."""
        return self._set_disabled(True, actor=actor, principal_id=principal_id, reason=reason, source_ip=source_ip)

    def enable_principal(self, *, actor: Principal, principal_id: str, reason: str,
                         source_ip: str | None = None) -> dict[str, Any]:
        """Accept the principal again (its old keys stay revoked: give it a new one)."""
        return self._set_disabled(False, actor=actor, principal_id=principal_id, reason=reason, source_ip=source_ip)

    def _set_disabled(self, disabled: bool, *, actor: Principal, principal_id: str, reason: str,
                      source_ip: str | None) -> dict[str, Any]:
        self._require_admin(actor, action="principal_disable" if disabled else "principal_enable",
                            source_ip=source_ip)
        principal_id = _check_principal_id(principal_id)
        reason = _clean_reason(reason, required=True)
        now = self.clock.now()
        with self.database.transaction() as repo:
            repo.lock_log_head()
            row = repo.get_principal_entry(principal_id)
            if row is None:
                raise PrincipalNotFound(f"{principal_id} is not in the broker's directory", field="principal")
            if bool(row.disabled) == disabled:
                state = "disabled" if disabled else "enabled"
                raise Conflict(f"{principal_id} is already {state}", code=f"principal_{state}", field="principal")
            revoked = []
            # NOTE: disabling revokes every key, so that enabling again brings none of them back.
            for key in repo.list_api_keys(principal_id=principal_id) if disabled else ():
                if not key.revoked:
                    repo.save_api_key(self._revoke(key, by=actor.id, now=now))
                    revoked.append(key.key_id)
            repo.set_principal_disabled(principal_id, disabled)
            kind = EventType.PRINCIPAL_DISABLED if disabled else EventType.PRINCIPAL_ENABLED
            repo.append_event(self._event(kind, now=now, actor=actor, source_ip=source_ip, principal=principal_id,
                                          revoked_keys=revoked if disabled else None, reason=reason))
        if disabled:
            return {"principal": principal_id, "status": "disabled", "revoked_keys": revoked,
                    "note": "credentials already issued to it stay valid until they expire: "
                            f"broker revoke-all --agent {principal_id} ends them"}
        return {"principal": principal_id, "status": "enabled",
                "note": "its old keys stay revoked: create a new key (broker keys create)"}


def local_admin(user: str) -> Principal:
    """The actor of ``broker keys`` run on the broker's machine (it writes the database directly)."""
    return Principal(id=f"local:{user}", roles=frozenset({Role.ADMIN}), auth_method="local")


__all__ = ["ApiKeyAdministration", "CreatedKey", "KeyNotFound", "PrincipalNotFound", "key_view",
           "local_admin"]
