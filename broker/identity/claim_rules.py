"""Which approver a verified ID token names, and whether the broker accepts that naming.

The ID token has already passed :class:`broker.identity.oidc.OidcVerifier` (signature, exact issuer,
audience, expiry, nonce, azp) and its principal claim is a string of safe characters.  What is left is
the *identity*: a valid token from the right issuer still says only what the identity provider's
account says, and some claims are editable by the account's owner or shared across tenants:

* ``preferred_username`` is neither unique nor stable (OIDC Core 5.7: relying parties MUST NOT rely
  on it); at many providers the user edits it.
* ``email`` is only as good as ``email_verified``: an unverified address is one the user typed.
* a multi-tenant provider (Google, Entra ID) vouches for accounts of *every* organisation.

So the broker checks a table of :class:`ClaimRule` s -- each a small frozen dataclass with one
``verify(claims)`` that answers ``None`` (accepted) or a :class:`ClaimRefusal` -- and only then turns
the principal claim into ``"human:" + value``.  The value is never rewritten: with domain pinning the
principal is the whole address (``human:alice@example.com``), never its local part, so two allowed
domains cannot map two people onto one principal, and deployments that already used ``email`` keep
their principal ids.

The same rules pin which workloads of an agent issuer the broker accepts (``required_claims`` and
``principal_pattern`` of :class:`broker.identity.oidc.OidcIssuerConfig`), speaking to the token
(:data:`WORKLOAD_TOKEN`) with the code ``claim_mismatch``.  Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from broker.errors import Forbidden

HUMAN_PREFIX = "human:"
# Claims an identity provider keeps unique and unchangeable for an account, within its issuer
# (OIDC Core 2 for sub; Entra ID's object id).  Any other principal claim wants pinning.
STABLE_CLAIMS = frozenset({"sub", "oid"})
EMAIL_CLAIM = "email"
EMAIL_VERIFIED_CLAIM = "email_verified"

# NOTE: ASCII only and a strict subset of RFC 5322's dot-atom: no quoted local parts, no comments,
# no second "@", no leading/trailing/double dots.
EMAIL_LOCAL_PART = re.compile(r"^[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*$")
MAX_LOCAL_PART = 64
# NOTE: a lower-case LDH host name (RFC 1123) of two labels or more: no trailing dot, no wildcard,
# no Unicode (an internationalised domain is written as its xn-- A-label).
DOMAIN_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")
CLAIM_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
PINNED_VALUE = re.compile(r"^[A-Za-z0-9._:@/+=|-]{1,256}$")
SEPARATORS = re.compile(r"[\s,]+")


@dataclass(frozen=True)
class ClaimRefusal:
    """Why an account may not sign in: a stable code and a sentence for the person."""

    code: str
    message: str


class ClaimRule(Protocol):
    def verify(self, claims: Mapping[str, Any]) -> ClaimRefusal | None:
        """``None`` when the claims satisfy the rule, else why not."""
        ...


def email_domain(value: object) -> str | None:
    """The lower-case domain of ``value`` when it is exactly ``local@domain`` in ASCII, else None."""
    # NOTE: isascii() *before* lower(): "\u212a" (KELVIN SIGN) lower-cases to "k", so a look-alike
    # domain could otherwise become an allowed one.
    if not isinstance(value, str) or not value.isascii() or value.count("@") != 1:
        return None
    local, _, domain = value.partition("@")
    if len(local) > MAX_LOCAL_PART or not EMAIL_LOCAL_PART.fullmatch(local):
        return None
    domain = domain.lower()
    return domain if DOMAIN_NAME.fullmatch(domain) else None


# Who a refusal speaks to: a person at the sign-in page (the default) or an agent's workload token.
APPROVER_ACCOUNT = "Your identity provider account"
WORKLOAD_TOKEN = "This token's workload"


@dataclass(frozen=True)
class ClaimEquals:
    """A pinned claim (Google's ``hd``, Entra ID's ``tid``, GitHub's ``repository_owner``, ...) is present and is
    exactly this string."""

    name: str
    value: str
    code: str = "oidc_claim_mismatch"
    who: str = APPROVER_ACCOUNT

    def verify(self, claims: Mapping[str, Any]) -> ClaimRefusal | None:
        found = claims.get(self.name)
        # NOTE: a string compared exactly: no case folding, no list membership, no prefix.
        if isinstance(found, str) and found == self.value:
            return None
        # NOTE: names the claim, never the value found (the token's author chose it).
        return ClaimRefusal(self.code, f"{self.who} is not one this broker accepts (its {self.name!r} claim does "
                                       "not match).")


@dataclass(frozen=True)
class ClaimMatches:
    """A claim is a string the whole of which matches a pattern (compile it with
    :func:`broker.identity.bounded_patterns.compile_bounded_pattern`: it runs on every token)."""

    name: str
    pattern: re.Pattern[str]
    code: str = "oidc_claim_mismatch"
    who: str = APPROVER_ACCOUNT

    def verify(self, claims: Mapping[str, Any]) -> ClaimRefusal | None:
        found = claims.get(self.name)
        # NOTE: fullmatch: a pattern is never satisfied by a substring or a prefix of the value.
        if isinstance(found, str) and self.pattern.fullmatch(found) is not None:
            return None
        return ClaimRefusal(self.code, f"{self.who} is not one this broker accepts (its {self.name!r} claim does "
                                       "not match the pinned pattern).")


@dataclass(frozen=True)
class EmailDomainIn:
    """The principal claim is an address ``local@domain`` in one of the allowed domains (exact, any case)."""

    claim: str
    domains: frozenset[str]

    def verify(self, claims: Mapping[str, Any]) -> ClaimRefusal | None:
        if email_domain(claims.get(self.claim)) in self.domains:
            return None
        return ClaimRefusal("oidc_email_domain_not_allowed",
                            "Your account is not an email address in a domain this broker accepts.")


@dataclass(frozen=True)
class EmailVerified:
    """An address names a person only once the identity provider has verified it.

    Applies when the principal claim is ``email`` or its value looks like an address (has an "@").
    ``email_verified`` must be the JSON boolean ``true``: the string "true", a missing claim or
    ``false`` all refuse.  It vouches for the ``email`` claim only, so an address in another claim
    (``preferred_username``, ``upn``) counts as verified only when it is that same, verified ``email``.
    """

    claim: str

    def verify(self, claims: Mapping[str, Any]) -> ClaimRefusal | None:
        value = claims.get(self.claim)
        looks_like_email = self.claim == EMAIL_CLAIM or (isinstance(value, str) and "@" in value)
        if not looks_like_email:
            return None
        # NOTE: the verified flag and the address it speaks for must be one: a verified mallory@evil.test must
        # not vouch for a preferred_username of alice@example.com.
        if claims.get(EMAIL_VERIFIED_CLAIM) is True and claims.get(EMAIL_CLAIM) == value:
            return None
        return ClaimRefusal("oidc_email_unverified",
                            "Your identity provider has not verified this account's email address, so it "
                            "cannot sign in here.")


@dataclass(frozen=True)
class ApproverIdentity:
    """The principal claim plus every rule its token must pass; builds ``human:<value>``."""

    principal_claim: str
    rules: tuple[ClaimRule, ...]
    allowed_domains: frozenset[str] = frozenset()
    required_claims: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # NOTE: an empty table would mean "nothing checked"; that is a bug, not a pass.
        if not self.rules:
            raise ValueError("ApproverIdentity has no claim rules")

    @classmethod
    def configured(cls, *, principal_claim: str, allowed_domains: Iterable[str] = (),
                   required_claims: Iterable[tuple[str, str]] = ()) -> ApproverIdentity:
        domains = frozenset(allowed_domains)
        pins = tuple(required_claims)
        rules: list[ClaimRule] = [ClaimEquals(name, value) for name, value in pins]
        if domains:
            rules.append(EmailDomainIn(principal_claim, domains))
        rules.append(EmailVerified(principal_claim))
        return cls(principal_claim=principal_claim, rules=tuple(rules), allowed_domains=domains,
                   required_claims=pins)

    def principal_id(self, claims: Mapping[str, Any]) -> str:
        """``"human:" + <principal claim>`` once every rule accepts; else :class:`Forbidden` with its code."""
        for rule in self.rules:
            refusal = rule.verify(claims)
            if refusal is not None:
                raise Forbidden(refusal.message, code=refusal.code)
        value = claims.get(self.principal_claim)
        if not isinstance(value, str) or not value:
            raise Forbidden("Your identity provider account has no name this broker can use.",
                            code="oidc_principal_unknown")
        return f"{HUMAN_PREFIX}{value}"

    def weaknesses(self) -> list[str]:
        """What a security reviewer would flag in this configuration, as sentences (empty when none)."""
        if self.principal_claim in STABLE_CLAIMS or self.allowed_domains or self.required_claims:
            return []
        warning = (f"approver sign-in names principals by the {self.principal_claim!r} claim with no domain or "
                   "claim pinning: any account of the identity provider whose claim reads the same signs in as "
                   "that approver. Use 'sub', or a verified email pinned with BROKER_UI_OIDC_ALLOWED_DOMAINS "
                   "(and/or BROKER_UI_OIDC_REQUIRED_CLAIMS).")
        return [warning]


def parse_allowed_domains(text: str | None) -> frozenset[str]:
    """``"example.com, Example.org"`` -> ``{"example.com", "example.org"}``; any other entry is a ValueError."""
    domains: set[str] = set()
    for entry in SEPARATORS.split(text or ""):
        if not entry:
            continue
        if not entry.isascii() or not DOMAIN_NAME.fullmatch(entry.lower()):
            raise ValueError(f"allowed_domains entry {entry!r} is not a domain name (lower-case letters, digits, "
                             "hyphens, dots; no trailing dot, wildcard or Unicode: write an IDN as xn--)")
        domains.add(entry.lower())
    return frozenset(domains)


def pinned_claims(table: object) -> tuple[tuple[str, str], ...]:
    """A JSON object ``{"repository_owner": "acme"}`` -> ``(("repository_owner", "acme"),)``; else a ValueError.

    The values are compared exactly, so each must be a string: a number or a boolean would never equal the
    string a token carries, and a list would invite a membership test.  Empty means nothing pinned.
    (Already-parsed pairs are accepted as they are, so a configuration can be copied.)
    """
    if isinstance(table, tuple) and all(isinstance(pair, tuple) and len(pair) == 2 for pair in table):
        pairs: Iterable[tuple[object, object]] = table
    elif isinstance(table, Mapping):
        pairs = table.items()
    else:
        raise ValueError("must be a JSON object of claim name -> exact string value")
    pins: dict[str, str] = {}
    for name, value in pairs:
        if not isinstance(name, str) or not CLAIM_NAME.fullmatch(name):
            raise ValueError(f"names a claim {name!r} that is not a claim name (letters, digits, _ . : -)")
        if name in pins:
            raise ValueError(f"names {name!r} twice")
        if (not isinstance(value, str) or not value or len(value) > 256 or not value.isprintable()
                or value != value.strip()):
            raise ValueError(f"pins {name!r} to something that is not a string of 1 to 256 printable characters "
                             "(numbers, booleans and lists are written as the exact string the token carries)")
        pins[name] = value
    return tuple(pins.items())


def parse_required_claims(text: str | None) -> tuple[tuple[str, str], ...]:
    """``"hd=example.com tid=..."`` -> ``(("hd", "example.com"), ("tid", "..."))``; malformed is a ValueError."""
    pins: dict[str, str] = {}
    for entry in SEPARATORS.split(text or ""):
        if not entry:
            continue
        name, equals, value = entry.partition("=")
        if not equals or not CLAIM_NAME.fullmatch(name) or not PINNED_VALUE.fullmatch(value):
            raise ValueError(f"required_claims entry {entry!r} is not name=value")
        if name in pins:
            raise ValueError(f"required_claims names {name!r} twice")
        pins[name] = value
    return tuple(pins.items())


__all__ = ["APPROVER_ACCOUNT", "WORKLOAD_TOKEN", "ApproverIdentity", "ClaimEquals", "ClaimMatches", "ClaimRefusal",
           "ClaimRule", "EmailDomainIn", "EmailVerified", "email_domain", "parse_allowed_domains", "parse_required_claims",
           "pinned_claims"]
