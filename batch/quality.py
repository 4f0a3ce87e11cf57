"""The quality gate: Great Expectations suites for Silver and Gold, run before anything is published.

Each suite is a list of GX 1.x expectations run against a Spark DataFrame in an
ephemeral context. ``gate`` runs all of them and returns a ``GateReport``: pass
or fail, and for every failed expectation what it checked and what it found,
in words a person can act on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from churn.contracts import CDR


@dataclass
class Check:
    suite: str
    expectation: str
    column: str | None
    success: bool
    found: str


@dataclass
class GateReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.success for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.success]

    def text(self) -> str:
        if self.passed:
            return f"quality gate passed: {len(self.checks)} expectations"
        lines = [f"quality gate FAILED: {len(self.failures)} of {len(self.checks)} expectations"]
        for c in self.failures:
            lines.append(f"  [{c.suite}] {c.expectation}({c.column or ''}): {c.found}")
        return "\n".join(lines)


def silver_suite(min_rows: int, newest_at_least_s: float):
    import great_expectations as gx

    E = gx.expectations
    return [
        E.ExpectTableRowCountToBeBetween(min_value=min_rows),
        E.ExpectColumnValuesToNotBeNull(column="event_id"),
        E.ExpectColumnValuesToBeUnique(column="event_id"),
        E.ExpectColumnValuesToNotBeNull(column="customer_id"),
        E.ExpectColumnValuesToBeInSet(column="record_type", value_set=CDR.enum("record_type")),
        E.ExpectColumnValuesToBeBetween(column="duration_s", min_value=0, max_value=86400),
        E.ExpectColumnValuesToBeBetween(column="charge", min_value=0),
        E.ExpectColumnMaxToBeBetween(column="event_time_s", min_value=newest_at_least_s),  # freshness
    ]


def customer_day_suite(expected_rows: tuple[int, int] | None):
    import great_expectations as gx

    E = gx.expectations
    suite = [
        E.ExpectColumnValuesToNotBeNull(column="customer_id"),
        E.ExpectColumnValuesToNotBeNull(column="event_date"),
        E.ExpectCompoundColumnsToBeUnique(column_list=["customer_id", "event_date"]),
        E.ExpectColumnValuesToBeBetween(column="events", min_value=1),
        E.ExpectColumnValuesToBeBetween(column="dropped_rate", min_value=0, max_value=1),
        E.ExpectColumnValuesToBeBetween(column="care_share", min_value=0, max_value=1),
    ]
    if expected_rows is not None:  # row-count change versus the last published run
        suite.append(E.ExpectTableRowCountToBeBetween(min_value=expected_rows[0], max_value=expected_rows[1]))
    return suite


def snapshot_suite():
    import great_expectations as gx

    E = gx.expectations
    return [
        E.ExpectColumnValuesToNotBeNull(column="customer_id"),
        E.ExpectColumnValuesToBeUnique(column="customer_id"),
        E.ExpectColumnValuesToBeBetween(column="events_30d", min_value=0),
        E.ExpectColumnValuesToBeBetween(column="active_days_30d", min_value=0, max_value=30),
        E.ExpectColumnValuesToBeBetween(column="dropped_rate_30d", min_value=0, max_value=1),
    ]


def _describe(result) -> str:
    r = result.result or {}
    for key in ("unexpected_count", "observed_value"):
        if key in r and r[key] is not None:
            extra = ""
            if r.get("partial_unexpected_list"):
                extra = f", e.g. {r['partial_unexpected_list'][:3]}"
            return f"{key.replace('_', ' ')} {r[key]}{extra}"
    return "failed" if not result.success else "ok"


def gate(suites: dict[str, tuple[object, list]]) -> GateReport:
    """Run ``{suite name: (spark DataFrame, expectations)}``; every expectation is reported."""
    import great_expectations as gx

    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # one "Calculating Metrics" bar per suite would flood the nightly's output; its summary table says it all
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_spark(name="lake")
    report = GateReport()
    for name, (frame, expectations) in suites.items():
        batch_def = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(f"{name}-all")
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}-gate", data=batch_def, suite=suite))
        outcome = validation.run(batch_parameters={"dataframe": frame})
        for res in outcome.results:
            cfg = res.expectation_config
            report.checks.append(Check(suite=name, expectation=cfg.type, column=cfg.kwargs.get("column")
                                       or ",".join(cfg.kwargs.get("column_list", []) or []) or None,
                                       success=bool(res.success), found=_describe(res)))
    return report
