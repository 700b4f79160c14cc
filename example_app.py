"""A runnable flask-security-lite site.

Start it either way (then open http://localhost:5000: passkeys need a domain name, and
a browser takes ``localhost`` but never ``127.0.0.1``)::

    python example_app.py
    flask --app example_app run

Every flow is on (registration, confirmation, recovery, change password, optional
two-factor login, and a lockout after 5 wrong passwords or codes in a row), and mail
goes to the console: each message is logged with its links, so you can register,
confirm, log out, reset your password and log in again without a mail server. The
home page lists what to try, each a link, and shows a logged-in user's auth token
with ``curl`` lines that use it. The set-up page of two-factor login shows a QR code
when segno is installed (``pip install segno``), else the key to type in. With the
``passkeys`` extra installed (``pip install -e ".[passkeys]"``), users add passkeys on
their profile and sign in with them.

The tables and two accounts (demo@example.com / demo-password, and admin@example.com /
admin-password with the "admin" role) are made when the module is first imported, so
``flask --app example_app users ...`` works on the same database too; columns that a
database made by an older demo lacks are added then. The demo's pages and the security
pages share one layout and stylesheet, in ``example/``.

It serves this machine only (127.0.0.1): its accounts' passwords are published here.

Environment: ``DATABASE_URL`` (default ``sqlite:///example.db`` in Flask's instance
folder; a database the demo did not make is refused), ``PORT`` (5000, for
``python example_app.py``), ``SECRET_KEY`` (a fixed demo key: set your own outside a
demo), and ``PASSWORDLESS=1`` to turn /login into passwordless login (a link by
mail), which takes the place of the password form as in Flask-Security 1.7.4. Any
other setting comes from ``FLASK_<KEY>`` (``FLASK_SECURITY_LOCKOUT_ATTEMPTS=3``).
"""

import importlib.util
import json
import logging
import os
import shlex
from datetime import datetime, timezone

from flask import Flask, jsonify, make_response, render_template, url_for
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import inspect, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateColumn

from flask_security_lite import (
    DatastoreConflictError,
    RoleMixin,
    Security,
    SQLAlchemyUserDatastore,
    UserMixin,
    auth_token_required,
    current_user,
    login_required,
    roles_required,
)

# The layout in example/templates/security/base.html replaces the library's, so the
# security pages and the demo's own share it.
app = Flask(
    __name__, template_folder="example/templates", static_folder="example/static"
)
app.config.update(
    SECRET_KEY=os.environ.get("SECRET_KEY", "demo secret: change me"),
    SQLALCHEMY_DATABASE_URI=os.environ.get("DATABASE_URL", "sqlite:///example.db"),
    SECURITY_REGISTERABLE=True,
    SECURITY_CONFIRMABLE=True,
    SECURITY_RECOVERABLE=True,
    SECURITY_CHANGEABLE=True,
    SECURITY_TRACKABLE=True,
    SECURITY_PASSWORDLESS=os.environ.get("PASSWORDLESS") == "1",
    # Two-factor login for whoever sets it up (SECURITY_TWO_FACTOR_REQUIRED would
    # ask it of everyone), and a lockout small enough to try by hand.
    SECURITY_TWO_FACTOR=True,
    SECURITY_TWO_FACTOR_ISSUER="flask-security-lite demo",
    SECURITY_LOCKOUT_ATTEMPTS=5,
    SECURITY_LOCKOUT_WITHIN="15 minutes",
    # Passkeys when py_webauthn is installed (the passkeys extra).
    SECURITY_PASSKEYS=importlib.util.find_spec("webauthn") is not None,
    SECURITY_PASSKEYS_RP_NAME="flask-security-lite demo",
    # The demo serves this machine only, so the links it mails point here. A real
    # site declares its own host (docs/security.md, "Production checklist").
    TRUSTED_HOSTS=["127.0.0.1", "localhost"],
)
# Any other setting from the environment: FLASK_SECURITY_LOCKOUT_ATTEMPTS=3 sets
# SECURITY_LOCKOUT_ATTEMPTS (values are read as JSON when they parse as JSON).
app.config.from_prefixed_env()
# The lockout message says how to get back in, with the lock's length as set.
app.config.setdefault(
    "SECURITY_MSG_ACCOUNT_LOCKED",
    (
        "Too many failed attempts: this account is locked for "
        f"{app.config['SECURITY_LOCKOUT_WITHIN']}. To get back in sooner, reset the "
        "password by “Forgot password” (if two-factor login is off), or run "
        "flask --app example_app users unlock EMAIL.",
        "error",
    ),
)
db = SQLAlchemy(app)

