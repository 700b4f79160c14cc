"""Cost of a protected request: lite, Flask-Security-Too, Flask-Login alone, bare Flask.

Run by hand, never in the tests (from the repository root)::

    pip install -e ".[bench]"
    python bench/bench_requests.py                 # the table, ~1 minute
    python bench/bench_requests.py --profile       # cProfile of lite's session and
                                                   # token routes

One process builds the four apps of ``common.py`` on in-memory SQLite with one user
and times each scenario by calling the WSGI app with a ready environ, as a server
would (logins go through Flask's test client), in interleaved rounds (every
app and scenario once per round; the median of the rounds is reported), by this
process's CPU time, so that other work on the machine does not add to it. It prints
µs per request, SQL statements per request (counted with SQLAlchemy's
``before_cursor_execute`` event) and the ratios lite / Flask-Security-Too and
lite / Flask-Login alone (the median over rounds of the ratio within each round),
which are what carry over between machines. lite runs as installed with the bench,
loading Flask-Principal identities on every request as 1.7.4 did; it is timed again
with ``SECURITY_FLASK_PRINCIPAL = False`` to show what that costs. Scenarios:

- ``session``: a ``login_required`` page for a logged-in session
- ``token``: a token-protected JSON endpoint
- ``roles``: a ``roles_required("admin")`` page for a logged-in admin
- ``anonymous``: a protected page refused to an anonymous visitor
- ``login``: a JSON login, every library on pbkdf2_sha512 at the same rounds
"""

import argparse
import cProfile
import pstats

import common

SCENARIOS = ("session", "token", "roles", "anonymous", "login")
#: The four apps of common.py, and lite again without Flask-Principal.
LIBRARIES = ("lite", "fst", "login", "bare", "lite-np")


def scenarios(app, library):
    """The request of each scenario against ``app``, as functions returning the
    status code."""
    session, token = {}, {}
    if library != "bare":
        token["Authentication-Token"] = common.login(app.test_client())
        client = app.test_client()
        common.login(client)
        session = common.session_cookie(client)
    found = {
        "session": common.wsgi_request(app, "/page", session),
        "token": common.wsgi_request(app, "/api", token),
        "roles": common.wsgi_request(app, "/admin", session),
        "anonymous": common.wsgi_request(app, "/page"),
    }
    if library != "bare":
        # A fresh client each time: Flask-Security-Too refuses a logged-in login.
        found["login"] = lambda: common.login(app.test_client())
    return found


def expected_status(scenario, library):
    if scenario == "anonymous" and library != "bare":
        return (302, 401)
    return (200,)


def build_apps():
    apps = {}
    stored = common.password_hash("pbkdf2_sha512", {"rounds": common.ROUNDS})
    for library in LIBRARIES:
        app = common.make_app(library, options={"rounds": common.ROUNDS})
        if common.database(app) is not None:
            common.seed(app, users=1, stored_hash=stored)
        apps[library] = app
    return apps


def check_and_count(apps, calls):
    """Run each call once: its status must be right; count its SQL statements."""
    queries = {}
    for (library, scenario), call in calls.items():
        with common.count_queries(apps[library]) as counted:
            status = call()
        if scenario != "login":
            assert status in expected_status(scenario, library), (library, scenario)
        queries[library, scenario] = counted[0]
    return queries


def profile(apps, repeat):
    """cProfile of lite's session and token routes: the top functions by own time."""
    for scenario in ("session", "token"):
        call = scenarios(apps["lite"], "lite")[scenario]
        call()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(repeat):
            call()
        profiler.disable()
        print(f"\n=== lite, {scenario} route, {repeat} requests ===")
        stats = pstats.Stats(profiler).strip_dirs().sort_stats("tottime")
        stats.print_stats(18)
        print(f"--- {scenario}: cumulative, the same {repeat} requests ---")
        stats.sort_stats("cumulative").print_stats(25)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="calls per round")
    parser.add_argument("--rounds", type=int, default=41, help="interleaved rounds")
    parser.add_argument(
        "--profile", action="store_true", help="print cProfile of lite's routes"
    )
    args = parser.parse_args()
    apps = build_apps()
    if args.profile:
        profile(apps, args.repeat * 10)
        return
    calls = {}
    for library, app in apps.items():
        for scenario, call in scenarios(app, library).items():
            calls[library, scenario] = call
    queries = check_and_count(apps, calls)
    timings = common.interleaved(calls, args.rounds, args.repeat)

    def cell(library, scenario):
        if (library, scenario) not in timings:
            return "-"
        return f"{timings[library, scenario]:.0f} ({queries[library, scenario]}q)"

    def ratio(scenario, other, own="lite"):
        if (other, scenario) not in timings:
            return "-"
        return f"{timings.ratio((own, scenario), (other, scenario)):.2f}"

    common.table(
        "µs per request (SQL statements per request), in-memory SQLite, "
        f"median of {args.rounds} interleaved rounds",
        [
            "scenario",
            *(common.TITLES[library] for library in LIBRARIES),
            "lite / FST",
            "lite / Flask-Login",
            "lite, no Principal / Flask-Login",
        ],
        [
            [
                scenario,
                *(cell(library, scenario) for library in LIBRARIES),
                ratio(scenario, "fst"),
                ratio(scenario, "login"),
                ratio(scenario, "login", own="lite-np"),
            ]
            for scenario in SCENARIOS
        ],
    )


if __name__ == "__main__":
    main()
