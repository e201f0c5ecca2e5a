#!/usr/bin/env python3
"""Continuous writer for the operator end-to-end tests, and the check of what it wrote.

  writer.py write [TLS] ENDPOINT KEYFILE PREFIX OUT   # until SIGTERM; one line per acknowledged write
  writer.py verify [TLS] ENDPOINT KEYFILE OUT         # every acknowledged write must read back

ENDPOINT is `http://HOST:PORT` or `https://HOST:PORT`. TLS options, for https:
  --ca FILE           verify the server's certificate against this CA (PEM) instead of the system's
  --server-name NAME  connect to ENDPOINT's host but verify the certificate for NAME (and send
                      it as SNI): the e2e reaches a client Service by its clusterIP, which the
                      certificate does not name, and cannot resolve the Service's DNS name
Without them an https ENDPOINT is verified the usual way; an http one is plain HTTP.

`write` records each write the server acknowledged (key, value, revision, time) and, on stop,
the longest time without an acknowledged write (the write unavailability) and how many writes
failed (OUT.summary). It reads KEYFILE before every write, so a key written there is used from
the next write on, and records each write refused for its key (401) in OUT.refused. `verify` reads every acknowledged key back (linearizable) and fails on any
that is missing or different.
"""
import argparse
import functools
import http.client
import json
import signal
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request

stop = False


def on_term(*_):
    global stop
    stop = True


class NamedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection to the URL's host that verifies the certificate for server_name
    (the URL's host when None); the context's check_hostname stays on."""

    def __init__(self, host, *, context, server_name=None, **kwargs):
        super().__init__(host, context=context, **kwargs)
        self.tls = context
        self.server_name = server_name

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout, self.source_address)
        try:
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.server_name or self.host)
        except BaseException:
            sock.close()
            raise


class NamedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, context, server_name):
        super().__init__(context=context)
        self.tls = context
        self.server_name = server_name

    def https_open(self, req):
        return self.do_open(
            functools.partial(NamedHTTPSConnection, context=self.tls, server_name=self.server_name), req)


def opener(ca=None, server_name=None):
    # No proxy: the endpoint is an address on the test network, reached directly.
    handlers = [urllib.request.ProxyHandler({})]
    if ca is not None or server_name is not None:
        handlers.append(NamedHTTPSHandler(ssl.create_default_context(cafile=ca), server_name))
    return urllib.request.build_opener(*handlers)


def call(client, endpoint, key, method, path, body=None, timeout=3):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{endpoint}/api/v1/{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with client.open(req, timeout=timeout) as r:
        return json.loads(r.read())


def write(client, endpoint, keyfile, prefix, out):
    signal.signal(signal.SIGTERM, on_term)
    i = 0
    started = last_ack = time.monotonic()
    longest = 0.0
    acked = failed = 0
    with open(out, "w") as f:
        while not stop:
            i += 1
            k = f"{prefix}/{i:06d}"
            # Read for every write, as a client that follows its key's Secret: a rotated key is
            # used from the next write on.
            key = open(keyfile).read().strip()
            try:
                r = call(client, endpoint, key, "PUT", f"kv/{k}", {"value": {"i": i}})
                now = time.monotonic()
                longest = max(longest, now - last_ack)
                last_ack = now
                acked += 1
                f.write(json.dumps({"key": k, "i": i, "rev": r["revision"], "t": round(now, 3)}) + "\n")
                f.flush()
            except Exception as e:
                failed += 1
                # A write refused for its key is kept apart (OUT.refused): a key rotation must
                # refuse none.
                if isinstance(e, urllib.error.HTTPError) and e.code == 401:
                    with open(out + ".refused", "a") as r401:
                        r401.write(f"{k} {round(time.monotonic(), 3)}\n")
                time.sleep(0.05)
            time.sleep(0.02)
        longest = max(longest, time.monotonic() - last_ack)
    summary = {"acked": acked, "failed": failed, "seconds": round(time.monotonic() - started, 1),
               "longest_gap_s": round(longest, 2)}
    with open(out + ".summary", "w") as f:
        json.dump(summary, f)


def verify(client, endpoint, keyfile, out):
    key = open(keyfile).read().strip()
    lost = []
    n = 0
    for line in open(out):
        w = json.loads(line)
        n += 1
        for attempt in range(20):
            try:
                r = call(client, endpoint, key, "GET", f"kv/{w['key']}")
                break
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    r = None
                    break
                time.sleep(0.5)
            except Exception:
                time.sleep(0.5)
        else:
            print(f"cannot read {w['key']}", file=sys.stderr)
            sys.exit(2)
        if r is None or r["kv"]["value"] != {"i": w["i"]} or r["kv"]["modRevision"] != w["rev"]:
            lost.append((w, r))
    if lost:
        for w, r in lost[:10]:
            print(f"LOST or changed: {w} -> {r}", file=sys.stderr)
        print(f"{len(lost)} of {n} acknowledged writes lost", file=sys.stderr)
        sys.exit(1)
    print(f"all {n} acknowledged writes read back")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = p.add_subparsers(dest="mode", required=True)
    w = modes.add_parser("write")
    v = modes.add_parser("verify")
    for m in (w, v):
        m.add_argument("--ca", metavar="FILE", help="the CA (PEM) that signs the server's certificate")
        m.add_argument("--server-name", metavar="NAME", help="the name to verify the certificate for")
        m.add_argument("endpoint")
        m.add_argument("keyfile")
    w.add_argument("prefix")
    for m in (w, v):
        m.add_argument("out")
    a = p.parse_args()
    client = opener(a.ca, a.server_name)
    endpoint = a.endpoint.rstrip("/")
    if a.mode == "write":
        write(client, endpoint, a.keyfile, a.prefix, a.out)
    else:
        verify(client, endpoint, a.keyfile, a.out)


if __name__ == "__main__":
    main()
