"""What a login costs beyond the password hash, with argon2 and bcrypt.

Run by hand (from the repository root)::

    python bench/bench_hashing.py                # ~1 minute

For each scheme, each library hashes the bench user's password itself, with its own
default parameters (printed, beside Flask-Security-Too's), into in-memory SQLite.
Then, in interleaved rounds, the bench times a JSON login through the test client
and one bare ``verify`` of the same hash by the library's own password context
(passlib's ``CryptContext.verify``; Flask-Login alone uses a one-scheme context with
passlib's defaults). The figure is login / verify, by this process's CPU time (all
its threads: argon2 hashes on several): 1.00 means a login costs the hash and
nothing more.
"""

import argparse

import common
import sqlalchemy as sa

LIBRARIES = ("lite", "fst", "login")
SCHEMES = ("argon2", "bcrypt")


def context_of(app, library):
    """The passlib context the library verifies passwords with."""
    if library == "login":
        return None
    return app.extensions["security"].pwd_context


def parameters(context, scheme):
    """The default parameters of ``scheme`` in ``context``, as text."""
    handler = context.handler(scheme) if context else None
    if handler is None:
        from passlib.context import CryptContext

        handler = CryptContext(schemes=[scheme]).handler(scheme)
    if scheme == "argon2":
        return (
            f"argon2{handler.type}, t={handler.default_rounds}, "
            f"m={handler.memory_cost} KiB, p={handler.parallelism}"
        )
    return f"bcrypt {handler.default_ident.strip('$')}, cost {handler.default_rounds}"


def hash_with(app, library, scheme):
    """The bench password hashed by ``library`` as it would for a new user."""
    with app.app_context():
        if library == "lite":
            import flask_security_lite

            return flask_security_lite.hash_password(common.PASSWORD)
        if library == "fst":
            import flask_security

            return flask_security.hash_password(common.PASSWORD)
    return common.password_hash(scheme)


def build(scheme):
    """{library: (app, verify)}: each library's app and its bare verify call."""
    built = {}
    for library in LIBRARIES:
        app = common.make_app(library, scheme=scheme)
        stored = hash_with(app, library, scheme)
        common.seed(app, users=1, stored_hash=stored)
        context = context_of(app, library)
        if context is None:
            from passlib.context import CryptContext

            context = CryptContext(schemes=[scheme])
        with app.app_context():
            db = common.database(app)
            user = db.metadata.tables["user"]
            found = db.session.scalar(sa.select(user.c.password))
            assert found == stored

        def verify(context=context, stored=stored):
            assert context.verify(common.PASSWORD, stored)

        built[library] = (app, verify, parameters(context, scheme))
    return built


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows, defaults = [], []
    for scheme in SCHEMES:
        built = build(scheme)
        calls = {}
        for library, (app, verify, _) in built.items():
            calls[library, "login"] = lambda app=app: common.login(app.test_client())
            calls[library, "verify"] = verify
        timings = common.interleaved(calls, args.rounds, args.repeat)
        row = [scheme]
        for library in LIBRARIES:
            login, verify = (library, "login"), (library, "verify")
            ratio = timings.ratio(login, verify)
            milliseconds = f"{timings[verify] / 1e3:.1f} → {timings[login] / 1e3:.1f}"
            row.append(f"{ratio:.3f} ({milliseconds} ms)")
        rows.append([*row, "-"])
        defaults.append([scheme, *(built[library][2] for library in LIBRARIES), "-"])
    columns = [
        "scheme",
        *(common.TITLES[library] for library in LIBRARIES),
        "bare Flask",
    ]
    common.table("default parameters of new hashes", columns, defaults)
    common.table(
        "JSON login / one verify of the same hash (verify → login), "
        f"median of {args.rounds} interleaved rounds",
        columns,
        rows,
    )


if __name__ == "__main__":
    main()
