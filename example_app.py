"""A runnable flask-security-lite site.

Start it either way (then open http://127.0.0.1:5000)::

    python example_app.py
    flask --app example_app run

Every flow is on (registration, confirmation, recovery, change password), and mail
goes to the console: each message is logged with its links, so you can register,
confirm, log out, reset your password and log in again without a mail server. The
tables and two accounts (demo@example.com / demo-password, and admin@example.com /
admin-password with the "admin" role) are made when the module is first imported, so
``flask --app example_app users ...`` works on the same database too.

Environment: ``DATABASE_URL`` (default ``sqlite:///example.db`` in Flask's instance
folder), ``PORT`` (5000, for ``python example_app.py``), ``SECRET_KEY`` (a fixed demo
key: set your own outside a demo), and ``PASSWORDLESS=1`` to turn /login into
passwordless login (a link by mail), which takes the place of the password form as in
Flask-Security 1.7.4. Any other setting comes from ``FLASK_<KEY>``
(``FLASK_SECURITY_LOCKOUT_ATTEMPTS=3``).
"""

import logging
import os
from datetime import datetime, timezone

from flask import Flask, jsonify, render_template_string
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.exc import SQLAlchemyError

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

app = Flask(__name__)
app.config.update(
    SECRET_KEY=os.environ.get("SECRET_KEY", "demo secret: change me"),
    SQLALCHEMY_DATABASE_URI=os.environ.get("DATABASE_URL", "sqlite:///example.db"),
    SECURITY_REGISTERABLE=True,
    SECURITY_CONFIRMABLE=True,
    SECURITY_RECOVERABLE=True,
    SECURITY_CHANGEABLE=True,
    SECURITY_TRACKABLE=True,
    SECURITY_PASSWORDLESS=os.environ.get("PASSWORDLESS") == "1",
    # The demo serves this machine only, so the links it mails point here. A real
    # site declares its own host (README: "Production checklist").
    TRUSTED_HOSTS=["127.0.0.1", "localhost"],
)
# Any other setting from the environment: FLASK_SECURITY_LOCKOUT_ATTEMPTS=5 sets
# SECURITY_LOCKOUT_ATTEMPTS (values are read as JSON when they parse as JSON).
app.config.from_prefixed_env()
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
    roles = db.relationship("Role", secondary=roles_users, backref="users")


user_datastore = SQLAlchemyUserDatastore(db, User, Role)
security = Security(app, user_datastore)
log = logging.getLogger("example_app")

#: The demo accounts: email, password, role names.
DEMO_ACCOUNTS = [
    ("demo@example.com", "demo-password", []),
    ("admin@example.com", "admin-password", ["admin"]),
]


@security.send_mail_task
def print_mail(message):
    """Stand in for a mail server: log each message, links included."""
    log.warning("Mail to %s: %s\n%s", message.recipients, message.subject, message.body)


PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{{ title }} · flask-security-lite demo</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto;
         padding: 0 1rem; color: #1d2330; }
  nav a, nav span { margin-right: .8rem; }
  .flashes { list-style: none; padding: 0; }
  .flashes li { padding: .6rem; border-radius: 4px; background: #e8eefc; }
  .flashes li.error { background: #fbe9e7; }
</style></head>
<body>
<header><p><strong>flask-security-lite demo</strong></p>
<nav aria-label="Site">
  <a href="/">Home</a>
  {% if current_user.is_authenticated %}
    <a href="/profile">Profile</a>
    {% if current_user.has_role("admin") %}<a href="/admin">Admin</a>{% endif %}
    <a href="/change">Change password</a> <a href="/logout">Log out</a>
  {% else %}
    <a href="/login">Log in</a> <a href="/register">Register</a>
    <a href="/reset">Forgot password</a>
  {% endif %}
</nav></header>
<main>
{% include "security/_messages.html" %}
<h1>{{ title }}</h1>
<p>{{ body }}</p>
<p>{% if current_user.is_authenticated %}
  Logged in as <strong>{{ current_user.email }}</strong>.
{% else %}
  You are not logged in. Try demo@example.com / demo-password, or
  admin@example.com / admin-password.
{% endif %}</p>
</main>
</body>
</html>"""


def page(title, body, status=200):
    """A demo page with the site's menu and the flashed messages."""
    return render_template_string(PAGE, title=title, body=body), status


@app.route("/")
def home():
    return page("Welcome", "This demo shows every flask-security-lite flow.")


@app.route("/profile")
@login_required
def profile():
    count = current_user.login_count
    return page("Your profile", f"Logins so far: {count}.")


@app.route("/admin")
@roles_required("admin")
def admin():
    return page("Admin", "Only admins see this page.")


@app.errorhandler(403)
def forbidden(error):
    """A page that says what is missing, in place of Werkzeug's bare Forbidden."""
    return page(
        "Not for this account",
        "This page needs the admin role. Log out and log in as admin@example.com "
        "to see it.",
        403,
    )


@app.route("/api/whoami")
@auth_token_required
def whoami():
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
    db.create_all()
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


# On first import, whichever way the app is started: `python example_app.py`,
# `flask --app example_app run`, a WSGI server, or a `flask users` command.
with app.app_context():
    create_demo_data()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    port = int(os.environ.get("PORT", "5000"))
    log.warning(
        "Open http://127.0.0.1:%s and log in as demo@example.com / demo-password "
        "(or admin@example.com / admin-password). Mail is printed here.",
        port,
    )
    app.run(host="127.0.0.1", port=port)
