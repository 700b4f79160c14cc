"""What every bench shares: one schema, four apps, seeding, timing and PostgreSQL.

The four apps answer the same routes over the same tables, so one database serves
all of them and each figure compares like with like:

- ``lite``: flask-security-lite (with Flask-Principal identities, as 1.7.4 had them,
  since Flask-Principal is installed; ``lite-np`` is the same with
  ``SECURITY_FLASK_PRINCIPAL = False``)
- ``fst``: Flask-Security-Too (5.9 when measured for bench/README.md)
- ``login``: Flask-Login alone, the way an application would write it by hand: a
  user loader, a request loader for tokens and Basic, a JSON login view. Its cost is
  the floor of "a signed cookie and one row fetch".
- ``bare``: bare Flask, the same routes with no authentication at all

Routes: ``/page`` (logged-in session), ``/api`` (auth token, JSON), ``/admin``
(session and the ``admin`` role), ``/basic`` (HTTP Basic), ``POST /login`` (JSON;
answers ``response.user.authentication_token``).

``wsgi_app()`` builds one of them from the environment for gunicorn (see
``bench_workers.py``).
"""

import contextlib
import glob
import hmac
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import flask_login
import sqlalchemy as sa
from flask import Flask, abort, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from itsdangerous import BadSignature, URLSafeSerializer

ROOT = Path(__file__).resolve().parent.parent
# The checkout's module, not an installed copy.
sys.path.insert(0, str(ROOT))

TITLES = {
    "lite": "lite",
    "lite-np": "lite, no Principal",
    "fst": "Flask-Security-Too",
    "login": "Flask-Login alone",
    "bare": "bare Flask",
}
EMAIL, PASSWORD = "bench@example.com", "bench password"
#: pbkdf2_sha512 rounds of the request bench: the same for every library, and low,
#: so that a login shows the library's own cost (bench_hashing.py measures hashing).
ROUNDS = 1_000


def _models(db, user_mixin, role_mixin, lower_index=True):
    """The schema of README's quick start (with its index on ``lower(email)``, or
    without it as a 1.7.4 database has, and its ``security_stamp``), plus
    Flask-Security-Too's uniquifier."""
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
        security_stamp = db.Column(db.String(64))
        roles = db.relationship(Role, secondary=roles_users, backref="users")

    if lower_index:
        # README's model: serves lookups of rows stored before emails were normalised.
        db.Index("ix_user_email_lower", db.func.lower(User.email))
    return User, Role


def _base_app(database_url):
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="bench secret",
        SQLALCHEMY_DATABASE_URI=database_url,
        WTF_CSRF_ENABLED=False,
    )
    return app


def _lite_app(database_url, scheme, options, lower_index, principal=True):
    import flask_security_lite as lite

    app = _base_app(database_url)
    # Flask-Principal is installed with the bench, so lite loads its identities on
    # every request, as 1.7.4 did; "lite-np" turns that off.
    app.config["SECURITY_FLASK_PRINCIPAL"] = principal
    # lite warns about plaintext outside tests; the scale bench uses it on purpose.
    app.testing = scheme == "plaintext"
    app.config["SECURITY_PASSWORD_HASH"] = scheme
    if options is not None:
        app.config["SECURITY_PASSWORD_HASH_OPTIONS"] = {scheme: options}
    db = SQLAlchemy(app)
    user_model, role_model = _models(db, lite.UserMixin, lite.RoleMixin, lower_index)
    lite.Security(app, lite.SQLAlchemyUserDatastore(db, user_model, role_model))
    _routes(
        app,
        session=lite.login_required,
        token=lite.auth_token_required,
        admin=lite.roles_required("admin"),
        basic=lite.http_auth_required,
    )
    return app


