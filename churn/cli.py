"""``churn``: the command line of the real-time churn-scoring system.

Every subcommand reads the one settings object (``churn config`` shows it):
environment variables ``CHURN_<SECTION>__<FIELD>`` and an optional ``churn.toml``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from churn import storage
from churn.config import Settings, get_settings
from churn.stop_request import StopRequest

app = typer.Typer(
    help="Real-time churn scoring for telecom operators: CDRs on Kafka in, churn-risk alerts out.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
stack_app = typer.Typer(help="Run the local stack (Kafka, Redis, Prometheus) as processes of ours, no Docker.",
                        no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics of the system.", no_args_is_help=True)
schemas_app = typer.Typer(help="Event contracts in schemas/: validate events, render their docs.",
                          no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(topics_app, name="topics")
app.add_typer(schemas_app, name="schemas")
features_app = typer.Typer(help="The Feast feature store (Redis online store, Delta/file offline store).",
                           no_args_is_help=True)
app.add_typer(features_app, name="features")
model_app = typer.Typer(help="The model registry: the champion the scorer uses, challengers, model cards.",
                        no_args_is_help=True)
app.add_typer(model_app, name="model")
batch_app = typer.Typer(help="Nightly jobs: Gold rebuild behind a quality gate, retrain and promotion.",
                        no_args_is_help=True)
app.add_typer(batch_app, name="batch")

console = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)  # a message may hold [brackets]
    raise typer.Exit(code)


# -- config -------------------------------------------------------------------------------
@app.command()
def config() -> None:
    """Print the effective settings (defaults, churn.toml, CHURN_* environment) as JSON."""
    console.print_json(json.dumps(get_settings().describe()))


# -- stack --------------------------------------------------------------------------------
@stack_app.command("up")
def stack_up(
    topics: bool = typer.Option(True, help="Also create the topics (idempotent)."),
    brokers: Optional[int] = typer.Option(
        None, min=1, help="Kafka nodes (KRaft broker and controller each); default kafka.brokers (1). Clients must "
                          "know it too: export CHURN_KAFKA__BROKERS=N."),
) -> None:
    """Start Kafka (KRaft), Redis and Prometheus on loopback and wait until each is ready.

    Harmless to repeat: services already running are left as they are. A port
    taken by another process is an error that names the setting to change.
    """
    s = get_settings()
    if brokers is not None and brokers != s.kafka.brokers:
        os.environ["CHURN_KAFKA__BROKERS"] = str(brokers)  # the settings as if exported (replication factor too)
        s = Settings()
        err.print(f"{brokers} Kafka nodes: export CHURN_KAFKA__BROKERS={brokers} so that every client bootstraps "
                  "from all of them")
    _bring_up(s, topics)


def _bring_up(s, topics: bool = True) -> None:
    """Start the stack (and create the topics), saying what was done."""
    from churn import stack
    from churn.transport import ensure_topics

    try:
        for name, what in stack.up(s):
            console.print(f"{name:<11} {what}")
    except stack.StackError as exc:
        _fail(str(exc))
    if topics:
        created = ensure_topics(s)
        width = max((len(name) for name, _ in created), default=0)
        for name, what in created:
            console.print(f"topic {name:<{width}} {what}")


@stack_app.command("down")
def stack_down() -> None:
    """Stop exactly the processes `stack up` started (by PID); data stays in the run directory."""
    from churn import stack

    for name, what in stack.down(get_settings()):
        console.print(f"{name:<11} {what}")


@stack_app.command("status")
def stack_status() -> None:
    """Say what runs where: state, PID, address and log of each service."""
    from churn import stack

    table = Table(title=f"local stack ({get_settings().run_dir})")
    for col in ("service", "state", "pid", "address", "log"):
        table.add_column(col)
    rows = stack.status(get_settings())
    for r in rows:
        table.add_row(r.name, r.state, str(r.pid or "-"), r.address, r.log)
    console.print(table)


@stack_app.command("compose-secrets")
def stack_compose_secrets(
    mounts: Path = typer.Option(Path("/etc/churn"), help="Where the containers mount the secret volumes."),
    kafka_host: str = typer.Option("kafka", help="The broker's host name in the compose network."),
    redis_host: str = typer.Option("redis", help="Redis' host name in the compose network."),
) -> None:
    """docker-compose.yml's secrets: a CA, the broker's and Redis' certificates, a password per principal
    (kept in the run directory, generated once), and each container's files under MOUNTS.

    Compose's one-shot `secrets` service runs this before the broker and Redis start.
    """
    from churn.stack.compose import write_secrets

    written = write_secrets(get_settings(), mounts, kafka_host, redis_host)
    for folder in sorted({p.parent for p in written}):
        console.print(f"{folder}: {sum(p.parent == folder for p in written)} files")


# -- topics -------------------------------------------------------------------------------
@topics_app.command("create")
def topics_create() -> None:
    """Create the system's topics with their partition counts and configs (idempotent)."""
    from churn.transport import ensure_topics

    for name, what in ensure_topics(get_settings()):
        console.print(f"{name:<14} {what}")


@topics_app.command("acls")
def topics_acls(
    apply: bool = typer.Option(False, "--apply", help="Create them on the cluster (as the admin principal)."),
) -> None:
    """Each component's Kafka ACLs: the least-privilege policy a secured stack runs with (`churn stack up`
    applies it there; --apply applies it to the cluster in the settings)."""
    from churn.stack.security import acl_bindings, apply_acls

    table = Table(title="Kafka ACLs (allow; everything else is denied)")
    for col in ("principal", "resource", "name", "pattern", "operation"):
        table.add_column(col)
    for b in acl_bindings(get_settings()):
        table.add_row(b.principal, b.restype.name.lower(), b.name, b.resource_pattern_type.name.lower(),
                      b.operation.name.lower())
    console.print(table)
    if apply:
        console.print(f"{apply_acls(get_settings())} ACLs in force")


