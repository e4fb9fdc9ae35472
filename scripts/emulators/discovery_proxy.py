#!/usr/bin/env python3
"""An HTTP proxy in front of an emulator that holds every call to Google's
API description of it (discovery.py).

    .venv/emulators/bin/python scripts/emulators/discovery_proxy.py \
        --api bigquery.v2 --upstream 127.0.0.1:Q --violations FILE [--port N]
        [--permissions permissions.json [--who producer]]

A request the API would refuse (unknown field, wrong type, value outside an
enum, missing required parameter, a URL no method answers) gets HTTP 400,
as Google's front end answers it, and is not forwarded. With --permissions,
a call no entry of the permission table lists (with --who and --when: no
entry of that command under those settings), or a query reading a
region-qualified INFORMATION_SCHEMA view the table grants no project-wide
read for, gets HTTP 403, as a missing grant would. The test harness's own
set-up calls (creating datasets, tables, buckets; header HARNESS_HEADER)
are held to the API description but not to the table. An answer of the
emulator that BigQuery or Cloud Storage would not send (a field the method's
response schema lacks, or another type) is passed on unchanged. Each of
these is one JSON line in the violations file, naming the call and the
field; the test harness fails the tests it concerns (tests/common/gcp.rs).

`GET /__discovery_proxy/calls` answers the count of calls per method id.
Prints one JSON line {"port": N} when it listens; stops on SIGTERM.
"""

import argparse
from collections import Counter
import email.parser
import email.policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import http.client
import json
import signal
import sys
import threading
import traceback
import urllib.parse

from discovery import Api, Violation
from permissions import PermissionTable

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-connection", "content-length"}
CALLS_PATH = "/__discovery_proxy/calls"
# Sent by the test harness (tests/common/gcp.rs) on the calls that set a
# test up or look at its outcome: bqdrain never sends it.
HARNESS_HEADER = "x-bqdrain-test-harness"
# How much of a request's and an answer's body a violation keeps, so the
# harness can tell which test's dataset or bucket it concerns.
CONTEXT_CHARS = 4000


class Proxy:
    def __init__(self, api: Api, upstream: str, violations_path: str, table: "PermissionTable | None"):
        self.api, self.upstream, self.table = api, upstream, table
        self.violations_path = violations_path
        self.lock = threading.Lock()
        self.calls: Counter = Counter()

    def record(self, side: str, call: str, method_id: str, url: str, found: list, context: str) -> None:
        with self.lock, open(self.violations_path, "a") as out:
            for v in found:
                out.write(json.dumps({
                    "api": self.api.title, "side": side, "call": call, "method": method_id,
                    "field": v.field, "problem": v.problem, "url": url, "context": context,
                    "message": message(side, call, method_id, v),
                }) + "\n")


def message(side: str, call: str, method_id: str, v: Violation) -> str:
    return f"{side} of {method_id} ({call}): {v.field}: {v.problem}"


def google_error(code: int, status: str, reason: str, text: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": text, "status": status,
                                 "errors": [{"reason": reason, "message": text}]}}).encode()


def json_body(raw: bytes, content_type: str):
    """The JSON document in a request body: the body itself, or the metadata
    part of a multipart upload; None when there is none."""
    if not raw:
        return None
    if content_type.startswith("multipart/"):
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
        for part in msg.iter_parts():
            if part.get_content_type() == "application/json":
                return json.loads(part.get_payload(decode=True) or b"null")
        return None
    if "json" not in content_type:
        return None
    return json.loads(raw)