def _fst_app(database_url, scheme, options, lower_index):
    import flask_security as fst

    app = _base_app(database_url)
    app.config.update(
        SECURITY_PASSWORD_HASH=scheme,
        # One hash, as lite does without a pepper (Flask-Security-Too's default
        # HMACs first, which costs microseconds).
        SECURITY_PASSWORD_SINGLE_HASH=True,
    )
    if options is not None:
        app.config["SECURITY_PASSWORD_HASH_PASSLIB_OPTIONS"] = {
            f"{scheme}__{name}": value for name, value in options.items()
        }
    db = SQLAlchemy(app)
    user_model, role_model = _models(db, fst.UserMixin, fst.RoleMixin, lower_index)
    fst.Security(app, fst.SQLAlchemyUserDatastore(db, user_model, role_model))
    _routes(
        app,
        session=fst.auth_required("session"),
        token=fst.auth_token_required,
        admin=lambda view: fst.auth_required("session")(
            fst.roles_required("admin")(view)
        ),
        basic=fst.http_auth_required,
    )
    return app


def _login_app(database_url, scheme, options, lower_index):
    """Flask-Login alone: what an application writes by hand around it."""
    from passlib.context import CryptContext

    app = _base_app(database_url)
    db = SQLAlchemy(app)
    user_model, _ = _models(db, flask_login.UserMixin, object, lower_index)
    settings = {f"{scheme}__{name}": value for name, value in (options or {}).items()}
    context = CryptContext(schemes=[scheme], **settings)
    tokens = URLSafeSerializer(app.secret_key, salt="auth token")
    manager = flask_login.LoginManager(app)

    def by_email(email):
        query = sa.select(user_model).where(user_model.email == email).limit(1)
        return db.session.scalars(query).first()

    def password_matches(user, password):
        if scheme == "plaintext":
            return hmac.compare_digest(user.password.encode(), password.encode())
        return context.verify(password, user.password)

    @manager.user_loader
    def load_user(user_id):
        return db.session.get(user_model, int(user_id))

    @manager.request_loader
    def load_from_request(request):
        token, basic = (
            request.headers.get("Authentication-Token"),
            request.authorization,
        )
        if token:
            try:
                return db.session.get(user_model, int(tokens.loads(token)))
            except (BadSignature, TypeError, ValueError):
                return None
        if basic is not None and basic.type == "basic":
            user = by_email(basic.username)
            if user is not None and password_matches(user, basic.password or ""):
                return user
        return None

    @app.post("/login")
    def login():
        body = request.get_json(silent=True) or {}
        user = by_email(str(body.get("email", "")).strip().lower())
        if user is None or not password_matches(user, str(body.get("password", ""))):
            return jsonify(meta={"code": 400}), 400
        flask_login.login_user(user)
        token = tokens.dumps(str(user.id))
        return jsonify(
            meta={"code": 200}, response={"user": {"authentication_token": token}}
        )

    def admin(view):
        def wrapper():
            if not any(role.name == "admin" for role in flask_login.current_user.roles):
                abort(403)
            return view()

        return flask_login.login_required(wrapper)

    _routes(
        app,
        session=flask_login.login_required,
        token=flask_login.login_required,
        admin=admin,
        basic=flask_login.login_required,
    )
    return app


def _bare_app(database_url, scheme, options, lower_index):
    app = _base_app(database_url)
    nothing = lambda view: view  # noqa: E731
    _routes(app, session=nothing, token=nothing, admin=nothing, basic=nothing)
    return app


def _routes(app, session, token, admin, basic):
    """The same four protected routes on every app."""

    def page():
        return "ok"

    def api():
        return {"ok": True}

    def admin_page():
        return "admin"

    def basic_page():
        return "ok"

    app.add_url_rule("/page", view_func=session(page))
    app.add_url_rule("/api", view_func=token(api))
    app.add_url_rule("/admin", view_func=admin(admin_page))
    app.add_url_rule("/basic", view_func=basic(basic_page))


def _lite_without_principal_app(database_url, scheme, options, lower_index):
    return _lite_app(database_url, scheme, options, lower_index, principal=False)


_FACTORIES = {
    "lite-np": _lite_without_principal_app,
    "lite": _lite_app,
    "fst": _fst_app,
    "login": _login_app,
    "bare": _bare_app,
}