@topics_app.command("list")
def topics_list() -> None:
    """Each topic: partitions and messages (end offsets)."""
    from churn.watch import FlowWatcher, render

    w = FlowWatcher(get_settings())
    console.print(render(w.sample(), title="topics"))
    w.close()


# -- schemas ------------------------------------------------------------------------------
@schemas_app.command("docs")
def schemas_docs(check: bool = typer.Option(False, help="Fail if schemas/README.md is out of date.")) -> None:
    """Render schemas/README.md (field tables, examples, kcat one-liners) from the schemas."""
    from churn.schema_docs import README_PATH, render_readme

    text = render_readme()
    if check:
        if README_PATH.read_text() != text:
            _fail(f"{README_PATH} is out of date: run `churn schemas docs`")
        console.print(f"{README_PATH} is up to date")
        return
    README_PATH.write_text(text)
    console.print(f"wrote {README_PATH}")


monitoring_app = typer.Typer(help="Monitoring: Grafana dashboards (as code) and Prometheus rules.", no_args_is_help=True)
app.add_typer(monitoring_app, name="monitoring")


@monitoring_app.command("dashboards")
def monitoring_dashboards(check: bool = typer.Option(False, help="Fail if a dashboard JSON file is out of date.")) -> None:
    """Write monitoring/grafana/dashboards/*.json from monitoring/grafana/dashboards.py."""
    from monitoring.grafana.dashboards import write

    stale = write(check=check)
    if check and stale:
        _fail("out of date: " + ", ".join(p.name for p in stale) + "; run `churn monitoring dashboards`")
    console.print("dashboards up to date" if not stale else "wrote " + ", ".join(p.name for p in stale))


@monitoring_app.command("check")
def monitoring_check() -> None:
    """Run promtool on the Prometheus configs, the rules and the rules' unit tests."""
    import subprocess
    import tempfile

    from churn.config import PROJECT_ROOT
    from churn.stack.services import prometheus_config

    folder = PROJECT_ROOT / "monitoring" / "prometheus"
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "prometheus.yml"
        local.write_text(prometheus_config(get_settings()))
        runs = [["promtool", "check", "config", str(local)],
                ["promtool", "check", "rules", *map(str, sorted((folder / "rules").glob("*.yml")))],
                ["promtool", "test", "rules", str(folder / "tests" / "alerts_test.yml")]]
        for cmd in runs:
            done = subprocess.run(cmd, capture_output=True, text=True)
            console.print(f"$ {' '.join(cmd[:3])} ...: {'ok' if done.returncode == 0 else 'FAILED'}")
            if done.returncode:
                _fail(done.stdout + done.stderr)


@schemas_app.command("validate")
def schemas_validate(
    contract: str = typer.Argument("cdr", help="cdr, churn_risk or churn_label"),
    path: Path = typer.Argument(Path("-"), help="File of JSON events, one per line ('-': stdin)."),
) -> None:
    """Validate events line by line; print the reason for each invalid one. Exit 1 if any is invalid."""
    from churn.contracts import CONTRACTS

    if contract not in CONTRACTS:
        _fail(f"unknown contract {contract!r}; known: {', '.join(CONTRACTS)}")
    stream = sys.stdin if str(path) == "-" else path.open()
    bad = total = 0
    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        total += 1
        _, violation = CONTRACTS[contract].parse(line.encode())
        if violation is not None:
            bad += 1
            console.print(f"line {lineno}: {violation.reason}: {violation.detail}", highlight=False)
    console.print(f"{total - bad} valid, {bad} invalid")
    raise typer.Exit(1 if bad else 0)


# -- simulate -----------------------------------------------------------------------------
def _parse_utc(value: str) -> float:
    """ISO date-time to epoch seconds; no zone means UTC."""
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"not an ISO date-time: {value!r} (e.g. 2026-11-01T00:00:00Z)")
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


