"""`python -m kubetrain.runtime SPEC [--set path=value]`: what a RayJob's entrypoint runs (and `kubetrain run`)."""

from __future__ import annotations

import argparse
import sys

from ..spec import SpecError, load_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetrain.runtime")
    parser.add_argument("spec")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--root", default=".kubetrain", help="local state: models, MLflow, datasets cache")
    args = parser.parse_args(argv)
    try:
        with open(args.spec) as f:
            job = load_job(f.read(), args.spec, args.set)
    except (OSError, SpecError) as e:
        print(str(e), file=sys.stderr)
        return 1
    from .run.job import JobError, run_job

    try:
        if job.spec.sweep is not None:  # a sweep's RayJob runs the whole sweep on its cluster
            from .sweep.driver import run_sweep

            result = run_sweep(job, local_root=args.root)
        else:
            result = run_job(job, local_root=args.root)
    except JobError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0 if result.succeeded else 2


if __name__ == "__main__":
    sys.exit(main())
