"""What two-factor login costs: nothing when off, one request and one write when on.

Run by hand, never in the tests (from the repository root)::

    python bench/bench_two_factor.py               # the table, ~30 seconds

One process builds three lite apps on in-memory SQLite with the same user model (the
two optional ``tf_*`` columns included) and one user: ``off`` (``SECURITY_TWO_FACTOR``
unset), ``on, no key`` (on, the user never set up an app) and ``on, with key`` (on,
the user has a key). Each scenario runs through Flask's test client in interleaved
rounds; it prints µs per request and SQL statements per request. Scenarios:

- ``session``: a ``login_required`` page for a logged-in session
- ``login``: a JSON login with the password (for ``on, with key``: the first step)
- ``login + code``: the password, then the code from the authenticator app
"""

import argparse
import time

import common
from flask_sqlalchemy import SQLAlchemy

import flask_security_lite as lite

VARIANTS = ("off", "on, no key", "on, with key")
#: A fixed key for the user of ``on, with key``.
KEY = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
#: The time step the apps see. Each two-step login moves it on, as if the user came
#: back 30 seconds later: a code works once, and no write is needed to undo that.
STEP = [int(time.time() // 30)]
lite._totp_step = lambda at=None: STEP[0]


def make_app(variant):
    app = common._base_app("sqlite://")
    app.config["SECURITY_PASSWORD_HASH_OPTIONS"] = {
        "pbkdf2_sha512": {"rounds": common.ROUNDS}
    }
    if variant != "off":
        app.config["SECURITY_TWO_FACTOR"] = True
        # No mail server here; the notices go out only on set-up and changes anyway.
        app.config["SECURITY_SEND_TWO_FACTOR_NOTICE_EMAIL"] = False
    db = SQLAlchemy(app)

    class User(db.Model, lite.UserMixin):
        id = db.Column(db.Integer, primary_key=True)
        email = db.Column(db.String(255), unique=True)
        password = db.Column(db.String(255))
        active = db.Column(db.Boolean())
        tf_totp_secret = db.Column(db.String(64))
        tf_recovery_codes = db.Column(db.Text)
        roles = db.relationship("Role", secondary="roles_users")

    class Role(db.Model, lite.RoleMixin):
        id = db.Column(db.Integer, primary_key=True)
        name = db.Column(db.String(80), unique=True)

    db.Table(
        "roles_users",
        db.Column("user_id", db.Integer(), db.ForeignKey("user.id")),
        db.Column("role_id", db.Integer(), db.ForeignKey("role.id")),
    )
    datastore = lite.SQLAlchemyUserDatastore(db, User, Role)
    lite.Security(app, datastore)
    app.add_url_rule("/page", view_func=lite.login_required(lambda: "ok"))
    with app.app_context():
        db.create_all()
        secret = KEY if variant == "on, with key" else None
        datastore.create_user(
            email=common.EMAIL, password=common.PASSWORD, tf_totp_secret=secret
        )
        db.session.commit()
    return app


def password_step(app):
    credentials = {"email": common.EMAIL, "password": common.PASSWORD}
    client = app.test_client()
    response = client.post("/login", json=credentials)
    assert response.status_code == 200, response.get_data(as_text=True)
    return client


def both_steps(app):
    """Password, then the code of a new time step."""
    STEP[0] += 1
    client = password_step(app)
    response = client.post("/tf-validate", json={"code": lite.totp_code(KEY)})
    assert response.status_code == 200, response.get_data(as_text=True)
    return client


def scenarios(variant, app):
    session_client = both_steps(app) if variant == "on, with key" else None
    session_client = session_client or password_step(app)
    found = {
        "session": lambda: session_client.get("/page"),
        "login": lambda: password_step(app),
    }
    if variant == "on, with key":
        found["login + code"] = lambda: both_steps(app)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="calls per round")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds")
    args = parser.parse_args()
    calls, queries = {}, {}
    for variant in VARIANTS:
        app = make_app(variant)
        for scenario, call in scenarios(variant, app).items():
            calls[variant, scenario] = call
            with common.count_queries(app) as found:
                call()
            queries[variant, scenario] = found[0]
    started = time.perf_counter()
    timings = common.interleaved(calls, args.rounds, args.repeat)
    names = ("session", "login", "login + code")

    def cell(variant, scenario):
        if (variant, scenario) not in timings:
            return "-"
        value = timings[variant, scenario]
        return f"{value:.0f} ({queries[variant, scenario]}q)"

    common.table(
        "µs per request (SQL statements), in-memory SQLite, median of "
        f"{args.rounds} interleaved rounds ({time.perf_counter() - started:.0f} s)",
        ["scenario", *VARIANTS],
        [[name, *(cell(variant, name) for variant in VARIANTS)] for name in names],
    )


if __name__ == "__main__":
    main()
