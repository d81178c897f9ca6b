"""Receive iothub webhooks and verify their Standard Webhooks signatures, with the standard library only.

Add an endpoint (``iothub webhooks add http://HOST:PORT/ --events alert.firing,alert.resolved``
prints its ``whsec_`` secret), put the secret in a file, then::

    python docs/examples/webhook_receiver.py --port 8000 --secret-file webhook-secret.txt

Each verified message is printed as one line, ``<webhook-id> <type> <data as JSON>``, and answered
204; a message whose signature does not verify, or whose timestamp is more than five minutes off,
is answered 400 and not printed. The same message may arrive more than once (delivery is at least
once): skip a ``webhook-id`` already handled. The secret file is read for every message, so a
rotated secret can be put in place while this runs (the hub signs with both during the overlap).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TOLERANCE_S = 300
seen: set[str] = set()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Whether one of the message's signatures is ours: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    msg_id, timestamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE_S:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest())
    for signature in headers.get("webhook-signature", "").split():
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return True
    return False


class Handler(BaseHTTPRequestHandler):
    secret_file: Path

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        if not verify(self.secret_file.read_text().strip(), headers, body):
            self.send_response(400)
            self.end_headers()
            return
        msg_id = headers["webhook-id"]
        if msg_id not in seen:  # at least once: a retry of a message handled before is only acknowledged
            seen.add(msg_id)
            message = json.loads(body)
            print(msg_id, message["type"], json.dumps(message["data"], sort_keys=True), flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per verified message on stdout is all this prints


def main() -> None:
    parser = argparse.ArgumentParser(description="Receive and verify iothub webhooks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--secret-file", type=Path, required=True, help="holds the endpoint's whsec_ secret")
    args = parser.parse_args()
    Handler.secret_file = args.secret_file
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on http://{args.host}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
