"""Template source: scope templates read from a folder of YAML files.

The catalog is loaded once (at start-up) and is immutable; every loaded template
has passed pydantic validation and every check the caller passes in (the
guardrails).  A folder with a broken template does not load at all: fail closed.
"""

from __future__ import annotations

import difflib

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from broker.domain.templates import ScopeTemplate, parse_template
from broker.errors import TemplateError, TemplateNotFound

# A template check returns a list of problems; any object with `.blocking` true (an error) refuses the template.
TemplateCheck = Callable[[ScopeTemplate], Sequence[object]]


@dataclass(frozen=True)
class LoadedTemplate:
    template: ScopeTemplate
    source: str


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


def load_catalog(directory: Path, *, checks: Sequence[TemplateCheck] = ()) -> TemplateCatalog:
    if not directory.is_dir():
        raise TemplateError(f"scope template folder {directory} does not exist", code="template_dir_missing")
    loaded = []
    for path in template_files([directory]):
        template = read_template(path)
        for check in checks:
            blocking = [f for f in check(template) if getattr(f, "blocking", True)]
            if blocking:
                first = blocking[0]
                raise TemplateError(f"{path}: template '{template.name}' fails guardrails: {first}",
                                    code="guardrail_violation", details={"source": str(path)})
        loaded.append(LoadedTemplate(template=template, source=str(path)))
    return TemplateCatalog(loaded)
