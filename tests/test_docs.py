"""The documentation stays true: the configuration reference is what the settings generate, every relative
link in the README and in docs/ leads to an existing file (and heading), and the runbook covers every alert."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from churn.config import PROJECT_ROOT
from churn.config_reference import DOC_PATH, REGENERATE, render, settings_rows

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def test_configuration_reference_is_up_to_date():
    assert DOC_PATH.read_text() == render(), f"run `{REGENERATE}`"


def test_configuration_reference_names_every_setting_once():
    rows = settings_rows()
    envs = [r.env for r in rows]
    assert len(envs) == len(set(envs))
    text = DOC_PATH.read_text()
    for env in envs:
        assert f"`{env}`" in text
    assert "CHURN_KAFKA__BOOTSTRAP_OVERRIDE" in envs and "CHURN_TOPICS__CDR__PARTITIONS" in envs


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def _links(path: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", path.read_text()))


def test_slug_follows_github():
    assert _slug("Degraded mode, scale-out, partitioning") == "degraded-mode-scale-out-partitioning"
    assert _slug("What `make demo` shows") == "what-make-demo-shows"
    assert _slug("`[topics.cdr]`") == "topicscdr"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_relative_links_lead_to_existing_files_and_headings(page: Path):
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_runbook_has_a_row_for_every_alert_rule():
    rules = yaml.safe_load((PROJECT_ROOT / "monitoring/prometheus/rules/alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    runbook = (PROJECT_ROOT / "docs/operations.md").read_text().split("## Runbook", 1)[1]
    rows = set(re.findall(r"^\| `(\w+)`", runbook, re.M))
    assert alerts and alerts == rows, {"without a runbook row": alerts - rows, "not an alert": rows - alerts}
