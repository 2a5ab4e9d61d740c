"""The REST transport on its own (model_server.http_server), in this process with an echo
handler: timeouts, body limits, chunked and gzip bodies, keep-alive, the connection cap."""

from __future__ import annotations

import gzip
import http.client
import json
import socket

import pytest

from model_server.http_server import HttpLimits, HttpServer, Response


def echo(request):
    return Response(200, json.dumps({"method": request.method, "target": request.target,
                                     "body": request.body.decode("latin-1")}).encode())


@pytest.fixture()
def http_server():
    server = HttpServer(("127.0.0.1", 0), echo, HttpLimits(
        num_threads=2, max_connections=4, max_body_bytes=1000, header_timeout_s=0.3,
        body_timeout_s=0.3)).start()
    yield server
    server.stop()


def connect(server) -> socket.socket:
    return socket.create_connection(server.server_address, timeout=10)


def read_all(sock) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_keep_alive_gzip_and_chunked(http_server):
    conn = http.client.HTTPConnection(*http_server.server_address, timeout=10)
    conn.request("POST", "/a", gzip.compress(b"x" * 1000), {"Content-Encoding": "gzip"})
    assert json.loads(conn.getresponse().read())["body"] == "x" * 1000
    conn.request("POST", "/b", iter([b"ab", b"cd"]), encode_chunked=True)  # same connection
    assert json.loads(conn.getresponse().read())["body"] == "abcd"
    conn.request("POST", "/c", gzip.compress(b"x" * 1001), {"Content-Encoding": "gzip"})
    response = conn.getresponse()
    assert response.status == 413 and b"inflates to more than 1000 bytes" in response.read()
    conn.close()


@pytest.mark.parametrize("request_bytes", [
    b"POST / HTTP/1.1\r\nContent-Length: 100001\r\n\r\n" + b"x" * 100001,
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n" + b"x" * 1001,
])
def test_bodies_over_the_limit_are_413_and_closed(http_server, request_bytes):
    """The whole oversized body is sent first: the server drops it (lingering close) and the
    client reads the 413 rather than a connection reset."""
    with connect(http_server) as sock:
        sock.sendall(request_bytes)
        sock.shutdown(socket.SHUT_WR)
        reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in reply


def test_expect_100_continue(http_server):
    with connect(http_server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"ok")
        reply = b""
        while b'"body"' not in reply and (chunk := sock.recv(1000)):
            reply += chunk
        assert b'"body": "ok"' in reply


def test_slow_headers_are_dropped_and_slow_bodies_get_408(http_server):
    with connect(http_server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x")  # never finished
        assert read_all(sock) == b""
    with connect(http_server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        assert read_all(sock).startswith(b"HTTP/1.1 408 ")


def test_connection_cap_evicts_the_oldest_waiting_socket(http_server):
    idle = [connect(http_server) for _ in range(4)]
    try:
        with connect(http_server) as sock:  # the fifth: idle[0] makes room
            sock.sendall(b"GET /x HTTP/1.0\r\n\r\n")
            assert b'"target": "/x"' in read_all(sock)
        assert idle[0].recv(10) == b""
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize("garbage", [b"\x16\x03\x01 TLS?\r\n\r\n", b"GET /\r\n\r\n",
                                     b"GET / HTTP/1.1\r\nno colon\r\n\r\n"])
def test_malformed_heads_are_400(http_server, garbage):
    with connect(http_server) as sock:
        sock.sendall(garbage)
        assert read_all(sock).startswith(b"HTTP/1.1 400 ")
