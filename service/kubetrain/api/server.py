"""`kubetrain api`: pick the backend (kube when credentials are found, else local) and serve under uvicorn."""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

from ..client import errors


def build(backend: str = "auto", root: str = ".kubetrain", max_body: int = 1 << 20) -> Any:
    """The app over the kube backend (its own service account; callers checked by TokenReview + SAR),
    or over the local backend without authentication."""
    from ..client.kube import connection
    from ..client.local import LocalBackend
    from .app import create_app
    from .auth import KubeAuth, NoAuth
    from .store import BackendStore, KubeStore

    if backend in ("auto", "kube"):
        try:
            conn = connection()
        except errors.Unavailable:
            if backend == "kube":
                raise
        else:
            store = KubeStore(conn)
            return create_app(store, KubeAuth(store), max_body), "kube"
    return create_app(BackendStore(LocalBackend(root=root)), NoAuth(), max_body), "local"


def serve(host: str = "127.0.0.1", port: int = 8080, backend: str = "auto", root: str = ".kubetrain",
          max_body: int = 1 << 20) -> int:  # fmt: skip
    import uvicorn

    app, mode = build(backend, root, max_body)
    if mode == "local" and host not in ("127.0.0.1", "localhost", "::1"):
        raise errors.Invalid([_problem("--host", f"got {host!r}: without a cluster there is no authentication, so the API listens on loopback only")])  # fmt: skip
    # Start-up objects (FastAPI's routes, pydantic's validators: most of the heap) live as long as the
    # process: frozen out of the cyclic GC, whose full collections would otherwise rescan them under load.
    gc.collect()
    gc.freeze()
    level = os.environ.get("KUBETRAIN_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kubetrain.api").info("serving %s backend on http://%s:%d", mode, host, port)
    # bounded: idle keep-alive, concurrent connections, header size (h11 default 16 KiB); bodies in the app.
    # uvicorn's loggers follow KUBETRAIN_LOG_LEVEL too: its access log (one line per request, about a tenth
    # of the API's own time per call) is written at INFO and silenced by WARNING.
    uvicorn.run(app, host=host, port=port, timeout_keep_alive=5, limit_concurrency=512,
                timeout_graceful_shutdown=10, log_level=logging.getLevelName(level), access_log=True)  # fmt: skip
    return 0


def _problem(path: str, message: str) -> Any:
    from ..spec import Problem

    return Problem(path, message)
