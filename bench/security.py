"""What security costs: the same work on the plaintext stack and on a secured one, alternating.

The secured stack runs beside the plaintext one on this machine: Kafka with SASL/SCRAM-SHA-512 over
TLS and ACLs, Redis with ACL users over TLS. Each figure alternates plaintext and secured runs (A/B,
B/A, ...) so that machine noise falls on both:

* produce rate: the simulator's backfill to the broker (``bench_simulator_produce``);
* feature lookup of 1,000 customers (the scorer's Redis reader): plain, ACL users, ACL users over TLS,
  on the same keys (copied from one Redis to the others);
* streaming catch-up: the whole job (Bronze, Silver, quarantine, Feast) over the same simulated history;
* scoring catch-up: one worker's max rate over the same simulated history.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from churn import stack
from churn.config import Settings
from churn.security import principal
from churn.simulator import Simulator
from churn.transport import ensure_topics

DAY = 86400.0


def secured_stack(plain: Settings) -> Settings:
    """A second local stack, secured (Kafka SASL_SSL with ACLs, Redis ACL over TLS), started."""
    from conftest import settings_from, stack_env

    env = {**stack_env(Path(tempfile.mkdtemp(prefix="churn-bench-secure-"))),
           "CHURN_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "CHURN_REDIS__ACL": "true", "CHURN_REDIS__TLS": "true"}
    secure = settings_from(env)
    stack.up(secure)
    ensure_topics(secure)
    # The benchmarks' own topics, groups and transactional ids are not in the components' ACLs: their
    # Kafka clients authenticate (SCRAM over TLS) as the admin principal, a super user.
    secure.kafka.username = principal("admin")
    return secure


def _redis_copy(source: Settings, target: Settings) -> int:
    """Every key of ``source``'s Redis into ``target``'s (DUMP/RESTORE, as the admin): the same bytes to read."""
    import redis

    from churn.security import redis_options

    a, b = redis.Redis(**redis_options(source, "admin")), redis.Redis(**redis_options(target, "admin"))
    n = 0
    for key in a.scan_iter(count=1000):
        b.restore(key, 0, a.dump(key), replace=True)
        n += 1
    return n


def _lookup_ms(s: Settings, customers: list[str], runs: int = 9) -> list[float]:
    from scoring import lookup_samples_ms

    from churn.online_reader import FeastRedisReader

    return lookup_samples_ms(FeastRedisReader.from_settings(s), customers, runs, np.random.default_rng(0))


def _acl_only_redis(secure: Settings) -> Settings:
    """A third Redis: ACL users, no TLS (on its own run directory and port)."""
    from conftest import free_ports

    from churn.stack.services import redis_service

    acl = secure.model_copy(deep=True)
    acl.run_dir = Path(tempfile.mkdtemp(prefix="churn-bench-redis-acl-"))
    acl.redis.tls, acl.redis.port = False, free_ports(1)[0]
    redis_service(acl).start(30)
    return acl


def _score_rate(s: Settings, end: float) -> float:
    """One worker's catch-up rate on a fresh topic holding 1.2 simulated days (the scoring benchmark's)."""
    from conftest import free_ports
    from scoring import _catch_up, _env, _topics

    from churn.simulator.produce import run_backfill

    tag = uuid.uuid4().hex[:6]
    t = _topics(s, tag)
    report = run_backfill(t, Simulator(seed=5, start_s=end - 1.2 * DAY, end_s=end))
    extra = {"CHURN_KAFKA__SECURITY_PROTOCOL": s.kafka.security_protocol,
             "CHURN_REDIS__ACL": str(s.redis.acl).lower(), "CHURN_REDIS__TLS": str(s.redis.tls).lower(),
             "CHURN_SCORING__ONLINE_READER": "redis", **({"CHURN_KAFKA__USERNAME": s.kafka.username} if s.kafka.username else {})}
    env = _env(t, tag, s.scoring.registry_dir, s.streaming.lake_dir, free_ports(1)[0], **extra)
    with open(Path(tempfile.gettempdir()) / f"churn-bench-security-{tag}.log", "ab") as log:
        rate, _ = _catch_up(t, env, report.cdr_messages, log)
    return rate


def bench_security(plain: Settings, pairs: int = 1) -> dict:
    """The cost of security, plaintext against secured in alternating runs on the same machine: produce
    rate, feature lookup (plain / ACL / ACL+TLS Redis), streaming catch-up, scoring catch-up."""
    from run import bench_simulator_produce, bench_stream_catchup
    from scoring import _push_activity

    from churn import feature_store
    from churn.config import get_settings
    from churn.model.bootstrap import train_bootstrap

    secure = secured_stack(plain)
    out: dict = {}
    try:
        def alternate(fn, name: str, unit: str, runs: int) -> None:
            values: dict[str, list[float]] = {"plaintext": [], "secured": []}
            for i in range(runs):
                order = ("plaintext", "secured") if i % 2 == 0 else ("secured", "plaintext")
                for which in order:
                    values[which].append(fn(plain if which == "plaintext" else secure))
            med = {k: statistics.median(v) for k, v in values.items()}
            for k, v in values.items():
                out[f"security_{name}_{k}"] = (med[k], unit, {"runs": [round(x, 1) for x in v]})
            out[f"security_{name}_secured_vs_plaintext"] = (med["secured"] / med["plaintext"], "x", {
                "pairs": runs, "plaintext": round(med["plaintext"], 1), "secured": round(med["secured"], 1)})

        alternate(lambda s: bench_simulator_produce(s)[0], "produce_rate", "events/s", 3)

        # the same Feast data in every Redis: pushed to the plaintext one, copied to the others
        end = time.time() - DAY
        for s in (plain, secure):
            s.scoring.registry_dir = Path(tempfile.mkdtemp(prefix="churn-bench-models-"))
            s.streaming.lake_dir = get_settings().streaming.lake_dir  # Feast's file sources: the default settings'
            s.feast.project = f"b{uuid.uuid4().hex[:6]}"
        secure.feast.project = plain.feast.project  # the same keys (the project is part of them)
        for s in (plain, secure):
            train_bootstrap(s, customers=2000, days=45)
            feature_store.apply(s)
        customers = _push_activity(plain, Simulator(seed=5, start_s=end - 1.2 * DAY, end_s=end))
        acl_only = _acl_only_redis(secure)
        for target in (secure, acl_only):
            _redis_copy(plain, target)
        lookups = {"plain": [], "acl": [], "acl_tls": []}
        for i in range(3):
            for name, s in ((("plain", plain), ("acl", acl_only), ("acl_tls", secure))[::1 if i % 2 == 0 else -1]):
                lookups[name] += _lookup_ms(s, customers)
        med = {k: statistics.median(v) for k, v in lookups.items()}
        for k, v in lookups.items():
            out[f"security_redis_lookup_ms_1000_customers_{k}"] = (med[k], "ms", {"samples": len(v)})
        out["security_redis_tls_vs_acl_lookup"] = (med["acl_tls"] / med["acl"], "x", {"target": "< 1.10"})
        out["security_redis_acl_vs_plain_lookup"] = (med["acl"] / med["plain"], "x", {})

        alternate(lambda s: bench_stream_catchup(s)[0], "stream_catchup_rate", "events/s", pairs)
        alternate(lambda s: _score_rate(s, end), "score_max_rate", "events/s", pairs)
    finally:
        import gc

        gc.collect()
        stack.down(secure)
        if "acl_only" in locals():
            from churn.stack.services import redis_service

            redis_service(acl_only).stop()
    return out


def bench_security_stream(plain: Settings) -> dict:
    """The streaming job's cost of security: live at 8,000 and 16,000 CDRs/s against the plaintext stack and
    a secured one (Kafka SASL/SCRAM over TLS with ACLs, Redis ACL users over TLS), each run in a fresh
    process, in the order plaintext, secured, secured, plaintext: freshness p99, whether the lag held, the
    ratio secured / plaintext."""
    from lake_storage import alternating_sustained

    secure = secured_stack(plain)
    try:
        return alternating_sustained({"plaintext": plain, "secured": secure}, "security_stream")
    finally:
        import gc

        gc.collect()
        stack.down(secure)
