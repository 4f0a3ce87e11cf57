"""Your own data, end to end, as docs/own-data.md walks through it: an operator's customer extract with its
own column names and codes, a month of CDRs and churn labels produced by a plain Kafka client, to a champion
trained on those labels that replaced the synthetic bootstrap champion, and a scorer raising alerts with it.

The operator's world is generated here, not by the simulator and not from the IBM Telco sample: a few
hundred subscribers (``SUB…`` ids) whose contract, fee and payment method set how likely they are to
leave, and whose churners, in the three weeks before they leave, use less, call customer care more and
see more dropped calls. Everything else is the product through its CLI on the session's real stack
(Kafka, Redis, Spark, Feast), in the test's own topics, lake and copy of the bootstrap registry.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter

import numpy as np
import orjson
import pandas as pd
from confluent_kafka import Producer
from conftest import CHURN_BIN, free_ports, private_pipeline_env, run_cli
from test_scoring import metric, read_committed, wait_for

from churn.contracts import CDR, CHURN_LABEL, CHURN_RISK, format_time
from churn.model.registry import ModelRegistry

DAY = 86400.0
CUSTOMERS = 300
DAYS = 30

# The operator's extract: its own column names and codes (docs/own-data.md shows the same mapping).
MAPPING = """
missing = ["", "NULL"]

[columns]
customer_id = "SUBSCRIBER_ID"
updated_at = "VALID_FROM"
activation_date = "ACTIVATED_ON"
plan = "TARIFF"
contract = "COMMITMENT"
contract_end_date = "COMMITMENT_END"
monthly_charges = "MONTHLY_FEE"
payment_method = "PAY_METHOD"
internet_service = "BROADBAND"
phone_service = "VOICE"
paperless_billing = "E_BILL"
senior_citizen = "SENIOR"

[values.contract]
NONE = "Month-to-month"
12M = "One year"
24M = "Two year"

[values.payment_method]
DD = "Bank transfer (automatic)"
CC = "Credit card (automatic)"
EC = "Electronic check"
MAIL = "Mailed check"

[values.internet_service]
FTTH = "Fiber optic"
ADSL = "DSL"
NONE = "No"