@app.command()
def simulate(
    rate: Optional[float] = typer.Option(None, help="Live mode: valid CDRs/s to produce, stamped with the current time (bad and duplicate messages come on top)."),
    days: Optional[float] = typer.Option(None, help="Backfill: produce this many days of history first, as fast as possible."),
    duration: Optional[float] = typer.Option(None, help="Live mode: stop after this many seconds (default: run until Ctrl-C)."),
    end: Optional[str] = typer.Option(None, help="Backfill only: end of the history (ISO date-time, UTC); default now. Fix it for a repeatable stream."),
    horizon_days: float = typer.Option(60.0, help="Live mode: simulated days over which churn and retention labels fall."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default: simulator.seed in the settings). Same seed and window, same stream."),
    customers: Optional[int] = typer.Option(None, help="Use only the first N customers of the table."),
    bad_ratio: float = typer.Option(0.0, help="Share of CDR messages that are invalid (each kind of contract violation in turn)."),
    duplicate_ratio: float = typer.Option(0.0, help="Share of CDRs sent twice (same event_id), as a retrying producer would."),
    data_scale: float = typer.Option(1.0, help="Multiply every customer's data-session volume (a drift drill: "
                                                "watch churn_drift_psi of the data_mb features rise)."),
    json_report: bool = typer.Option(False, "--json", help="Print the final report as JSON."),
) -> None:
    """Produce CDRs and churn labels for the IBM Telco customers to Kafka.

    Backfill (--days N): N days of history up to --end, as fast as the broker takes it.
    Live (--rate N): N events/s with current event times, holding the rate or saying it can't;
    simulated time runs faster than the clock so that churners drift visibly.
    Both: history first, then live. Most churners (Churn=Yes) use less, call customer care more,
    drop more calls and call off-net more in the weeks before their churn label (how much:
    simulator.signal_strength); some leave without warning; anyone can go through a billing
    dispute, a holiday or a week of bad coverage.
    """
    from churn.simulator import Simulator
    from churn.simulator.produce import ProduceReport, StepProducer, run_backfill, run_live

    if rate is None and days is None:
        _fail("say --rate N (live), --days N (backfill), or both")
    s = get_settings()
    now = time.time()
    end_s = _parse_utc(end) if end else now
    if rate is not None and end:
        _fail("--end is for a pure backfill; live mode runs up to the current time")
    start_s = end_s - (days or 0.0) * 86400.0
    horizon_end = end_s + (horizon_days * 86400.0 if rate is not None else 0.0)
    sim = Simulator(
        seed=s.simulator.seed if seed is None else seed, start_s=start_s, end_s=horizon_end,
        precursor_days=s.simulator.precursor_days, customers=customers, csv_path=_telco_table(s),
        bad_ratio=bad_ratio, duplicate_ratio=duplicate_ratio, mode="live" if rate else "backfill",
        data_scale=data_scale, signal_strength=s.simulator.signal_strength,
        labels_from_s=end_s if rate is not None else None,
    )
    _start_metrics(s.simulator.metrics_host, s.simulator.metrics_port)
    report = ProduceReport(run_id=sim.run_id.decode())
    sender = StepProducer(s, report)
    stop = StopRequest.on_signals(signal.SIGTERM)
    try:
        if days:
            from tqdm import tqdm

            with tqdm(total=int(days * 24), unit="h", desc="backfill", disable=not sys.stderr.isatty()) as bar:
                run_backfill(s, sim, until_s=end_s, sender=sender, on_step=lambda step, r: bar.update(1))
            phase = report.phases[-1]
            err.print(f"backfill: {phase['cdr_messages']:,} CDRs in {phase['elapsed_s']:.1f} s "
                      f"({phase['rate_per_s']:,.0f}/s)")
        if rate:
            err.print(f"live: {rate:g} events/s to {s.topics.cdr.name} on {s.kafka.bootstrap_servers} (Ctrl-C stops)")
            run_live(s, sim, rate, duration_s=duration, stop=stop, sender=sender, warn=lambda m: err.print(m))
    except KeyboardInterrupt:
        sender.flush()
    summary = report.summary()
    console.print_json(json.dumps(summary)) if json_report else console.print(summary)
    if report.failed:
        _fail(f"{report.failed} messages were not delivered: {report.first_error}")


def _start_metrics(host: str, port: int) -> None:
    if port <= 0:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        err.print(f"[yellow]metrics endpoint not started: port {port} in use ({exc}); "
                  f"set CHURN_SIMULATOR__METRICS_PORT[/]")


# -- features ----------------------------------------------------------------------------
@features_app.command("apply")
def features_apply() -> None:
    """Register feature_repo/ with Feast, write <run_dir>/feast/feature_store.yaml, load the customer profiles
    (profiles.source with profiles.mapping; default: the bundled Telco sample) into the history and Redis."""
    from churn.feature_store import apply

    for name in apply(get_settings()):
        console.print(f"applied {name}")


