"""Job commands over the SDK: submit, get, list, wait, logs, delete, suspend, resume (--backend local|kube|rest),
and `kubetrain api` (the REST service). Output is kubectl-like: a table, or -o yaml|json|name."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Any

import yaml

from ..client import TrainingClient, load
from ..client.types import JobInfo

EXIT_OK = 0


def _client(args: argparse.Namespace) -> TrainingClient:
    token = None
    if getattr(args, "token_file", None):
        with open(args.token_file) as f:
            token = f.read().strip()
    return TrainingClient(args.backend, args.namespace, url=args.url, token=token, root=args.root)


def _age(stamp: str | None) -> str:
    if not stamp:
        return "-"
    try:
        then = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return "-"
    s = int((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds())
    return (
        f"{s}s"
        if s < 120
        else f"{s // 60}m"
        if s < 7200
        else f"{s // 3600}h"
        if s < 172800
        else f"{s // 86400}d"
    )


def _row(job: JobInfo) -> list[str]:
    p = job.status.progress
    progress = (
        f"{p.percent:.0f}%" if p and p.percent is not None else (f"step {p.step}" if p and p.step else "-")
    )
    workers = job.status.workers or (job.spec.get("resources") or {}).get("workers") or 1
    return [job.name, job.phase, progress, str(workers), job.status.metric or "-", _age(job.created)]


def _print(jobs: list[JobInfo], output: str | None, single: bool = False) -> None:
    if output == "name":
        for j in jobs:
            print(f"trainingjob/{j.name}")
        return
    if output in ("json", "yaml"):
        objs = [j.to_object() for j in jobs]
        doc: Any = objs[0] if single else {"apiVersion": "v1", "kind": "List", "items": objs}
        print(
            json.dumps(doc, indent=2) if output == "json" else yaml.safe_dump(doc, sort_keys=False),
            end="\n" if output == "json" else "",
        )
        return
    rows = [["NAME", "PHASE", "PROGRESS", "WORKERS", "METRIC", "AGE"]] + [_row(j) for j in jobs]
    if len(rows) == 1:
        print("No resources found.", file=sys.stderr)
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _submit(args: argparse.Namespace) -> int:
    overrides = {}
    for item in args.set:
        path, sep, raw = item.partition("=")
        if not sep:
            from ..client import Invalid
            from ..spec import Problem

            raise Invalid([Problem("", f"--set expects path=value, got {item!r}")])
        overrides[path.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    with _client(args) as tc:
        job = load(args.file if args.file != "-" else _stdin_job(), overrides)
        name = tc.backend.submit(job, tc.namespace).name
        print(f"trainingjob/{name} created")
        if args.wait:
            tc.wait(name, timeout=args.timeout, progress=True)
            print(f"trainingjob/{name} Succeeded")
    return EXIT_OK


def _stdin_job() -> dict:
    from ..spec import parse_yaml

    data, _ = parse_yaml(sys.stdin.read(), "-")
    return data


def _get(args: argparse.Namespace) -> int:
    with _client(args) as tc:
        if args.name:
            _print([tc.get(args.name)], args.output, single=True)
        else:
            _print(tc.list(_labels(args.selector)), args.output)
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    args.name = None
    return _get(args)


def _labels(selector: str | None) -> dict[str, str]:
    out = {}
    for term in filter(None, (selector or "").split(",")):
        key, _, value = term.partition("=")
        out[key.strip()] = value.strip()
    return out


def _wait(args: argparse.Namespace) -> int:
    with _client(args) as tc:
        info = tc.wait(args.name, until=args.until, timeout=args.timeout, progress=not args.quiet)
        print(f"trainingjob/{info.name} {info.phase}")
    return EXIT_OK


def _logs(args: argparse.Namespace) -> int:
    with _client(args) as tc:
        for line in tc.logs(args.name, follow=args.follow):
            print(line, flush=args.follow)
    return EXIT_OK


def _delete(args: argparse.Namespace) -> int:
    with _client(args) as tc:
        for name in args.names:
            tc.delete(name)
            print(f'trainingjob "{name}" deleted')
    return EXIT_OK


def _suspend(args: argparse.Namespace) -> int:
    with _client(args) as tc:
        info = tc.suspend(args.name) if args.command == "suspend" else tc.resume(args.name)
        print(f"trainingjob/{info.name} {'suspended' if args.command == 'suspend' else 'resumed'}")
    return EXIT_OK


def _api(args: argparse.Namespace) -> int:
    from ..api.server import serve

    return serve(host=args.host, port=args.port, backend=args.backend, root=args.root, max_body=args.max_body)


def _backend_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("local", "kube", "rest"), default=os.environ.get("KUBETRAIN_BACKEND", "local"),
                   help="where jobs live: local (background runs under --root), kube (kubeconfig or in-cluster), "
                   "rest (a kubetrain API at --url); default $KUBETRAIN_BACKEND or local")  # fmt: skip
    p.add_argument(
        "--namespace", "-n", default=None, help="namespace (default: the kubeconfig's, or default)"
    )
    p.add_argument(
        "--url", default=None, help="kubetrain API URL for --backend rest (default $KUBETRAIN_API_URL)"
    )
    p.add_argument("--token-file", default=None,
                   help="file holding the bearer token for --backend rest (default $KUBETRAIN_API_TOKEN)")  # fmt: skip
    p.add_argument("--root", default=".kubetrain", help="local backend state, runs and MLflow store")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="create a TrainingJob and return at once (it runs in the background)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="override a field")
    p.add_argument("--wait", action="store_true", help="then wait until it Succeeded")
    p.add_argument("--timeout", type=float, default=None, help="seconds --wait waits at most")
    _backend_options(p)
    p.set_defaults(func=_submit)

    for verb, helptext in (("get", "show jobs (one by name, or all)"), ("list", "list jobs")):
        p = sub.add_parser(verb, help=helptext)
        if verb == "get":
            p.add_argument("name", nargs="?", metavar="NAME")
        p.add_argument("--output", "-o", choices=("yaml", "json", "name"), default=None, help="output format")
        p.add_argument("--selector", "-l", default=None, help="label selector, e.g. team=nlp,stage=dev")
        _backend_options(p)
        p.set_defaults(func=_get if verb == "get" else _list)

    p = sub.add_parser("wait", help="wait until a job reaches a phase (exit 2 if it ends in another)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--until", default="Succeeded", choices=("Running", "Succeeded", "Failed", "Suspended"))
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (exit 3)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    _backend_options(p)
    p.set_defaults(func=_wait)

    p = sub.add_parser("logs", help="print a job's output")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    _backend_options(p)
    p.set_defaults(func=_logs)

    p = sub.add_parser("delete", help="delete jobs (a running job is stopped)")
    p.add_argument("names", nargs="+", metavar="NAME")
    _backend_options(p)
    p.set_defaults(func=_delete)

    for verb in ("suspend", "resume"):
        p = sub.add_parser(verb, help=f"{verb} a job" + (" (stop it, keep its checkpoints)" if verb == "suspend" else " (from its latest checkpoint)"))  # fmt: skip
        p.add_argument("name", metavar="NAME")
        _backend_options(p)
        p.set_defaults(func=_suspend)

    p = sub.add_parser("api", help="serve the REST API (FastAPI under uvicorn)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--backend", choices=("auto", "kube", "local"), default="auto",
                   help="kube: TrainingJobs through the Kubernetes API, callers checked by TokenReview and "
                   "SubjectAccessReview; local: the local backend, no authentication (loopback only); "
                   "auto: kube when Kubernetes credentials are found")  # fmt: skip
    p.add_argument("--root", default=".kubetrain", help="local backend state (with --backend local)")
    p.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes")
    p.set_defaults(func=_api)
