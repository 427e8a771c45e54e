"""Run the operator: `kubetrain operator` or `python -m kubetrain.control`."""

from __future__ import annotations

import os
import sys

import kopf


def run(
    namespaces: list[str] | None = None, metrics_port: int = 0, standalone: bool = True, health_port: int = 0
) -> int:
    from . import handlers  # noqa: F401 - registers the kopf handlers

    if metrics_port:
        os.environ["KUBETRAIN_METRICS_PORT"] = str(metrics_port)
    kopf.configure(verbose=bool(os.environ.get("KUBETRAIN_DEBUG")))
    host = os.environ.get("KUBETRAIN_HEALTH_ADDR", "0.0.0.0")
    liveness = f"http://{host}:{health_port}/healthz" if health_port else None  # kopf's liveness endpoint
    kopf.run(
        standalone=standalone,
        clusterwide=not namespaces,
        namespaces=namespaces or [],
        liveness_endpoint=liveness,
    )
    return 0


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kubetrain.control", description=__doc__)
    parser.add_argument("--namespace", "-n", action="append", default=[])
    parser.add_argument(
        "--metrics-port", type=int, default=int(os.environ.get("KUBETRAIN_METRICS_PORT", "0") or 0)
    )
    parser.add_argument(
        "--health-port", type=int, default=int(os.environ.get("KUBETRAIN_HEALTH_PORT", "0") or 0)
    )
    args = parser.parse_args()
    return run(args.namespace, args.metrics_port, health_port=args.health_port)


if __name__ == "__main__":
    sys.exit(main())
