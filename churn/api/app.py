"""The scoring API (``churn serve``): committed scores, live scores with explanations, the model registry.

Routes (OpenAPI docs at ``/docs``):

- ``GET /v1/customers/{id}``: the latest score the worker committed for the customer
  (``churn.api.scores_view``), its band, alert state and the reasons of its latest alert.
  Nothing is rescored.
- ``POST /v1/customers/{id}/score``: a live score from Feast's online features, built and
  scored by the same code as the worker (``OnlineFeatures.fetch``, ``churn.model.inputs.matrix``,
  the champion's ``predict``), with every feature's exact contribution to the log-odds
  (TreeSHAP for tree models, ``contributions``) in plain words.
- ``GET /v1/at-risk``: customers at or above a band now, riskiest first, paginated.
- ``GET /v1/models``, ``GET /v1/models/{version}``: the registry, the champion, model cards.
- ``/healthz``, ``/readyz`` (Redis, the broker, a champion), ``/metrics`` (Prometheus).

Errors are RFC 9457 problem details (``application/problem+json``). The champion is
reloaded when the registry names a new one, as in the worker.
"""

import math
import threading
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated, Literal

import orjson
from fastapi import Body, FastAPI, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from churn.api.scores_view import ScoresView, riskiest_first
from churn.config import Settings
from churn.contracts import format_time
from churn.model.explain import reasons
from churn.model.inputs import MODEL_FEATURES, describe, describe_missing, matrix
from churn.model.registry import ChampionWatcher, ModelRegistry
from churn.online_reader import fail_fast_redis
from churn.security import redis_options
from streaming.scoring.bands import BANDS, band_of

PROBLEM = "application/problem+json"
#: How each model family's contributions are computed (each is exact and sums to the log-odds).
TREE_SHAP = "TreeSHAP: XGBoost's exact per-feature contributions (pred_contribs), scaled by the calibration"
EXPLANATION = {
    "xgboost": TREE_SHAP,
    "random_forest": TREE_SHAP,
    "logistic_regression": "weight times standardised input: each feature's exact share of the linear log-odds, "
                           "relative to a customer at the training mean, scaled by the calibration",
}
Band = Literal["low", "medium", "high", "critical"]
CUSTOMER_ID = Path(description="The customer's id, as in the CDRs.", min_length=1, max_length=64,
                   pattern=r"^[A-Za-z0-9._:-]+$")


class LiveScoreRequest(BaseModel):
    """Score as of ``at`` (default: now). Activity is read as of that time from the customer's
    newest pushed state; an ``at`` before that state's time reads the state as if no time had passed."""

    at: datetime | None = None


