"""The retention dashboard (``churn dashboard``, Streamlit): who is at risk now, why, and how the system is doing.

Four pages, chosen in the sidebar (or with ``?page=`` in the address):

- **At risk now**: customers at or above a band, riskiest first, with their top reasons and since
  when they are alerted; filter by band and contract.
- **Customer**: risk history, the reasons of the current risk as a waterfall (live score with exact
  contributions), daily behaviour from Gold's ``customer_day``, and the profile.
- **Model**: the champion and the other versions, the card's model selection, ROC and calibration
  plots, online AUC and input drift.
- **Pipeline**: scoring lag and throughput, feature freshness, dead letters and invalid CDRs by reason.

Customers and models come through the scoring API (``churn serve``), so there is one read model; the
pipeline figures come from Prometheus' HTTP API.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from churn.config import get_settings
from churn.dashboard.client import Api, Prometheus, ReadError

PAGES = {"at-risk": "At risk now", "customer": "Customer", "model": "Model", "pipeline": "Pipeline"}
BAND_NAMES = ["low", "medium", "high", "critical"]
CONTRACTS = ["Month-to-month", "One year", "Two year"]


@st.cache_resource
def clients() -> tuple[Api, Prometheus]:
    s = get_settings()
    return Api(s.api.url), Prometheus(f"http://{s.prometheus.host}:{s.prometheus.port}")


@st.cache_data(ttl=5, show_spinner=False)
def at_risk(band: str, contract: str | None) -> dict:
    api, _ = clients()
    return api.get("/v1/at-risk", band=band, contract=contract, limit=get_settings().api.max_page)


def _reasons_text(reasons: list[dict]) -> str:
    return "; ".join(r["text"] for r in reasons)


def at_risk_page() -> None:
    st.header("At risk now")
    left, right = st.columns(2)
    band = left.selectbox("Band at or above", BAND_NAMES, index=2, key="band")
    contract = right.selectbox("Contract", ["All", *CONTRACTS], key="contract")
    page = at_risk(band, None if contract == "All" else contract)
    counts = page["bands"]
    cols = st.columns(4)
    for col, name in zip(cols, BAND_NAMES):
        col.metric(name.capitalize(), f"{counts.get(name, 0):,}")
    st.caption(f"{page['total']:,} customers at {band} or above"
               + ("" if contract == "All" else f" on {contract} contracts")
               + (f"; the {len(page['items']):,} riskiest shown" if page["total"] > len(page["items"]) else ""))
    if not page["items"]:
        st.info("No customer is at or above this band now.")
        return
    table = pd.DataFrame([{"customer": r["customer_id"], "band": r["band"], "risk": r["risk"],
                           "top reasons": _reasons_text(r["reasons"]), "alerted since": r["alerted_at"],
                           "scored at": r["scored_at"]} for r in page["items"]])
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={"risk": st.column_config.ProgressColumn("risk", min_value=0.0, max_value=1.0,
                                                                       format="%.2f")})


def waterfall(explanation: dict, top: int = 8):
    """The log-odds built up from the base: the ``top`` largest contributions, the rest as one bar."""
    import altair as alt

    features = explanation["features"]
    shown, rest = features[:top], features[top:]
    steps = [("base (average customer)", explanation["base"])]
    steps += [(f["text"], f["contribution"]) for f in shown]
    if rest:
        steps.append((f"{len(rest)} other features", sum(f["contribution"] for f in rest)))
    rows, level = [], 0.0
    for i, (label, value) in enumerate(steps):
        start, end = (0.0, value) if i == 0 else (level, level + value)
        rows.append({"order": i, "step": label, "start": start, "end": end,
                     "effect": "base" if i == 0 else ("raises risk" if value > 0 else "lowers risk")})
        level = end
    rows.append({"order": len(rows), "step": "log-odds of this score", "start": 0.0, "end": level, "effect": "total"})
    frame = pd.DataFrame(rows)
    colours = alt.Scale(domain=["base", "raises risk", "lowers risk", "total"],
                        range=["#9e9e9e", "#d62728", "#2ca02c", "#1f77b4"])
    return alt.Chart(frame).mark_bar().encode(
        y=alt.Y("step:N", sort=alt.SortField("order"), title=None, axis=alt.Axis(labelLimit=360)),
        x=alt.X("start:Q", title="contribution to the log-odds of churn"), x2="end:Q",
        color=alt.Color("effect:N", scale=colours, legend=alt.Legend(orient="bottom")),
        tooltip=["step", alt.Tooltip("start:Q", format=".3f"), alt.Tooltip("end:Q", format=".3f")],
    ).properties(height=32 * len(rows))


def customer_page() -> None:
    api, _ = clients()
    st.header("Customer")
    default = st.query_params.get("customer")
    if not default:
        top = at_risk("medium", None)["items"]
        default = top[0]["customer_id"] if top else ""
    customer = st.text_input("Customer id", value=default, key="customer").strip()
    if not customer:
        st.info("Enter a customer id.")
        return
    committed = api.get(f"/v1/customers/{customer}")
    if committed is None:
        st.warning(f"No committed score for {customer} yet.")
    else:
        a, b, c = st.columns(3)
        a.metric("Risk", f"{committed['risk']:.2f}")
        b.metric("Band", committed["band"])
        alert = committed["alert"]
        c.metric("Alert", alert["band"] if alert["active"] else "none")
        if alert["active"]:
            st.caption(f"Alerted at {alert['alerted_at']} (event time). Reasons: " + _reasons_text(alert["reasons"]))
        st.subheader("Risk history")
        history = pd.DataFrame(committed["history"])
        # each decision at the time of the CDR (or the check) that triggered it
        history["time"] = pd.to_datetime(history["trigger_event_time"].fillna(history["scored_at"]), utc=True)
        st.line_chart(history.set_index("time")["risk"], height=220)
    live = api.post(f"/v1/customers/{customer}/score", {})
    st.subheader("Why: the current risk, feature by feature")
    if live is None:
        st.warning(f"{customer} has no profile and no activity in the online store.")
    else:
        st.caption(f"Live score {live['risk']:.2f} ({live['band']}) by {live['model_version']} "
                   f"({live['model_family']}), from the online store's features now (activity as of "
                   f"{live['activity_as_of'] or 'none pushed yet'}); {live['explanation']['method']}.")
        st.altair_chart(waterfall(live["explanation"]), width="stretch")
    st.subheader("Daily behaviour (Gold customer_day)")
    activity = api.get(f"/v1/customers/{customer}/activity", days=60)
    if activity is None:
        st.info("No Gold table yet: the nightly job builds it (`churn batch nightly`).")
    elif not activity["rows"]:
        st.info("No activity for this customer in Gold.")
    else:
        daily = pd.DataFrame(activity["rows"]).set_index("event_date")
        st.bar_chart(daily[["calls", "sms", "care_calls", "dropped_calls"]], height=220)
        st.line_chart(daily[["call_minutes", "data_mb"]], height=180)
    profile = api.get(f"/v1/customers/{customer}/profile")
    st.subheader("Profile")
    if profile is None:
        st.info("No profile in the online store.")
    else:
        st.dataframe(pd.DataFrame([{"field": k, "value": str(v)} for k, v in profile["profile"].items()]),
                     hide_index=True, width="stretch")


def model_page() -> None:
    api, prom = clients()
    st.header("Model")
    models = api.get("/v1/models")
    if not models["versions"]:
        st.warning("The registry has no model yet: `churn model bootstrap`.")
        return
    champion = models["champion"]
    table = pd.DataFrame([{"version": m["version"], "champion": m["champion"], "family": m["family"],
                           "kind": m["kind"], "validation ROC AUC": (m["validation"] or {}).get("roc_auc")}
                          for m in models["versions"]])
    card = api.get(f"/v1/models/{champion}")["card"] if champion else {}
    left, right = st.columns(2)
    left.metric("Champion", champion or "none")
    validation = card.get("validation", {})
    right.metric("Validation ROC AUC", validation.get("roc_auc", "n/a"))
    auc = {labels.get("model"): value for labels, value in _safe(prom.query, "churn_score_online_auc")}
    a, b = st.columns(2)
    a.metric("Online AUC, champion", f"{auc['champion']:.3f}" if "champion" in auc else "no labels yet")
    b.metric("Online AUC, challenger (river)", f"{auc['challenger']:.3f}" if "challenger" in auc else "no labels yet")
    st.subheader("Versions")
    st.dataframe(table, hide_index=True, width="stretch")
    selection = card.get("selection")
    if selection:
        st.subheader("Model selection")
        st.caption(selection["rule"])
        st.dataframe(pd.DataFrame([{"family": name, "chosen": name == selection["chosen"],
                                    "search ROC AUC": f["search_auc_on_calibration_window"],
                                    "validation ROC AUC": f["validation"]["roc_auc"], "trials": f["trials"]}
                                   for name, f in selection["families"].items()]), hide_index=True, width="stretch")
    if champion:
        plots = st.columns(2)
        for col, name in zip(plots, ("roc.png", "calibration.png")):
            png = api.image(f"/v1/models/{champion}/plots/{name}")
            if png:
                col.image(png, caption=name.removesuffix(".png"))
    st.subheader("Input drift (PSI against the champion's training data)")
    drift = sorted(_safe(prom.query, "churn_drift_psi"), key=lambda t: -t[1])[:12]
    if drift:
        st.bar_chart(pd.DataFrame({"feature": [l["feature"] for l, _ in drift], "PSI": [v for _, v in drift]})
                     .set_index("feature"), height=260)
        st.caption("Above 0.25: significant drift.")
    else:
        st.info("No drift figures yet (the worker reports them once it has seen enough customers).")


def _safe(fn, *args, default=()):
    """``fn(*args)``, or ``default`` with a warning when Prometheus cannot be read."""
    try:
        return fn(*args)
    except ReadError as exc:
        st.warning(f"Prometheus not reachable: {exc}")
        return default


def pipeline_page() -> None:
    _, prom = clients()
    st.header("Pipeline")
    q = lambda promql: _safe(prom.scalar, promql, default=None)  # noqa: E731
    a, b, c, d = st.columns(4)
    lag = q("sum(churn_score_consumer_lag)")
    a.metric("Scoring lag (CDRs)", "no data" if lag is None else f"{lag:,.0f}")
    rate = q("sum(rate(churn_score_events_total[1m]))")
    b.metric("Scored per second", "no data" if rate is None else f"{rate:,.0f}")
    fresh = q("max(churn_stream_feature_freshness_seconds)")
    c.metric("Feature freshness (s)", "stream not reporting" if fresh is None else f"{fresh:,.1f}")
    scored = q("sum(churn_score_events_total)")
    d.metric("CDRs scored", "no data" if scored is None else f"{scored:,.0f}")
    left, right = st.columns(2)
    with left:
        _counts_chart(prom, "Dead letters by reason (stream)", "churn_stream_quarantined_rows_total", "reason",
                      "The streaming job reports no dead letters (or is not running).")
    with right:
        _counts_chart(prom, "Invalid CDRs skipped by the scorer", "churn_score_invalid_events_total", "reason",
                      "No invalid CDR seen by the scorer.")
    _counts_chart(prom, "Alerts by band", "churn_alerts_total", "band", "No alert yet.", height=200)


def _counts_chart(prom: Prometheus, title: str, counter: str, label: str, empty: str, height: int = 240) -> None:
    """A counter summed by one label, as bars (``empty`` when there is no series)."""
    st.subheader(title)
    got = _safe(prom.query, f"sum by ({label}) ({counter})")
    if got:
        st.bar_chart(pd.DataFrame({label: [labels[label] for labels, _ in got], "count": [v for _, v in got]})
                     .set_index(label), height=height)
    else:
        st.info(empty)


def main() -> None:
    st.set_page_config(page_title="Churn risk", layout="wide")
    keys = list(PAGES)
    wanted = st.query_params.get("page", keys[0])
    choice = st.sidebar.radio("Page", keys, index=keys.index(wanted) if wanted in keys else 0,
                              format_func=PAGES.get, key="page")
    st.query_params["page"] = choice
    st.sidebar.caption(f"API: {get_settings().api.url}")
    try:
        {"at-risk": at_risk_page, "customer": customer_page, "model": model_page, "pipeline": pipeline_page}[choice]()
    except ReadError as exc:
        st.error(f"The scoring API cannot be read: {exc}. Is `churn serve` running?")


if __name__ == "__main__":  # as Streamlit runs it
    main()
