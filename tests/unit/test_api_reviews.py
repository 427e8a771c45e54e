"""The API's TokenReview and SubjectAccessReview answers are cached, and a burst of calls asks once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from kubetrain.api.auth import KubeAuth
from kubetrain.client import errors


class Reviews:
    """Answers reviews as the Kubernetes API would (alice is allowed to list in team-a), slowly; counts them."""

    def __init__(self, fail: bool = False):
        self.asked: list[str] = []
        self.fail = fail

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        self.asked.append(body["kind"])
        await asyncio.sleep(0.05)  # every concurrent caller misses the cache meanwhile
        if self.fail:
            raise errors.Unavailable("connection refused")
        if body["kind"] == "TokenReview":
            ok = body["spec"]["token"] == "tok-alice"
            status = {
                "authenticated": ok,
                **({"user": {"username": "alice", "groups": ["team-a"]}} if ok else {}),
            }
        else:
            attrs = body["spec"]["resourceAttributes"]
            status = {"allowed": body["spec"]["user"] == "alice" and attrs["namespace"] == "team-a"}
        answer = json.dumps({"status": status})
        return type("Answer", (), {"json": lambda self: json.loads(answer)})()


def burst(auth: KubeAuth, token: str, namespace: str, n: int = 16) -> list[Any]:
    async def one() -> Any:
        user = await auth.authenticate(f"Bearer {token}")
        await auth.authorize(user, "list", namespace)
        return user

    async def all_at_once() -> list[Any]:
        return await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)

    return asyncio.run(all_at_once())


def test_sixteen_concurrent_calls_ask_one_tokenreview_and_one_subjectaccessreview():
    kube = Reviews()
    auth = KubeAuth(kube)
    users = burst(auth, "tok-alice", "team-a")
    assert [u.name for u in users] == ["alice"] * 16
    assert kube.asked == ["TokenReview", "SubjectAccessReview"]
    burst(auth, "tok-alice", "team-a")  # cached: no more reviews
    assert kube.asked == ["TokenReview", "SubjectAccessReview"]
    assert not auth.inflight


@pytest.mark.parametrize(
    "token,namespace,error,asked",
    [
        ("tok-mallory", "team-a", errors.Unauthorized, ["TokenReview"]),
        ("tok-alice", "team-b", errors.Forbidden, ["TokenReview", "SubjectAccessReview"]),
    ],
)
def test_a_burst_of_refused_calls_is_refused_every_time_after_one_review(token, namespace, error, asked):
    kube = Reviews()
    results = burst(KubeAuth(kube), token, namespace)
    assert all(isinstance(r, error) for r in results), results
    assert kube.asked == asked


def test_an_unreachable_api_is_503_for_every_waiter_and_asked_again_next_time():
    kube = Reviews(fail=True)
    auth = KubeAuth(kube)
    results = burst(auth, "tok-alice", "team-a")
    assert all(isinstance(r, errors.Unavailable) for r in results), results
    assert kube.asked == ["TokenReview"]
    burst(auth, "tok-alice", "team-a", n=1)
    assert kube.asked == ["TokenReview"] * 2  # failures are not cached