def as_json(body: dict) -> Response:
    """``body`` as JSON, serialised by orjson directly (FastAPI's encoder for a returned dict costs ~0.7 ms
    on a live score's 75-feature explanation; this, ~0.01 ms)."""
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def problem(status: int, title: str, detail: str, instance: str | None = None, **extra) -> JSONResponse:
    """An RFC 9457 problem details response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    return JSONResponse({**body, **extra}, status_code=status, media_type=PROBLEM)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.latency = Histogram("churn_api_request_seconds", "API request latency by route", ["method", "route", "status"],
                                 buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
                                 registry=self.registry)
        self.customers = Gauge("churn_api_view_customers", "Customers in the API's view of committed scores",
                               registry=self.registry)


class RequestLatency:
    """ASGI middleware: each request's latency into ``histogram`` by method, route template and status
    (a plain ASGI wrapper: Starlette's ``BaseHTTPMiddleware`` costs about a millisecond per request)."""

    def __init__(self, app, histogram: Histogram):
        self.app, self.histogram = app, histogram

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.histogram.labels(scope["method"], route, str(status[0])).observe(time.perf_counter() - t0)


class Services:
    """What the routes read: the scores view, the online features, the champion, the registry."""

    def __init__(self, settings: Settings, view: ScoresView | None = None):
        from streaming.scoring.lookup import online_features

        self.settings = settings
        self.view = view if view is not None else ScoresView(settings)
        self.registry = ModelRegistry(settings.scoring.registry_dir)
        self.models = ChampionWatcher(self.registry, interval_s=settings.scoring.model_check_interval_s)
        self.features = online_features(settings, role="api")
        self.reader = self.features.reader
        self.redis = fail_fast_redis(redis_options(settings, "api"), timeout_s=1.0)
        self.lock = threading.Lock()  # the lookup caches and the champion watcher are not thread-safe
        self.metrics = Metrics()

    def champion(self):
        with self.lock:
            return self.models.current()

    def lookup(self, customer_id: str):
        """The champion and the customer's online features (one read of the store)."""
        with self.lock:
            return self.models.current(), self.features.fetch([customer_id])


def _customer(view: ScoresView, customer_id: str) -> dict:
    record = view.latest(customer_id)
    if record is None:
        raise HTTPException(404, f"no committed score for customer {customer_id}")
    alert = view.alert(customer_id)
    return {
        "customer_id": customer_id,
        "risk": record["risk"],
        "band": record["band"],
        "scored_at": record.get("scored_at"),
        "model_version": record.get("model_version"),
        "trigger": record.get("trigger"),
        "trigger_event_id": record.get("trigger_event_id"),
        "trigger_event_time": record.get("trigger_event_time"),
        "degraded": record.get("degraded"),
        "degraded_reason": record.get("degraded_reason"),
        "challenger_risk": record.get("challenger_risk"),
        "alert": {
            "active": record.get("alert_band") is not None,
            "band": record.get("alert_band"),
            "alerted_at": record.get("alerted_at"),
            "event_id": None if alert is None else alert.get("event_id"),
            "reasons": [] if alert is None else alert.get("reasons", []),
        },
        "history": view.history(customer_id),
    }


def _explained(model, x, top: int) -> dict:
    """Each feature's value and exact contribution to the log-odds, the base value, and the top reasons."""
    X = model.aligned(x[None, :])
    contributions = model.contributions(X)
    contrib, aligned = contributions[0], X[0]
    features = []
    for name, value, c in zip(model.features, aligned, contrib[:-1]):
        known = not math.isnan(float(value))
        features.append({"feature": name, "value": float(value) if known else None,
                         "contribution": round(float(c), 6),
                         "text": describe(name, float(value)) if known else describe_missing([name])})
    features.sort(key=lambda f: -abs(f["contribution"]))
    base = float(contrib[-1])
    return {"base": round(base, 6), "log_odds": round(base + float(contrib[:-1].sum()), 6), "features": features,
            "reasons": reasons(X, contributions, model.features, top)[0]}


def create_app(settings: Settings, view: ScoresView | None = None, start_view: bool = True) -> FastAPI:
    services = Services(settings, view)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_view:
            services.view.start()
        yield
        services.view.stop()
        services.reader.close()

    app = FastAPI(title="churn scoring API", version="1", lifespan=lifespan,
                  description="Committed churn scores, live scores with explanations, and the model registry.")
    app.state.services = services

    app.add_middleware(RequestLatency, histogram=services.metrics.latency)

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(request: Request, exc: StarletteHTTPException):
        titles = {404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
        return problem(exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail), request.url.path)

    @app.exception_handler(RequestValidationError)
    async def invalid_problem(request: Request, exc: RequestValidationError):
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        fields = ", ".join(e["field"] for e in errors)
        return problem(422, "Unprocessable Content", f"invalid {fields}", request.url.path, errors=errors)

    # -- customers ------------------------------------------------------------------------
    @app.get("/v1/customers/{customer_id}", summary="The customer's latest committed score")
    async def get_customer(customer_id: Annotated[str, CUSTOMER_ID]):
        return as_json(_customer(services.view, customer_id))

    @app.post("/v1/customers/{customer_id}/score", summary="Score the customer now, with explanations")
    async def live_score(customer_id: Annotated[str, CUSTOMER_ID],
                   request: Annotated[LiveScoreRequest | None, Body()] = None,
                   top: Annotated[int, Query(ge=1, le=len(MODEL_FEATURES), description="Reasons to list")] = 3):
        at_dt = request.at if request is not None and request.at is not None else datetime.now(timezone.utc)
        if at_dt.tzinfo is None:
            at_dt = at_dt.replace(tzinfo=timezone.utc)
        at = at_dt.timestamp()
        # the online-store read (with its retries) in a thread; the scoring itself on the event loop,
        # so concurrent requests do not take turns at the GIL every 5 ms in the thread pool
        model, looked = await run_in_threadpool(services.lookup, customer_id)
        if looked.degraded:
            raise HTTPException(503, "the online feature store cannot be read: " + "; ".join(looked.errors))
        profile, state = looked.profiles.get(customer_id), looked.states.get(customer_id)
        if profile is None and state is None:
            raise HTTPException(404, f"customer {customer_id} has no profile and no activity in the online store")
        X = matrix([profile], [state], [at])
        risk = float(model.predict(X)[0])
        return as_json({
            "customer_id": customer_id,
            "risk": round(risk, 6),
            "band": BANDS[band_of(risk, settings.scoring.band_thresholds)],
            "model_version": model.meta["version"],
            "model_family": model.meta.get("family", "xgboost"),
            "at": format_time(at),
            "activity_as_of": None if state is None else format_time(state["ref_time"]),
            "newest_event_age_s": None if state is None else round(max(at - state["ref_time"], 0.0), 3),
            "profile_known": profile is not None,
            "explanation": {"method": EXPLANATION[model.meta.get("family", "xgboost")],
                            **_explained(model, X[0], top)},
        })

    @app.get("/v1/customers/{customer_id}/profile", summary="The customer's profile in the online store")
    def profile(customer_id: Annotated[str, CUSTOMER_ID]):
        from churn.model.inputs import PROFILE_COLUMNS

        try:
            (row,) = services.reader.read("customer_profile", PROFILE_COLUMNS, [customer_id])
        except Exception as exc:
            raise HTTPException(503, f"the online feature store cannot be read: {type(exc).__name__}: {exc}")
        if row is None or all(v is None for v in row.values()):
            raise HTTPException(404, f"no profile for customer {customer_id}")
        return as_json({"customer_id": customer_id, "profile": row})

    @app.get("/v1/customers/{customer_id}/activity", summary="The customer's daily activity (Gold customer_day)")
    def activity(customer_id: Annotated[str, CUSTOMER_ID],
                 days: Annotated[int, Query(ge=1, le=400, description="Days back from the latest day in Gold")] = 30):
        rows = _daily_activity(settings, customer_id, days)
        if rows is None:
            raise HTTPException(404, "no Gold customer_day table yet: run `churn batch nightly` (or `batch gold`)")
        return as_json({"customer_id": customer_id, "days": days, "rows": rows})

    @app.get("/v1/at-risk", summary="Customers at or above a band now, riskiest first")
    def at_risk(band: Band = "high",
                limit: Annotated[int, Query(ge=1, le=settings.api.max_page)] = 50,
                offset: Annotated[int, Query(ge=0)] = 0,
                contract: Annotated[str | None, Query(description="Only customers on this contract")] = None):
        candidates = services.view.at_or_above(band)
        if contract is not None:
            contracts = _contracts(services, [r["customer_id"] for r in candidates])
            candidates = [r for r in candidates if contracts.get(r["customer_id"]) == contract]
        total, rows = riskiest_first(candidates, limit, offset)
        items = []
        for r in rows:
            alert = services.view.alert(r["customer_id"])
            items.append({"customer_id": r["customer_id"], "risk": r["risk"], "band": r["band"],
                          "scored_at": r.get("scored_at"), "alert_band": r.get("alert_band"),
                          "alerted_at": r.get("alerted_at"),
                          "reasons": [] if alert is None else alert.get("reasons", [])})
        nxt = offset + limit if offset + limit < total else None
        return as_json({"band": band, "total": total, "offset": offset, "limit": limit, "next_offset": nxt,
                        "items": items, "bands": services.view.bands()})

    # -- models ---------------------------------------------------------------------------
    @app.get("/v1/models", summary="The registry: every version and the champion")
    def models():
        champion = services.registry.champion_version()
        out = []
        for v in services.registry.versions():
            card = services.registry.card(v)
            out.append({"version": v, "champion": v == champion, "kind": card.get("kind"),
                        "family": card.get("family", "xgboost"),
                        "trained_on": card.get("trained_on"), "validation": card.get("validation")})
        return as_json({"champion": champion, "versions": out})

    @app.get("/v1/models/{version}", summary="One model's card")
    def model_card(version: Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]+$")]):
        if version not in services.registry.versions():
            raise HTTPException(404, f"no model version {version}")
        return as_json({"champion": version == services.registry.champion_version(),
                        "card": services.registry.card(version)})

    @app.get("/v1/models/{version}/plots/{name}", summary="A plot of the model card (PNG)",
             response_class=Response)
    def model_plot(version: Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]+$")],
                   name: Annotated[str, Path(pattern=r"^[a-z_]+\.png$")]):
        path = services.registry.root / version / name
        if version not in services.registry.versions() or not path.is_file():
            raise HTTPException(404, f"no plot {name} for model version {version}")
        return Response(path.read_bytes(), media_type="image/png")

    # -- operations -----------------------------------------------------------------------
    @app.get("/healthz", summary="The process is up")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Redis, the broker and a champion are there")
    def readyz():
        checks = {"redis": _check(lambda: services.redis.ping()),
                  "broker": _check(lambda: _broker_up(settings)),
                  "champion": _check(lambda: services.champion() is not None or _raise("no champion model")),
                  "scores_view": "ok" if services.view.caught_up.is_set() else "catching up"}
        ready = all(checks[k] == "ok" for k in ("redis", "broker", "champion"))
        body = {"status": "ready" if ready else "not ready", "checks": checks,
                "customers": services.view.customers(), "champion": services.models.version}
        if ready:
            return body
        failing = ", ".join(f"{k}: {v}" for k, v in checks.items() if v not in ("ok", "catching up"))
        return problem(503, "Service Unavailable", f"not ready: {failing}", "/readyz", checks=checks)

    @app.get("/metrics", include_in_schema=False)
    def metrics():
        services.metrics.customers.set(services.view.customers())
        return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _raise(message: str):
    raise RuntimeError(message)


