"""The report that ends ``churn demo``: what was produced, where it went, what the scorer made of it.

``demo_report`` renders plain numbers (gathered by ``churn.cli``'s demo from the broker, the
lake and the alerts topic) as one table; ``where_next`` lists the commands and pages to look
at afterwards, one line each. Neither touches the stack, so both are tested on fixed numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich import box
from rich.table import Table

from churn.security import kcat_connection
from streaming.scoring.bands import BANDS


@dataclass(frozen=True)
class Produced:
    """What the simulator sent and what the broker holds of it."""

    cdr_messages: int
    valid: int
    invalid: int
    labels: int
    landed_cdr: int  # new CDR messages on the broker
    landed_labels: int  # new label messages on the broker
    duplicates: int = 0  # CDRs sent twice on purpose
    failed: int = 0  # messages whose delivery failed

    @property
    def accounted(self) -> bool:
        return self.landed_cdr == self.cdr_messages and self.landed_labels == self.labels and not self.failed


@dataclass(frozen=True)
class Lake:
    """The streaming job's tables once it has processed everything on the topic."""

    bronze: int
    silver: int
    quarantined: int
    customers: int  # customers with features in Feast (the feature history)
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        return self.bronze - self.silver - self.quarantined

    def accounting(self) -> str:
        """The lake's invariant with its numbers.

        >>> Lake(bronze=1010, silver=990, quarantined=15, customers=7).accounting()
        'Bronze 1,010 = Silver 990 + quarantined 15 + duplicates dropped 5'
        """
        return (f"Bronze {self.bronze:,} = Silver {self.silver:,} + quarantined {self.quarantined:,} "
                f"+ duplicates dropped {self.duplicates:,}")


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def demo_report(produced: Produced, lake: Lake | None = None, scored: int | None = None,
                alerts: dict | None = None, simulated_churners: int = 0) -> Table:
    """The demo's summary as a table: stage, what, how many.

    ``lake`` None: the streaming job had not caught up in time; ``scored`` (CDR offsets the scorer
    committed) None: nor had the scorer. ``alerts``: ``churn.cli._alert_counts`` (``by_band``,
    ``customers``, ``churners``, ``by_time``, ``missing_activity``); ``simulated_churners``: how many
    customers the simulator makes churn.
    """
    table = Table("stage", "what", "how many", box=box.SIMPLE_HEAD)
    table.columns[2].justify = "right"

    def section(stage: str, rows: list[tuple[str, str]]) -> None:
        for i, (what, n) in enumerate(rows):
            table.add_row(stage if i == 0 else "", what, n, end_section=i == len(rows) - 1)

    p = produced
    section("produced", [("CDR messages", f"{p.cdr_messages:,}"), ("valid", f"{p.valid:,}"),
                         *([("sent twice (duplicates)", f"{p.duplicates:,}")] if p.duplicates else []),
                         ("invalid", f"{p.invalid:,}"), ("churn labels", f"{p.labels:,}")])
    verdict = "[green]all accounted for[/]" if p.accounted else "[red]MISMATCH[/]"
    section("broker", [("new CDR messages", f"{p.landed_cdr:,}"), ("new label messages", f"{p.landed_labels:,}"),
                       *([("failed deliveries", f"[red]{p.failed:,}[/]")] if p.failed else []),
                       ("produced = on the broker", verdict)])
    if lake is None:
        section("lake", [("the streaming job", "[yellow]still catching up[/]")])
    else:
        reasons = sorted(lake.quarantined_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
        section("lake", [("quarantined", f"{lake.quarantined:,}"),
                         *((f"  {reason}", f"{n:,}") for reason, n in reasons)])
        section("Feast", [("customers with features", f"{lake.customers:,}")])
    if scored is None or alerts is None:
        section("scorer", [("CDR offsets scored (whole topic)", "[yellow]still catching up[/]")])
        return table
    section("scorer", [("CDR offsets scored (whole topic)", f"{scored:,}")])
    by_band = sorted(alerts["by_band"].items(), key=lambda kv: -BANDS.index(kv[0]))
    section("alerts", [*((f"band {band}", f"{n:,}") for band, n in by_band),
                       ("alerted customers", f"{alerts['customers']:,}"),
                       ("of them simulated churners",
                        f"{alerts['churners']:,} ({_share(alerts['churners'], alerts['customers'])})"),
                       ("simulated churners in all", f"{simulated_churners:,}"),
                       ("raised by time (gone quiet)", f"{alerts['by_time']:,}"),
                       ("citing missing activity", f"{alerts['missing_activity']:,}")])
    return table


def where_next(settings) -> list[str]:
    """Commands and pages to explore the running system, from the settings, one line each. Print them
    unwrapped (``soft_wrap=True``) so that each command stays one copyable line."""
    p = settings.prometheus
    prometheus = f"http://{p.host}:{p.port}"
    rows = (("live view", "churn watch"),
            ("alerts, live", "churn alerts --follow"),
            ("services", "churn stack status"),
            ("Prometheus", f"{prometheus}/graph (its alerts: {prometheus}/alerts)"),
            ("Grafana", f"http://{p.host}:{p.grafana_port} (with Docker Compose)"),
            ("dead letters", f"kcat {kcat_connection(settings, 'admin')} -t {settings.topics.cdr_dlq.name} "
                             "-C -o -3 -e -f '%h %s\\n'"),
            ("stop it all", "churn stack down"))
    return [f"  {what:<13} {where}" for what, where in rows]
