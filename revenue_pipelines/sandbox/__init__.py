"""A local stand-in for the SaaS APIs the pipelines read, speaking their real wire protocols.

    with Sandbox(seed=7, companies=300) as sb:
        client = hubspot.HubSpot(access_token=sb.token, host=sb.url)
        sb.hubspot.truth("contacts")          # what a correct extraction must produce
        sb.faults.add("status", status=503)   # the next request fails
        sb.requests.count(status=200)         # what the server really saw

The data set is a pure function of the parameters, so a test can compare a pipeline's output
with the ground truth exactly, and script transport and data faults around it.
"""

from __future__ import annotations

import secrets
from datetime import date

from revenue_pipelines.sandbox.faults import Fault, FaultPlan
from revenue_pipelines.sandbox.hubspot import HubSpot
from revenue_pipelines.sandbox.server import ApiServer, LoggedRequest, RequestLog

__all__ = ["Fault", "FaultPlan", "HubSpot", "LoggedRequest", "RequestLog", "Sandbox"]


class Sandbox:
    """The sandboxed APIs on one loopback listener; data is generated at construction."""

    def __init__(
        self,
        seed: int = 7,
        companies: int = 300,
        days: int = 30,
        end_date: date | None = None,
        token: str | None = None,
        rate_limit_per_10s: int | None = 190,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        contacts: int | None = None,
        deals: int | None = None,
        rate_limit_retry_after: bool = True,
    ):
        self.token = token or secrets.token_urlsafe(24)
        self.faults = FaultPlan()
        self.requests = RequestLog()
        self.hubspot = HubSpot(
            seed=seed,
            companies=companies,
            contacts=contacts,
            deals=deals,
            days=days,
            end_date=end_date,
            token=self.token,
            rate_limit_per_10s=rate_limit_per_10s,
            rate_limit_retry_after=rate_limit_retry_after,
        )
        self._address = (host, port)
        self._server: ApiServer | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the sandbox is not running; call start() or use it as a context manager")
        return self._server.url

    def env(self) -> dict[str, str]:
        """The environment a pipeline needs to talk to this sandbox instead of the real APIs."""
        return {"HUBSPOT_HOST": self.url, "HUBSPOT_ACCESS_TOKEN": self.token}

    def start(self) -> Sandbox:
        if self._server is None:
            self._server = ApiServer(*self._address, [self.hubspot], self.faults, self.requests)
            self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
