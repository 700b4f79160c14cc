"""Request cost of flask-security-lite against bare Flask and Flask-Security-Too.

Run by hand, never in the tests::

    pip install -e ".[bench]" && python bench/bench_requests.py

One process builds three apps on in-memory SQLite (Flask-SQLAlchemy) and times each
scenario through Flask's test client; it prints microseconds per request and ratios,
which are what to compare between machines. Scenarios:

- ``session``: a ``login_required`` page for a logged-in session (user load per request)
- ``token``: a token-protected JSON endpoint (token check and user load)
- ``anonymous``: a protected page refused to an anonymous visitor
- ``login``: a JSON login, with both libraries on pbkdf2_sha512 at the same rounds
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flask_security_lite as lite  # noqa: E402

EMAIL, PASSWORD = "bench@example.com", "bench password"
ROUNDS = 10_000  # login cost is dominated by hashing: equal for both libraries


def _models(db, user_mixin, role_mixin):
    roles_users = db.Table(
        "roles_users",
        db.Column("user_id", db.Integer(), db.ForeignKey("user.id")),
        db.Column("role_id", db.Integer(), db.ForeignKey("role.id")),
    )

    class Role(db.Model, role_mixin):
        id = db.Column(db.Integer(), primary_key=True)
        name = db.Column(db.String(80), unique=True)
        description = db.Column(db.String(255))

    class User(db.Model, user_mixin):
        id = db.Column(db.Integer, primary_key=True)
        email = db.Column(db.String(255), unique=True)
        password = db.Column(db.String(255))
        active = db.Column(db.Boolean())
        confirmed_at = db.Column(db.DateTime())
        fs_uniquifier = db.Column(db.String(64), unique=True)
        roles = db.relationship("Role", secondary=roles_users, backref="users")

    return User, Role


def _base_app():
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="bench secret",
        SQLALCHEMY_DATABASE_URI="sqlite://",
        WTF_CSRF_ENABLED=False,
    )
    return app


def bare_app():
    app = _base_app()

    @app.route("/page")
    def page():
        return "ok"

    @app.route("/api")
    def api():
        return {"ok": True}

    return app


def lite_app():
    app = _base_app()
    app.config["SECURITY_PASSWORD_HASH_OPTIONS"] = {"pbkdf2_sha512": {"rounds": ROUNDS}}
    db = SQLAlchemy(app)
    user_model, role_model = _models(db, lite.UserMixin, lite.RoleMixin)
    datastore = lite.SQLAlchemyUserDatastore(db, user_model, role_model)
    lite.Security(app, datastore)

    @app.route("/page")
    @lite.login_required
    def page():
        return "ok"

    @app.route("/api")
    @lite.auth_token_required
    def api():
        return {"ok": True}

    with app.app_context():
        db.create_all()
        datastore.create_user(email=EMAIL, password=PASSWORD)
        db.session.commit()
    return app


def fst_app():
    import flask_security as fst

    app = _base_app()
    app.config.update(
        SECURITY_PASSWORD_HASH="pbkdf2_sha512",
        SECURITY_PASSWORD_HASH_PASSLIB_OPTIONS={"pbkdf2_sha512__rounds": ROUNDS},
        SECURITY_PASSWORD_SINGLE_HASH=True,
    )
    db = SQLAlchemy(app)
    user_model, role_model = _models(db, fst.UserMixin, fst.RoleMixin)
    datastore = fst.SQLAlchemyUserDatastore(db, user_model, role_model)
    fst.Security(app, datastore)

    @app.route("/page")
    @fst.auth_required("session")
    def page():
        return "ok"

    @app.route("/api")
    @fst.auth_token_required
    def api():
        return {"ok": True}

    with app.app_context():
        db.create_all()
        datastore.create_user(email=EMAIL, password=fst.hash_password(PASSWORD))
        db.session.commit()
    return app


def _login(client):
    # Flask-Security-Too returns the token only when asked; ours always does.
    response = client.post(
        "/login?include_auth_token", json={"email": EMAIL, "password": PASSWORD}
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json["response"]["user"]["authentication_token"]


def scenarios(app, protected):
    """The requests of each scenario for ``app`` (``protected``: False for bare)."""
    session_client, anonymous_client = app.test_client(), app.test_client()
    headers = {}
    if protected:
        headers["Authentication-Token"] = _login(app.test_client())
        _login(session_client)
    found = {
        "session": lambda: session_client.get("/page"),
        "token": lambda: anonymous_client.get("/api", headers=headers),
        "anonymous": lambda: app.test_client().get("/page"),
    }
    if protected:
        # A fresh client each time: Flask-Security-Too refuses a logged-in login.
        found["login"] = lambda: _login(app.test_client())
    return found


def time_per_call(call, repeat, rounds=5):
    """The best of ``rounds`` averages over ``repeat`` calls, in microseconds."""
    call()
    averages = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeat):
            call()
        averages.append((time.perf_counter() - started) / repeat * 1e6)
    return min(averages), statistics.pstdev(averages)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=500, help="calls per round")
    args = parser.parse_args()
    apps = {"bare": (bare_app(), False), "lite": (lite_app(), True)}
    try:
        apps["fst"] = (fst_app(), True)
    except ImportError:
        print("Flask-Security-Too is not installed: pip install flask-security-too")
    results = {}
    for name, (app, protected) in apps.items():
        for scenario, call in scenarios(app, protected).items():
            repeat = max(args.repeat // 20, 5) if scenario == "login" else args.repeat
            results[name, scenario] = time_per_call(call, repeat)
    print(
        f"{'scenario':<10}{'bare µs':>10}{'lite µs':>10}{'fst µs':>10}"
        f"{'lite/bare':>11}{'lite/fst':>10}"
    )
    for scenario in ("session", "token", "anonymous", "login"):
        bare = results.get(("bare", scenario), (None,))[0]
        own = results[("lite", scenario)][0]
        other = results.get(("fst", scenario), (None,))[0]

        def show(value, width=10):
            return f"{value:>{width}.1f}" if value is not None else f"{'-':>{width}}"

        print(
            f"{scenario:<10}{show(bare)}{show(own)}{show(other)}"
            f"{show(own / bare if bare else None, 11)}"
            f"{show(own / other if other else None)}"
        )


if __name__ == "__main__":
    main()
