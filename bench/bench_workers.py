"""Throughput under gunicorn with 4 workers on a real PostgreSQL.

Run by hand (from the repository root; needs gunicorn and PostgreSQL's binaries)::

    python bench/bench_workers.py                # 30 s per library and phase, ~7 min
    python bench/bench_workers.py --seconds 9 --libraries lite fst

A throwaway PostgreSQL server (started as in ``common.postgres``) gets the schema of
``common.py`` and ``--users`` users by bulk insert, once: every library runs on the
same tables. ``gunicorn -w 4`` serves ``common:wsgi_app()`` for each library on its
own port on 127.0.0.1 (every library hashing with pbkdf2_sha512 at lite's default
210,000 rounds), all started before the load. A bounded client drives them:
``--clients`` connections at a time (split over two client processes, so the client
is not held back by one GIL), each sending its next request as soon as the last one
is answered, as prebuilt bytes on a raw socket, reading back only the status line:
the client's own cost is shared by every library's figure, so it is kept small.
Phases: session pages (``/page`` with a logged-in cookie), token calls
(``/api`` with ``Authentication-Token``) and JSON logins. Within a phase, after
``--warmup`` seconds per library not counted, the libraries take turns in slices of
``--slice`` seconds until each had ``--seconds``, so a busy moment of the machine
falls on all of them alike. Printed: requests per second (median over slices), p50
and p99 latency (over every request), the count of 5xx answers and of any other
unexpected status, and lite / Flask-Security-Too throughput (median over rounds of
the ratio of neighbouring slices).
"""

import argparse
import http.client
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import common

BENCH = Path(__file__).resolve().parent
ROUNDS = 210_000
PHASES = ("session", "token", "login")


def serve(library, database_url, port, workers):
    """Start gunicorn for ``library``; return the process once it answers."""
    environment = dict(
        os.environ,
        BENCH_LIBRARY=library,
        BENCH_DATABASE_URL=database_url,
        BENCH_SCHEME="pbkdf2_sha512",
        BENCH_ROUNDS=str(ROUNDS),
    )
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers",
        str(workers),
        "--bind",
        f"127.0.0.1:{port}",
        "--chdir",
        str(BENCH),
        "--log-level",
        "warning",
        "common:wsgi_app()",
    ]
    process = subprocess.Popen(command, env=environment)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            status, _, _ = request(port, "GET", "/page", {})
            if status in (200, 302, 401):
                return process
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit(f"gunicorn for {library} did not start")


def request(port, method, path, headers, body=None):
    """One request on a new connection: (status, headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def log_in(port):
    """Log in once: the session cookie and the auth token every client reuses."""
    status, headers, body = request(
        port,
        "POST",
        "/login?include_auth_token",
        {"Content-Type": "application/json"},
        json.dumps({"email": common.EMAIL, "password": common.PASSWORD}),
    )
    assert status == 200, (status, body)
    cookies = [
        value.split(";", 1)[0]
        for name, value in headers
        if name.lower() == "set-cookie"
    ]
    token = json.loads(body)["response"]["user"]["authentication_token"]
    return "; ".join(cookies), token


def phase_request(phase, cookie, token):
    """(method, path, headers, body, expected status) of one request of ``phase``."""
    if phase == "session":
        return "GET", "/page", {"Cookie": cookie}, None, 200
    if phase == "token":
        return "GET", "/api", {"Authentication-Token": token}, None, 200
    body = json.dumps({"email": common.EMAIL, "password": common.PASSWORD})
    return "POST", "/login", {"Content-Type": "application/json"}, body, 200


def raw_request(method, path, headers, body=None):
    """The bytes of one HTTP/1.1 request that asks the server to close after it."""
    body = (body or "").encode()
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def send(port, message):
    """Send ``message`` on a new connection; return the answer's status code. The
    client reads the status line and the rest until the server closes, nothing
    more: its own cost is what every library's figure shares, so it is kept low
    (http.client parses every header with the email package)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(message)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return int(answer[9:12])