# -- profiles ----------------------------------------------------------------------------
profiles_app = typer.Typer(help="Customer profiles: the operator's extracts into the profile history and Feast.",
                           no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")


def _telco_table(s):
    from churn.profiles import telco_table

    return telco_table(s)


@profiles_app.command("load")
def profiles_load(
    file: Path = typer.Argument(..., help="CSV or Parquet extract: one row per customer (or per version of one)."),
    mapping: Optional[Path] = typer.Option(None, help="TOML file mapping the contract's fields onto the extract's "
                                           "columns (feature_repo/mappings/README.md); default: profiles.mapping, "
                                           "else the Telco sample's."),
    materialize: bool = typer.Option(True, help="Put every customer's newest profile into the online store."),
    show: int = typer.Option(20, help="How many invalid rows to print (all of them are quarantined)."),
) -> None:
    """Load a customer extract: each row validated with the customer_profile contract.

    Valid rows are appended to the profile history (every version kept, keyed by customer_id + updated_at:
    training joins the profile as it was at each observation); invalid rows are printed with their reason
    and kept, with it, in the lake table profile_quarantine. Exit 1 if any row was invalid (the valid ones
    are loaded all the same).
    """
    from churn.profiles import MappingError, load

    s = get_settings()
    try:
        report = load(s, file, mapping or s.profiles.mapping, materialize=materialize)
    except (MappingError, FileNotFoundError) as exc:
        _fail(str(exc))
    for bad in report.invalid[:show]:
        console.print(f"row {bad.row} ({bad.customer_id or '?'}): {bad.reason}: {bad.detail}", highlight=False,
                      soft_wrap=True)
    if len(report.invalid) > show:
        console.print(f"... and {len(report.invalid) - show} more invalid rows", highlight=False)
    reasons = ", ".join(f"{r} {n}" for r, n in report.reasons.most_common())
    console.print(f"{report.source}: {report.rows} rows, {report.loaded} new versions loaded, "
                  f"{report.already_loaded} already loaded, {len(report.invalid)} invalid"
                  + (f" ({reasons}; quarantined)" if reasons else "")
                  + f". History: {report.history_rows} versions of {report.customers} customers"
                  + ("; newest materialized online." if report.materialized else "."), highlight=False,
                  soft_wrap=True)
    raise typer.Exit(1 if report.invalid else 0)


# -- stream ------------------------------------------------------------------------------
@app.command()
def stream(
    available_now: bool = typer.Option(False, "--available-now",
                                       help="Process what is in Kafka now, then exit (catch-up / batch mode)."),
    master: Optional[str] = typer.Option(None, help="Spark master (default: spark.master in the settings, local[2])."),
) -> None:
    """Run the Spark streaming job: Kafka `cdr` -> Bronze, Silver, quarantine Delta tables and `cdr.dlq`.

    Checkpoints and tables live under streaming.checkpoint_dir and streaming.lake_dir; restarting
    resumes exactly where it stopped. SIGTERM or Ctrl-C stops the queries cleanly.
    """
    import logging

    from streaming.job import StreamingJob

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    s = get_settings()
    if master:
        s = s.model_copy(update={"spark": s.spark.model_copy(update={"master": master})})
    job = StreamingJob(s, available_now=available_now)
    _start_metrics(s.streaming.metrics_host, s.streaming.metrics_port)
    stopping = StopRequest.on_signals(signal.SIGTERM, signal.SIGINT)

    def failed_queries() -> list:
        return [q for q in job.queries if not q.isActive and q.exception() is not None]

    code = 1
    try:
        job.start()
        err.print(f"streaming from {s.topics.cdr.name} on {s.kafka.bootstrap_servers} into {storage.lake_url(s)}")
        # one query failing (the lake unreachable past its retries) ends the job with an error, for its
        # supervisor to restart it: the other queries running on would leave the failed one's table behind
        while (not stopping.is_set() and any(q.isActive for q in job.queries) and not failed_queries()
               and job.failure() is None):
            stopping.wait(0.5)
        failed = failed_queries()
        job.stop()
        if job.failure() is not None:
            _fail(f"query silver failed: a batch's work on the driver did not end: {job.failure()}")
        for q in failed:
            _fail(f"query {q.name} failed: {q.exception()}")
        err.print("stopped")
        code = 0
    except typer.Exit as done:
        code = done.exit_code
    except BaseException:  # e.g. the Spark JVM gone (killed with the process group): py4j errors
        logging.getLogger("churn.stream").exception("the streaming job ended with an error")
    finally:
        _exit_at_once(code)


def _exit_at_once(code: int) -> None:
    """End the process with ``code`` now, without the interpreter's finalization. The streaming job's driver
    holds py4j connections whose finalizers log; after its Spark JVM died first (a SIGTERM to the whole
    process group), a finalizer waited forever for a logging lock held by a thread already frozen by
    the shutdown, and the process lived on holding its metrics port. The checkpoints and tables are
    committed by then; only the output streams need flushing."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


# -- models and scoring ---------------------------------------------------------------
@model_app.command("bootstrap")
def model_bootstrap(
    customers: int = typer.Option(3000, help="Simulated customers to learn from."),
    days: float = typer.Option(60.0, help="Days of simulated history."),
    if_missing: bool = typer.Option(False, "--if-missing", help="Do nothing if there is a champion already."),
) -> None:
    """Train the first champion from the customer table and a simulated history, and promote it."""
    from churn.model.bootstrap import train_bootstrap
    from churn.model.registry import ModelRegistry

    s = get_settings()
    registry = ModelRegistry(s.scoring.registry_dir)
    if if_missing and registry.champion_version():
        console.print(f"champion {registry.champion_version()} already in {registry.root}")
        return
    with console.status(f"simulating {days:g} days of {customers} customers and training"):
        version = train_bootstrap(s, customers=customers, days=days)
    card = registry.card(version)
    console.print(f"champion {version}: validation ROC AUC {card['validation']['roc_auc']}, "
                  f"PR AUC {card['validation']['pr_auc']} on {card['validation']['rows']} later rows")


@model_app.command("list")
def model_list() -> None:
    """Every model version with its validation metrics and training source (synthetic or labels); the champion
    is marked."""
    from churn.model.registry import ModelRegistry, training_source

    registry = ModelRegistry(get_settings().scoring.registry_dir)
    champion = registry.champion_version()
    table = Table("version", "champion", "kind", "trained on", "ROC AUC", "PR AUC")
    for v in registry.versions():
        card = registry.card(v)
        val = card.get("validation", {})
        table.add_row(v, "*" if v == champion else "", str(card.get("kind", "")), training_source(card),
                      str(val.get("roc_auc", "")), str(val.get("pr_auc", "")))
    console.print(table)


@model_app.command("promote")
def model_promote(version: str, reason: str = typer.Option("promoted by hand", help="Recorded in history.jsonl.")) -> None:
    """Make VERSION the champion (running scorers switch to it within a second, no restart)."""
    from churn.model.registry import ModelRegistry

    try:
        ModelRegistry(get_settings().scoring.registry_dir).promote(version, reason=reason)
    except FileNotFoundError as exc:
        _fail(str(exc))
    console.print(f"champion is now {version}")


@app.command()
def score(loglevel: str = typer.Option("warn", help="Faust/worker log level: debug, info, warn, error.")) -> None:
    """Run a scoring worker: CDRs from `cdr`, features from Feast, scores to `churn-scores`, alerts to `churn-alerts`.

    Start several with the same settings to share the partitions. Exactly once: scores, alerts and
    consumed offsets commit in one Kafka transaction per commit interval. SIGTERM stops it after committing.
    """
    from churn.model.tree import import_xgboost_without_sklearn

    import_xgboost_without_sklearn()  # the worker only scores: ~130 MB less resident (see there)
    from streaming.scoring.app import run

    s = get_settings()
    from churn.model.registry import ModelRegistry

    if ModelRegistry(s.scoring.registry_dir).champion_version() is None:
        _fail(f"no champion model in {s.scoring.registry_dir}: run `churn model bootstrap` first")
    run(s, loglevel=loglevel)


@app.command()
def serve() -> None:
    """Run the scoring API (FastAPI on uvicorn) on `api.host`:`api.port`, docs at /docs.

    Committed scores and alerts (read from `churn-scores` and `churn-alerts`), live scores from
    Feast's online features with per-feature explanations, customers at risk, the model registry,
    /healthz, /readyz and Prometheus /metrics. Reloads the champion when a new one is promoted.
    """
    from churn.api.app import serve as run_api

    s = get_settings()
    console.print(f"scoring API on http://{s.api.host}:{s.api.port} (docs: /docs)")
    run_api(s)


@app.command()
def dashboard() -> None:
    """Run the retention dashboard (Streamlit) on `api.dashboard_host`:`api.dashboard_port`.

    Pages: customers at risk now, one customer (risk history, reasons as a waterfall, daily behaviour,
    profile), the model (champion, selection, ROC and calibration, online AUC, drift) and the pipeline
    (lag, freshness, dead letters). It reads the scoring API (`churn serve`, `api.url`) and Prometheus.
    """
    import os

    s = get_settings()
    script = Path(__file__).resolve().parent / "dashboard" / "app.py"
    console.print(f"dashboard on http://{s.api.dashboard_host}:{s.api.dashboard_port} (reads {s.api.url})")
    sys.stdout.flush()
    # Streamlit replaces this process, so signals (a supervisor's SIGTERM) reach it directly
    os.execv(sys.executable, [
        sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(s.api.dashboard_port),
        "--server.address", s.api.dashboard_host, "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--global.developmentMode", "false", "--client.toolbarMode", "minimal"])


@app.command()
def alerts(
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new alerts (Ctrl-C to stop)."),
    last: int = typer.Option(10, help="Start with the last N alerts of each partition (0: only new ones)."),
    seconds: Optional[float] = typer.Option(None, help="With --follow: stop after this many seconds."),
) -> None:
    """Print churn-risk alerts from `churn-alerts` (committed ones only), newest last."""
    from confluent_kafka import TopicPartition

    from churn.transport import consumer, end_offsets

    s = get_settings()
    topic = s.topics.churn_alerts.name
    c = consumer(s, group_id=f"churn-alerts-cli-{time.time_ns()}", role="alerts",
                 **{"isolation.level": "read_committed"})

    def show(value: bytes) -> None:
        a = json.loads(value)
        why = "; ".join(r["text"] for r in a.get("reasons", []))
        console.print(f"{a['emitted_at']}  [bold]{a['band']:>8}[/] {a['risk']:.2f}  {a['customer_id']}  "
                      f"(was {a.get('previous_band') or '-'}; {why})", highlight=False)

    try:
        ends = end_offsets(s, topic, role="alerts")
        if last:
            newest = [m for msgs in _last_messages(c, topic, ends, last).values() for m in msgs]
            for m in sorted(newest, key=lambda m: (m.timestamp()[1], m.partition(), m.offset())):
                show(m.value())
        if not follow:
            return
        c.assign([TopicPartition(topic, p, end) for p, end in ends.items()])
        deadline = None if seconds is None else time.monotonic() + seconds
        while deadline is None or time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                show(msg.value())
    except KeyboardInterrupt:
        pass
    finally:
        c.close()


def _last_messages(c, topic: str, ends: dict[int, int], n: int, idle_s: float = 1.0) -> dict[int, list]:
    """The last ``n`` messages before ``ends`` of each partition that ``c`` can read. Offsets are not
    messages: a transactional topic also holds commit markers, and the messages and markers of aborted
    transactions. So each partition is read from ``2n`` offsets before its end, then from further back
    (4 times as far each round) until it gave ``n`` messages or was read from its start."""
    from confluent_kafka import TopicPartition

    got: dict[int, list] = {p: [] for p in ends}
    back = {p: 2 * n for p in ends}
    todo = {p for p, end in ends.items() if end > 0}
    while todo:
        c.assign([TopicPartition(topic, p, max(ends[p] - back[p], 0)) for p in todo])
        read: dict[int, dict] = {p: {} for p in todo}  # offset -> message
        past_end: set[int] = set()  # partitions that delivered a message at or after their end
        idle_since = time.monotonic()
        while past_end < todo and time.monotonic() - idle_since < idle_s:
            for m in c.consume(1000, timeout=0.2):
                if m.error() is not None or m.partition() not in todo:
                    continue
                idle_since = time.monotonic()
                if m.offset() < ends[m.partition()]:
                    read[m.partition()][m.offset()] = m
                else:
                    past_end.add(m.partition())
        for p in todo:
            got[p] = [read[p][o] for o in sorted(read[p])][-n:]
        todo = {p for p in todo if len(got[p]) < n and ends[p] - back[p] > 0}
        back = {p: 4 * b for p, b in back.items()}
    return got


def _date_range(date_from: Optional[str], date_to: Optional[str]):
    from datetime import date, timedelta

    yesterday = datetime.now(timezone.utc).date() - timedelta(days=1)
    to = date.fromisoformat(date_to) if date_to else yesterday
    start = date.fromisoformat(date_from) if date_from else to
    if start > to:
        _fail(f"--from {start} is after --to {to}")
    return start, to


@batch_app.command("gold")
def batch_gold(
    date_from: Optional[str] = typer.Option(None, "--from", help="First day (YYYY-MM-DD, UTC); default: --to."),
    date_to: Optional[str] = typer.Option(None, "--to", help="Last day (YYYY-MM-DD, UTC); default: yesterday."),
) -> None:
    """Rebuild Gold (customer-day aggregates, customer snapshot) from Silver for a date range.

    Publishes only if the Great Expectations gate passes (Silver and Gold suites); otherwise the
    previous Gold stays current, the failures are printed and the exit code is 2. Reruns replace.
    """
    from batch.gold import QualityGateFailed, run_gold

    start, to = _date_range(date_from, date_to)
    s = get_settings()
    with console.status(f"rebuilding Gold {start} .. {to}"):
        try:
            run = run_gold(s, start, to)
        except QualityGateFailed as exc:
            err.print(str(exc), highlight=False)
            raise typer.Exit(2)
    console.print(f"Gold {start} .. {to}: {run.silver_rows:,} Silver rows -> {run.customer_day_rows:,} customer-days, "
                  f"{run.snapshot_rows:,} customer snapshots; {run.gate.text()}")


@batch_app.command("nightly")
def batch_nightly(
    date_from: Optional[str] = typer.Option(None, "--from", help="First day of the Gold rebuild (default: --to)."),
    date_to: Optional[str] = typer.Option(None, "--to", help="Last day (default: yesterday, UTC)."),
    trials: Optional[int] = typer.Option(None, help="Optuna trials (default: training.trials)."),
) -> None:
    """Everything nightly, in order: Gold, quality gate, publish, retrain, promotion, materialize profiles.

    A failed quality gate stops the run (nothing published, nothing trained) with exit code 2.
    Outcome metrics go to <run_dir>/metrics/batch.prom and the Pushgateway. Cron or Airflow: see
    docs/operations.md.
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from batch.nightly import STEPS, run_nightly

    start, to = _date_range(date_from, date_to)
    s = get_settings()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("nightly", total=len(STEPS))

        def progress(name: str) -> None:
            if bar.tasks[task].description != "nightly":
                bar.advance(task)
            bar.update(task, description=f"nightly: {name}")

        report = run_nightly(s, start, to, trials=trials, progress=progress)
        bar.update(task, completed=len(STEPS), description="nightly: done")
    table = Table("step", "ok", "seconds", "detail")
    for step in report.steps:
        table.add_row(step.name, "[green]yes[/]" if step.ok else "[red]NO[/]", str(step.seconds), step.detail)
    console.print(table)
    if not report.ok:
        raise typer.Exit(2)


@batch_app.command("step")
def batch_step(
    name: str = typer.Argument(..., help="gold, quality_gate, publish, train, promotion, materialize, or report."),
    day: Optional[str] = typer.Option(None, "--date", help="The day (YYYY-MM-DD, UTC); default: yesterday."),
) -> None:
    """One nightly step for one day, as a scheduler's task runs it (the Airflow DAG runs the same function).

    Each step reads what the one before it left in the lake or the model registry; `report` writes the
    day's metrics from its steps' results. Exit codes: 0 done, 99 nothing to do (skipped), 3 quality
    gate failed (nothing published), 1 failed (retry).
    """
    from batch.nightly import STEPS, StepFailed, scheduled_step

    if name not in (*STEPS, "report"):
        _fail(f"unknown step {name!r}: one of {', '.join(STEPS)}, report")
    start, _ = _date_range(day, day)
    try:
        code = scheduled_step(name, start)
    except StepFailed as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1)
    raise typer.Exit(code)


