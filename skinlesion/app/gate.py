"""What a request may ask of the server before Gradio works on it.

- `BodyLimit`: a request body over its route's limit is refused with 413 before it is parsed
  (the upload route takes a whole batch, and only as a multipart upload);
- `Gate`: the routes the app does not use answer 404 (deep links, the monitoring dashboard); a
  session hash longer than Gradio's own is refused with 400; a Range header other than one
  plain byte range is ignored (the whole file is served: Starlette answered some with a 500);
  and it counts the pages open now (`Heartbeats`), whose sessions the server keeps;
- `Admission`: what Gradio's queue lets in — an endpoint that exists (400, not a 500), a short
  session hash (each is kept as a key of the server's session table), and at most
  `CLIENT_SHARE` requests of one client waiting or running, so that one client cannot take
  every place in the queue (503, as when the queue is full).
"""
from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections import Counter

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from ..batch import MAX_BYTES
from .uploads import UPLOAD_LIMIT

UPLOAD_ROUTE_LIMIT = MAX_BYTES + 1024 ** 2  # a whole batch in one /upload request, with its multipart headers
UPLOAD_ROUTES = ("/gradio_api/upload", "/upload")  # the file upload itself; every other route gets UPLOAD_LIMIT
DISABLED_ROUTES = ("/gradio_api/deep_link", "/monitoring")  # and what lies under them: unused by the app
HEARTBEAT = "/gradio_api/heartbeat/"  # + a session hash: the stream an open page holds
SESSION_HASH = 64   # characters; Gradio's page and gradio_client make hashes of 10-12
QUEUE_SIZE = 64     # requests waiting beyond this are refused at once instead of timing out
CLIENT_SHARE = QUEUE_SIZE // 4  # requests of one client waiting or running at once
PLAIN_RANGE = re.compile(rb"bytes=(\d+-\d*|-\d+)")
# A proxy's own address: behind one (a Space), the client is the last address it forwarded.
PROXY_NETWORKS = [ipaddress.ip_network(n) for n in
                  ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128", "fc00::/7")]


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"The request is larger than {limit // 1024 ** 2} MB: send a smaller image.")


async def refuse(error: HTTPException, scope, receive, send) -> None:
    await JSONResponse({"detail": error.detail}, status_code=error.status_code)(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request body over its route's limit is refused with 413, from its
    Content-Length before anything is read, or as soon as the bytes read pass the limit."""

    def __init__(self, app, limit: int = UPLOAD_LIMIT, upload_limit: int = UPLOAD_ROUTE_LIMIT):
        self.app, self.limit, self.upload_limit = app, limit, upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        upload = (scope["path"].rstrip("/") in UPLOAD_ROUTES
                  and headers.get(b"content-type", b"").startswith(b"multipart/form-data"))
        limit = self.upload_limit if upload else self.limit
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > limit:
            return await refuse(BodyTooLarge(limit), scope, receive, send)
        received, started = 0, False

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as error:
            if not started:
                await refuse(error, scope, receive, send)


class Heartbeats:
    """The sessions with a page open now: each page holds one heartbeat stream open
    (/gradio_api/heartbeat/<session hash>) for as long as it is open."""

    def __init__(self):
        self.open: Counter[str] = Counter()

    def live(self) -> set[str]:
        return set(self.open)  # a session leaves the count with its last stream

    async def held(self, session: str, call):
        self.open[session] += 1
        try:
            return await call
        finally:
            self.open[session] -= 1
            if self.open[session] <= 0:
                del self.open[session]


class Gate:
    """ASGI middleware: unused routes, long session hashes and odd Range headers, before Gradio;
    and the heartbeat streams, counted in `heartbeats`."""

    def __init__(self, app, heartbeats: Heartbeats | None = None):
        self.app, self.heartbeats = app, heartbeats or Heartbeats()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "").rstrip("/")
        if any(path == r or path.startswith(r + "/") for r in DISABLED_ROUTES):
            return await refuse(HTTPException(404, "Not Found"), scope, receive, send)
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        hashes = query.get("session_hash", [])
        heartbeat = path.rsplit("/", 1)[-1] if path.startswith(HEARTBEAT) else None
        if any(len(h) > SESSION_HASH for h in [*hashes, heartbeat or ""]):
            return await refuse(HTTPException(400, "The session hash is too long."), scope, receive, send)
        ranges = [value for name, value in scope["headers"] if name == b"range"]
        if ranges and not (len(ranges) == 1 and PLAIN_RANGE.fullmatch(ranges[0].strip())):
            scope = {**scope, "headers": [(n, v) for n, v in scope["headers"] if n != b"range"]}
        if heartbeat:
            return await self.heartbeats.held(heartbeat, self.app(scope, receive, send))
        return await self.app(scope, receive, send)


def client_of(request) -> str:
    """Who sent a request: its peer address; behind a proxy (a private or loopback peer), the
    last address in X-Forwarded-For that is not a proxy's own (a client may write addresses of
    its own into the header, but a proxy appends the one it saw)."""
    peer = request.client.host if request.client else ""
    if not is_proxy(peer):
        return peer
    forwarded = [a.strip() for a in request.headers.get("x-forwarded-for", "").split(",") if a.strip()]
    return next((a for a in reversed(forwarded) if not is_proxy(a)), peer)


def is_proxy(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in PROXY_NETWORKS)


class Admission:
    """Wraps a Gradio queue's `push` (blocks._queue): what the queue lets in (module docstring).
    Gradio has no such checks of its own: an unknown fn_index raises a KeyError (HTTP 500), any
    session hash is kept, and one client may fill the whole queue."""

    def __init__(self, blocks, share: int = CLIENT_SHARE):
        self.blocks, self.share = blocks, share
        self.push = blocks._queue.push

    @classmethod
    def install(cls, blocks) -> None:
        blocks._queue.push = cls(blocks)

    async def __call__(self, body, request, username):
        if not isinstance(body.fn_index, int) or body.fn_index not in self.blocks.fns:
            return False, "There is no such endpoint.", "error"
        if body.session_hash is not None and len(body.session_hash) > SESSION_HASH:
            return False, "The session hash is too long.", "error"
        client = client_of(request)
        events = list(self.blocks._queue.event_ids_to_events.values())  # waiting and running
        if sum(client_of(e.request) == client for e in events if e.request is not None) >= self.share:
            return (False, f"This client already has {self.share} requests waiting or running; "
                    "send the next when one has finished.", "queue_full")
        return await self.push(body, request, username)