roles_users = db.Table(
    "roles_users",
    db.Column("user_id", db.Integer(), db.ForeignKey("user.id")),
    db.Column("role_id", db.Integer(), db.ForeignKey("role.id")),
)


class Role(db.Model, RoleMixin):
    id = db.Column(db.Integer(), primary_key=True)
    name = db.Column(db.String(80), unique=True)
    description = db.Column(db.String(255))


class User(db.Model, UserMixin):
    id = db.Column(db.Integer, primary_key=True)
    email = db.Column(db.String(255), unique=True)
    password = db.Column(db.String(255))
    active = db.Column(db.Boolean())
    confirmed_at = db.Column(db.DateTime())
    security_stamp = db.Column(db.String(64))
    last_login_at = db.Column(db.DateTime())
    current_login_at = db.Column(db.DateTime())
    last_login_ip = db.Column(db.String(100))
    current_login_ip = db.Column(db.String(100))
    login_count = db.Column(db.Integer)
    failed_login_count = db.Column(db.Integer)
    locked_until = db.Column(db.DateTime())
    tf_totp_secret = db.Column(db.String(255))
    tf_recovery_codes = db.Column(db.Text())
    passkey_handle = db.Column(db.String(64), unique=True)
    roles = db.relationship("Role", secondary=roles_users, backref="users")