@batch_app.command("train")
def batch_train(
    trials: Optional[int] = typer.Option(None, help="Optuna trials (default: training.trials in the settings)."),
    source: str = typer.Option("feast", help="feast: labels from Kafka, features from Feast as they were "
                                             "(point in time); simulated: the bootstrap's simulated history."),
) -> None:
    """Train a new model, write its card and plots, and promote it only if it beats the champion.

    The champion and the new model are compared on the same, latest time window; a model that does
    not win by training.promotion_margin (or fails the sanity checks) is kept as a challenger. A
    champion trained on synthetic data (the bootstrap) is replaced by the first model trained on
    labels that passes the sanity checks.
    """
    from batch.train import run_train
    from churn.model.alerting import alert_summary

    s = get_settings()
    with console.status(f"training ({source}, {trials if trials is not None else s.training.trials} trials)"):
        try:
            release = run_train(s, trials=trials, source=source)
        except RuntimeError as exc:
            _fail(str(exc))
    table = Table("metric", "new model", "champion (same window)")
    for k in ("roc_auc", "pr_auc", "f1", "recall", "precision", "calibration_error", "brier", "rows"):
        champ = release.champion_metrics.get(k, "") if release.champion_metrics else "-"
        table.add_row(k, str(release.metrics[k]), str(champ))
    console.print(table)
    console.print(f"{release.version}: {'[green]promoted[/]' if release.promoted else '[yellow]kept as challenger[/]'}"
                  f" - {release.reason}")
    console.print(f"alerts on the validation window: {alert_summary(release.alerting)}", highlight=False)
    console.print(f"trained on {release.source}")


