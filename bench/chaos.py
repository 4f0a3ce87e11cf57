"""The fault suite (``churn chaos``) as a benchmark: its table's figures into bench/results.json.

Two stacks of its own, one after the other: the default one (a single broker) for the broker's SIGKILL,
then three KRaft nodes with the lake on the stack's S3 server for every other fault (one broker of three,
Redis, the streaming job, a scorer killed and frozen, S3 stopped, a malformed burst)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import run_cli, settings_from, stack_env  # noqa: E402

from churn.config import Settings  # noqa: E402

RATE = 300.0


def _stack(env: dict) -> Settings:
    from churn import stack
    from churn.stack.process import free_ports, port_is_free
    from churn.transport import ensure_topics

    while True:  # with 3 nodes, the others' ports (+100, +200) must be free too
        s = settings_from(env)
        if all(port_is_free("127.0.0.1", p) for n in range(s.kafka.brokers) for p in s.kafka.node_ports(n)):
            break
        env["CHURN_KAFKA__PORT"], env["CHURN_KAFKA__CONTROLLER_PORT"] = map(str, free_ports(2))
    stack.up(s)
    ensure_topics(s)
    return s


def bench_chaos(_: Settings | None = None) -> dict:
    """``churn chaos`` at 300 CDRs/s: for each fault, the CDRs produced while it lasted, the records lost and
    duplicated (all stages counted, the whole run so far), and the seconds from its end until the streaming
    job and the scorers had committed everything produced by then."""
    from churn import chaos, stack

    root = Path(tempfile.mkdtemp(prefix="churn-chaos-"))
    registry = root / "models"
    figures: dict = {}
    for name, extra, chosen in (
            ("single", {}, ["broker"]),
            ("three_s3", {"CHURN_KAFKA__BROKERS": "3", "CHURN_S3__ENABLED": "true"},
             ["broker", "redis", "stream", "scorer", "freeze", "s3", "malformed"])):
        env = {**stack_env(root / name), "CHURN_SCORING__REGISTRY_DIR": str(registry), **extra}
        s = _stack(env)
        try:
            if not registry.exists():
                done = run_cli(["model", "bootstrap", "--customers", "2000", "--days", "60"], env, timeout=600)
                assert done.returncode == 0, done.stderr
            for r in chaos.run(env, RATE, chosen, root / name / "chaos"):
                key = f"chaos_{name}_{chosen[len([k for k in figures if k.startswith(f'chaos_{name}_')])]}_recover_s"
                figures[key] = (-1.0 if r.recover_s is None else r.recover_s, "s", {
                                                   "recovered": r.recover_s is not None, "fault": r.fault, "in_flight": r.in_flight, "lost": r.lost,
                                                   "duplicated": r.duplicated, "rate": RATE,
                                                   "brokers": s.kafka.brokers, "lake": "s3" if s.s3.enabled
                                                   else "local"})
        finally:
            stack.down(settings_from(env))
    return figures