def make_app(
    library,
    database_url="sqlite://",
    scheme="pbkdf2_sha512",
    options=None,
    lower_index=True,
):
    """The bench app of ``library`` on ``database_url``.

    :param scheme: the password scheme for new hashes and logins.
    :param options: passlib settings of ``scheme`` (``{"rounds": ...}``); None keeps
        the library's own defaults.
    :param lower_index: declare README's index on ``lower(email)``; False gives the
        schema of a 1.7.4 database.
    """
    return _FACTORIES[library](database_url, scheme, options, lower_index)


def database(app):
    """The app's Flask-SQLAlchemy object, or None for bare Flask."""
    return app.extensions.get("sqlalchemy")


def password_hash(scheme, options=None, password=PASSWORD):
    """A hash every library accepts for ``password`` (plaintext stays as is)."""
    if scheme == "plaintext":
        return password
    from passlib.context import CryptContext

    settings = {f"{scheme}__{name}": value for name, value in (options or {}).items()}
    return CryptContext(schemes=[scheme], **settings).hash(password)


def seed(app, users=1, stored_hash=None, batch=10_000):
    """Create the tables and ``users`` users by bulk insert, ``EMAIL`` among them
    (in the middle), with the ``admin`` role. Nothing here goes through a library.

    :param stored_hash: the password column of every user (default: the plaintext
        ``PASSWORD``, which suits ``plaintext`` apps only).
    """
    db = database(app)
    stored_hash = PASSWORD if stored_hash is None else stored_hash
    with app.app_context():
        db.drop_all()
        db.create_all()
        tables = db.metadata.tables
        user_table, role_table = tables["user"], tables["role"]
        now = sa.func.now()
        middle = users // 2
        rows = []
        for number in range(users):
            email = EMAIL if number == middle else f"user{number}@example.com"
            rows.append(
                {
                    "email": email,
                    "password": stored_hash,
                    "active": True,
                    "fs_uniquifier": uuid.uuid4().hex,
                }
            )
            if len(rows) == batch:
                db.session.execute(sa.insert(user_table), rows)
                rows = []
        if rows:
            db.session.execute(sa.insert(user_table), rows)
        db.session.execute(sa.update(user_table).values(confirmed_at=now))
        db.session.execute(sa.insert(role_table), [{"name": "admin"}])
        user_id = db.session.scalar(
            sa.select(user_table.c.id).where(user_table.c.email == EMAIL)
        )
        db.session.execute(
            sa.insert(tables["roles_users"]), [{"user_id": user_id, "role_id": 1}]
        )
        db.session.commit()
        if db.engine.dialect.name == "postgresql":
            with db.engine.connect().execution_options(
                isolation_level="AUTOCOMMIT"
            ) as connection:
                connection.execute(sa.text("VACUUM ANALYZE"))


