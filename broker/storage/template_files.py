"""Template source: scope templates read from a folder of YAML files, and their detached signatures.

The catalog is loaded at start-up (and again on ``SIGHUP``); every loaded template has passed pydantic
validation, every check the caller passes in (the guardrails) and, when template owners are configured,
the signing rule (:mod:`broker.domain.template_signatures`).  A folder with a broken template, or a
template short of signatures, does not load at all: fail closed.  A reload builds a whole new catalog
first and then swaps it in with one assignment (:meth:`TemplateCatalog.replace_with`), so a request sees
either the old catalog or the new one, never a mix.

Signatures live beside the templates: ``<folder>/signatures/<template name>/<owner>.sig``.  A folder may
also be read at a git revision (``HEAD~1:scopes``) for ``broker scopes diff``.
"""

from __future__ import annotations

import difflib
import itertools
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from broker.domain.template_signatures import (
    SIGNATURE_SUFFIX, SIGNATURES_FOLDER, SigningRule, TemplateSignature, Verdict, parse_signature,
    signature_file_name,
)
from broker.domain.templates import PLACEHOLDER, ScopeTemplate, parse_template
from broker.errors import InvalidInput, TemplateError, TemplateNotFound

# A template check returns a list of problems; any object with `.blocking` true (an error) refuses the template.
TemplateCheck = Callable[[ScopeTemplate], Sequence[object]]


# Whether a template's risk classes need co-signing (so signatures from owners, like production).
RiskCheck = Callable[[ScopeTemplate], bool]


@dataclass(frozen=True)
class LoadedTemplate:
    template: ScopeTemplate
    source: str
    # Owners whose valid signatures vouch for this version (empty when none were needed or checked).
    signed_by: tuple[str, ...] = ()


class TemplateCatalog:
    def __init__(self, loaded: Iterable[LoadedTemplate]) -> None:
        self._by_name: dict[str, LoadedTemplate] = {}
        for item in loaded:
            if item.template.name in self._by_name:
                other = self._by_name[item.template.name].source
                raise TemplateError(f"{item.source}: template name '{item.template.name}' is already used by {other}",
                                    code="duplicate_template", field="name")
            self._by_name[item.template.name] = item

    def get(self, name: str) -> ScopeTemplate:
        try:
            return self._by_name[name].template
        except (KeyError, TypeError):
            close = difflib.get_close_matches(str(name), list(self._by_name), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise TemplateNotFound(f"no scope template named '{name}'{hint}", field="template") from None

    def source_of(self, name: str) -> str:
        return self._by_name[name].source

    def all(self) -> list[ScopeTemplate]:
        return [self._by_name[name].template for name in sorted(self._by_name)]

    def loaded(self) -> list[LoadedTemplate]:
        by_name = self._by_name  # NOTE: one read: a concurrent replace_with never mixes two catalogs here
        return [by_name[name] for name in sorted(by_name)]

    def replace_with(self, other: "TemplateCatalog") -> None:
        """Take ``other``'s templates, atomically (one reference assignment): a reload."""
        self._by_name = other._by_name

    def __len__(self) -> int:
        return len(self._by_name)


def template_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in {".yaml", ".yml"} and p.is_file()))
        else:
            files.append(path)
    return files


def read_template(path: Path) -> ScopeTemplate:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path}: cannot be read ({exc.__class__.__name__})", code="template_unreadable",
                            details={"source": str(path)}) from exc
    return parse_template(text, source=str(path))


def load_catalog(directory: Path, *, checks: Sequence[TemplateCheck] = (), signing: SigningRule | None = None,
                 risky: RiskCheck | None = None) -> TemplateCatalog:
    if not directory.is_dir():
        raise TemplateError(f"scope template folder {directory} does not exist", code="template_dir_missing")
    loaded = []
    for path in template_files([directory]):
        template = read_template(path)
        for check in checks:
            blocking = [f for f in check(template) if getattr(f, "blocking", True)]
            if blocking:
                # Every blocking finding, so that one start-up tells the operator all there is to fix.
                first, rest = blocking[0], blocking[1:]
                raise TemplateError(f"{path}: template '{template.name}' fails guardrails: {first}"
                                    + "".join(f"\n  and: {f}" for f in rest),
                                    code="guardrail_violation",
                                    details={"source": str(path), "findings": [f.code for f in blocking]})
        signed_by: tuple[str, ...] = ()
        if signing is not None and signing.enforced:
            verdict = verify_signatures(directory, template, signing, risky=risky)
            if not verdict.satisfied:
                raise TemplateError(f"{path}: {verdict.message()}", code="template_signatures_missing",
                                    details={"source": str(path), "signatures": verdict.to_dict()})
            signed_by = verdict.owners
        loaded.append(LoadedTemplate(template=template, source=str(path), signed_by=signed_by))
    return TemplateCatalog(loaded)


