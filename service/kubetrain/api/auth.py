"""Who is calling and what RBAC lets them do: TokenReview and SubjectAccessReview against the Kubernetes API.

Answers are cached for a few seconds (keyed by a hash of the token; the token itself is never stored or
logged), as the apiserver's webhook authenticator and authorizer cache theirs, and concurrent misses of one
key share one review in flight, so a burst of calls costs one review each.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import threading
import time
from typing import Any

from .. import GROUP
from ..client import errors

log = logging.getLogger("kubetrain.api")

TOKENREVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESSREVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


@dataclasses.dataclass(frozen=True)
class User:
    """An authenticated caller, as the TokenReview answered."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


LOCAL_USER = User("local")


class _TTLCache:
    """A small thread-safe cache of review answers (cleared when full)."""

    def __init__(self, ttl: float, size: int = 10_000):
        self.ttl, self.size = ttl, size
        self.data: dict[Any, tuple[float, Any]] = {}
        self.lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self.lock:
            hit = self.data.get(key)
        return hit[1] if hit and hit[0] > time.monotonic() else None

    def put(self, key: Any, value: Any, ttl: float | None = None) -> None:
        with self.lock:
            if len(self.data) >= self.size:
                self.data.clear()
            self.data[key] = (time.monotonic() + (self.ttl if ttl is None else ttl), value)


class KubeAuth:
    """Authenticate bearer tokens and authorize verbs on trainingjobs through the Kubernetes API."""

    def __init__(self, kube: Any, ttl: float = 10.0, denied_ttl: float = 2.0):
        self.kube = kube  # store.KubeStore: its call() posts the reviews
        self.users = _TTLCache(ttl)
        self.decisions = _TTLCache(ttl)
        self.denied_ttl = denied_ttl
        self.inflight: dict[Any, asyncio.Future] = {}  # cache key -> the review being asked for it

    async def authenticate(self, authorization: str | None) -> User:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise errors.Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
        key = hashlib.sha256(token.encode()).hexdigest()
        user = self.users.get(key)
        if user is None:
            user = await self._once(key, lambda: self._token_review(token, key))
        if user is False:
            raise errors.Unauthorized("the token was not accepted")
        return user

    async def _token_review(self, token: str, key: str) -> User | bool:
        """The caller as the TokenReview answers (False: not authenticated), cached under key."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        status = (await self._post(TOKENREVIEWS, review)).get("status") or {}
        if not status.get("authenticated"):
            self.users.put(key, False, self.denied_ttl)
            return False
        u = status.get("user") or {}
        extra = tuple(sorted((k, tuple(v)) for k, v in (u.get("extra") or {}).items()))
        user = User(u.get("username", ""), u.get("uid", ""), tuple(u.get("groups") or ()), extra)
        self.users.put(key, user)
        return user

    async def _once(self, key: Any, review: Any) -> Any:
        """Ask review() once for concurrent misses of one key (16 clients starting at once ask once, not 16
        times). Shielded: a caller that goes away does not cancel the others' answer."""
        future = self.inflight.get(key)
        if future is None:
            future = self.inflight[key] = asyncio.ensure_future(review())
            future.add_done_callback(lambda _: self.inflight.pop(key, None))
        return await asyncio.shield(future)

    async def authorize(
        self, user: User, verb: str, namespace: str, name: str = "", subresource: str = ""
    ) -> None:
        """Allowed if RBAC allows the verb on every trainingjob of the namespace, else on this one by name
        (a grant limited by resourceNames); one review per (user, verb, namespace) in the common case."""
        allowed = await self._review(user, verb, namespace, "", subresource)
        if not allowed and name:
            allowed = await self._review(user, verb, namespace, name, subresource)
        if not allowed:
            what = f"trainingjobs{'/' + subresource if subresource else ''}"
            log.info("denied: user %s may not %s %s in namespace %s", user.name, verb, what, namespace)
            raise errors.Forbidden(
                f'user "{user.name}" cannot {verb} resource "{what}" in API group "{GROUP}" in the namespace "{namespace}"'
            )

    async def _review(self, user: User, verb: str, namespace: str, name: str, subresource: str) -> bool:
        key = (user, verb, namespace, name, subresource)
        allowed = self.decisions.get(key)
        if allowed is None:
            allowed = await self._once(key, lambda: self._access_review(key))
        return allowed

    async def _access_review(self, key: tuple[User, str, str, str, str]) -> bool:
        """Whether the SubjectAccessReview allows it, cached under key."""
        user, verb, namespace, name, subresource = key
        attrs = {"namespace": namespace, "verb": verb, "group": GROUP, "resource": "trainingjobs"}
        if name:
            attrs["name"] = name
        if subresource:
            attrs["subresource"] = subresource
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                  "spec": {"user": user.name, "uid": user.uid, "groups": list(user.groups),
                           "extra": {k: list(v) for k, v in user.extra}, "resourceAttributes": attrs}}  # fmt: skip
        allowed = bool(((await self._post(ACCESSREVIEWS, review)).get("status") or {}).get("allowed"))
        self.decisions.put(key, allowed, None if allowed else self.denied_ttl)
        return allowed

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a review; any failure is 503 (the caller is neither let in nor blamed)."""
        try:
            return (await self.kube.call("POST", path, body)).json()
        except errors.ClientError as e:
            kind = path.rsplit("/", 1)[1][:-1]
            raise errors.Unavailable(
                f"the Kubernetes API did not answer a {kind}: {type(e).__name__}"
            ) from None


class NoAuth:
    """Local mode: no cluster to ask, so every caller is the local user (the server binds loopback only)."""

    async def authenticate(self, authorization: str | None) -> User:
        return LOCAL_USER

    async def authorize(
        self, user: User, verb: str, namespace: str, name: str = "", subresource: str = ""
    ) -> None:
        return None