[booleans]
true = ["Y"]
false = ["N"]
"""
CHURN_BY_COMMITMENT = {"NONE": 0.42, "12M": 0.12, "24M": 0.04}


def iso(t: float) -> str:
    return format_time(t)


def customer_base(rng: np.random.Generator, start_s: float) -> pd.DataFrame:
    """The extract (the operator's columns), plus ``churner``, which only the generator knows."""
    n = CUSTOMERS
    commitment = rng.choice(["NONE", "12M", "24M"], n, p=[0.55, 0.25, 0.20])
    activated = start_s - rng.uniform(30, 6 * 365, n) * DAY
    fee = np.round(rng.uniform(15, 110, n), 2)
    pay = rng.choice(["DD", "CC", "EC", "MAIL"], n, p=[0.3, 0.3, 0.25, 0.15])
    p = np.array([CHURN_BY_COMMITMENT[c] for c in commitment]) + np.where(pay == "EC", 0.08, 0.0)
    end = [None if c == "NONE" else time.strftime("%Y-%m-%d", time.gmtime(start_s + rng.uniform(30, 700) * DAY))
           for c in commitment]
    return pd.DataFrame({
        "SUBSCRIBER_ID": [f"SUB{i:06d}" for i in range(n)],
        "VALID_FROM": [iso(t) for t in start_s - rng.uniform(1, 20, n) * DAY],  # before any CDR
        "ACTIVATED_ON": [time.strftime("%Y-%m-%d", time.gmtime(t)) for t in activated],
        "TARIFF": rng.choice(["S", "M", "L", "XL"], n),
        "COMMITMENT": commitment,
        "COMMITMENT_END": ["NULL" if e is None else e for e in end],
        "MONTHLY_FEE": fee,
        "PAY_METHOD": pay,
        "BROADBAND": rng.choice(["FTTH", "ADSL", "NONE"], n, p=[0.45, 0.35, 0.20]),
        "VOICE": "Y",
        "E_BILL": rng.choice(["Y", "N"], n),
        "SENIOR": rng.choice(["Y", "N"], n, p=[0.15, 0.85]),
        "churner": rng.random(n) < p,
    })


def month_of_cdrs(rng: np.random.Generator, base: pd.DataFrame, label_s: np.ndarray, start_s: float,
                  end_s: float) -> list[tuple[float, bytes, bytes]]:
    """(event time, key, value) of every CDR, following schemas/cdr.schema.json, in event-time order.
    A churner's behaviour drifts over the 21 days before its label and stops at it."""
    out = []
    per_day = rng.lognormal(0.0, 0.4, (len(base), 3)) * np.array([3.0, 1.0, 2.0])  # voice, sms, data
    home = rng.integers(0, 500, len(base))
    for i, (cid, churner) in enumerate(zip(base["SUBSCRIBER_ID"], base["churner"])):
        stop = label_s[i] if churner else end_s
        for d in range(DAYS):
            t0 = start_s + d * DAY
            r = float(np.clip(1.0 - (label_s[i] - (t0 + DAY / 2)) / (21 * DAY), 0.0, 1.0)) if churner else 0.0
            counts = rng.poisson(per_day[i] * (1.0 - 0.6 * r))
            for kind, k in zip(("voice", "sms", "data"), counts):
                for t in np.sort(t0 + rng.random(k) * DAY):
                    if t >= stop:
                        continue
                    e = {"event_id": f"{cid}-{len(out)}", "customer_id": cid, "event_time": iso(t),
                         "record_type": kind, "cell_id": f"C{home[i]:04d}", "roaming": bool(rng.random() < 0.02)}
                    if kind == "voice":
                        care = rng.random() < 0.01 + 0.30 * r
                        e.update(direction="outgoing" if care or rng.random() < 0.6 else "incoming",
                                 duration_s=round(float(rng.exponential(300 if care else 120)), 1),
                                 counterparty="customer_care" if care else
                                 ("off_net" if rng.random() < 0.3 + 0.3 * r else "on_net"),
                                 dropped=bool(rng.random() < 0.01 + 0.10 * r), charge=round(float(rng.random()) * 0.2, 2))
                    elif kind == "sms":
                        e.update(direction=rng.choice(["outgoing", "incoming"]).item(),
                                 counterparty="off_net" if rng.random() < 0.3 else "on_net", charge=0.05)
                    else:
                        e.update(direction="outgoing", duration_s=round(float(rng.exponential(600)), 1),
                                 data_bytes=int(rng.exponential(40e6)), charge=0.0)
                    out.append((t, cid.encode(), orjson.dumps(e)))
    out.sort(key=lambda row: row[0])
    return out


def test_own_customer_base_cdrs_and_labels_to_a_champion_on_labels_and_alerts(live_stack, live_env,
                                                                           bootstrap_registry, tmp_path):
    t_start = time.monotonic()
    env, s = private_pipeline_env(live_env, bootstrap_registry, tmp_path,
                                  CHURN_SCORING__METRICS_PORT=str(free_ports(1)[0]))
    registry = ModelRegistry(s.scoring.registry_dir)
    synthetic = registry.champion_version()
    assert registry.card(synthetic)["training_source"] == "synthetic"

    # the operator's data: an extract with its own columns, a month of CDRs, churn labels
    rng = np.random.default_rng(2026)
    end_s = (time.time() // 3600 - 1) * 3600
    start_s = end_s - DAYS * DAY
    base = customer_base(rng, start_s)
    extract, mapping = tmp_path / "subscribers.csv", tmp_path / "subscribers.toml"
    base.drop(columns="churner").to_csv(extract, index=False)
    mapping.write_text(MAPPING)
    label_s = start_s + rng.uniform(14 * DAY, DAYS * DAY - 6 * 3600, len(base))
    cdrs = month_of_cdrs(rng, base, label_s, start_s, end_s)
    assert all(CDR.parse(v)[1] is None for _, _, v in cdrs[::50])  # the contract accepts them
    labels = [(cid.encode(), orjson.dumps({"event_id": f"crm-{cid}", "customer_id": cid, "label_time": iso(t),
                                           "churned": bool(c), "source": "crm"}))
              for cid, t, c in zip(base["SUBSCRIBER_ID"], label_s, base["churner"])]
    assert all(CHURN_LABEL.parse(v)[1] is None for _, v in labels)
    churners = set(base.loc[base["churner"], "SUBSCRIBER_ID"])
    print(f"\n{len(base)} customers ({len(churners)} churners), {len(cdrs):,} CDRs over {DAYS} days")

    # produced by a plain client, keyed by customer, with Java's partitioner (as the walkthrough shows)
    p = Producer({"bootstrap.servers": s.kafka.bootstrap_servers, "partitioner": "murmur2_random",
                  "enable.idempotence": True, "linger.ms": 20})
    for _, key, value in cdrs:
        while True:
            try:
                p.produce(s.topics.cdr.name, value, key)
                break
            except BufferError:
                p.poll(0.5)
    for key, value in labels:
        p.produce(s.topics.churn_labels.name, value, key)
    assert p.flush(60) == 0

    # 1. the profiles, with the operator's mapping
    out = run_cli(["profiles", "load", str(extract), "--mapping", str(mapping)], env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{CUSTOMERS} rows, {CUSTOMERS} new versions loaded, 0 already loaded, 0 invalid" in out.stdout, out.stdout
    print(out.stdout.strip())
    again = run_cli(["profiles", "load", str(extract), "--mapping", str(mapping)], env, timeout=300)
    assert f"0 new versions loaded, {CUSTOMERS} already loaded" in again.stdout, again.stdout

    # 2. the CDRs into the lake and the online store
    t0 = time.monotonic()
    out = run_cli(["stream", "--available-now"], env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    from deltalake import DeltaTable

    from churn.lake import LakePaths

    silver = DeltaTable(LakePaths(s.streaming.lake_dir).silver).to_pyarrow_dataset().count_rows()
    assert silver == len(cdrs)  # every CDR valid and in Silver once
    print(f"stream --available-now: {time.monotonic() - t0:.0f} s")

    # 3. training on the labels: the new model replaces the synthetic champion
    t0 = time.monotonic()
    out = run_cli(["batch", "train", "--trials", "5"], {**env, "COLUMNS": "200"}, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    print(out.stdout.rstrip())
    print(f"batch train: {time.monotonic() - t0:.0f} s")
    version = registry.champion_version()
    assert version != synthetic and f"{version}: promoted" in " ".join(out.stdout.split())
    card = registry.card(version)
    assert card["training_source"] == "labels"
    assert card["labels"]["count"] == CUSTOMERS and card["labels"]["churned"] == len(churners)
    assert card["labels"]["first_label_time"] == iso(label_s.min())
    assert card["labels"]["last_label_time"] == iso(label_s.max())
    assert card["labels"]["rows"] == CUSTOMERS  # every label had a profile and activity
    assert card["decision"]["reason"].startswith("replaces the synthetic champion: ")
    assert card["champion_on_same_window"]["version"] == synthetic
    last = orjson.loads((registry.root / "history.jsonl").read_text().splitlines()[-1])
    assert (last["event"], last["version"], last["previous"]) == ("promoted", version, synthetic)
    assert last["reason"] == card["decision"]["reason"]
    val = card["validation"]
    print(f"champion {version}: validation ROC AUC {val['roc_auc']}, PR AUC {val['pr_auc']} on {val['rows']} rows "
          f"({val['positives']} churned); the synthetic champion on the same rows: "
          f"{card['champion_on_same_window']['roc_auc']}")
    assert val["roc_auc"] > 0.6
    listed = run_cli(["model", "list"], {**env, "COLUMNS": "200"}, timeout=120)
    assert listed.returncode == 0, listed.stderr
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in listed.stdout.splitlines() if "│" in line]
    rows = {r[0]: r[1:4] for r in cells}  # version: champion, kind, trained on
    assert rows[version] == ["*", "xgb", "labels"] and rows[synthetic] == ["", "bootstrap", "synthetic"], rows
    print(listed.stdout.rstrip())

    # 4. the scorer with that champion: every CDR scored, alerts raised
    t0 = time.monotonic()
    port = s.scoring.metrics_port
    log = open(tmp_path / "worker.log", "ab")
    worker = subprocess.Popen([CHURN_BIN, "score"], env={**os.environ, **env}, start_new_session=True,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: metric(port, "churn_score_events_total") >= len(cdrs), 300, "every CDR scored")
        assert metric(port, "churn_score_champion_synthetic") == 0.0
        assert metric(port, f'churn_score_model_info{{version="{version}"}}') == 1.0
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    alerts = [orjson.loads(m.value()) for m in read_committed(s, s.topics.churn_alerts.name)]
    assert alerts and all(CHURN_RISK.validate(a) is None for a in alerts)
    assert {a["model_version"] for a in alerts} == {version}
    alerted = {a["customer_id"] for a in alerts}
    share = len(alerted & churners) / len(alerted)
    print(f"scorer: {len(alerts)} alerts for {len(alerted)} customers, {share:.0%} of them churners "
          f"(base rate {len(churners) / CUSTOMERS:.0%}), {time.monotonic() - t0:.0f} s; "
          f"test {time.monotonic() - t_start:.0f} s")
    assert share > len(churners) / CUSTOMERS
    # the last two alerts of each partition, as `churn alerts` prints them
    shown = run_cli(["alerts", "--last", "2"], {**env, "COLUMNS": "250"}, timeout=120)
    assert shown.returncode == 0, shown.stderr
    per_partition = Counter(m.partition() for m in read_committed(s, s.topics.churn_alerts.name))
    printed = re.findall(r"^\d{4}-\d\d-\d\dT\S+ +\w+ [01]\.\d\d  (\S+)", shown.stdout, re.M)
    assert len(printed) == sum(min(n, 2) for n in per_partition.values()) and set(printed) <= alerted, shown.stdout
    print(shown.stdout.rstrip())
