"""HTTP/1.1 for the REST front end: one event-loop thread for the sockets, a bounded pool for
the requests.

A client that is slow to send its headers or body holds a socket and a coroutine, never a
worker thread: requests reach the pool (`--rest_api_num_threads` threads) only once they are
complete. Headers must arrive within the header timeout (also the keep-alive idle time),
bodies within the body timeout; bodies larger than the limit are refused with 413 before
they are read, and gzip bodies are inflated only up to the limit. Open connections are
capped: at the cap, a new connection evicts the oldest one that is still waiting for a
request, so idle or half-open sockets cannot lock legitimate clients out. Settings:
docs/model_server.md, 'Security'.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import http
import json
import logging
import socket
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("model_server")

MAX_HEAD_BYTES = 64 * 1024  # request line + headers (431 beyond)
LINGER_S = 2.0  # after refusing a body: how long its rest is read and dropped


@dataclasses.dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]     # lower-case names; repeated headers joined with ", "
    body: bytes = b""


@dataclasses.dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False         # close the connection after this response


def json_error(status: int, message: str, close: bool = False) -> Response:
    return Response(status, json.dumps({"error": message}).encode(), close=close)


class _Refused(Exception):
    """A request the transport answers itself (bad framing, too large, too slow)."""

    def __init__(self, response: Response):
        super().__init__(response.status)
        self.response = response


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    num_threads: int = 4
    max_connections: int = 512
    max_body_bytes: int = 64 * 1024 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0


def gunzip(data: bytes, limit: int) -> bytes:
    """Inflate a gzip body (several members allowed), stopping as soon as the output would
    pass `limit`; _Refused 413 then, 400 when the data is not gzip."""
    out = bytearray()
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        while True:
            out += inflater.decompress(data, limit + 1 - len(out))
            if len(out) > limit:
                raise _Refused(json_error(
                    413, f"Request body inflates to more than {limit} bytes "
                         f"(--rest_api_max_body_bytes)"))
            data = inflater.unconsumed_tail
            if inflater.eof:
                data = inflater.unused_data
                if not data.strip(b"\0"):
                    return bytes(out)
                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            elif not data:
                raise zlib.error("Compressed file ended before the end-of-stream marker "
                                 "was reached")
    except zlib.error as exc:
        raise _Refused(json_error(400, f"Failed to decompress gzip request body: {exc}")
                       ) from None


def _parse_head(head: bytes) -> Request:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _Refused(json_error(400, f"Bad request line {lines[0][:100]!r}", close=True))
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or name != name.strip():
            raise _Refused(json_error(400, f"Bad header line {line[:100]!r}", close=True))
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return Request(parts[0], parts[1], parts[2], headers)


def _keep_alive(request: Request) -> bool:
    tokens = {t.strip().lower() for t in request.headers.get("connection", "").split(",")}
    if request.version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


class HttpServer:
    """Serves `handler(request) -> Response` (called on a worker thread) on `address`."""

    def __init__(self, address: tuple[str, int], handler: Callable[[Request], Response],
                 limits: HttpLimits, server_name: str = "uic-model-server"):
        self.handler = handler
        self.limits = limits
        self.server_name = server_name
        # bound now, so a busy port is a startup error and the port is known at once
        self._socket = socket.create_server(address, backlog=1024)
        self._socket.setblocking(False)
        self.server_address = self._socket.getsockname()[:2]
        self._pool = ThreadPoolExecutor(limits.num_threads, thread_name_prefix="rest")
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._started = threading.Event()
        self._open = 0
        self._busy = 0  # requests read and not yet answered
        self._grace_s = 0.0
        # connections waiting for a request line (evictable), oldest first
        self._waiting: collections.OrderedDict = collections.OrderedDict()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> HttpServer:
        self._thread = threading.Thread(target=self._run_loop, name="rest_io", daemon=True)
        self._thread.start()
        self._started.wait()
        return self

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._connection, sock=self._socket,
                                            limit=MAX_HEAD_BYTES)
        self._started.set()
        await self._stopped.wait()
        server.close()
        # let requests in progress send their responses, then close every connection
        deadline = self._loop.time() + self._grace_s
        while self._busy and self._loop.time() < deadline:
            await asyncio.sleep(0.01)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    def stop(self, grace_s: float = 0.0) -> None:
        """Stop listening; requests in progress get up to `grace_s` to be answered."""
        if self._thread is None:
            return
        self._grace_s = grace_s
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout=grace_s + 5)
        self._thread = None
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def open_connections(self) -> int:
        return self._open

    # ------------------------------------------------------------------ connections
    def _admit(self, writer) -> bool:
        """Room for one more connection: evict the oldest waiting one at the cap."""
        if self._open < self.limits.max_connections:
            return True
        if not self._waiting:
            return False
        oldest, _ = self._waiting.popitem(last=False)
        oldest.transport.abort()
        return True

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        if not self._admit(writer):
            writer.transport.abort()
            return
        self._open += 1
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, OSError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, TimeoutError, asyncio.CancelledError):
            pass  # the client went away, was too slow or sent garbage, or the server stops
        finally:
            self._open -= 1
            self._waiting.pop(writer, None)
            writer.close()

    async def _exchange(self, reader, writer) -> bool:
        """One request and its response; False when the connection must close."""
        self._waiting[writer] = None
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                          self.limits.header_timeout_s)
        except asyncio.LimitOverrunError:
            await self._send(writer, None, json_error(431, "Request headers too large",
                                                      close=True))
            return False
        except asyncio.IncompleteReadError:
            return False
        finally:
            self._waiting.pop(writer, None)
        request = None
        try:
            request = _parse_head(head)
            request.body = await asyncio.wait_for(self._read_body(request, reader, writer),
                                                  self.limits.body_timeout_s)
        except _Refused as refused:
            await self._send(writer, request, refused.response)
            if refused.response.status == 413:
                await self._linger(reader)
            return False
        except TimeoutError:
            await self._send(writer, request, json_error(
                408, f"Request body not received within {self.limits.body_timeout_s:g} s",
                close=True))
            return False
        self._busy += 1
        try:
            response = await self._loop.run_in_executor(self._pool, self._handle, request)
            await self._send(writer, request, response)
        finally:
            self._busy -= 1
        return not response.close and _keep_alive(request) and not self._stopped.is_set()

    @staticmethod
    async def _linger(reader) -> None:
        """Read and drop what the client still sends for a while (a lingering close), so a
        client busy sending a refused body reads the 413 instead of a reset."""
        async def drain():
            while await reader.read(65536):
                pass

        try:
            await asyncio.wait_for(drain(), LINGER_S)
        except (TimeoutError, ConnectionError, OSError):
            pass

    async def _read_body(self, request: Request, reader, writer) -> bytes:
        limit = self.limits.max_body_bytes
        if "chunked" in request.headers.get("transfer-encoding", "").lower():
            chunks, total = [], 0
            while True:
                line = await reader.readuntil(b"\n")
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise _Refused(json_error(400, "Malformed chunked request body",
                                              close=True)) from None
                if size == 0:
                    while (await reader.readuntil(b"\n")).strip():
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if size < 0 or total > limit:
                    raise _Refused(self._too_large(total))
                chunks.append(await reader.readexactly(size))
                await reader.readuntil(b"\n")
        text = request.headers.get("content-length", "0") or "0"
        try:
            length = int(text)
        except ValueError:
            raise _Refused(json_error(400, "Content-Length is not a number", close=True)
                           ) from None
        if length < 0:
            raise _Refused(json_error(400, "Content-Length is negative", close=True))
        if length > limit:
            raise _Refused(self._too_large(length))
        if length and "100-continue" in request.headers.get("expect", "").lower():
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return await reader.readexactly(length) if length else b""

    def _too_large(self, size: int) -> Response:
        # the unread rest of the body must not be parsed as a request: close
        return json_error(413, f"Request body of {size} bytes exceeds the limit of "
                               f"{self.limits.max_body_bytes} bytes (--rest_api_max_body_bytes)",
                          close=True)

    def _handle(self, request: Request) -> Response:
        """On a worker: inflate a gzip body, then the handler; never raises."""
        try:
            if "gzip" in request.headers.get("content-encoding", "").lower():
                request.body = gunzip(request.body, self.limits.max_body_bytes)
            return self.handler(request)
        except _Refused as refused:
            return refused.response
        except Exception:  # noqa: BLE001 - a request must never kill the server
            log.exception("REST %s %s failed", request.method, request.target[:200])
            return json_error(500, "internal error; see the server log")

    async def _send(self, writer, request: Request | None, response: Response) -> None:
        reason = http.HTTPStatus(response.status).phrase if response.status in \
            http.HTTPStatus._value2member_map_ else ""
        lines = [f"HTTP/1.1 {response.status} {reason}", f"Server: {self.server_name}",
                 f"Content-Type: {response.content_type}",
                 f"Content-Length: {len(response.body)}"]
        lines += [f"{name}: {value}" for name, value in response.headers]
        if response.close or request is None or not _keep_alive(request):
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # one write: head and body in one segment (TCP_NODELAY is on)
        writer.write(head if request is not None and request.method == "HEAD"
                     else head + response.body)
        await asyncio.wait_for(writer.drain(), self.limits.body_timeout_s)
