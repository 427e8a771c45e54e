"""The REST backend: the kubetrain API (`kubetrain api`) over HTTP with a bearer token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from .. import __version__
from .http import TRAININGJOBS, HttpBackend


class RestBackend(HttpBackend):
    """Jobs through a kubetrain API server; the server checks the token (TokenReview) and RBAC."""

    what = "the kubetrain API"

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, verify: Any = True):
        headers = {"Accept": "application/json", "User-Agent": f"kubetrain-sdk/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, verify=verify)
        self.default_namespace = "default"

    def logs(self, name: str, namespace: str, follow: bool = False) -> Iterator[str]:
        yield from self._lines(f"{TRAININGJOBS.format(ns=namespace)}/{name}/logs", follow)
