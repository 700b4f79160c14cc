"""A runnable flask-security-lite site: ``python example_app.py``.

Every flow is on (registration, confirmation, recovery, change password), and mail
goes to the console: each message is logged with its links, so you can register,
confirm, log out, reset your password and log in again without a mail server.

Environment: ``DATABASE_URL`` (default ``sqlite:///example.db``), ``PORT`` (5000),
``SECRET_KEY`` (a fixed demo key: set your own outside a demo), and
``PASSWORDLESS=1`` to turn /login into passwordless login (a link by mail), which
takes the place of the password form as in Flask-Security 1.7.4.
"""

import logging
import os

from flask import Flask, jsonify, render_template_string
from flask_sqlalchemy import SQLAlchemy

from flask_security_lite import (
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
    last_login_at = db.Column(db.DateTime())
    current_login_at = db.Column(db.DateTime())
    last_login_ip = db.Column(db.String(100))
    current_login_ip = db.Column(db.String(100))
    login_count = db.Column(db.Integer)
    roles = db.relationship("Role", secondary=roles_users, backref="users")


user_datastore = SQLAlchemyUserDatastore(db, User, Role)
security = Security(app, user_datastore)
log = logging.getLogger("example_app")


@security.send_mail_task
def print_mail(message):
    """Stand in for a mail server: log each message, links included."""
    log.warning("Mail to %s: %s\n%s", message.recipients, message.subject, message.body)


PAGE = """<!doctype html><title>flask-security-lite demo</title>
<main style="font-family: system-ui; max-width: 40rem; margin: 3rem auto">
<h1>flask-security-lite demo</h1>
{% for category, text in get_flashed_messages(with_categories=true) %}
  <p class="{{ category }}">{{ text }}</p>{% endfor %}
<p>{{ body }}</p>
<p>
{% if current_user.is_authenticated %}
  Logged in as <strong>{{ current_user.email }}</strong>.
  <a href="/profile">Profile</a> · <a href="/admin">Admin</a> ·
  <a href="/change">Change password</a> · <a href="/logout">Log out</a>
{% else %}
  You are not logged in. <a href="/login">Log in</a> ·
  <a href="/register">Register</a> · <a href="/reset">Forgot password</a>
{% endif %}
</p></main>"""


@app.route("/")
def home():
    return render_template_string(PAGE, body="Welcome.")


@app.route("/profile")
@login_required
def profile():
    count = current_user.login_count
    return render_template_string(PAGE, body=f"Your profile. Logins so far: {count}.")


@app.route("/admin")
@roles_required("admin")
def admin():
    return render_template_string(PAGE, body="Only admins see this page.")


@app.route("/api/whoami")
@auth_token_required
def whoami():
    return jsonify(email=current_user.email, roles=[r.name for r in current_user.roles])


def create_demo_data():
    """Create the tables, an admin role, a demo user and an admin on first run."""
    with app.app_context():
        db.create_all()
        admin_role = user_datastore.find_or_create_role("admin", description="Admins")
        accounts = [
            ("demo@example.com", "demo-password", []),
            ("admin@example.com", "admin-password", [admin_role]),
        ]
        for email, password, roles in accounts:
            if user_datastore.find_user(email=email) is None:
                user = user_datastore.create_user(
                    email=email, password=password, roles=roles
                )
                user.confirmed_at = db.func.now()
        db.session.commit()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    create_demo_data()
    port = int(os.environ.get("PORT", "5000"))
    log.warning(
        "Open http://127.0.0.1:%s and log in as demo@example.com / demo-password "
        "(or admin@example.com / admin-password). Mail is printed here.",
        port,
    )
    app.run(host="127.0.0.1", port=port)
