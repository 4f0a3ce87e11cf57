"""``docs/configuration.md``: every setting of :class:`churn.config.Settings`, rendered from the code.

Each setting gets its environment variable (``CHURN_<SECTION>__<FIELD>``), its TOML key, its type,
its default and the ``#:`` comment written above it in ``churn/config.py`` (read from the source
with :mod:`ast`). Regenerate the page with::

    .venv/bin/python -m churn.config_reference > docs/configuration.md

``--check`` exits 1 when the committed page is out of date.

A ``#:`` comment documents the field below it, and the uncommented fields right after it that
share its first word (``batch_max``, ``batch_within_s``) or that it names in backticks; a field a
subclass redeclares only to change its default (each topic's ``name``) keeps its base class's comment:

>>> rows = {r.env: r for r in settings_rows()}
>>> rows["CHURN_KAFKA__BOOTSTRAP_OVERRIDE"].doc
"If set, clients use this instead of host:port (a user's own cluster)."
>>> rows["CHURN_SCORING__BATCH_WITHIN_S"].doc == rows["CHURN_SCORING__BATCH_MAX"].doc
True
>>> rows["CHURN_SCORING__BATCH_MAX"].doc
'Events per scoring batch, and the longest a batch waits to fill.'
>>> rows["CHURN_TOPICS__CDR__PARTITIONS"].default, rows["CHURN_TOPICS__CDR__PARTITIONS"].toml
('12', '[topics.cdr] partitions')
>>> rows["CHURN_RUN_DIR"].default
'<repo>/.run'
>>> rows["CHURN_TOPICS__CDR__NAME"].doc
"The topic's name."
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from churn import config
from churn.config import PROJECT_ROOT, Settings

DOC_PATH = PROJECT_ROOT / "docs" / "configuration.md"
REGENERATE = ".venv/bin/python -m churn.config_reference > docs/configuration.md"

@dataclass(frozen=True)
class FieldSource:
    annotation: str
    doc: str


@dataclass(frozen=True)
class Row:
    env: str
    toml: str
    type: str
    default: str
    doc: str


def _class_fields(cls: type) -> dict[str, FieldSource]:
    """The fields a class body declares, with their annotation as written and their ``#:`` doc."""
    source, _ = inspect.getsourcelines(cls)
    lines = [line.rstrip("\n") for line in source]
    tree = ast.parse(textwrap.dedent("".join(source)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    fields: dict[str, FieldSource] = {}
    group_doc, group_name = "", ""
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        if name == "model_config":
            continue
        comment: list[str] = []
        i = node.lineno - 2  # the line above the field, 0-based
        while i >= 0 and lines[i].strip().startswith("#:"):
            comment.insert(0, lines[i].strip()[2:].strip())
            i -= 1
        trailing = lines[node.lineno - 1].split("  # ", 1)[1].strip() if "  # " in lines[node.lineno - 1] else ""
        if comment:
            doc = " ".join(comment)
            group_doc, group_name = doc, name
        elif group_doc and (name.split("_")[0] == group_name.split("_")[0] or f"``{name}``" in group_doc):
            doc = group_doc
        else:
            doc, group_doc, group_name = trailing, "", ""
        fields[name] = FieldSource(ast.unparse(node.annotation), doc)
    return fields


def _declared(model: type[BaseModel]) -> dict[str, FieldSource]:
    """Fields of ``model`` and its bases, nearest declaration first."""
    merged: dict[str, FieldSource] = {}
    for cls in reversed(model.__mro__):
        if isinstance(cls, type) and issubclass(cls, BaseModel) and cls.__module__ == config.__name__:
            for name, field in _class_fields(cls).items():
                inherited = merged.get(name)  # a subclass that only changes a default keeps the base's doc
                merged[name] = field if field.doc or inherited is None else FieldSource(field.annotation, inherited.doc)
    return merged


def _value(value: Any) -> str:
    """A default as it would be written in an environment variable."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        text = str(value)
        root = str(PROJECT_ROOT)
        return "<repo>" + text[len(root):] if text.startswith(root) else text
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def settings_rows(model: type[BaseModel] = Settings, path: tuple[str, ...] = ()) -> list[Row]:
    """One row per leaf setting, in declaration order (nested sections recursed into)."""
    rows: list[Row] = []
    declared = _declared(model)
    for name, info in model.model_fields.items():
        if _is_model(info.annotation):
            rows.extend(settings_rows(info.annotation, path + (name,)))
            continue
        src = declared.get(name, FieldSource(str(info.annotation), ""))
        full = path + (name,)
        toml = (f"[{'.'.join(path)}] " if path else "") + name
        rows.append(Row(
            env="CHURN_" + "__".join(part.upper() for part in full),
            toml=toml,
            type=src.annotation,
            default=_value(info.get_default(call_default_factory=True)),
            doc=info.description or src.doc,
        ))
    return rows


def _sections(model: type[BaseModel] = Settings, path: tuple[str, ...] = ()):
    """(path, model) for the top level and every nested section, depth first."""
    yield path, model
    for name, info in model.model_fields.items():
        if _is_model(info.annotation):
            yield from _sections(info.annotation, path + (name,))


def _markdown(text: str, code: bool = False) -> str:
    """Text for a table cell: rST ``literals`` as Markdown code, pipes escaped, angle brackets kept visible."""
    if code:
        return "`" + text.replace("|", "\\|") + "`" if text else ""
    text = re.sub(r"``(.+?)``", r"`\1`", text)
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(p.replace("|", "\\|") if p.startswith("`") else
                   p.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;") for p in parts)


def _section_doc(model: type[BaseModel]) -> str:
    doc = inspect.getdoc(model) or ""
    if model is Settings or doc == inspect.getdoc(BaseModel):
        return ""
    return " ".join(doc.split())


def render() -> str:
    """The whole page."""
    out = [
        "# Configuration reference",
        "",
        f"<!-- Generated from churn/config.py by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "Every setting lives in one typed object, `churn.config.Settings`. Values come, highest priority",
        "first, from:",
        "",
        "1. **environment variables** `CHURN_<SECTION>__<FIELD>` (two underscores between levels), e.g.",
        "   `CHURN_KAFKA__BOOTSTRAP_OVERRIDE=broker1:9092` or `CHURN_TOPICS__CDR__PARTITIONS=24`; lists,",
        "   tuples and tables are written as JSON, e.g. `CHURN_SPARK__CONF='{\"spark.executor.memory\": \"4g\"}'`;",
        "2. a **TOML file**: `churn.toml` in the working directory, or the path in `CHURN_CONFIG`; each",
        "   section is a TOML table (`[kafka]`, `[topics.cdr]`), keys are the field names;",
        "3. the **defaults** below: everything on loopback, no credentials.",
        "",
        "`churn config` prints the effective settings as JSON. `<repo>` is the repository root. Rows",
        "marked \"As above\" share the meaning of the row before them.",
        "",
        "```toml",
        "# churn.toml",
        "[kafka]",
        'bootstrap_override = "broker1:9092,broker2:9092"',
        "[redis]",
        'host = "redis.internal"',
        "port = 6379",
        "[spark]",
        'master = "spark://spark-master:7077"',
        "```",
        "",
    ]
    rows = settings_rows()
    for path, model in _sections():
        prefix = "CHURN_" + "".join(part.upper() + "__" for part in path)
        section_rows = [r for r in rows if r.env.startswith(prefix) and "__" not in r.env[len(prefix):]]
        if not section_rows:
            continue
        title = "Top level" if not path else f"`[{'.'.join(path)}]`"
        out += [f"## {title}", ""]
        doc = _section_doc(model)
        if doc:
            out += [_markdown(doc), ""]
        out += ["| environment variable | type | default | meaning |", "|---|---|---|---|"]
        previous = ""
        for r in section_rows:
            doc = "As above." if r.doc and r.doc == previous else _markdown(r.doc)
            previous = r.doc
            default = _markdown(r.default, code=True) if r.default else "*unset*"
            out.append(f"| {_markdown(r.env, code=True)} | {_markdown(r.type, code=True)} | {default} | {doc} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print docs/configuration.md, generated from churn/config.py.")
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC_PATH.exists() or DOC_PATH.read_text() != text:
            print(f"{DOC_PATH} is out of date: run `{REGENERATE}`", file=sys.stderr)
            return 1
        print(f"{DOC_PATH} is up to date")
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
