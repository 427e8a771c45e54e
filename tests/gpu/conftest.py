"""GPU tests reuse the integration fixtures (session Ray, tiny job factory)."""

from tests.integration.conftest import ray_session, tiny_job  # noqa: F401
