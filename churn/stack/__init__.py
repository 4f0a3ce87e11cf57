"""The local stack: ``up``, ``down`` and ``status`` over the services in ``services.py``."""

from __future__ import annotations

from dataclasses import dataclass

from churn.config import Settings
from churn.stack.process import Service, StackError
from churn.stack.services import jobs, score_service, services, stream_service

__all__ = ["StackError", "ServiceStatus", "up", "down", "status", "start_stream", "start_scorer"]


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str
    pid: int | None
    address: str
    log: str


def up(settings: Settings) -> list[tuple[str, str]]:
    """Start every service not yet running; harmless to repeat. Returns (service, what happened)."""
    done = []
    for service in services(settings):
        done.append((service.name, service.start(settings.startup_timeout_s)))
    return done


def start_stream(settings: Settings) -> str:
    """Run the streaming job in the background (idempotent); `down` stops it."""
    return stream_service(settings).start(max(settings.startup_timeout_s, 120.0))


def start_scorer(settings: Settings) -> str:
    """Run a scoring worker in the background (idempotent); `down` stops it."""
    return score_service(settings).start(max(settings.startup_timeout_s, 60.0))


def down(settings: Settings) -> list[tuple[str, str]]:
    """Stop exactly the processes ``up`` (and ``start_stream``) started, by PID, last started first."""
    everything = services(settings) + jobs(settings)
    return [(service.name, service.stop()) for service in reversed(everything)]


def _address(service: Service) -> str:
    return ", ".join(f"{service.host}:{port}" for port in service.ports.values())


def status(settings: Settings) -> list[ServiceStatus]:
    return [
        ServiceStatus(s.name, s.state(), s.pid(), _address(s), str(s.log_file))
        for s in services(settings) + jobs(settings)
    ]