class Passkey(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    user_id = db.Column(db.Integer, db.ForeignKey("user.id"), nullable=False)
    user = db.relationship("User")
    credential_id = db.Column(db.LargeBinary(1024), unique=True, nullable=False)
    public_key = db.Column(db.LargeBinary, nullable=False)
    sign_count = db.Column(db.BigInteger, nullable=False)
    transports = db.Column(db.String(255))
    label = db.Column(db.String(64), nullable=False)
    created_at = db.Column(db.DateTime, nullable=False)
    last_used_at = db.Column(db.DateTime)
    backup_eligible = db.Column(db.Boolean, nullable=False)
    backed_up = db.Column(db.Boolean, nullable=False)


user_datastore = SQLAlchemyUserDatastore(db, User, Role, passkey_model=Passkey)
security = Security(app, user_datastore)
log = logging.getLogger("example_app")

#: The demo accounts: email, password, role names.
DEMO_ACCOUNTS = [
    ("demo@example.com", "demo-password", []),
    ("admin@example.com", "admin-password", ["admin"]),
]

#: The password of each demo account, for the JSON login line of the home page.
DEMO_PASSWORDS = {email: password for email, password, _ in DEMO_ACCOUNTS}


@security.send_mail_task
def print_mail(message):
    """Stand in for a mail server: log each message, links included."""
    log.warning("Mail to %s: %s\n%s", message.recipients, message.subject, message.body)


#: Prints the CSRF token of a JSON answer: sed, so the line needs nothing but curl.
CSRF_FROM_JSON = r"""sed -n 's/.*"csrf_token": *"\([^"]*\)".*/\1/p'"""


@app.route("/")
def home():
    """What to try, each a link; for a logged-in user, the auth token too."""
    api = _api_lines(current_user) if current_user.is_authenticated else None
    qr_codes = importlib.util.find_spec("segno") is not None
    page = render_template("home.html", api=api, qr_codes=qr_codes)
    response = make_response(page)
    if api is not None:
        response.headers["Cache-Control"] = "no-store"  # it shows a credential
    return response


def _api_lines(user):
    """``user``'s auth token, and two ``curl`` lines to paste: one calls
    /api/whoami with it, one logs in by JSON for a new token. That login needs the
    CSRF token of a session, so the line fetches one first and keeps the cookie."""
    header = app.config["SECURITY_TOKEN_AUTHENTICATION_HEADER"]
    token = user.get_auth_token()
    header_line = shlex.quote(f"{header}: {token}")
    whoami_url = shlex.quote(url_for("whoami", _external=True))
    login_url = shlex.quote(url_for("security.login", _external=True))
    password = DEMO_PASSWORDS.get(user.email, "YOUR-PASSWORD")
    body = shlex.quote(json.dumps({"email": user.email, "password": password}))
    login = (
        f"CSRF=$(curl -s -c demo-cookies.txt -H 'Accept: application/json' "
        f"{login_url} | {CSRF_FROM_JSON}) && curl -s -b demo-cookies.txt "
        f"-H \"X-CSRFToken: $CSRF\" -H 'Content-Type: application/json' "
        f"-d {body} {login_url}"
    )
    return {
        "token": token,
        "header": header,
        "whoami": f"curl -s -H {header_line} {whoami_url}",
        "login": login,
        "password_needed": user.email not in DEMO_PASSWORDS,
    }


@app.route("/profile")
@login_required
def profile():
    """Who is logged in, their logins (tracking), and their two-factor login."""
    return render_template("profile.html")


@app.route("/admin")
@roles_required("admin")
def admin():
    """The accounts, for the admin role only."""
    users = db.session.scalars(db.select(User).order_by(User.id))
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    return render_template("admin.html", users=users, now=now)


@app.after_request
def not_framed(response):
    """The demo's pages, like the security pages, are never framed: the home page
    shows an auth token."""
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


@app.errorhandler(403)
def forbidden(error):
    """A page that says what is missing, in place of Werkzeug's bare Forbidden."""
    return render_template("forbidden.html"), 403


@app.route("/api/whoami")
@auth_token_required
def whoami():
    """Who the auth token belongs to: the API the home page's curl lines call."""
    return jsonify(email=current_user.email, roles=[r.name for r in current_user.roles])


def create_demo_data(attempts=3):
    """Create the tables, the admin role and the demo accounts, unless they exist.

    The workers of a WSGI server import this module at the same moment: one that
    loses the race for a table or a row rolls back and looks again, and then finds
    what the winner wrote.
    """
    try:
        _create_missing_demo_data()
    except (DatastoreConflictError, SQLAlchemyError):
        db.session.rollback()
        if attempts == 1:
            raise
        create_demo_data(attempts - 1)


def _create_missing_demo_data():
    _refuse_a_database_not_the_demos()
    db.create_all()
    _add_missing_columns()
    for email, password, role_names in DEMO_ACCOUNTS:
        if user_datastore.find_user(email=email) is not None:
            continue
        roles = [
            user_datastore.find_or_create_role(name, description=f"{name}s")
            for name in role_names
        ]
        user = user_datastore.create_user(email=email, password=password, roles=roles)
        user.confirmed_at = datetime.now(timezone.utc).replace(tzinfo=None)
    db.session.commit()


def _refuse_a_database_not_the_demos():
    """The demo adds columns, and accounts whose passwords it publishes: only to a
    database it made (one with no users yet, or with its demo account)."""
    if not inspect(db.engine).has_table(User.__tablename__):
        return
    table = db.engine.dialect.identifier_preparer.format_table(User.__table__)
    anyone = db.session.execute(text(f"SELECT 1 FROM {table} LIMIT 1")).first()
    demo = db.session.execute(
        text(f"SELECT 1 FROM {table} WHERE email = :email"),
        {"email": DEMO_ACCOUNTS[0][0]},
    ).first()
    if anyone is not None and demo is None:
        raise RuntimeError(
            "DATABASE_URL names a database with accounts the demo did not make: "
            "the demo would add its columns and its accounts, whose passwords it "
            "publishes. Point DATABASE_URL at a new database."
        )


def _add_missing_columns():
    """Add the columns a database made by an older demo lacks (the two-factor ones,
    say), and say so: ``create_all`` makes missing tables only, and a query of a
    missing column would fail every page. All of them may be empty."""
    inspector = inspect(db.engine)
    for table in db.metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                _add_column(table, column)


def _add_column(table, column):
    """``ALTER TABLE ... ADD COLUMN`` in the database's own dialect."""
    dialect = db.engine.dialect
    name = dialect.identifier_preparer.format_table(table)
    definition = CreateColumn(column).compile(dialect=dialect)
    db.session.execute(text(f"ALTER TABLE {name} ADD COLUMN {definition}"))
    log.warning(
        "The demo's database, made by an older demo, had no %s.%s column: added.",
        table.name,
        column.name,
    )


# On first import, whichever way the app is started: `python example_app.py`,
# `flask --app example_app run`, a WSGI server, or a `flask users` command.
with app.app_context():
    create_demo_data()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    port = int(os.environ.get("PORT", "5000"))
    log.warning(
        "Open http://localhost:%s and log in as demo@example.com / demo-password "
        "(or admin@example.com / admin-password). Mail is printed here.",
        port,
    )
    app.run(host="127.0.0.1", port=port)
