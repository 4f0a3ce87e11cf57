"""The command line explains itself; the settings come from defaults, a file and the environment."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from churn.config import Settings

SUBCOMMANDS = ["config", "simulate", "watch", "demo", "stack", "topics", "schemas"]


def test_help_lists_every_subcommand():
    out = run_cli(["--help"], {})
    assert out.returncode == 0
    for name in SUBCOMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("args", [[c, "--help"] for c in SUBCOMMANDS]
                         + [["stack", s, "--help"] for s in ("up", "down", "status")]
                         + [["topics", "create", "--help"], ["schemas", "validate", "--help"]])
def test_each_subcommand_explains_itself(args):
    out = run_cli(args, {})
    assert out.returncode == 0, out.stderr
    assert "Usage: churn" in out.stdout and len(out.stdout) > 200


def test_settings_precedence_file_then_environment(tmp_path, monkeypatch):
    path = tmp_path / "churn.toml"
    path.write_text('[kafka]\nport = 39092\n[redis]\nport = 36379\n[topics.cdr]\npartitions = 6\n')
    monkeypatch.setenv("CHURN_CONFIG", str(path))
    monkeypatch.setenv("CHURN_REDIS__PORT", "46379")
    s = Settings()
    assert s.kafka.port == 39092  # from the file
    assert s.redis.port == 46379  # the environment beats the file
    assert (s.topics.cdr.name, s.topics.cdr.partitions) == ("cdr", 6)
    assert s.prometheus.port == 19090  # default
    out = run_cli(["config"], {"CHURN_CONFIG": str(path)})
    assert json.loads(out.stdout)["kafka"]["port"] == 39092


def test_defaults_avoid_standard_ports():
    s = Settings()
    assert s.kafka.port not in (9092, 9093) and s.redis.port != 6379 and s.prometheus.port != 9090
    assert s.kafka.host == s.redis.host == s.prometheus.host == "127.0.0.1"


def test_schemas_validate_names_each_bad_line(tmp_path):
    good = json.dumps({"event_id": "e1", "customer_id": "c1", "event_time": "2026-01-01T00:00:00Z",
                       "record_type": "sms", "direction": "incoming", "counterparty": "on_net",
                       "cell_id": "C1", "roaming": False, "charge": 0})
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join([good, good.replace('"sms"', '"fax"'), "{oops"]) + "\n")
    out = run_cli(["schemas", "validate", "cdr", str(path)], {})
    assert out.returncode == 1
    assert "line 2: unknown_value:record_type" in out.stdout
    assert "line 3: malformed_json" in out.stdout
    assert "1 valid, 2 invalid" in out.stdout


def test_feast_imported_by_our_processes_is_not_recompiled_by_typeguard():
    """Feast's classes carry typeguard's ``@typechecked``, which recompiles them at import (~7 s of CPU per
    process); after ``import churn`` it is the no-op it is under ``python -O`` by the time Feast is imported,
    and a process that never imports Feast never imports typeguard. Feast still works."""
    import subprocess
    import sys

    probe = """
import sys, churn
print("typeguard" in sys.modules)
import typeguard, feast.feature_view
from feast import Entity, FeatureView
print(feast.feature_view.typechecked is typeguard.typechecked)
print("TypeCheckMemo" in FeatureView.__init__.__code__.co_names)
print(Entity(name="customer", join_keys=["customer_id"]).join_key)
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False", "True", "False", "customer_id"]