def _check(fn) -> str:
    try:
        fn()
        return "ok"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def _broker_up(settings: Settings) -> None:
    from churn.transport import admin

    admin(settings, role="api").list_topics(settings.topics.churn_scores.name, timeout=2.0)


def _daily_activity(settings: Settings, customer_id: str, days: int) -> list[dict] | None:
    """The customer's rows of Gold's ``customer_day`` for the last ``days`` days of the table (None: no table)."""
    from datetime import timedelta

    import pyarrow.compute as pc
    from deltalake.exceptions import TableNotFoundError

    from churn import storage
    from churn.lake import LakePaths

    try:
        table = storage.open_delta(settings, LakePaths.of(settings).gold_customer_day)
    except TableNotFoundError:
        return None
    mine = table.to_pyarrow_dataset().to_table(filter=pc.field("customer_id") == customer_id)
    if mine.num_rows == 0:
        return []
    frame = mine.to_pandas().sort_values("event_date")
    last = frame["event_date"].max()
    frame = frame[frame["event_date"] > last - timedelta(days=days)]
    frame["event_date"] = frame["event_date"].astype(str)
    keep = [c for c in frame.columns if c not in ("first_event_time", "last_event_time")]
    return frame[keep].to_dict("records")


def _contracts(services: Services, customers: list[str]) -> dict[str, str | None]:
    rows = services.reader.read("customer_profile", ["contract"], customers) if customers else []
    return {c: (None if row is None else row.get("contract")) for c, row in zip(customers, rows)}


def serve(settings: Settings) -> None:
    """Run the API with uvicorn on the configured host and port (until SIGINT/SIGTERM)."""
    import uvicorn

    uvicorn.run(create_app(settings), host=settings.api.host, port=settings.api.port, log_level="warning",
                access_log=False)