@batch_app.command("telco-cv")
def batch_telco_cv(folds: int = typer.Option(5, help="Number of stratified folds.")) -> None:
    """k-fold cross-validated ROC AUC on the IBM Telco profiles alone (published: 0.84-0.85): each model
    family, and the selection among them made inside each fold, on the same folds."""
    import statistics

    from batch.telco import telco_cross_validation
    from churn.model.families import FAMILY_NAMES

    table = Table(title=f"{folds}-fold ROC AUC, Telco profiles")
    for col in ("model", "mean", "std", "folds"):
        table.add_column(col)
    for family in (*FAMILY_NAMES, "selected"):
        aucs = telco_cross_validation(get_settings(), folds=folds, family=family)
        table.add_row(family, f"{statistics.mean(aucs):.4f}", f"{statistics.stdev(aucs):.4f}",
                      ", ".join(f"{a:.4f}" for a in aucs))
    console.print(table)


# -- watch and demo -----------------------------------------------------------------------
def _watch(seconds: Optional[float], stop: threading.Event, interval: float = 1.0) -> None:
    from churn.watch import FlowWatcher, render, render_line

    watcher = FlowWatcher(get_settings())
    deadline = None if seconds is None else time.monotonic() + seconds
    interactive = console.is_terminal
    try:
        with Live(render(watcher.sample()), console=console, refresh_per_second=4, transient=False) \
                if interactive else _NoLive() as live:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                stop.wait(interval)
                flows = watcher.sample()
                if interactive:
                    live.update(render(flows))
                else:
                    console.print(render_line(flows), highlight=False)
    except KeyboardInterrupt:
        pass
    finally:
        watcher.close()


