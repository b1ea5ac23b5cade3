"""One trusted issuer's configuration (:class:`OidcIssuerConfig`): what it verifies and how it is pinned."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from broker.domain.principals import Role
from broker.identity.bounded_patterns import UnboundedPattern, compile_bounded_pattern
from broker.identity.claim_rules import WORKLOAD_TOKEN, ClaimEquals, ClaimMatches, ClaimRule, pinned_claims
from broker.identity.oidc.algorithms import ASYMMETRIC_ALGORITHMS, CLAIM_MISMATCH, PREFIX_FORMAT

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OidcIssuerConfig:
    """One trusted issuer.  Invalid configurations fail at construction."""

    issuer: str
    audience: str
    jwks_url: str
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    principal_claim: str = "sub"
    principal_prefix: str = "agent:"
    roles: tuple[str, ...] = ("agent",)
    acts_for_claim: str | None = None
    groups_claim: str | None = None
    leeway_seconds: int = 30
    allowed_typ: tuple[str, ...] = ("JWT", "at+jwt")
    jwks_cache_seconds: int = 300
    max_token_age_seconds: int | None = None
    # Tokens with no "typ" header are common (many IdPs omit it) and accepted.
    allow_missing_typ: bool = True
    # Which of the issuer's workloads are accepted.  A JSON object {claim: exact string}; every claim must be
    # present and a string equal to its value (no case folding, no list membership).  Empty: nothing pinned.
    # Stored as (name, value) pairs.
    required_claims: Mapping[str, str] | tuple[tuple[str, str], ...] = ()
    # A regular expression the principal claim's whole value must match (bounded: see bounded_patterns).
    principal_pattern: str | None = None
    # Accept only principals the broker's directory holds (and has not disabled); checked by the
    # authenticator.  Off by default, for compatibility: issuer_warnings() names issuers that rely on it.
    require_registered: bool = False
    # Filled in by __post_init__: the roles as Role members, and the claim rules of the pins.
    role_set: frozenset[Role] = field(init=False, repr=False, compare=False)
    pins: tuple[ClaimRule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checks: dict[str, tuple[bool, str]] = {
            "issuer": (isinstance(self.issuer, str) and bool(self.issuer.strip())
                       and self.issuer == self.issuer.strip(), "must be a non-empty string"),
            "audience": (isinstance(self.audience, str) and bool(self.audience.strip()),
                         "must be a non-empty string"),
            "jwks_url": (isinstance(self.jwks_url, str)
                         and urlsplit(self.jwks_url).scheme in ("https", "http")
                         and bool(urlsplit(self.jwks_url).hostname), "must be an http(s) URL"),
            "algorithms": (isinstance(self.algorithms, tuple) and len(self.algorithms) > 0
                           and all(a in ASYMMETRIC_ALGORITHMS for a in self.algorithms),
                           f"must be a non-empty tuple drawn from {sorted(ASYMMETRIC_ALGORITHMS)};"
                           " symmetric (HS*) algorithms and 'none' are never allowed"),
            "principal_claim": (isinstance(self.principal_claim, str) and bool(self.principal_claim),
                                "must name a claim"),
            "principal_prefix": (isinstance(self.principal_prefix, str)
                                 and bool(PREFIX_FORMAT.fullmatch(self.principal_prefix)),
                                 "must look like 'agent:'"),
            "roles": (isinstance(self.roles, tuple) and len(self.roles) > 0
                      and all(r in Role._value2member_map_ for r in self.roles),
                      f"must be a non-empty tuple of {[r.value for r in Role]}"),
            "leeway_seconds": (isinstance(self.leeway_seconds, int) and 0 <= self.leeway_seconds <= 300,
                               "must be between 0 and 300"),
            "allowed_typ": (isinstance(self.allowed_typ, tuple)
                            and all(isinstance(t, str) and t for t in self.allowed_typ),
                            "must be a tuple of non-empty strings"),
            "jwks_cache_seconds": (isinstance(self.jwks_cache_seconds, int) and self.jwks_cache_seconds > 0,
                                   "must be a positive number of seconds"),
            "max_token_age_seconds": (self.max_token_age_seconds is None
                                      or (isinstance(self.max_token_age_seconds, int)
                                          and self.max_token_age_seconds > 0),
                                      "must be None or a positive number of seconds"),
            # NOTE: the JSON boolean only: the string "false" is truthy.
            "require_registered": (isinstance(self.require_registered, bool), "must be true or false"),
        }
        for name, (ok, requirement) in checks.items():
            if not ok:
                raise ValueError(f"OidcIssuerConfig.{name} {requirement}")
        object.__setattr__(self, "role_set", frozenset(Role(r) for r in self.roles))
        try:
            required = pinned_claims(self.required_claims)
        except ValueError as exc:
            raise ValueError(f"OidcIssuerConfig.required_claims {exc}") from exc
        pins: list[ClaimRule] = [ClaimEquals(name, value, code=CLAIM_MISMATCH, who=WORKLOAD_TOKEN)
                                 for name, value in required]
        if self.principal_pattern is not None:
            try:
                pattern = compile_bounded_pattern(self.principal_pattern)
            except UnboundedPattern as exc:
                raise ValueError(f"OidcIssuerConfig.principal_pattern {exc}") from exc
            pins.append(ClaimMatches(self.principal_claim, pattern, code=CLAIM_MISMATCH, who=WORKLOAD_TOKEN))
        object.__setattr__(self, "required_claims", required)
        object.__setattr__(self, "pins", tuple(pins))

    @property
    def pinned(self) -> bool:
        """Does anything narrow the issuer's tokens down to this deployment's workloads?

        A pin that constrains nothing does not count: a required claim the verifier checks anyway (``iss``,
        ``aud``, ...), or a pattern that a stranger's principal matches (``.*``, ``repo:.*``).
        """
        if self.require_registered:
            return True
        if any(name not in VERIFIED_ANYWAY for name, _value in self.required_claims):
            return True
        patterns = [pin.pattern for pin in self.pins if isinstance(pin, ClaimMatches)]
        return any(not any(pattern.fullmatch(probe) for probe in STRANGERS) for pattern in patterns)

    def weaknesses(self) -> list[str]:
        """What a security reviewer would flag in this issuer, as sentences (empty when none)."""
        found = []
        authority = sorted(r.value for r in self.role_set if r is not Role.AGENT)
        if authority and not self.require_registered:
            # NOTE: pins narrow who; they do not make a broad role safe to hand to every workload they admit.
            found.append(f"OIDC issuer {self.issuer!r} gives the roles {', '.join(authority)} to every principal its "
                         "tokens name that the directory does not know: grant approver, reviewer or admin in the "
                         "directory instead, or set require_registered: true.")
        if Role.AGENT in self.role_set and self.acts_for_claim is None and not self.require_registered:
            # NOTE: an agent acts for a human, who is accountable for it and can never co-sign its requests; an agent
            # the directory does not know, from an issuer that maps no acts_for claim, acts for nobody.
            found.append(f"OIDC issuer {self.issuer!r} maps no acts_for_claim: agents it names that the directory "
                         "does not know act for no human (no one accountable, no one excluded from co-signing). "
                         "Set acts_for_claim, or register its agents with --acts-for and set require_registered: true.")
        if self.pinned:
            return found
        roles = ", ".join(sorted(r.value for r in self.role_set))
        return found + [f"OIDC issuer {self.issuer!r} accepts every principal its tokens name, registered or not, with "
                f"the roles {roles}: any workload this issuer signs a token for (audience {self.audience!r}) "
                f"becomes '{self.principal_prefix}<{self.principal_claim}>'. Pin it in BROKER_OIDC_ISSUERS_FILE "
                "with required_claims and/or principal_pattern, or set require_registered: true."]



# Claims every token of the issuer carries, checked by the verifier itself: pinning them narrows nothing.
VERIFIED_ANYWAY = frozenset({"iss", "aud", "azp", "exp", "nbf", "iat", "jti", "typ"})
# Principals of workloads that are plainly not this deployment's, in the shapes CI systems and clusters use.
STRANGERS = ("x", "stranger", "repo:stranger/x:ref:refs/heads/main", "repo:stranger/x:environment:prod",
              "project_path:stranger/x:ref_type:branch:ref:main", "system:serviceaccount:stranger:x",
              "organization:stranger:project:x:workspace:x:run_phase:apply", "104857600123456789012")