def client_process(port, plan, threads, seconds, results):
    """Run ``threads`` closed-loop clients for ``seconds``; report their samples."""
    method, path, headers, body, expected = plan
    message = raw_request(method, path, headers, body)
    samples, lock = [], threading.Lock()
    deadline = time.monotonic() + seconds

    def loop():
        found = []
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                status = send(port, message)
            except (OSError, ValueError):
                status = 0
            found.append((time.perf_counter() - started, status))
        with lock:
            samples.extend(found)

    running = [threading.Thread(target=loop) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    results.put(samples)


def drive(port, plan, clients, seconds):
    """Closed-loop load from two processes; returns every (latency, status)."""
    results = multiprocessing.Queue()
    per_process = [clients // 2, clients - clients // 2]
    processes = [
        multiprocessing.Process(
            target=client_process, args=(port, plan, threads, seconds, results)
        )
        for threads in per_process
        if threads
    ]
    for process in processes:
        process.start()
    samples = []
    for _ in processes:
        samples.extend(results.get())
    for process in processes:
        process.join()
    return samples


def summarise(slices, expected):
    """Requests/s (median over the slices), p50 and p99 latency (over every
    request) and the count of 5xx and of other unexpected answers."""
    samples = [sample for _, found in slices for sample in found]
    latencies = sorted(latency for latency, _ in samples)
    statuses = [status for _, status in samples]
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return {
        "rps": statistics.median(len(found) / seconds for seconds, found in slices),
        "p50": statistics.median(latencies) * 1e3,
        "p99": p99 * 1e3,
        "5xx": sum(1 for status in statuses if status >= 500),
        "other": sum(1 for status in statuses if status != expected and status < 500),
    }


def throughput_ratio(slices, library, other):
    """Median over rounds of library / other requests per second, each pair of
    slices taken one right after the other."""
    pairs = zip(slices[library], slices[other], strict=True)
    return statistics.median(
        (len(own) / own_seconds) / (len(theirs) / their_seconds)
        for (own_seconds, own), (their_seconds, theirs) in pairs
    )


def run_phase(phase, servers, args):
    """Drive every server in interleaved slices until each had ``--seconds``."""
    slices = {library: [] for library in servers}
    plans = {
        library: phase_request(phase, *credentials)
        for library, (port, credentials) in servers.items()
    }
    for library, (port, _) in servers.items():
        drive(port, plans[library], args.clients, args.warmup)
    rounds = max(1, round(args.seconds / args.slice))
    for _ in range(rounds):
        for library, (port, _) in servers.items():
            found = drive(port, plans[library], args.clients, args.slice)
            slices[library].append((args.slice, found))
    return slices


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30, help="per library")
    parser.add_argument(
        "--slice", type=float, default=3, help="seconds of one interleaved slice"
    )
    parser.add_argument(
        "--warmup", type=float, default=3, help="seconds of load before each phase"
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument(
        "--libraries",
        nargs="+",
        default=["lite", "fst", "login", "bare"],
        choices=list(common.TITLES),
        help="lite, fst (Flask-Security-Too), login (Flask-Login alone), bare "
        "(bare Flask), lite-np (lite without Flask-Principal)",
    )
    args = parser.parse_args()
    results, ratios, processes = {}, {}, []
    with common.postgres() as database_url:
        seeder = common.make_app("login", database_url)
        stored = common.password_hash("pbkdf2_sha512", {"rounds": ROUNDS})
        common.seed(seeder, users=args.users, stored_hash=stored)
        try:
            servers = {}
            for library in args.libraries:
                port = common.free_port()
                processes.append(serve(library, database_url, port, args.workers))
                credentials = log_in(port) if library != "bare" else ("", "")
                servers[library] = (port, credentials)
            for phase in PHASES:
                driven = {
                    library: server
                    for library, server in servers.items()
                    if not (library == "bare" and phase == "login")
                }
                slices = run_phase(phase, driven, args)
                for library, found in slices.items():
                    expected = phase_request(phase, "", "")[4]
                    results[library, phase] = summarise(found, expected)
                    print(library, phase, results[library, phase], flush=True)
                if "lite" in slices and "fst" in slices:
                    ratios[phase] = throughput_ratio(slices, "lite", "fst")
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=30)
    rows = []
    for phase in PHASES:
        for library in args.libraries:
            found = results.get((library, phase))
            if found is None:
                continue
            rows.append(
                [
                    phase,
                    common.TITLES[library],
                    f"{found['rps']:.0f}",
                    f"{found['p50']:.1f}",
                    f"{found['p99']:.1f}",
                    found["5xx"],
                    found["other"],
                ]
            )
    common.table(
        f"gunicorn -w {args.workers}, PostgreSQL, {args.clients} concurrent clients, "
        f"{args.seconds:.0f} s per library and phase in {args.slice:.0f} s slices",
        ["phase", "library", "requests/s", "p50 ms", "p99 ms", "5xx", "other"],
        rows,
    )
    for phase, ratio in ratios.items():
        print(f"{phase}: lite / Flask-Security-Too throughput {ratio:.2f}")


if __name__ == "__main__":
    main()