class _NoLive:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@app.command()
def chaos(
    rate: float = typer.Option(300.0, min=1, help="CDRs per second throughout."),
    faults: Optional[str] = typer.Option(
        None, help="Comma-separated faults, in order (default: every one that applies to the stack): broker, redis, "
                   "stream, scorer, freeze, s3 (lake on the stack's S3 server), malformed."),
    out: Optional[Path] = typer.Option(None, help="Also write the results as JSON to this file."),
) -> None:
    """The fault suite: traffic through the streaming job and two scoring workers while each fault is injected
    in turn, then every event counted.

    Runs against the stack that is up (`churn stack up`, with --brokers 3, CHURN_S3__ENABLED=true or not), with
    topics, tables and a scorer group of its own. After each fault: Bronze holds each record once, Silver each
    valid CDR once, each is scored once, no alert twice, the quarantine and the dead-letter topic hold every
    invalid one. Exit code 1 if anything was lost or duplicated, or the pipeline did not recover.
    """
    from churn import chaos as suite

    s = get_settings()
    workdir = s.run_dir / "chaos" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    try:
        results = suite.run(dict(os.environ), rate, faults.split(",") if faults else None, workdir, log=err.print)
    except (ValueError, TimeoutError) as exc:
        _fail(f"{exc} (logs in {workdir})")
    table = Table("fault", "events in flight", "lost", "duplicated", "time to recover")
    for r in results:
        table.add_row(r.fault, f"{r.in_flight:,}", str(r.lost), str(r.duplicated),
                      "not recovered" if r.recover_s is None else f"{r.recover_s:.1f} s")
    console.print(table)
    if out:
        from dataclasses import asdict

        out.write_text(json.dumps([asdict(r) for r in results], indent=2))
    if any(r.lost or r.duplicated or r.recover_s is None for r in results):
        raise typer.Exit(1)


@app.command()
def watch(seconds: Optional[float] = typer.Option(None, help="Stop after this many seconds (default: Ctrl-C).")) -> None:
    """Live view of every topic: messages, rate per second, newest message."""
    _watch(seconds, threading.Event())


@app.command()
def demo(
    duration: float = typer.Option(30.0, help="Seconds of live traffic to show."),
    rate: float = typer.Option(500.0, help="Live events/s."),
    history_days: float = typer.Option(0.25, help="Days of history to backfill first."),
    bad_ratio: float = typer.Option(0.01, help="Share of invalid CDRs (they will be dead-lettered downstream)."),
    stream_timeout_s: float = typer.Option(300.0, help="How long the summary waits for the streaming job to catch up."),
) -> None:
    """The main job end to end on the local stack: stack up, topics, streaming job, simulator, live view, summary.

    Leaves the stack and the streaming job running for you to explore (`churn watch`, kcat);
    `churn stack down` stops them.
    """
    from churn.simulator import Simulator
    from churn.simulator.produce import ProduceReport, StepProducer, run_backfill, run_live
    from churn.transport import end_offsets

    from churn import stack

    s = get_settings()
    console.rule("1. local stack and topics")
    _bring_up(s)
    before = {t.name: sum(end_offsets(s, t.name).values()) for t in (s.topics.cdr, s.topics.churn_labels)}

    console.rule("2. streaming job (Bronze/Silver/quarantine, cdr.dlq, features -> Feast) and scoring worker")
    from churn.model.bootstrap import train_bootstrap
    from churn.model.registry import ModelRegistry

    if ModelRegistry(s.scoring.registry_dir).champion_version() is None:
        with console.status("training the first champion"):
            train_bootstrap(s)
    try:
        console.print(f"stream      {stack.start_stream(s)}  (log: {s.run_dir / 'stream' / 'stream.log'})")
        console.print(f"score       {stack.start_scorer(s)}  (log: {s.run_dir / 'score' / 'score.log'})")
    except stack.StackError as exc:
        _fail(str(exc))

    console.rule(f"3. simulator: {history_days:g} day(s) of history, then {rate:g} events/s for {duration:g} s")
    now = time.time()
    sim = Simulator(seed=s.simulator.seed, start_s=now - history_days * 86400, end_s=now + 60 * 86400,
                    precursor_days=s.simulator.precursor_days, bad_ratio=bad_ratio, mode="live",
                    labels_from_s=now, signal_strength=s.simulator.signal_strength)
    report = ProduceReport(run_id=sim.run_id.decode())
    sender = StepProducer(s, report)
    done = threading.Event()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            run_backfill(s, sim, until_s=now, sender=sender)
            run_live(s, sim, rate, duration_s=duration, stop=done, sender=sender,
                     warn=lambda m: err.print(m))
        except BaseException as exc:  # reported below, never silently lost
            failure.append(exc)
        finally:
            done.set()

    _start_metrics(s.simulator.metrics_host, s.simulator.metrics_port)
    worker = threading.Thread(target=produce, name="simulator", daemon=True)
    worker.start()
    _watch(None, done)
    done.set()
    worker.join()
    if failure:
        _fail(f"simulator failed: {failure[0]!r}")

    console.rule("4. summary")
    from churn.demo_report import Produced, demo_report, where_next

    after = {t: sum(end_offsets(s, t).values()) for t in before}
    produced = Produced(cdr_messages=report.cdr_messages, valid=report.good, invalid=sum(report.bad.values()),
                        labels=report.labels, duplicates=report.duplicates, failed=report.failed,
                        landed_cdr=after[s.topics.cdr.name] - before[s.topics.cdr.name],
                        landed_labels=after[s.topics.churn_labels.name] - before[s.topics.churn_labels.name])
    lake = _stream_summary(s, stream_timeout_s)
    churners = {str(c) for c in sim.pop.customer_id[sim.pop.churner]}
    scored = _scoring_summary(s, stream_timeout_s)
    counts = None if scored is None else _alert_counts(s, churners)
    console.print(demo_report(produced, lake, scored, counts, simulated_churners=len(churners)))
    if lake is not None:
        console.print(f"lake {storage.lake_url(s)}: {lake.accounting()}", highlight=False, soft_wrap=True)
    if counts is not None:
        console.print(f"The latest alerts on {s.topics.churn_alerts.name}, with their reasons:")
        alerts(follow=False, last=3, seconds=None)
    console.print("\nwhere to look next (the stack, the streaming job and the scorer keep running):")
    for line in where_next(s):
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    ok = (produced.accounted and (lake is None or lake.duplicates >= 0)
          and (counts is None or counts["missing_activity"] == 0))
    if not ok:
        raise typer.Exit(1)


