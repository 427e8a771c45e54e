"""Kubernetes commands of `kubetrain`: print the CRD, render a job's RayJob, run the operator."""

from __future__ import annotations

import argparse
import sys

import yaml

from . import files

EXIT_OK, EXIT_INVALID = 0, 1


def _crd(args: argparse.Namespace) -> int:
    from ..schema.crd import crd

    sys.stdout.write(yaml.safe_dump(crd(), sort_keys=False, width=110))
    return EXIT_OK


def _render(args: argparse.Namespace) -> int:
    from ..render import PlatformConfig, render

    job = files.read_job_or_report(args.file, args.set)
    if job is None:
        return EXIT_INVALID
    try:
        platform = PlatformConfig.load(args.config)
    except (OSError, ValueError) as e:
        raise files.UserError(f"platform config {args.config}: {e}") from None
    if args.namespace:
        job.metadata.namespace = args.namespace
    sys.stdout.write(yaml.safe_dump_all(render(job, platform), sort_keys=False, width=110))
    return EXIT_OK


def _operator(args: argparse.Namespace) -> int:
    from ..control.main import run

    return run(
        namespaces=args.namespace,
        metrics_port=args.metrics_port,
        standalone=True,
        health_port=args.health_port,
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("crd", help="print the TrainingJob CustomResourceDefinition (YAML)")
    p.set_defaults(func=_crd)

    p = sub.add_parser("render", help="print the KubeRay RayJob (and spec ConfigMap) a TrainingJob becomes")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="override a field")
    p.add_argument("--config", default=None, help="platform config YAML (default: $KUBETRAIN_CONFIG)")
    p.add_argument("--namespace", "-n", default=None, help="namespace to render into")
    p.set_defaults(func=_render)

    p = sub.add_parser("operator", help="run the TrainingJob operator (kopf) against the current cluster")
    p.add_argument("--namespace", "-n", action="append", default=[], help="watch only these namespaces")
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus metrics port (0 disables)")
    p.add_argument("--health-port", type=int, default=0, help="liveness endpoint /healthz port (0 disables)")
    p.set_defaults(func=_operator)