def make_handler(proxy: Proxy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args):  # the emulator logs the calls
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _answer(self, status: int, headers: list, body: bytes) -> None:
            self.send_response(status)
            for k, v in headers:
                if k.lower() not in HOP_BY_HOP:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _refuse(self, code: int, status: str, reason: str, text: str) -> None:
            self._answer(code, [("Content-Type", "application/json; charset=UTF-8")],
                         google_error(code, status, reason, text))

        def handle_one(self) -> None:
            """One call; a failure of the proxy itself is answered 500 with
            its reason, never a connection dropped without an answer."""
            try:
                self._handle()
            except Exception as e:  # noqa: BLE001: any failure, reported
                traceback.print_exc(file=sys.stderr)
                self._refuse(500, "INTERNAL", "backendError", f"discovery_proxy failed: {e!r}")

        def _handle(self) -> None:
            raw = self._body()
            parsed = urllib.parse.urlsplit(self.path)
            if parsed.path == CALLS_PATH:
                with proxy.lock:
                    counts = dict(proxy.calls)
                return self._answer(200, [("Content-Type", "application/json")], json.dumps(counts).encode())
            query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
            content_type = self.headers.get("Content-Type", "")
            method, path_params = proxy.api.find(self.command, parsed.path)
            if method is None:
                v = Violation("url", f"no method of {proxy.api.title} answers {self.command} {parsed.path}")
                call = f"{self.command} {parsed.path}"
                proxy.record("request", call, "?", self.path, [v], raw[:CONTEXT_CHARS].decode(errors="replace"))
                return self._refuse(400, "INVALID_ARGUMENT", "invalid", "discovery_proxy: " + message("request", call, "?", v))
            with proxy.lock:
                proxy.calls[method.id] += 1
            context = self.path + " " + raw[:CONTEXT_CHARS].decode(errors="replace")
            try:
                body = json_body(raw, content_type)
            except ValueError as e:
                body, found = None, [Violation("body", f"not JSON: {e}")]
            else:
                found = []
            found += proxy.api.check_request(method, path_params, query, body)
            if found:
                proxy.record("request", method.call, method.id, self.path, found, context)
                text = "; ".join(message("request", method.call, method.id, v) for v in found)
                return self._refuse(400, "INVALID_ARGUMENT", "invalid", "discovery_proxy: " + text)
            if proxy.table is not None and HARNESS_HEADER not in self.headers:
                missing = proxy.table.refusal(self.command, parsed.path, body)
                if missing:
                    v = Violation("permission", missing)
                    proxy.record("permission", method.call, method.id, self.path, [v], context)
                    return self._refuse(403, "PERMISSION_DENIED", "accessDenied",
                                        "discovery_proxy: " + message("permission", method.call, method.id, v))
            status, headers, answer = self._forward(raw)
            media = query.get("alt") == ["media"] or parsed.path.startswith("/download/")
            if 200 <= status < 300 and answer and not media:
                try:
                    document = json.loads(answer)
                except ValueError as e:
                    found = [Violation("body", f"not JSON: {e}")]
                else:
                    enum_ints = any("enum-encoding=int" in v for v in query.get("$alt", []))
                    found = proxy.api.check_response(method, document, enum_ints)
                if found:
                    proxy.record("response", method.call, method.id, self.path, found,
                                 context + " " + answer[:CONTEXT_CHARS].decode(errors="replace"))
            self._answer(status, headers, answer)

        def _forward(self, raw: bytes):
            """The emulator's answer. A failed exchange with it is tried once
            more, then answered 502 (with the reason on stderr) instead of
            dropping the client's connection without an answer, which its
            client reads as "connection closed before message completed"."""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(raw))
            for attempt in (1, 2):
                conn = http.client.HTTPConnection(proxy.upstream, timeout=600)
                try:
                    conn.request(self.command, self.path, body=raw, headers=headers)
                    r = conn.getresponse()
                    return r.status, r.getheaders(), r.read()
                except (OSError, http.client.HTTPException) as e:
                    print(f"discovery_proxy: {self.command} {self.path}: attempt {attempt}: {e!r}",
                          file=sys.stderr, flush=True)
                finally:
                    conn.close()
            return 502, [("Content-Type", "application/json; charset=UTF-8")], google_error(
                502, "UNAVAILABLE", "backendError", "discovery_proxy: the emulator did not answer")

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = handle_one

    return Handler


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--api", required=True, help="discovery document: bigquery.v2, storage.v1, run.v2")
    ap.add_argument("--upstream", required=True, help="HOST:PORT of the emulator")
    ap.add_argument("--violations", required=True, help="file the violations are appended to, one JSON line each")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--permissions", help="permission table (src/adapters/gcp/permissions.json)")
    ap.add_argument("--who", help="with --permissions: allow only the calls of this command")
    ap.add_argument("--when", help="with --permissions: allow only the calls made always or under "
                    "these settings (comma-separated `when` values of the table)")
    args = ap.parse_args()
    when = set(filter(None, args.when.split(","))) if args.when is not None else None
    table = PermissionTable(args.permissions, args.who, when) if args.permissions else None
    proxy = Proxy(Api(args.api), args.upstream, args.violations, table)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(proxy))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
