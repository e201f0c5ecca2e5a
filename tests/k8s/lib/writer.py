#!/usr/bin/env python3
"""Continuous writer for the operator end-to-end tests, and the check of what it wrote.

  writer.py write ENDPOINT KEYFILE PREFIX OUT   # until SIGTERM; one line per acknowledged write
  writer.py verify ENDPOINT KEYFILE OUT         # every acknowledged write must read back

`write` records each write the server acknowledged (key, value, revision, time) and, on stop,
the longest time without an acknowledged write (the write unavailability). `verify` reads every
acknowledged key back (linearizable) and fails on any that is missing or different.
"""
import json
import signal
import sys
import time
import urllib.error
import urllib.request

stop = False


def on_term(*_):
    global stop
    stop = True


def call(endpoint, key, method, path, body=None, timeout=3):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{endpoint}/api/v1/{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def write(endpoint, keyfile, prefix, out):
    signal.signal(signal.SIGTERM, on_term)
    key = open(keyfile).read().strip()
    i = 0
    started = last_ack = time.monotonic()
    longest = 0.0
    acked = failed = 0
    with open(out, "w") as f:
        while not stop:
            i += 1
            k = f"{prefix}/{i:06d}"
            try:
                r = call(endpoint, key, "PUT", f"kv/{k}", {"value": {"i": i}})
                now = time.monotonic()
                longest = max(longest, now - last_ack)
                last_ack = now
                acked += 1
                f.write(json.dumps({"key": k, "i": i, "rev": r["revision"], "t": round(now, 3)}) + "\n")
                f.flush()
            except Exception:
                failed += 1
                time.sleep(0.05)
            time.sleep(0.02)
        longest = max(longest, time.monotonic() - last_ack)
    summary = {"acked": acked, "failed": failed, "seconds": round(time.monotonic() - started, 1),
               "longest_gap_s": round(longest, 2)}
    with open(out + ".summary", "w") as f:
        json.dump(summary, f)


def verify(endpoint, keyfile, out):
    key = open(keyfile).read().strip()
    lost = []
    n = 0
    for line in open(out):
        w = json.loads(line)
        n += 1
        for attempt in range(20):
            try:
                r = call(endpoint, key, "GET", f"kv/{w['key']}")
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


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(*sys.argv[2:6])
    else:
        verify(*sys.argv[2:5])
