"""Self-scoped resources: a resource confined to the caller's own identity, proven from its ARN.

A template resource is *confined by* an identity value ``{workspace}`` when, reading the ARN from its
start, every path segment (the text between ``:`` and ``/``) up to the identity value's is literal text or
an ``enum`` parameter (no wildcard, no policy variable, no free parameter: a free value may hold ``/`` and
move the segments), and the identity value's segment holds that value and literal text only
(``stack/ws-{workspace}/*``, ``bucket/{workspace}/*``, ``table/{workspace}-data``).  An identity value
never holds ``/``, ``:``, ``,`` or a wildcard (:mod:`broker.domain.caller_identity`), so that segment names
one caller's value and no other: ``ws-a`` cannot reach ``ws-ab``'s ``stack/ws-ab/...``.

For a rendered policy the proof is redone on the exact resource sent to STS: it must start with the
confining prefix rendered with the caller's bound value (and one of the enum values where the template
has an enum parameter), followed by the end or a separator.  Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from broker.domain.templates import PLACEHOLDER, ScopeTemplate

_SEGMENT_END = re.compile(r"[:/]")
_UNSAFE_LITERAL = ("*", "?", "$")


def _segments(resource: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each segment of ``resource``, placeholders kept whole (they hold no separator)."""
    bounds, start = [], 0
    masked = PLACEHOLDER.sub(lambda m: "x" * len(m.group(0)), resource)
    for match in _SEGMENT_END.finditer(masked):
        bounds.append((start, match.start()))
        start = match.end()
    bounds.append((start, len(resource)))
    return bounds


def confining_value(template: ScopeTemplate, resource: str) -> tuple[str, int] | None:
    """The identity value that confines template ``resource`` and where its segment ends, or None."""
    for start, end in _segments(resource):
        segment = resource[start:end]
        names = PLACEHOLDER.findall(segment)
        if any(c in PLACEHOLDER.sub("", segment) for c in _UNSAFE_LITERAL):
            return None
        bound = [n for n in names if n in template.identity]
        if bound:
            return (bound[0], end) if len(names) == 1 else None
        if any(not (template.parameters[n].enum) for n in names if n in template.parameters):
            return None
    return None


def _prefix_pattern(template: ScopeTemplate, prefix: str, identity: Mapping[str, str]) -> re.Pattern[str] | None:
    parts, position = [], 0
    for match in PLACEHOLDER.finditer(prefix):
        parts.append(re.escape(prefix[position:match.start()]))
        name = match.group(1)
        if name in template.identity:
            if name not in identity:
                return None
            parts.append(re.escape(identity[name]))
        else:
            parts.append("(?:" + "|".join(re.escape(v) for v in template.parameters[name].enum or ()) + ")")
        position = match.end()
    parts.append(re.escape(prefix[position:]))
    return re.compile("".join(parts) + r"(?=$|[:/])")


def confined_by(template: ScopeTemplate, resource: str, *, rendered: str | None = None,
                identity: Mapping[str, str] | None = None) -> str | None:
    """The identity value confining ``resource`` (a template resource), or None.  With ``rendered`` (the
    resource as sent to STS) and the caller's bound ``identity``, the rendered resource must prove it too."""
    found = confining_value(template, resource)
    if found is None:
        return None
    name, end = found
    if rendered is None:
        return name
    pattern = _prefix_pattern(template, resource[:end], identity or {})
    return name if pattern is not None and pattern.match(rendered) and not any(
        c in rendered[:pattern.match(rendered).end()] for c in _UNSAFE_LITERAL) else None


def statement_confined_by(template: ScopeTemplate, index: int, rendered_resources: tuple[str, ...] | None = None,
                          identity: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The identity values confining *every* resource of statement ``index`` (empty: not all are confined)."""
    written = list(dict.fromkeys(template.statements[index].resources))
    if rendered_resources is not None and len(rendered_resources) != len(written):
        return ()
    names = []
    for j, resource in enumerate(written):
        name = confined_by(template, resource, rendered=rendered_resources[j] if rendered_resources is not None else None,
                           identity=identity)
        if name is None:
            return ()
        names.append(name)
    return tuple(dict.fromkeys(names))


__all__ = ["confined_by", "confining_value", "statement_confined_by"]