def login(client, email=EMAIL, password=PASSWORD):
    """Log ``client`` in through ``POST /login`` (JSON); return the auth token."""
    # Flask-Security-Too returns the token only when asked; lite always does.
    response = client.post(
        "/login?include_auth_token", json={"email": email, "password": password}
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json["response"]["user"]["authentication_token"]


def wsgi_request(app, path, headers=None):
    """A function sending ``GET path`` straight to the WSGI app, as a server does,
    and returning the status code: no test client, whose own cost (building the
    environ, the cookie jar, wrapping the response) would dilute every ratio."""
    from werkzeug.test import EnvironBuilder

    # The test client's address and User-Agent: Flask-Login's session protection
    # compares them with the login's, and would otherwise rewrite the cookie.
    client = app.test_client()
    environ = EnvironBuilder(
        path=path, headers=headers, environ_base=client.environ_base
    ).get_environ()
    found = []

    def start_response(status, response_headers, exc_info=None):
        found.append(int(status.split(" ", 1)[0]))

    def call():
        found.clear()
        body = app(dict(environ), start_response)
        try:
            for _ in body:
                pass
        finally:
            getattr(body, "close", lambda: None)()
        return found[0]

    return call


def session_cookie(client):
    """The Cookie header of ``client``'s session (after ``login(client)``)."""
    return {"Cookie": f"session={client.get_cookie('session').value}"}


def basic_header(email=EMAIL, password=PASSWORD):
    import base64

    pair = base64.b64encode(f"{email}:{password}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


class Timings:
    """µs per call of each key, one sample per interleaved round."""

    def __init__(self, samples):
        self.samples = samples

    def __contains__(self, key):
        return key in self.samples

    def __getitem__(self, key):
        """The median over the rounds."""
        return statistics.median(self.samples[key])

    def ratio(self, key, other):
        """The median over the rounds of ``key`` / ``other`` in the same round: a
        slow moment of the machine inflates both sides of one ratio alike."""
        pairs = zip(self.samples[key], self.samples[other], strict=True)
        return statistics.median(own / theirs for own, theirs in pairs)


def interleaved(calls, rounds, repeat, clock=time.process_time):
    """Time each of ``calls`` (a dict of functions) in interleaved rounds.

    Each round times ``repeat`` calls of every function in turn, so a slow moment
    of the machine falls on all of them alike, in an order shuffled anew each round
    (seeded, so runs repeat), so that no function always follows the same one and
    inherits its garbage to collect. The default clock is this process's
    CPU time, which other processes on a busy machine do not inflate; work done in
    another process (a PostgreSQL server) needs ``time.perf_counter``.
    """
    samples = defaultdict(list)
    for call in calls.values():
        call()
    order, shuffle = list(calls), random.Random(1).shuffle
    for _ in range(rounds):
        shuffle(order)
        for key in order:
            call = calls[key]
            started = clock()
            for _ in range(repeat):
                call()
            samples[key].append((clock() - started) / repeat * 1e6)
    return Timings(dict(samples))


@contextlib.contextmanager
def count_queries(app):
    """Count the SQL statements ``app`` runs inside the block: ``with ... as n``,
    then ``n[0]``."""
    found = [0]
    db = database(app)
    if db is None:
        yield found
        return

    def counted(*args):
        found[0] += 1

    with app.app_context():
        engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", counted)
    try:
        yield found
    finally:
        sa.event.remove(engine, "before_cursor_execute", counted)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def postgres():
    """A throwaway PostgreSQL server, started as the test suite's ``postgres_url``
    fixture does (as the ``postgres`` user when run as root); yields its URL."""
    found = shutil.which("initdb") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None
    )
    if found is None:
        raise SystemExit("no PostgreSQL binaries (initdb): apt-get install postgresql")
    bin_dir = Path(found).parent
    data_dir = tempfile.mkdtemp(prefix="fsl-bench-pg-")
    as_postgres = []
    if os.geteuid() == 0:
        shutil.chown(data_dir, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    run = dict(check=True, capture_output=True)
    initdb = [bin_dir / "initdb", "-D", data_dir, "-A", "trust", "-U", "postgres"]
    subprocess.run([*as_postgres, *initdb], **run)
    options = (
        f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1 -F"
        " -c max_connections=200"
    )
    pg_ctl = [*as_postgres, bin_dir / "pg_ctl", "-D", data_dir]
    subprocess.run(
        [*pg_ctl, "-o", options, "-l", f"{data_dir}/log", "-w", "start"], **run
    )
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data_dir, ignore_errors=True)


def table(title, columns, rows):
    """Print a Markdown table (what the tables of bench/README.md are pasted from)."""
    print(f"\n{title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def show(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def wsgi_app():
    """gunicorn's entry: ``BENCH_LIBRARY`` on ``BENCH_DATABASE_URL``, with
    ``BENCH_SCHEME`` and ``BENCH_ROUNDS`` for the password hash."""
    rounds = os.environ.get("BENCH_ROUNDS")
    return make_app(
        os.environ["BENCH_LIBRARY"],
        os.environ["BENCH_DATABASE_URL"],
        os.environ.get("BENCH_SCHEME", "pbkdf2_sha512"),
        {"rounds": int(rounds)} if rounds else None,
    )
