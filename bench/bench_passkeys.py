"""What a passkey sign-in costs, beside a password login hashed with argon2.

Run by hand, never in the tests (from the repository root)::

    python bench/bench_passkeys.py                 # the table, ~1 minute

One process builds one lite app on in-memory SQLite with passkeys on, argon2 as its
password hash (lite's default argon2 cost: t=3, 64 MiB, p=4) and one user with one
passkey, made by the test suite's software authenticator (an ES256 key, as most
passkeys are). Both scenarios run through Flask's test client in interleaved rounds;
it prints ms per sign-in, in wall-clock time (argon2 works on four threads) and in
this process's CPU time, and SQL statements per sign-in:

- ``password (argon2)``: a JSON login with the password
- ``passkey``: the two requests of a passkey sign-in, the options and then the signed
  answer (the software authenticator's signature, about 0.1 ms, included)
"""

import argparse
import time

import common
from flask_sqlalchemy import SQLAlchemy

import flask_security_lite as lite
from test_flask_security_lite import SoftAuthenticator


def make_app():
    app = common._base_app("sqlite://")
    app.config.update(
        SECURITY_PASSWORD_HASH="argon2",
        SECURITY_PASSKEYS=True,
        SECURITY_SEND_PASSKEY_NOTICE_EMAIL=False,  # no mail server here
        SECURITY_FLASK_PRINCIPAL=False,
        SERVER_NAME="localhost",
    )
    db = SQLAlchemy(app)

    class User(db.Model, lite.UserMixin):
        id = db.Column(db.Integer, primary_key=True)
        email = db.Column(db.String(255), unique=True)
        password = db.Column(db.String(255))
        active = db.Column(db.Boolean())
        passkey_handle = db.Column(db.String(64), unique=True)
        roles = db.relationship("Role", secondary="roles_users")

    class Role(db.Model, lite.RoleMixin):
        id = db.Column(db.Integer, primary_key=True)
        name = db.Column(db.String(80), unique=True)

    class Passkey(db.Model):
        id = db.Column(db.Integer, primary_key=True)
        user_id = db.Column(db.Integer, db.ForeignKey("user.id"), nullable=False)
        user = db.relationship("User")
        credential_id = db.Column(db.LargeBinary(1024), unique=True, nullable=False)
        public_key = db.Column(db.LargeBinary, nullable=False)
        sign_count = db.Column(db.Integer, nullable=False)
        transports = db.Column(db.String(255))
        label = db.Column(db.String(64), nullable=False)
        created_at = db.Column(db.DateTime, nullable=False)
        last_used_at = db.Column(db.DateTime)
        backup_eligible = db.Column(db.Boolean, nullable=False)
        backed_up = db.Column(db.Boolean, nullable=False)

    db.Table(
        "roles_users",
        db.Column("user_id", db.Integer(), db.ForeignKey("user.id")),
        db.Column("role_id", db.Integer(), db.ForeignKey("role.id")),
    )
    datastore = lite.SQLAlchemyUserDatastore(db, User, Role, passkey_model=Passkey)
    lite.Security(app, datastore)
    with app.app_context():
        db.create_all()
        datastore.create_user(email=common.EMAIL, password=common.PASSWORD)
        db.session.commit()
    return app


def password_login(app):
    """A JSON login with the password; the logged-in client."""
    client = app.test_client()
    credentials = {"email": common.EMAIL, "password": common.PASSWORD}
    response = client.post("/login", json=credentials)
    assert response.status_code == 200, response.get_data(as_text=True)
    return client


def options(client, purpose):
    response = client.post(f"/passkeys/{purpose}-options", json={})
    return response.json["response"]["options"]


def add_passkey(app, device):
    client = password_login(app)
    credential = device.create(options(client, "register"))
    response = client.post("/passkeys/register", json={"credential": credential})
    assert response.status_code == 200, response.get_data(as_text=True)


def passkey_sign_in(app, device):
    """The options, the device's signature (about 0.1 ms), the signed answer."""
    client = app.test_client()
    credential = device.get(options(client, "login"))
    response = client.post("/passkeys/login", json={"credential": credential})
    assert response.status_code == 200, response.get_data(as_text=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="calls per round")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds")
    args = parser.parse_args()
    app, device = make_app(), SoftAuthenticator()
    add_passkey(app, device)
    calls = {
        "password (argon2)": lambda: password_login(app),
        "passkey": lambda: passkey_sign_in(app, device),
    }
    queries = {}
    for name, call in calls.items():
        with common.count_queries(app) as found:
            call()
        queries[name] = found[0]
    started = time.perf_counter()
    clocks = {"wall clock": time.perf_counter, "CPU": time.process_time}
    timings = {
        label: common.interleaved(calls, args.rounds, args.repeat, clock=clock)
        for label, clock in clocks.items()
    }
    common.table(
        "ms per sign-in (SQL statements), in-memory SQLite, median of "
        f"{args.rounds} interleaved rounds ({time.perf_counter() - started:.0f} s)",
        ["sign-in", *(f"ms, {label}" for label in clocks), "SQL statements"],
        [
            [name, *(f"{timings[label][name] / 1000:.1f}" for label in clocks)]
            + [queries[name]]
            for name in calls
        ],
    )
    wall = timings["wall clock"].ratio("password (argon2)", "passkey")
    print(f"\nargon2 login / passkey sign-in, wall clock: {wall:.1f}")


if __name__ == "__main__":
    main()