def _stream_summary(s, timeout_s: float):
    """Wait until the stream has processed everything on the topic, then account for it: a
    ``churn.demo_report.Lake``, or None if it has not caught up within ``timeout_s``."""
    from churn import storage
    from churn.demo_report import Lake
    from churn.lake import LakePaths, rows_by, table_rows
    from churn.transport import end_offsets
    from streaming.job import cdr_checkpoints, committed_offsets

    topic = s.topics.cdr.name
    target = end_offsets(s, topic)
    silver = storage.join(storage.checkpoints_url(s), "silver")
    deadline = time.monotonic() + timeout_s
    with console.status("waiting for the streaming job to process everything on the topic"):
        while any(committed_offsets(s, checkpoint, topic) != target for checkpoint in cdr_checkpoints(s)):
            if time.monotonic() > deadline:
                done = sum(committed_offsets(s, silver, topic).values())
                err.print(f"[yellow]the stream has processed {done:,} of {sum(target.values()):,} records "
                          f"after {timeout_s:g} s; it keeps going in the background (`churn stack status`)[/]")
                return None
            time.sleep(1)

    lake = LakePaths.of(s)
    bronze_rows, silver_rows, quarantined = (table_rows(t, s) for t in (lake.bronze, lake.silver, lake.quarantine))
    customers = len(storage.open_delta(s, lake.feature_history).to_pyarrow_table(columns=["customer_id"])
                    .column("customer_id").unique()) if table_rows(lake.feature_history, s) else 0
    return Lake(bronze=bronze_rows, silver=silver_rows, quarantined=quarantined, customers=customers,
                quarantined_by_reason=rows_by(lake.quarantine, "reason", s) if quarantined else {})


def _alert_counts(s, churners: set[str]) -> dict:
    """Every committed alert on the alerts topic, counted: alerts, by band (each band that raises alerts,
    0 if none), customers, of whom simulated churners, triggered by time, and alerts citing missing
    activity (a cold-start artefact: 0 by design)."""
    from confluent_kafka import TopicPartition

    from churn.model.inputs import NO_ACTIVITY
    from churn.transport import consumer, end_offsets
    from streaming.scoring.bands import BANDS

    topic = s.topics.churn_alerts.name
    c = consumer(s, group_id=f"churn-alerts-demo-{time.time_ns()}", role="alerts",
                 **{"isolation.level": "read_committed"})
    c.assign([TopicPartition(topic, p, 0) for p in end_offsets(s, topic, role="alerts")])
    alerts, idle = [], time.monotonic()
    try:
        while time.monotonic() - idle < 2:
            for msg in c.consume(5000, timeout=0.5):
                if msg.error() is None:
                    alerts.append(json.loads(msg.value()))
                    idle = time.monotonic()
    finally:
        c.close()
    customers = {a["customer_id"] for a in alerts}
    by_band = dict.fromkeys(BANDS[BANDS.index(s.scoring.alert_min_band):], 0)
    for a in alerts:
        by_band[a["band"]] = by_band.get(a["band"], 0) + 1
    return {"alerts": len(alerts), "by_band": by_band, "customers": len(customers),
            "churners": len(customers & churners),
            "by_time": sum(1 for a in alerts if a.get("trigger") == "time"),
            "missing_activity": sum(1 for a in alerts if any(r["text"] == NO_ACTIVITY for r in a["reasons"]))}


def _scoring_summary(s, timeout_s: float) -> int | None:
    """Wait until the scorer has committed a score for every CDR on the topic: the CDR offsets it committed
    (scored, or skipped as invalid), or None if it has not caught up within ``timeout_s``."""
    from confluent_kafka import TopicPartition

    from churn.transport import consumer, end_offsets

    topic = s.topics.cdr.name
    target = end_offsets(s, topic)
    group = consumer(s, group_id=s.scoring.app_id)
    deadline = time.monotonic() + timeout_s
    try:
        with console.status("waiting for the scorer to score everything on the topic"):
            while True:
                done = {tp.partition: max(tp.offset, 0) for tp in
                        group.committed([TopicPartition(topic, p) for p in target], timeout=10)}
                if all(done[p] >= end for p, end in target.items()):
                    return sum(done.values())
                if time.monotonic() > deadline:
                    err.print(f"[yellow]the scorer has scored {sum(done.values()):,} of {sum(target.values()):,} "
                              "CDRs; it keeps going in the background[/]")
                    return None
                time.sleep(1)
    finally:
        group.close()


if __name__ == "__main__":  # pragma: no cover
    app()