# --- signatures ---------------------------------------------------------------------------------

def read_signatures(directory: Path, template_name: str) -> list[TemplateSignature]:
    """Every signature file for ``template_name`` in ``directory``; an unreadable one raises (fail closed)."""
    folder = directory / SIGNATURES_FOLDER / template_name
    if not folder.is_dir():
        return []
    signatures = []
    for path in sorted(folder.glob(f"*{SIGNATURE_SUFFIX}")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"{path}: cannot be read ({exc.__class__.__name__})", code="signature_unreadable",
                                details={"source": str(path)}) from exc
        signatures.append(parse_signature(text, source=str(path)))
    return signatures


def verify_signatures(directory: Path, template: ScopeTemplate, signing: SigningRule, *,
                      risky: RiskCheck | None = None) -> Verdict:
    try:
        signatures = read_signatures(directory, template.name)
    except InvalidInput as exc:
        raise TemplateError(str(exc), code="signature_unreadable", details=exc.details) from exc
    return signing.verdict(template, signatures, risky=bool(risky and risky(template)))


def write_signature(directory: Path, signature: TemplateSignature) -> Path:
    path = directory / signature_file_name(signature.template, signature.owner)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(signature.to_json(), encoding="utf-8")
    return path


# --- templates elsewhere: files, folders, git revisions -----------------------------------------

def _templates_by_name(pairs: Iterable[tuple[str, str]]) -> dict[str, ScopeTemplate]:
    out: dict[str, ScopeTemplate] = {}
    for source, text in pairs:
        template = parse_template(text, source=source)
        if template.name in out:
            raise TemplateError(f"{source}: template name '{template.name}' is used twice", code="duplicate_template")
        out[template.name] = template
    return out


def _git(*args: str) -> bytes:
    try:
        return subprocess.run(["git", *args], check=True, capture_output=True, timeout=30).stdout
    except subprocess.CalledProcessError as exc:
        # NOTE: git's own first line says why ("not a git repository", "path ... does not exist in ...").
        said = next((line for line in exc.stderr.decode("utf-8", "replace").splitlines() if line.strip()), "")
        raise TemplateError(f"git {' '.join(args)} failed" + (f": {said.strip()}" if said else ""),
                            code="template_unreadable") from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise TemplateError(f"git {' '.join(args)} failed", code="template_unreadable") from exc


def templates_at(spec: str) -> dict[str, ScopeTemplate]:
    """The templates of a folder, a file, or ``REV:PATH`` (a git revision's folder or file), by name."""
    path = Path(spec)
    if path.exists():
        files = template_files([path])
        return _templates_by_name((str(f), _read_text(f)) for f in files)
    revision, colon, inside = spec.partition(":")
    if not colon or not revision:
        raise TemplateError(f"{spec} is neither a file or folder nor REV:PATH", code="template_unreadable")
    inside = inside.rstrip("/") or "."
    try:
        kind = _git("cat-file", "-t", f"{revision}:{inside}").decode().strip()
    except TemplateError as exc:
        raise TemplateError(f"{spec} is not a file or folder here, nor a git revision with a path (REV:PATH, the "
                            f"path from the repository's root) [{exc.diagnostics()}]", code="template_unreadable") from exc
    if kind == "blob":
        names = [inside]
    else:
        listed = _git("ls-tree", "--name-only", f"{revision}:{inside}").decode().splitlines()
        names = [str(PurePosixPath(inside) / n) for n in sorted(listed) if n.endswith((".yaml", ".yml"))]
    return _templates_by_name((f"{revision}:{n}", _git("show", f"{revision}:{n}").decode("utf-8")) for n in names)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path}: cannot be read ({exc.__class__.__name__})", code="template_unreadable") from exc


def template_yaml(template: ScopeTemplate) -> str:
    """A template as YAML (defaults left out: the same model, so the same version digest)."""
    data = template.model_dump(mode="json", exclude_defaults=True)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)


def template_roles(templates: Iterable[ScopeTemplate]) -> list[str]:
    """The role ARNs the templates can land in: every enum value of a role parameter (a role parameter
    is an enum by the guardrails; any other stays a ``*`` wildcard)."""
    roles: set[str] = set()
    for template in templates:
        names = sorted(template.role_parameters())
        choices = [template.role_choices(n) or ["*"] for n in names]
        for values in itertools.product(*choices):
            chosen: Mapping[str, str] = dict(zip(names, values, strict=True))
            roles.add(PLACEHOLDER.sub(lambda m, c=chosen: c[m.group(1)], template.role))
    return sorted(roles)

