"""A webhook receiver that verifies with the Standard Webhooks reference library for Python.

Run by crates/events/tests/webhook_secrets.rs: `python3 standard_receiver.py PORT SECRET...`.
It listens on 127.0.0.1:PORT (printing `listening <port>` once it does) and, for
every POST, verifies the delivery with each secret *alone* — `standardwebhooks.Webhook(secret)
.verify(body, headers)` — and prints one JSON line: the headers and whether each secret verified.
It answers 204 when every secret verified, 401 otherwise. The library comes from PyPI
(scripts/python-test-deps.sh installs it).
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

PORT = int(sys.argv[1])
SECRETS = sys.argv[2:]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        verified = []
        for secret in SECRETS:
            try:
                Webhook(secret).verify(body, headers)
                verified.append(True)
            except WebhookVerificationError:
                verified.append(False)
        line = {
            "webhook_id": headers.get("webhook-id"),
            "signature": headers.get("webhook-signature"),
            "verified": verified,
        }
        print(json.dumps(line), flush=True)
        self.send_response(204 if all(verified) else 401)
        self.end_headers()

    def log_message(self, *args):
        pass  # stdout carries the results; keep it to them


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
