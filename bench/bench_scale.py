"""Login and HTTP Basic with 100,000 users against the same with one user.

Run by hand (from the repository root)::

    python bench/bench_scale.py                  # SQLite and PostgreSQL, ~3 minutes
    python bench/bench_scale.py --backends sqlite --users 20000
    python bench/bench_scale.py --1.7.4-schema   # without README's lower(email) index

For each backend, two databases get the schema of ``common.py`` by bulk insert: one
with a single user, one with ``--users`` users, the bench user in the middle. It is
README's model: ``email`` is ``unique``, so it has an index, and an index on
``lower(email)`` serves the lookup of rows stored before emails were normalised.
Each library's app is pointed at both, on the ``plaintext`` scheme so that hashing
does not hide the lookup, and a JSON login, a Basic request and a JSON login with an
unknown address (the lookup that finds nobody) are timed in interleaved rounds. The
figure is cost(many users) / cost(one user): 1.0 means the lookup does not grow
with the table. SQLite runs in this process and is timed by its CPU time;
PostgreSQL works in its own processes and is timed by the wall clock.

PostgreSQL is a throwaway server started like the test suite's ``postgres_url``
fixture (as the ``postgres`` user when run as root; binaries found by ``initdb`` on
PATH or in /usr/lib/postgresql/*/bin).
"""

import argparse
import contextlib
import tempfile
import time

import common
import sqlalchemy as sa

LIBRARIES = ("lite", "fst", "login")


def requests_of(app):
    """A JSON login (fresh client), a Basic request and a login with an address
    nobody has, against ``app``."""
    headers = common.basic_header()

    def basic():
        response = app.test_client().get("/basic", headers=headers)
        assert response.status_code == 200, response.status_code

    def unknown():
        body = {"email": "nobody@example.com", "password": common.PASSWORD}
        response = app.test_client().post("/login", json=body)
        assert response.status_code == 400, response.status_code

    return {
        "login": lambda: common.login(app.test_client()),
        "basic": basic,
        "unknown": unknown,
    }


def database_urls(backend, stack):
    """Two empty databases of ``backend``: (one user, many users)."""
    if backend == "sqlite":
        folder = stack.enter_context(tempfile.TemporaryDirectory())
        return f"sqlite:///{folder}/one.db", f"sqlite:///{folder}/many.db"
    server = stack.enter_context(common.postgres())
    engine = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        for name in ("one", "many"):
            connection.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    base = server.rsplit("/", 1)[0]
    return f"{base}/one", f"{base}/many"


def measure(backend, users, rounds, repeat, lower_index):
    """The timings of ``(library, scenario, size)`` on one backend."""
    with contextlib.ExitStack() as stack:
        one_url, many_url = database_urls(backend, stack)
        started = time.perf_counter()
        for url, count in ((many_url, users), (one_url, 1)):
            seeder = common.make_app("login", url, "plaintext", None, lower_index)
            common.seed(seeder, users=count)
        print(
            f"{backend}: seeded {users} users in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        calls = {}
        for library in LIBRARIES:
            for size, url in (("one", one_url), ("many", many_url)):
                app = common.make_app(library, url, "plaintext", None, lower_index)
                for scenario, call in requests_of(app).items():
                    calls[library, scenario, size] = call
        # PostgreSQL works in its own processes: time it by the wall clock.
        clock = time.process_time if backend == "sqlite" else time.perf_counter
        return common.interleaved(calls, rounds, repeat, clock)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument(
        "--backends", nargs="+", default=["sqlite", "postgres"], help="sqlite postgres"
    )
    parser.add_argument(
        "--1.7.4-schema",
        dest="schema_174",
        action="store_true",
        help="without README's index on lower(email), as a 1.7.4 database",
    )
    args = parser.parse_args()
    rows = []
    for backend in args.backends:
        timings = measure(
            backend, args.users, args.rounds, args.repeat, not args.schema_174
        )
        for scenario in ("login", "basic", "unknown"):
            row = [backend, scenario]
            for library in LIBRARIES:
                one, many = (library, scenario, "one"), (library, scenario, "many")
                ratio = timings.ratio(many, one)
                row.append(f"{ratio:.2f} ({timings[one]:.0f} → {timings[many]:.0f} µs)")
            rows.append(row)
    common.table(
        f"cost with {args.users} users / cost with 1 user "
        f"({'1.7.4 schema' if args.schema_174 else 'README schema'}, plaintext "
        f"scheme, median of {args.rounds} interleaved rounds)",
        ["backend", "request", *(common.TITLES[library] for library in LIBRARIES)],
        rows,
    )


if __name__ == "__main__":
    main()
