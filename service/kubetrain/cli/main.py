"""`kubetrain` entry point: argument parsing and exit codes; user mistakes never print a stack trace."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .. import __version__
from ..client import errors
from . import files

EXIT_OK, EXIT_INVALID, EXIT_FAILED, EXIT_UNAVAILABLE = 0, 1, 2, 3
EXIT_CODES: dict[type[errors.ClientError], int] = {errors.JobFailed: EXIT_FAILED, errors.Unavailable: EXIT_UNAVAILABLE,
                                                   errors.WaitTimeout: EXIT_UNAVAILABLE}  # fmt: skip


def _validate(args: argparse.Namespace) -> int:
    bad = 0
    for path in args.files:
        job = files.read_job_or_report(path, args.set)
        if job is None:
            bad += 1
            continue
        print(f"{path}: OK ({job.kind} {job.metadata.name})")
    return EXIT_INVALID if bad else EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    from ..spec import TrainingJob

    print(json.dumps(TrainingJob.model_json_schema(), indent=2))
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    job = files.read_job_or_report(args.file, args.set)
    if job is None:
        return EXIT_INVALID
    from ..client.local import run_foreground

    result = run_foreground(job, root=args.root, launcher=args.launcher)
    return EXIT_OK if result.succeeded else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubetrain", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kubetrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check TrainingJob files; one line per problem")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="override a field")
    p.set_defaults(func=_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of the TrainingJob file format")
    p.set_defaults(func=_schema)

    p = sub.add_parser("run", help="run a TrainingJob locally (local processes or Ray, MLflow on SQLite)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="override a field")
    p.add_argument(
        "--root", default=".kubetrain", help="runs, models and the MLflow store (default .kubetrain)"
    )
    p.add_argument(
        "--launcher",
        choices=("auto", "processes", "ray"),
        default="auto",
        help="how a run's workers start: processes of this machine (auto), or Ray Train on a local Ray, as in "
        "a cluster (slower to start; sweeps always use Ray Tune)",
    )
    p.set_defaults(func=_run)

    for name in ("k8s", "jobs"):  # optional command groups that register themselves
        try:
            module = __import__(f"kubetrain.cli.{name}", fromlist=["register"])
        except ImportError:
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except files.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID
    except errors.Invalid as e:
        for problem in e.problems:
            print(problem.render(e.source) if e.source else f"error: {problem.render()}", file=sys.stderr)
        return EXIT_INVALID
    except errors.ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CODES.get(type(e), EXIT_INVALID)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
