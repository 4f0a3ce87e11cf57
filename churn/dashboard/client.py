"""What the dashboard reads: the scoring API (customers, scores, models) and Prometheus' HTTP API (the pipeline).

Plain HTTP with the standard library. ``Api.get`` returns None for a 404 (an unknown customer, no
Gold yet) and raises ``ReadError`` with the problem's detail for anything else, so each page can
say what is missing instead of failing.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request


class ReadError(RuntimeError):
    """The API or Prometheus could not answer."""


def _fetch(url: str, body: dict | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        raise ReadError(f"{url}: {e}") from e


class Api:
    def __init__(self, base_url: str, timeout: float = 5.0):
        self.base_url, self.timeout = base_url.rstrip("/"), timeout

    def _answer(self, status: int, raw: bytes, path: str):
        if status == 404:
            return None
        if status >= 400:
            try:
                detail = json.loads(raw).get("detail", raw.decode())
            except ValueError:
                detail = raw.decode(errors="replace")
            raise ReadError(f"{path}: {status} {detail}")
        return raw

    def get(self, path: str, **params) -> dict | None:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        raw = self._answer(*_fetch(f"{self.base_url}{path}{'?' + query if query else ''}", timeout=self.timeout), path)
        return None if raw is None else json.loads(raw)

    def post(self, path: str, body: dict) -> dict | None:
        raw = self._answer(*_fetch(f"{self.base_url}{path}", body, timeout=self.timeout), path)
        return None if raw is None else json.loads(raw)

    def image(self, path: str) -> bytes | None:
        return self._answer(*_fetch(f"{self.base_url}{path}", timeout=self.timeout), path)


class Prometheus:
    def __init__(self, base_url: str, timeout: float = 5.0):
        self.base_url, self.timeout = base_url.rstrip("/"), timeout

    def query(self, promql: str) -> list[tuple[dict, float]]:
        """An instant query: (labels, value) per series."""
        status, raw = _fetch(f"{self.base_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}",
                             timeout=self.timeout)
        if status != 200:
            raise ReadError(f"Prometheus {status}: {raw[:200]!r}")
        return [(r["metric"], float(r["value"][1])) for r in json.loads(raw)["data"]["result"]]

    def scalar(self, promql: str) -> float | None:
        """The value of a query that gives one series (None: no data)."""
        got = self.query(promql)
        return got[0][1] if got else None
