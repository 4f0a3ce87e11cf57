"""The demo's closing report, rendered from fixed numbers (no stack): rows, values, and lines that stay whole
on an 80-column console."""

from __future__ import annotations

import json
import re

from rich.console import Console

from churn.config import Settings
from churn.demo_report import Lake, Produced, demo_report, where_next

PRODUCED = Produced(cdr_messages=16_234, valid=16_072, invalid=162, labels=118, landed_cdr=16_234,
                    landed_labels=118)
LAKE = Lake(bronze=48_700, silver=48_209, quarantined=486, customers=7_043,
            quarantined_by_reason={"missing_field:customer_id": 200, "wrong_type:roaming": 150,
                                   "late_event:event_time": 136})
ALERTS = {"alerts": 240, "by_band": {"high": 150, "critical": 90}, "customers": 180, "churners": 135,
          "by_time": 12, "missing_activity": 0}


def render(renderable, width: int = 80) -> list[str]:
    console = Console(record=True, width=width, file=open("/dev/null", "w"))
    console.print(renderable)
    return [line.rstrip() for line in console.export_text().splitlines()]


def rows(lines: list[str]) -> list[list[str]]:
    """The table's body rows as cells (split on runs of 2+ spaces), blank lines and the header left out."""
    return [re.split(r"\s{2,}", line.strip()) for line in lines[3:] if line.strip()]


def test_the_report_has_a_row_per_figure_with_its_value():
    lines = render(demo_report(PRODUCED, LAKE, 48_700, ALERTS, simulated_churners=1_869))
    assert re.split(r"\s{2,}", lines[1].strip()) == ["stage", "what", "how many"]
    assert rows(lines) == [
        ["produced", "CDR messages", "16,234"],
        ["valid", "16,072"],
        ["invalid", "162"],
        ["churn labels", "118"],
        ["broker", "new CDR messages", "16,234"],
        ["new label messages", "118"],
        ["produced = on the broker", "all accounted for"],
        ["lake", "quarantined", "486"],
        ["missing_field:customer_id", "200"],
        ["wrong_type:roaming", "150"],
        ["late_event:event_time", "136"],
        ["Feast", "customers with features", "7,043"],
        ["scorer", "CDR offsets scored (whole topic)", "48,700"],
        ["alerts", "band critical", "90"],
        ["band high", "150"],
        ["alerted customers", "180"],
        ["of them simulated churners", "135 (75%)"],
        ["simulated churners in all", "1,869"],
        ["raised by time (gone quiet)", "12"],
        ["citing missing activity", "0"],
    ]
    assert max(len(line) for line in lines) <= 80


def test_what_did_not_arrive_is_a_mismatch_and_duplicates_and_failures_get_rows():
    short = Produced(cdr_messages=1_000, valid=950, invalid=10, duplicates=40, labels=5, landed_cdr=998,
                     landed_labels=5, failed=2)
    assert not short.accounted
    got = rows(render(demo_report(short)))
    assert got[:5] == [["produced", "CDR messages", "1,000"], ["valid", "950"], ["sent twice (duplicates)", "40"],
                       ["invalid", "10"], ["churn labels", "5"]]
    assert got[5:9] == [["broker", "new CDR messages", "998"], ["new label messages", "5"],
                        ["failed deliveries", "2"], ["produced = on the broker", "MISMATCH"]]
    # neither the streaming job nor the scorer caught up in time: said so, no figures of theirs
    assert got[9:] == [["lake", "the streaming job", "still catching up"],
                       ["scorer", "CDR offsets scored (whole topic)", "still catching up"]]


def test_no_alerted_customer_gives_no_share():
    none = {**ALERTS, "by_band": {"high": 0, "critical": 0}, "customers": 0, "churners": 0, "by_time": 0}
    got = rows(render(demo_report(PRODUCED, LAKE, 48_700, none, simulated_churners=1_869)))
    assert ["alerts", "band critical", "0"] in got and ["band high", "0"] in got
    assert ["of them simulated churners", "0 (-)"] in got


def test_the_lake_accounting_line_is_the_one_the_end_to_end_test_reads():
    assert LAKE.duplicates == 5
    line = f"lake /tmp/lake: {LAKE.accounting()}"
    found = re.search(r"Bronze ([\d,]+) = Silver ([\d,]+) \+ quarantined ([\d,]+) \+ duplicates dropped ([\d,]+)",
                      line)
    assert found and found.groups() == ("48,700", "48,209", "486", "5")


def test_where_next_names_the_commands_and_urls_of_the_settings():
    s = Settings(prometheus={"host": "10.0.0.5", "port": 9090, "grafana_port": 3000},
                 kafka={"bootstrap_override": "broker-1.example.internal:9092,broker-2.example.internal:9092"})
    lines = where_next(s)
    assert lines == [
        "  live view     churn watch",
        "  alerts, live  churn alerts --follow",
        "  services      churn stack status",
        "  Prometheus    http://10.0.0.5:9090/graph (its alerts: http://10.0.0.5:9090/alerts)",
        "  Grafana       http://10.0.0.5:3000 (with Docker Compose)",
        "  dead letters  kcat -b broker-1.example.internal:9092,broker-2.example.internal:9092 -t cdr.dlq -C -o -3 "
        "-e -f '%h %s\\n'",
        "  stop it all   churn stack down",
    ]
    # printed as the demo prints them, a command longer than the console stays one line
    console = Console(record=True, width=80, file=open("/dev/null", "w"))
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    assert console.export_text().splitlines() == lines


def test_quarantined_rows_by_reason_most_first(tmp_path):
    import pandas as pd
    from deltalake import write_deltalake

    from churn.lake import rows_by

    write_deltalake(str(tmp_path / "quarantine"),
                    pd.DataFrame({"reason": ["malformed_json", "wrong_type:roaming", "wrong_type:roaming",
                                             "late_event:event_time", "wrong_type:roaming", "malformed_json"]}))
    assert rows_by(tmp_path / "quarantine", "reason") == {"wrong_type:roaming": 3, "malformed_json": 2,
                                                          "late_event:event_time": 1}
    assert rows_by(tmp_path / "nothing", "reason") == {}


class _Message:
    def __init__(self, value: dict):
        self._value = json.dumps(value).encode()

    def error(self):
        return None

    def value(self) -> bytes:
        return self._value


class _Consumer:
    """Gives the alerts once, then nothing."""

    def __init__(self, alerts: list[dict]):
        self.pending = [_Message(a) for a in alerts]

    def assign(self, partitions):
        pass

    def consume(self, n, timeout):
        got, self.pending = self.pending[:n], self.pending[n:]
        return got

    def close(self):
        pass


def test_alert_counts_count_by_band_customers_churners_time_and_missing_activity(monkeypatch):
    import churn.transport
    from churn.cli import _alert_counts
    from churn.model.inputs import NO_ACTIVITY

    def alert(customer, band, trigger="cdr", reason="14 calls to customer care in the last 7 days"):
        return {"customer_id": customer, "band": band, "trigger": trigger, "reasons": [{"text": reason}]}

    alerts = [alert("A", "high"), alert("A", "critical"), alert("B", "critical", trigger="time"),
              alert("C", "critical"), alert("D", "high", reason=NO_ACTIVITY)]
    monkeypatch.setattr(churn.transport, "consumer", lambda *a, **k: _Consumer(alerts))
    monkeypatch.setattr(churn.transport, "end_offsets", lambda s, topic, **k: {0: len(alerts)})
    counts = _alert_counts(Settings(), churners={"A", "C", "Z"})
    assert counts == {"alerts": 5, "by_band": {"high": 2, "critical": 3}, "customers": 4, "churners": 2,
                      "by_time": 1, "missing_activity": 1}
    # every band that raises alerts has a count, 0 if none came
    monkeypatch.setattr(churn.transport, "consumer", lambda *a, **k: _Consumer([]))
    quiet = _alert_counts(Settings(scoring={"alert_min_band": "medium"}), churners=set())
    assert quiet["by_band"] == {"medium": 0, "high": 0, "critical": 0} and quiet["alerts"] == 0
