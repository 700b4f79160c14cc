"""The specification of flask_security_lite, as tests.

Fixtures come first (stores, an app factory, helpers); then the tests, grouped under
the same numbered banners as the module. Tests marked with the ``store`` fixture run
on every datastore: Flask-SQLAlchemy on SQLite and on a real PostgreSQL server,
peewee on SQLite and mongoengine on mongomock.
"""

import ast
import base64
import functools
import glob
import hashlib
import hmac
import importlib
import io
import itertools
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
import types
import uuid
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path

import flask
import flask_login
import pytest
from flask import Flask, Response, jsonify
from flask_mail import Mail
from itsdangerous import TimestampSigner

import flask_security_lite as fsl
from flask_security_lite import (
    Security,
    auth_required,
    auth_token_required,
    current_user,
    http_auth_required,
    login_required,
    roles_accepted,
    roles_required,
)

HERE = Path(__file__).parent
PASSWORD = "correct horse"
FAST_HASHING = {"pbkdf2_sha512": {"rounds": 1000}}
#: Each feature's switches, as the tests turn them on.
REGISTER = dict(SECURITY_REGISTERABLE=True)
CONFIRM = dict(SECURITY_REGISTERABLE=True, SECURITY_CONFIRMABLE=True)
RECOVER = dict(SECURITY_RECOVERABLE=True)
CHANGE = dict(SECURITY_CHANGEABLE=True)
PASSWORDLESS = dict(SECURITY_PASSWORDLESS=True)
TWO_FACTOR = dict(SECURITY_TWO_FACTOR=True)
LOCKOUT = dict(SECURITY_LOCKOUT_ATTEMPTS=3, SECURITY_LOCKOUT_WITHIN="15 minutes")


# =============================================================================
# Stores: one builder per datastore, each returning (datastore, teardown)
# =============================================================================


def _sqlalchemy_store(app, uri):
    from flask_sqlalchemy import SQLAlchemy

    app.config["SQLALCHEMY_DATABASE_URI"] = uri
    db = SQLAlchemy(app)
    roles_users = db.Table(
        "roles_users",
        db.Column("user_id", db.Integer(), db.ForeignKey("user.id")),
        db.Column("role_id", db.Integer(), db.ForeignKey("role.id")),
    )

    class Role(db.Model, fsl.RoleMixin):
        id = db.Column(db.Integer(), primary_key=True)
        name = db.Column(db.String(80), unique=True)
        description = db.Column(db.String(255))

    class User(db.Model, fsl.UserMixin):
        id = db.Column(db.Integer, primary_key=True)
        email = db.Column(db.String(255), unique=True)
        username = db.Column(db.String(255), unique=True)
        password = db.Column(db.String(255))
        active = db.Column(db.Boolean())
        confirmed_at = db.Column(db.DateTime())
        first_name = db.Column(db.String(255))
        last_login_at = db.Column(db.DateTime())
        current_login_at = db.Column(db.DateTime())
        last_login_ip = db.Column(db.String(100))
        current_login_ip = db.Column(db.String(100))
        login_count = db.Column(db.Integer)
        failed_login_count = db.Column(db.Integer)
        locked_until = db.Column(db.DateTime())
        tf_totp_secret = db.Column(db.String(64))
        tf_recovery_codes = db.Column(db.Text)
        security_stamp = db.Column(db.String(64))
        passkey_handle = db.Column(db.String(64), unique=True)
        roles = db.relationship(
            "Role", secondary=roles_users, backref=db.backref("users", lazy="dynamic")
        )

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

    with app.app_context():
        db.drop_all()
        db.create_all()

    def teardown():
        with app.app_context():
            db.session.remove()
            db.drop_all()
            db.engine.dispose()

    return fsl.SQLAlchemyUserDatastore(db, User, Role, Passkey), teardown


def _peewee_store(app, path):
    import peewee

    db = peewee.SqliteDatabase(str(path / f"peewee-{uuid.uuid4().hex}.db"))

    class Base(peewee.Model):
        class Meta:
            database = db

    class Role(Base, fsl.RoleMixin):
        name = peewee.CharField(unique=True)
        description = peewee.TextField(null=True)

    class User(Base, fsl.UserMixin):
        email = peewee.TextField(unique=True)
        username = peewee.TextField(null=True, unique=True)
        password = peewee.TextField(null=True)
        active = peewee.BooleanField(default=True)
        confirmed_at = peewee.DateTimeField(null=True)
        first_name = peewee.TextField(null=True)
        last_login_at = peewee.DateTimeField(null=True)
        current_login_at = peewee.DateTimeField(null=True)
        last_login_ip = peewee.TextField(null=True)
        current_login_ip = peewee.TextField(null=True)
        login_count = peewee.IntegerField(null=True)
        failed_login_count = peewee.IntegerField(null=True)
        locked_until = peewee.DateTimeField(null=True)
        tf_totp_secret = peewee.TextField(null=True)
        tf_recovery_codes = peewee.TextField(null=True)
        security_stamp = peewee.TextField(null=True)
        passkey_handle = peewee.TextField(null=True, unique=True)

    class UserRoles(Base):
        user = peewee.ForeignKeyField(User, backref="roles")
        role = peewee.ForeignKeyField(Role, backref="users")
        name = property(lambda self: self.role.name)
        description = property(lambda self: self.role.description)

    class Passkey(Base):
        user = peewee.ForeignKeyField(User, backref="passkeys")
        credential_id = peewee.BlobField(unique=True)
        public_key = peewee.BlobField()
        sign_count = peewee.BigIntegerField()
        transports = peewee.TextField(null=True)
        label = peewee.TextField()
        created_at = peewee.DateTimeField()
        last_used_at = peewee.DateTimeField(null=True)
        backup_eligible = peewee.BooleanField()
        backed_up = peewee.BooleanField()

    db.connect()
    db.create_tables([Role, User, UserRoles, Passkey])

    def teardown():
        db.close()

    return fsl.PeeweeUserDatastore(db, User, Role, UserRoles, Passkey), teardown


def _mongo_store(app, path):
    import mongoengine
    import mongomock

    alias = f"db-{uuid.uuid4().hex}"
    mongoengine.connect(
        alias,
        alias=alias,
        host="mongodb://localhost",
        mongo_client_class=mongomock.MongoClient,
        uuidRepresentation="standard",
    )

    class Role(mongoengine.Document, fsl.RoleMixin):
        name = mongoengine.StringField(max_length=80, unique=True)
        description = mongoengine.StringField(max_length=255)
        meta = {"db_alias": alias}

    class User(mongoengine.Document, fsl.UserMixin):
        email = mongoengine.StringField(max_length=255, unique=True)
        username = mongoengine.StringField(max_length=255)
        password = mongoengine.StringField(max_length=255)
        active = mongoengine.BooleanField(default=True)
        confirmed_at = mongoengine.DateTimeField()
        first_name = mongoengine.StringField()
        last_login_at = mongoengine.DateTimeField()
        current_login_at = mongoengine.DateTimeField()
        last_login_ip = mongoengine.StringField()
        current_login_ip = mongoengine.StringField()
        login_count = mongoengine.IntField()
        failed_login_count = mongoengine.IntField()
        locked_until = mongoengine.DateTimeField()
        tf_totp_secret = mongoengine.StringField()
        tf_recovery_codes = mongoengine.StringField()
        security_stamp = mongoengine.StringField()
        passkey_handle = mongoengine.StringField(unique=True, sparse=True)
        roles = mongoengine.ListField(mongoengine.ReferenceField(Role), default=[])
        meta = {"db_alias": alias}

    class Passkey(mongoengine.Document):
        user = mongoengine.ReferenceField(User, required=True)
        credential_id = mongoengine.BinaryField(required=True, unique=True)
        public_key = mongoengine.BinaryField(required=True)
        sign_count = mongoengine.LongField(required=True)
        transports = mongoengine.StringField()
        label = mongoengine.StringField(required=True, max_length=64)
        created_at = mongoengine.DateTimeField(required=True)
        last_used_at = mongoengine.DateTimeField()
        backup_eligible = mongoengine.BooleanField(required=True)
        backed_up = mongoengine.BooleanField(required=True)
        meta = {"db_alias": alias}

    def teardown():
        mongoengine.disconnect(alias)

    return fsl.MongoEngineUserDatastore(mongoengine, User, Role, Passkey), teardown


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server in a temporary folder, as ``postgres`` under root."""
    found = shutil.which("initdb") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None
    )
    if found is None:
        pytest.skip("no PostgreSQL binaries (initdb) on this machine")
    bin_dir = Path(found).parent
    data_dir = tempfile.mkdtemp(prefix="fsl-pg-")
    as_postgres = []
    if os.geteuid() == 0:
        shutil.chown(data_dir, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    run = dict(check=True, capture_output=True)
    subprocess.run(
        [
            *as_postgres,
            bin_dir / "initdb",
            "-D",
            data_dir,
            "-A",
            "trust",
            "-U",
            "postgres",
        ],
        **run,
    )
    options = f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1 -F"
    pg_ctl = [*as_postgres, bin_dir / "pg_ctl", "-D", data_dir]
    subprocess.run(
        [*pg_ctl, "-o", options, "-l", f"{data_dir}/log", "-w", "start"], **run
    )
    yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(data_dir, ignore_errors=True)


STORES = ["sqlite", "postgres", "peewee", "mongo"]


@pytest.fixture(params=STORES)
def store(request):
    """The name of each datastore in turn; tests using it run on all four."""
    if request.param == "postgres":
        request.getfixturevalue("postgres_url")
    return request.param


def _add_test_views(app):
    @app.route("/")
    def index():
        return "home"

    @app.route("/profile")
    @login_required
    def profile():
        return f"profile of {current_user.email}"

    @app.route("/admin")
    @roles_required("admin")
    def admin():
        return "admin"

    @app.route("/admin-and-editor")
    @roles_required("admin", "editor")
    def admin_and_editor():
        return "admin and editor"

    @app.route("/admin-or-editor")
    @roles_accepted("admin", "editor")
    def admin_or_editor():
        return "admin or editor"

    @app.route("/token", methods=["GET", "POST"])
    @auth_token_required
    def token():
        return jsonify(email=current_user.email)

    @app.route("/basic")
    @http_auth_required
    def basic():
        return f"basic {current_user.email}"

    @app.route("/basic-realm")
    @http_auth_required("Secret Area")
    def basic_realm():
        return "realm"

    @app.route("/any")
    @auth_required("token", "basic", "session")
    def any_method():
        return f"any {current_user.email}"

    @app.route("/anonymous")
    @fsl.anonymous_user_required
    def anonymous():
        return "anonymous"

    @app.route("/unauthorized")
    def unauthorized():
        return "unauthorized page"


@pytest.fixture
def make_app(tmp_path, request):
    """Build an app on a store with extra config; every one is torn down after."""
    teardowns = []

    def factory(
        store="sqlite",
        template_folder=None,
        security_kwargs=None,
        security=None,
        **config,
    ):
        app = Flask(__name__, template_folder=template_folder)
        app.config.update(
            SECRET_KEY="test secret",
            TESTING=True,
            WTF_CSRF_ENABLED=False,
            SECURITY_PASSWORD_HASH_OPTIONS=FAST_HASHING,
        )
        app.config.update(config)
        if store == "sqlite":
            datastore, teardown = _sqlalchemy_store(app, "sqlite://")
        elif store == "postgres":
            url = request.getfixturevalue("postgres_url")
            datastore, teardown = _sqlalchemy_store(app, url)
        elif store == "peewee":
            datastore, teardown = _peewee_store(app, tmp_path)
        else:
            datastore, teardown = _mongo_store(app, tmp_path)
        teardowns.append(teardown)
        if security is None:
            security = Security(app, datastore, **(security_kwargs or {}))
        else:
            security.init_app(app, datastore)
        app.security = security
        app.datastore = datastore
        app.mail = Mail(app)
        _add_test_views(app)
        return app

    yield factory
    for teardown in teardowns:
        teardown()


@pytest.fixture
def app(make_app):
    return make_app()


def add_user(app, email="matt@lp.com", password=PASSWORD, roles=(), **fields):
    """Create a user (committed) and return its id as a string."""
    with app.test_request_context():
        for role in roles:
            app.datastore.find_or_create_role(role)
        user = app.datastore.create_user(
            email=email, password=password, roles=list(roles), **fields
        )
        app.datastore.commit()
        return str(user.id)


def get_user(app, email="matt@lp.com"):
    with app.test_request_context():
        return app.datastore.find_user(email=email)


def login(client, email="matt@lp.com", password=PASSWORD, **extra):
    return client.post("/login", data=dict(email=email, password=password, **extra))


def logged_in_client(app, roles=()):
    """A test client logged in through the form as matt@lp.com, made with ``roles``."""
    add_user(app, roles=roles)
    client = app.test_client()
    login(client)
    return client


def json_login(client, email="matt@lp.com", password=PASSWORD, **extra):
    return client.post("/login", json=dict(email=email, password=password, **extra))


def auth_token(client, email="matt@lp.com", password=PASSWORD):
    response = json_login(client, email, password)
    return response.json["response"]["user"]["authentication_token"]


@pytest.fixture
def clock(monkeypatch):
    """Move the clock of signed tokens forward without sleeping."""

    class Clock:
        offset = 0

        def advance(self, **delta):
            from datetime import timedelta

            self.offset += timedelta(**delta).total_seconds()

    clock = Clock()
    monkeypatch.setattr(
        TimestampSigner, "get_timestamp", lambda self: int(time.time() + clock.offset)
    )
    return clock


@pytest.fixture
def later(monkeypatch):
    """Move the module's own clock (sessions, lockout) forward; signed tokens and
    Flask's session cookie keep the real time, as a replayed cookie would."""
    from datetime import timedelta

    class Later:
        offset = timedelta()

        def advance(self, **delta):
            self.offset += timedelta(**delta)

    later = Later()
    real_now = fsl._now
    monkeypatch.setattr(fsl, "_now", lambda: real_now() + later.offset)
    return later


# =============================================================================
# 0. The module itself
# =============================================================================


def _modules_loaded_by_import(*candidates):
    """Which of ``candidates`` a fresh ``import flask_security_lite`` loads."""
    code = (
        "import sys, flask_security_lite; "
        f"print([m for m in {candidates!r} if m in sys.modules])"
    )
    output = subprocess.run(
        [sys.executable, "-c", code],
        cwd=HERE,
        capture_output=True,
        text=True,
        check=True,
    )
    return output.stdout.strip()


def test_importing_the_module_imports_no_orm():
    orms = ("sqlalchemy", "flask_sqlalchemy", "mongoengine", "peewee")
    assert _modules_loaded_by_import(*orms) == "[]"


def test_importing_the_module_leaves_email_mail_and_hashing_for_first_use():
    optional = ("email_validator", "flask_mail", "passlib.context")
    assert _modules_loaded_by_import(*optional) == "[]"


def _view_names(app):
    return {view.__name__ for view in app.view_functions.values()}


def test_importing_the_module_compiles_no_regular_expression():
    code = (
        "import flask_security_lite as f; print(f._hash_shapes.cache_info().currsize)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True
    )
    assert output.stdout.strip() == "0", output.stderr


def test_all_lists_todays_api_and_each_name_exists():
    for name in fsl.__all__:
        assert hasattr(fsl, name), name
    assert len(fsl.__all__) == len(set(fsl.__all__)) < 70


def test_every_other_public_name_is_a_view_or_a_174_name(make_app):
    everything = {f"SECURITY_{feature}": True for feature in fsl._FEATURE_SWITCHES}
    app = make_app(SECURITY_TWO_FACTOR=True, **everything)
    submodule_names = set(" ".join(fsl._SUBMODULES.values()).split())
    public = {
        name
        for name, value in vars(fsl).items()
        if not name.startswith("_")
        and getattr(value, "__module__", None) == "flask_security_lite"
    }
    others = public - set(fsl.__all__) - submodule_names - _view_names(app)
    assert others == set()
    assert {"encrypt_password", "get_token_status", "Datastore"} <= public - set(
        fsl.__all__
    )


def test_every_public_name_has_a_docstring():
    public = [
        name
        for name, value in vars(fsl).items()
        if not name.startswith("_")
        and getattr(value, "__module__", None) == "flask_security_lite"
    ]
    missing = [
        name
        for name in [*fsl.__all__, *public]
        if callable(getattr(fsl, name))
        and not getattr(fsl, name).__doc__
        and name not in ("current_user",)
    ]
    assert missing == []


def _unannotated(function, owner=""):
    """The name of ``function`` if a parameter or its return lacks a type hint."""
    arguments = function.args
    parameters = [*arguments.args, *arguments.kwonlyargs]
    parameters += [arguments.vararg, arguments.kwarg]
    hinted = all(
        parameter is None or parameter.arg in ("self", "cls") or parameter.annotation
        for parameter in parameters
    )
    return None if hinted and function.returns else owner + function.name


def test_every_public_function_and_method_has_type_hints():
    tree = ast.parse((HERE / "flask_security_lite.py").read_text())
    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            found.append(_unannotated(node))
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            found += [
                _unannotated(method, node.name + ".")
                for method in node.body
                if isinstance(method, ast.FunctionDef)
                and (not method.name.startswith("_") or method.name == "__init__")
            ]
    assert [name for name in found if name] == []


def test_module_passes_ruff():
    if shutil.which("ruff") is None:
        pytest.skip("ruff is not installed")
    files = ["flask_security_lite.py", "test_flask_security_lite.py", "example_app.py"]
    result = subprocess.run(["ruff", "check", *files], cwd=HERE, capture_output=True)
    assert result.returncode == 0, result.stdout.decode()


# =============================================================================
# 1. Settings and messages: the defaults
# =============================================================================


#: Every key the 1.7.4 documentation names (with the changelog's and DESIGN's).
DOCUMENTED_KEYS = """
BLUEPRINT_NAME CHANGEABLE CHANGE_PASSWORD_TEMPLATE CHANGE_URL CONFIRMABLE
CONFIRM_EMAIL_WITHIN CONFIRM_ERROR_VIEW CONFIRM_SALT CONFIRM_URL
DEFAULT_HTTP_AUTH_REALM DEFAULT_REMEMBER_ME EMAIL_SENDER EMAIL_SUBJECT_CONFIRM
EMAIL_SUBJECT_PASSWORDLESS EMAIL_SUBJECT_PASSWORD_CHANGE_NOTICE
EMAIL_SUBJECT_PASSWORD_NOTICE EMAIL_SUBJECT_PASSWORD_RESET EMAIL_SUBJECT_REGISTER
FLASH_MESSAGES FORGOT_PASSWORD_TEMPLATE LOGIN_SALT LOGIN_URL LOGIN_USER_TEMPLATE
LOGIN_WITHIN LOGIN_WITHOUT_CONFIRMATION LOGOUT_URL PASSWORDLESS PASSWORD_HASH
PASSWORD_SALT POST_CHANGE_VIEW POST_CONFIRM_VIEW POST_LOGIN_VIEW POST_LOGOUT_VIEW
POST_REGISTER_VIEW POST_RESET_VIEW RECOVERABLE REGISTERABLE REGISTER_URL
REGISTER_USER_TEMPLATE REMEMBER_SALT RESET_PASSWORD_TEMPLATE RESET_PASSWORD_WITHIN
RESET_SALT RESET_URL SEND_CONFIRMATION_TEMPLATE SEND_LOGIN_TEMPLATE
SEND_PASSWORD_CHANGE_EMAIL SEND_PASSWORD_RESET_NOTICE_EMAIL SEND_REGISTER_EMAIL
TOKEN_AUTHENTICATION_HEADER TOKEN_AUTHENTICATION_KEY TRACKABLE UNAUTHORIZED_VIEW
URL_PREFIX USER_IDENTITY_ATTRIBUTES SUBDOMAIN PASSWORD_SCHEMES
DEPRECATED_PASSWORD_SCHEMES
""".split()


#: Every message the 1.7.4 documentation names.
DOCUMENTED_MESSAGES = """
ALREADY_CONFIRMED CONFIRMATION_EXPIRED CONFIRMATION_REQUEST CONFIRMATION_REQUIRED
CONFIRM_REGISTRATION DISABLED_ACCOUNT EMAIL_ALREADY_ASSOCIATED EMAIL_CONFIRMED
EMAIL_NOT_PROVIDED INVALID_CONFIRMATION_TOKEN INVALID_EMAIL_ADDRESS
INVALID_LOGIN_TOKEN INVALID_PASSWORD INVALID_REDIRECT INVALID_RESET_PASSWORD_TOKEN
LOGIN LOGIN_EMAIL_SENT LOGIN_EXPIRED PASSWORDLESS_LOGIN_SUCCESSFUL PASSWORD_CHANGE
PASSWORD_INVALID_LENGTH PASSWORD_IS_SAME PASSWORD_IS_THE_SAME PASSWORD_MISMATCH
PASSWORD_NOT_PROVIDED PASSWORD_NOT_SET PASSWORD_RESET PASSWORD_RESET_EXPIRED
PASSWORD_RESET_REQUEST REFRESH RETYPE_PASSWORD_MISMATCH UNAUTHORIZED
USER_DOES_NOT_EXIST
""".split()


def test_every_documented_config_key_gets_a_default(app):
    for key in DOCUMENTED_KEYS:
        assert "SECURITY_" + key in app.config, key


def test_every_documented_message_is_in_config_as_text_and_category(app):
    for key in DOCUMENTED_MESSAGES:
        text, category = app.config["SECURITY_MSG_" + key]
        assert text and category in ("info", "error", "success"), key


def test_configuration_reference_documents_every_config_key():
    reference = (HERE / "docs" / "configuration.md").read_text()
    missing = [
        key for key in fsl._default_config if f"`SECURITY_{key}`" not in reference
    ]
    assert missing == []


def test_defaults_are_safe(app):
    assert app.config["SECURITY_PASSWORD_HASH"] == "pbkdf2_sha512"
    assert app.config["SECURITY_PASSWORD_LENGTH_MIN"] == 8
    assert app.config["SECURITY_TOKEN_MAX_AGE"] is None
    assert app.config["SECURITY_LOGOUT_METHODS"] == ["GET", "POST"]
    assert (
        fsl._default_config["PASSWORD_HASH_OPTIONS"]["pbkdf2_sha512"]["rounds"]
        == 210_000
    )


def test_app_config_wins_over_defaults(make_app):
    app = make_app(SECURITY_LOGIN_URL="/sign-in")
    assert app.test_client().get("/sign-in").status_code == 200
    assert app.test_client().get("/login").status_code == 404


# =============================================================================
# 1. Settings and messages: the messages
# =============================================================================


def test_message_is_overridable_from_config(make_app):
    app = make_app(SECURITY_MSG_USER_DOES_NOT_EXIST=("Who are you?", "error"))
    response = json_login(app.test_client(), email="nobody@lp.com")
    assert response.json["response"]["errors"]["email"] == ["Who are you?"]


@pytest.mark.parametrize("key", ["PASSWORD_IS_SAME", "PASSWORD_IS_THE_SAME"])
def test_either_name_of_the_same_password_message_works(make_app, key):
    app = make_app(
        SECURITY_CHANGEABLE=True, **{f"SECURITY_MSG_{key}": ("Same!", "error")}
    )
    client = logged_in_client(app)
    same = {
        "password": PASSWORD,
        "new_password": PASSWORD,
        "new_password_confirm": PASSWORD,
    }
    response = client.post("/change", json=same)
    assert response.json["response"]["errors"]["new_password"] == ["Same!"]


def test_flash_messages_can_be_turned_off(make_app):
    app = make_app(SECURITY_FLASH_MESSAGES=False)
    client = app.test_client()
    client.get("/profile")
    with client.session_transaction() as session:
        assert "_flashes" not in session


#: The placeholders each 1.7.4 message used; apps format them with these alone.
PLACEHOLDERS_174 = {
    "CONFIRM_REGISTRATION": {"email"},
    "EMAIL_ALREADY_ASSOCIATED": {"email"},
    "PASSWORD_RESET_REQUEST": {"email"},
    "PASSWORD_RESET_EXPIRED": {"within", "email"},
    "CONFIRMATION_REQUEST": {"email"},
    "CONFIRMATION_EXPIRED": {"within", "email"},
    "LOGIN_EXPIRED": {"within", "email"},
    "LOGIN_EMAIL_SENT": {"email"},
}


@pytest.mark.parametrize("key", DOCUMENTED_MESSAGES)
def test_default_message_needs_only_the_placeholders_of_174(app, key):
    values = {name: "x" for name in PLACEHOLDERS_174.get(key, ())}
    with app.test_request_context():
        text, _ = fsl.get_message(key, **values)
    assert "%(" not in text


# =============================================================================
# 2. Signals
# =============================================================================


def test_capture_helpers_collect_signal_arguments(make_app):
    app = make_app(SECURITY_REGISTERABLE=True, SECURITY_RECOVERABLE=True)
    client = app.test_client()
    with fsl.capture_registrations() as registrations:
        client.post("/register", json={"email": "new@lp.com", "password": PASSWORD})
    client.get("/logout")
    with fsl.capture_reset_password_requests() as requests:
        client.post("/reset", json={"email": "new@lp.com"})
    assert registrations[0]["user"].email == "new@lp.com"
    assert registrations[0]["confirm_token"] is None
    assert requests[0]["user"].email == "new@lp.com" and requests[0]["token"]
    client.post("/reset", json={"email": "new@lp.com"})
    assert len(requests) == 1


def test_capture_passwordless_login_requests(make_app):
    app = make_app(SECURITY_PASSWORDLESS=True)
    add_user(app)
    with fsl.capture_passwordless_login_requests() as requests:
        app.test_client().post("/login", json={"email": "matt@lp.com"})
    assert requests[0]["login_token"]


# =============================================================================
# 3. Passwords and tokens
# =============================================================================


def test_password_hash_is_always_among_the_schemes(make_app):
    app = make_app(SECURITY_PASSWORD_SCHEMES=["bcrypt", "plaintext"])
    add_user(app)
    assert get_user(app).password.startswith("$pbkdf2-sha512$")
    assert json_login(app.test_client()).status_code == 200


def test_create_user_hashes_a_plaintext_password(store, make_app):
    app = make_app(store)
    add_user(app)
    stored = get_user(app).password
    assert stored.startswith("$pbkdf2-sha512$1000$")
    with app.app_context():
        assert fsl.verify_password(PASSWORD, stored)
        assert not fsl.verify_password("wrong password", stored)


def test_create_user_keeps_an_already_hashed_password(app):
    with app.app_context():
        hashed = fsl.hash_password(PASSWORD)
    add_user(app, password=hashed)
    assert get_user(app).password == hashed


@pytest.mark.parametrize(
    "password", ["abcdefghijklm", "$2b$looks-like-bcrypt", "$pbkdf2-sha512$x$y$z"]
)
def test_create_user_hashes_passwords_that_merely_look_like_hashes(app, password):
    add_user(app, password=password)
    stored = get_user(app).password
    assert stored.startswith("$pbkdf2-sha512$")
    assert json_login(app.test_client(), password=password).status_code == 200


def test_default_hash_uses_210000_rounds(make_app):
    app = make_app(
        SECURITY_PASSWORD_HASH_OPTIONS=fsl._default_config["PASSWORD_HASH_OPTIONS"]
    )
    with app.app_context():
        assert fsl.hash_password("x").startswith("$pbkdf2-sha512$210000$")


def test_hashing_no_password_gives_no_password(app):
    with app.test_request_context():
        assert fsl.encrypt_password(None) is None
        user = app.datastore.create_user(email="nopw@lp.com", password=None)
        assert user.password is None


def test_encrypt_password_is_hash_password(app):
    assert fsl.encrypt_password is fsl.hash_password


def test_salt_peppers_the_hash(make_app):
    app = make_app(SECURITY_PASSWORD_SALT="pepper")
    with app.app_context():
        stored = fsl.hash_password(PASSWORD)
        assert fsl.verify_password(PASSWORD, stored)
    unpeppered = make_app()
    with unpeppered.app_context():
        assert not fsl.verify_password(PASSWORD, stored)


def test_get_hmac_is_base64_hmac_sha512_of_the_salt(make_app):
    app = make_app(SECURITY_PASSWORD_SALT="pepper")
    expected = base64.b64encode(
        hmac.new(b"pepper", PASSWORD.encode(), hashlib.sha512).digest()
    )
    with app.app_context():
        assert fsl.get_hmac(PASSWORD) == expected


def _hash_as_flask_security_174(scheme, salt, password):
    """Write a hash the way Flask-Security 1.7.4 did: HMAC, base64, then passlib."""
    from passlib.hash import bcrypt, pbkdf2_sha512

    signed = base64.b64encode(
        hmac.new(salt.encode(), password.encode(), hashlib.sha512).digest()
    )
    if scheme == "bcrypt":
        # bcrypt of that era read only the first 72 bytes of the 88-byte string.
        return bcrypt.hash(signed[:72])
    return pbkdf2_sha512.using(rounds=25000).hash(signed)


@pytest.mark.parametrize("scheme", ["bcrypt", "pbkdf2_sha512"])
def test_flask_security_174_hash_verifies_and_is_upgraded_on_login(make_app, scheme):
    app = make_app(
        SECURITY_PASSWORD_SALT="old salt",
        SECURITY_PASSWORD_HASH_OPTIONS=fsl._default_config["PASSWORD_HASH_OPTIONS"],
    )
    legacy = _hash_as_flask_security_174(scheme, "old salt", PASSWORD)
    add_user(app, password=legacy)
    response = json_login(app.test_client())
    assert response.status_code == 200
    upgraded = get_user(app).password
    assert upgraded.startswith("$pbkdf2-sha512$210000$")
    with app.app_context():
        assert fsl.verify_password(PASSWORD, upgraded)


def test_plaintext_row_is_rehashed_on_login(make_app):
    plain_app = make_app(SECURITY_PASSWORD_HASH="plaintext")
    with plain_app.app_context():
        assert fsl.hash_password(PASSWORD) == PASSWORD
    app = make_app()
    add_user(app)
    with app.app_context():
        user = app.datastore.find_user(email="matt@lp.com")
        user.password = PASSWORD
        app.datastore.put(user)
        app.datastore.commit()
    assert json_login(app.test_client()).status_code == 200
    assert get_user(app).password.startswith("$pbkdf2-sha512$")


def _unlisted_hashes():
    from passlib.hash import md5_crypt
    from werkzeug.security import generate_password_hash

    return {
        "md5_crypt": md5_crypt.hash(PASSWORD),
        "werkzeug pbkdf2": generate_password_hash(PASSWORD, "pbkdf2:sha256:1000"),
        "werkzeug scrypt": generate_password_hash(PASSWORD, "scrypt"),
        "django": "pbkdf2_sha256$1000$c2FsdA$" + "A" * 43 + "=",
        "ldap": "{SSHA}" + base64.b64encode(b"x" * 24).decode(),
        "hex md5": hashlib.md5(PASSWORD.encode()).hexdigest(),
        "hex sha256": hashlib.sha256(PASSWORD.encode()).hexdigest(),
        "base64 sha1": base64.b64encode(
            hashlib.sha1(PASSWORD.encode()).digest()
        ).decode(),
        "mysql41": "*" + hashlib.sha1(hashlib.sha1(b"x").digest()).hexdigest(),
        "phpass": "$P$B" + "a" * 30,
    }


@pytest.mark.parametrize("kind", list(_unlisted_hashes()))
def test_a_stored_hash_of_an_unlisted_format_is_never_compared_as_plaintext(app, kind):
    leaked = _unlisted_hashes()[kind]
    add_user(app)
    with app.app_context():
        user = app.datastore.find_user(email="matt@lp.com")
        user.password = leaked
        app.datastore.put(user)
        app.datastore.commit()
        assert not fsl.verify_password(leaked, leaked)
    assert json_login(app.test_client(), password=leaked).status_code == 400
    assert get_user(app).password == leaked


def test_hash_with_fewer_rounds_is_rehashed_on_login(make_app):
    app = make_app()
    add_user(app)
    stronger = make_app(
        SECURITY_PASSWORD_HASH_OPTIONS={"pbkdf2_sha512": {"rounds": 2000}}
    )
    with stronger.app_context():
        user = stronger.datastore.create_user(
            email="matt@lp.com", password=get_user(app).password
        )
        stronger.datastore.commit()
        assert user.password.startswith("$pbkdf2-sha512$1000$")
    assert json_login(stronger.test_client()).status_code == 200
    assert get_user(stronger).password.startswith("$pbkdf2-sha512$2000$")


def test_plaintext_scheme_logs_a_warning_outside_testing(make_app, caplog):
    with caplog.at_level(logging.WARNING, logger="flask_security_lite"):
        make_app(SECURITY_PASSWORD_HASH="plaintext", TESTING=False)
    assert "plaintext" in caplog.text


def test_plaintext_scheme_is_quiet_in_testing(make_app, caplog):
    with caplog.at_level(logging.WARNING, logger="flask_security_lite"):
        make_app(SECURITY_PASSWORD_HASH="plaintext")
    assert "plaintext" not in caplog.text


@pytest.mark.parametrize("scheme", ["bcrypt", "argon2"])
def test_optional_schemes_hash_and_verify(make_app, scheme):
    app = make_app(SECURITY_PASSWORD_HASH=scheme)
    add_user(app)
    assert json_login(app.test_client()).status_code == 200


@pytest.mark.parametrize(
    "scheme, prefix",
    [("argon2", "$argon2id$v=19$m=65536,t=3,p=4$"), ("bcrypt", "$2b$12$")],
)
def test_default_argon2_and_bcrypt_costs_are_rfc_9106_and_owasp(
    make_app, scheme, prefix
):
    defaults = fsl._default_config["PASSWORD_HASH_OPTIONS"]
    app = make_app(
        SECURITY_PASSWORD_HASH=scheme, SECURITY_PASSWORD_HASH_OPTIONS=defaults
    )
    with app.test_request_context():
        assert fsl.hash_password(PASSWORD).startswith(prefix)


def test_bcrypt_never_truncates_a_long_raw_password(make_app):
    app = make_app(SECURITY_PASSWORD_HASH="bcrypt")
    long_password = "é" * 40 + "tail-one"
    add_user(app, password=long_password)
    assert get_user(app).password.startswith("$2b$")
    client = app.test_client()
    assert json_login(client, password="é" * 40 + "tail-two").status_code == 400
    assert json_login(client, password=long_password).status_code == 200


def test_a_128_character_unicode_password_is_accepted(make_app):
    app = make_app(SECURITY_REGISTERABLE=True, SECURITY_SEND_REGISTER_EMAIL=False)
    password = "пароль-🔒-" * 15
    assert len(password) >= 128
    response = app.test_client().post(
        "/register", json={"email": "long@lp.com", "password": password}
    )
    assert response.status_code == 200
    assert json_login(app.test_client(), "long@lp.com", password).status_code == 200


@pytest.mark.parametrize(
    "email, password",
    [
        ("nobody@lp.com", "wrong password"),
        ("matt@lp.com", "wrong password"),
        ("nopassword@lp.com", "wrong password"),
    ],
)
def test_every_failed_login_costs_one_full_password_check(app, email, password):
    """Unknown users and users without a password pay for a (dummy) verify too,
    so response time does not tell which accounts exist."""
    add_user(app)
    add_user(app, email="nopassword@lp.com", password=None)
    context = app.extensions["security"].pwd_context
    checked = []
    verify = context.verify
    context.verify = lambda secret, hashed: (
        checked.append(hashed) or verify(secret, hashed)
    )
    assert json_login(app.test_client(), email, password).status_code == 400
    assert len(checked) == 1
    assert checked[0].startswith("$pbkdf2-sha512$1000$")


def test_token_status_reports_expired_invalid_and_user(make_app, clock):
    app = make_app(SECURITY_RECOVERABLE=True)
    user_id = add_user(app)
    with app.test_request_context():
        user = app.datastore.get_user(user_id)
        token = fsl.generate_reset_password_token(user)
        assert fsl.get_token_status(token, "reset", "RESET_PASSWORD") == (
            False,
            False,
            user,
        )
        assert fsl.get_token_status(token + "x", "reset", "RESET_PASSWORD")[:2] == (
            False,
            True,
        )
        clock.advance(days=6)
        assert fsl.get_token_status(token, "reset", "RESET_PASSWORD") == (
            True,
            False,
            user,
        )


def test_md5_is_the_hex_digest(app):
    assert fsl.md5("abc") == hashlib.md5(b"abc").hexdigest()


def test_users_hashed_by_default_log_in_after_a_switch_to_bcrypt(make_app, tmp_path):
    """1.7.4's hashing test: schemes listed without our default, users made, then
    the hash switched: the users made first still log in."""
    schemes = dict(SECURITY_PASSWORD_SCHEMES=["bcrypt", "plaintext"])
    first = make_app(**schemes)
    add_user(first)
    first.config["SECURITY_PASSWORD_HASH"] = "bcrypt"
    with first.app_context():
        context = fsl._build_password_context(first.config)
        user = first.datastore.find_user(email="matt@lp.com")
        assert user.password.startswith("$pbkdf2-sha512$")
        assert context.verify(PASSWORD, user.password)


# =============================================================================
# 4. Users, roles and datastores: the mixins
# =============================================================================


def test_has_role_accepts_a_name_or_a_role(store, make_app):
    app = make_app(store)
    add_user(app, roles=["admin"])
    with app.test_request_context():
        user = app.datastore.find_user(email="matt@lp.com")
        admin = app.datastore.find_role("admin")
        assert user.has_role("admin") and user.has_role(admin)
        assert not user.has_role("editor")


def test_roles_compare_by_name(app):
    with app.app_context():
        role = app.datastore.create_role(name="admin")
    assert role == "admin" and role != "editor"
    assert hash(role) == hash("admin")


def test_anonymous_user_has_no_role(app):
    assert fsl.AnonymousUser().has_role("admin") is False


def test_is_active_follows_the_active_field(app):
    add_user(app, active=True)
    add_user(app, email="joe@lp.com", active=False)
    assert get_user(app).is_active is True
    assert get_user(app, "joe@lp.com").is_active is False
    with app.test_request_context():
        user = app.datastore.find_user(email="matt@lp.com")
        user.active = False
        assert user.is_active is False
        user.active = True
        assert user.is_active is True


# =============================================================================
# 4. Users, roles and datastores: every store
# =============================================================================


def test_identity_attributes_may_be_a_comma_separated_string(make_app):
    app = make_app(SECURITY_USER_IDENTITY_ATTRIBUTES="email, username")
    assert fsl.get_identity_attributes(app) == ["email", "username"]


def test_get_user_by_id_or_email(store, make_app):
    app = make_app(store)
    user_id = add_user(app)
    with app.test_request_context():
        assert app.datastore.get_user(user_id).email == "matt@lp.com"
        assert app.datastore.get_user("MATT@lp.com").email == "matt@lp.com"
        assert app.datastore.get_user("nobody@lp.com") is None
        assert app.datastore.get_user("not-an-id") is None


def test_find_user_matches_email_case_insensitively(store, make_app):
    app = make_app(store)
    add_user(app, email="Mixed.Case@LP.com")
    with app.test_request_context():
        assert app.datastore.find_user(email="mixed.case@lp.com") is not None


#: Pairs of spellings of one address: case (ASCII and not), NFC/NFD, IDN.
SAME_ADDRESS = [
    ("Matt@LP.com", "matt@lp.com"),
    ("\u00c4rger@lp.com", "\u00e4rger@lp.com"),
    ("jos\u00e9@lp.com", "jose\u0301@lp.com"),
    ("a@b\u00fccher.de", "a@xn--bcher-kva.de"),
    ("A@XN--BCHER-KVA.DE", "a@B\u00dcCHER.de"),
]


@pytest.mark.parametrize("first, second", SAME_ADDRESS)
def test_normalize_email_gives_one_form_per_address(app, first, second):
    assert fsl.normalize_email(first) == fsl.normalize_email(second)
    assert fsl.normalize_email(first) == fsl.normalize_email(fsl.normalize_email(first))


def test_normalize_email_keeps_distinct_addresses_apart(app):
    assert fsl.normalize_email("stra\u00dfe@lp.com") != fsl.normalize_email(
        "strasse@lp.com"
    )
    assert fsl.normalize_email(" Not An Address ") == "not an address"


def _register(client, email, password=PASSWORD):
    return client.post("/register", json={"email": email, "password": password})


@pytest.mark.parametrize("first, second", SAME_ADDRESS)
def test_spellings_of_one_address_are_one_account(store, make_app, first, second):
    app = make_app(store, **REGISTER, SECURITY_SEND_REGISTER_EMAIL=False)
    assert _register(app.test_client(), first).status_code == 200
    refused = _register(app.test_client(), second)
    assert refused.status_code == 400
    assert "already belongs" in refused.json["response"]["errors"]["email"][0]
    assert json_login(app.test_client(), second).status_code == 200
    assert json_login(app.test_client(), first).status_code == 200
    with app.test_request_context():
        assert app.datastore.find_user(email=second).email == fsl.normalize_email(first)


def test_the_stored_email_is_the_normalised_form(store, make_app):
    app = make_app(store)
    add_user(app, email=" \u00c4rger@B\u00fccher.DE ")
    with app.test_request_context():
        assert app.datastore.find_user(email="\u00e4rger@xn--bcher-kva.de").email == (
            "\u00e4rger@b\u00fccher.de"
        )


def _add_174_row(app, email):
    """A row as Flask-Security 1.7.4 wrote it: the email exactly as typed."""
    with app.test_request_context():
        datastore = app.datastore
        user = datastore.user_model(
            email=email, password=fsl.hash_password(PASSWORD), active=True
        )
        datastore.put(user)
        datastore.commit()


@pytest.mark.parametrize("typed", ["Mixed.Case@LP.com", "mixed.case@lp.com"])
def test_rows_written_by_174_in_mixed_case_still_log_in(store, make_app, typed):
    app = make_app(store)
    _add_174_row(app, "Mixed.Case@LP.com")
    assert json_login(app.test_client(), typed).status_code == 200


def test_a_174_row_in_non_ascii_capitals_is_found_and_taken(store, make_app):
    app = make_app(store, **REGISTER)
    _add_174_row(app, "ÄRGER@lp.com")
    assert json_login(app.test_client(), "ärger@lp.com").status_code == 200
    payload = {"email": "ärger@lp.com", "password": PASSWORD}
    answer = app.test_client().post("/register", json=payload)
    assert answer.status_code == 400
    assert "already belongs" in answer.json["response"]["errors"]["email"][0]


@pytest.mark.parametrize("typed", ["é", "é@é", "ü%@x.com", "%é@%"])
def test_a_non_ascii_address_never_reads_the_whole_table(app, typed):
    from sqlalchemy import event

    for number in range(5):
        add_user(app, f"user{number}@x.com")
    statements = []
    with app.app_context():
        engine = app.datastore.db.engine
        record = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(engine, "before_cursor_execute", record)
        try:
            assert app.datastore.find_user(email=typed) is None
        finally:
            event.remove(engine, "before_cursor_execute", record)
    patterns = [s for s in statements if " LIKE " in s.upper()]
    assert all("LIMIT" in s.upper() for s in patterns)
    domain = typed.rpartition("@")[2]
    if "@" not in typed or not domain.isascii() or "%" in domain:
        assert patterns == []


def test_email_lookup_is_an_equality_on_the_email_column(app):
    from sqlalchemy import event

    add_user(app)
    statements = []
    with app.app_context():
        engine = app.datastore.db.engine
        record = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(engine, "before_cursor_execute", record)
        try:
            assert app.datastore.find_user(email="MATT@lp.com") is not None
        finally:
            event.remove(engine, "before_cursor_execute", record)
    assert len(statements) == 1
    assert "user.email = ?" in statements[0] and "lower" not in statements[0]


@pytest.mark.parametrize("email", ["a\x00b@lp.com", "\ud800@lp.com", 7, ["x"]])
def test_lookup_by_an_unstorable_value_finds_nobody(store, make_app, email):
    app = make_app(store)
    add_user(app)
    with app.test_request_context():
        assert app.datastore.find_user(email=email) is None
        assert app.datastore.find_user_by_identity(email) is None


def test_compare_and_set_writes_only_if_the_row_is_unchanged(store, make_app):
    app = make_app(store)
    add_user(app)
    with app.test_request_context():
        datastore = app.datastore
        user = datastore.find_user(email="matt@lp.com")
        before = user.password
        assert datastore.compare_and_set(user, {"password": before}, {"password": "x"})
        assert user.password == "x"
        assert not datastore.compare_and_set(
            user, {"password": before}, {"password": "y"}
        )
        assert user.password == "x"
        now = datetime(2026, 1, 2, 3, 4, 5)
        unconfirmed = {"confirmed_at": None}
        assert datastore.compare_and_set(user, unconfirmed, {"confirmed_at": now})
        assert not datastore.compare_and_set(user, unconfirmed, {"confirmed_at": now})
    assert get_user(app).password == "x"
    assert get_user(app).confirmed_at == now


def test_compare_and_set_lets_one_of_two_concurrent_writers_win(make_app):
    app = make_app("postgres")
    add_user(app)
    both_read = threading.Barrier(2, timeout=10)
    results = []

    def consume(new_password):
        with app.test_request_context():
            user = app.datastore.find_user(email="matt@lp.com")
            expected = {"password": user.password}
            both_read.wait()
            changes = {"password": new_password}
            results.append(app.datastore.compare_and_set(user, expected, changes))

    threads = [threading.Thread(target=consume, args=(p,)) for p in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, True]


def test_identity_attributes_allow_username_login(store, make_app):
    app = make_app(store, SECURITY_USER_IDENTITY_ATTRIBUTES=["email", "username"])
    add_user(app, username="matt")
    assert json_login(app.test_client(), email="matt").status_code == 200
    with app.test_request_context():
        assert app.datastore.get_user("matt").email == "matt@lp.com"


def test_identity_attributes_given_as_a_string_allow_username_login(make_app):
    app = make_app(SECURITY_USER_IDENTITY_ATTRIBUTES="email, username")
    add_user(app, username="matt")
    assert login(app.test_client(), email="matt").location == "/"


def test_role_creation_and_find_or_create(store, make_app):
    app = make_app(store)
    with app.test_request_context():
        created = app.datastore.create_role(name="admin", description="all")
        app.datastore.commit()
        assert app.datastore.find_role("admin") == created
        assert app.datastore.find_or_create_role("admin") == created
        editor = app.datastore.find_or_create_role("editor", description="edits")
        app.datastore.commit()
        assert app.datastore.find_role("editor").description == "edits"
        assert editor.name == "editor"


def test_add_and_remove_role_by_name_or_object(store, make_app):
    app = make_app(store)
    add_user(app)
    with app.test_request_context():
        datastore = app.datastore
        admin = datastore.create_role(name="admin")
        datastore.create_role(name="editor")
        datastore.commit()
        user = datastore.find_user(email="matt@lp.com")
        assert datastore.add_role_to_user(user, "admin") is True
        assert datastore.add_role_to_user(user, admin) is False
        assert datastore.add_role_to_user("matt@lp.com", "editor") is True
        datastore.commit()
    with app.test_request_context():
        user = app.datastore.find_user(email="matt@lp.com")
        assert user.has_role("admin") and user.has_role("editor")
        assert app.datastore.remove_role_from_user(user, "admin") is True
        assert app.datastore.remove_role_from_user(user, "admin") is False
        app.datastore.commit()
    with app.test_request_context():
        user = app.datastore.find_user(email="matt@lp.com")
        assert not user.has_role("admin") and user.has_role("editor")


def test_create_user_with_roles(store, make_app):
    app = make_app(store)
    add_user(app, roles=["admin", "editor"])
    with app.test_request_context():
        user = app.datastore.find_user(email="matt@lp.com")
        assert user.has_role("admin") and user.has_role("editor")


def test_activation_changes_report_whether_anything_changed(store, make_app):
    app = make_app(store)
    add_user(app)
    with app.test_request_context():
        datastore = app.datastore
        user = datastore.find_user(email="matt@lp.com")
        assert datastore.activate_user(user) is False
        assert datastore.deactivate_user(user) is True
        assert datastore.deactivate_user(user) is False
        assert datastore.toggle_active(user) is True
        assert user.active is True
        datastore.commit()


def test_delete_user(store, make_app):
    app = make_app(store)
    add_user(app, roles=["admin"])
    with app.test_request_context():
        app.datastore.delete_user(app.datastore.find_user(email="matt@lp.com"))
        app.datastore.commit()
        assert app.datastore.find_user(email="matt@lp.com") is None
        assert app.datastore.find_role("admin") is not None


@pytest.mark.parametrize("store", ["peewee", "mongo"])
def test_create_user_works_outside_an_app_context(store, make_app):
    app = make_app(store)
    user = app.security.datastore.create_user(email="script@lp.com", password=PASSWORD)
    assert user.password.startswith("$pbkdf2-sha512$")
    assert json_login(app.test_client(), "script@lp.com").status_code == 200


class _Person(fsl.UserMixin):
    """A user of the custom store below: a plain object."""

    def __init__(self, **fields):
        self.id, self.roles, self.active, self.confirmed_at = None, [], True, None
        self.__dict__.update(fields)


class _Group(fsl.RoleMixin):
    def __init__(self, name, description=None):
        self.id, self.name, self.description = None, name, description


class _MemoryDatastore(fsl.Datastore, fsl.UserDatastore):
    """A store written for 1.7.4: a subclass giving ``put``, ``delete``,
    ``find_user`` and ``find_role``, and nothing else."""

    def __init__(self):
        fsl.Datastore.__init__(self, db={})
        fsl.UserDatastore.__init__(self, _Person, _Group)
        self.puts = 0

    def put(self, model):
        self.puts += 1
        if model.id is None:
            model.id = len(self.db) + 1
            self.db[model.id] = model
        return model

    def delete(self, model):
        del self.db[model.id]

    def find_user(self, *args, **kwargs):
        for model in self.db.values():
            if isinstance(model, _Person) and all(
                str(getattr(model, name, None)) == str(value)
                for name, value in kwargs.items()
            ):
                return model
        return None

    def find_role(self, role):
        groups = [m for m in self.db.values() if isinstance(m, _Group)]
        return next((group for group in groups if group.name == role), None)


def test_the_default_compare_and_set_lets_one_of_two_threads_in():
    class SlowPerson:
        """A row whose field takes a while to read: the window of a race."""

        id, _code = 1, "one"

        @property
        def code(self):
            value = self._code
            time.sleep(0.05)
            return value

        @code.setter
        def code(self, value):
            self._code = value

    person = SlowPerson()

    class Store(fsl.UserDatastore):
        def get_user_by_id(self, user_id):
            return person

        def put(self, model):
            return model

    store, results = Store(SlowPerson, _Group), []

    def use_the_code():
        results.append(store.compare_and_set(person, {"code": "one"}, {"code": "x"}))

    threads = [threading.Thread(target=use_the_code) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, True]


def test_abstract_datastore_leaves_storage_to_subclasses():
    store = fsl.UserDatastore(_Person, _Group)
    for call in (
        lambda: store.find_user("positional", email="a@lp.com"),
        lambda: store.find_user(email="a@lp.com"),
        lambda: store.find_role("admin"),
        lambda: store.put(_Person()),
        lambda: store.delete(_Person()),
        lambda: fsl.Datastore(None).put(_Person()),
        lambda: fsl.Datastore(None).delete(_Person()),
    ):
        with pytest.raises(NotImplementedError):
            call()


def test_abstract_datastore_commit_does_nothing():
    assert fsl.UserDatastore(_Person, _Group).commit() is None
    assert fsl.Datastore(None).commit() is None


def test_base_activation_changes_the_user_without_saving_it():
    store = fsl.UserDatastore(_Person, _Group)
    user = _Person(active=True)
    assert store.deactivate_user(user) is True and user.active is False
    assert store.deactivate_user(user) is False
    assert store.activate_user(user) is True and user.active is True
    assert store.toggle_active(user) is True and user.active is False


def _memory_app():
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="memory secret",
        TESTING=True,
        WTF_CSRF_ENABLED=False,
        SECURITY_PASSWORD_HASH_OPTIONS=FAST_HASHING,
    )
    store = _MemoryDatastore()
    Security(app, store)
    _add_test_views(app)
    with app.app_context():
        store.create_user(email="matt@lp.com", password=PASSWORD, roles=[])
        store.add_role_to_user("matt@lp.com", store.create_role(name="admin"))
    return app


def test_custom_174_datastore_serves_session_logins_and_roles():
    client = _memory_app().test_client()
    assert login(client).status_code == 302
    assert client.get("/profile").data == b"profile of matt@lp.com"
    assert client.get("/admin").data == b"admin"


def test_custom_174_datastore_serves_tokens():
    client = _memory_app().test_client()
    token = auth_token(client)
    client.get("/logout")
    response = client.get("/token", headers={"Authentication-Token": token})
    assert response.json == {"email": "matt@lp.com"}


def test_saving_a_stale_copy_of_a_user_keeps_what_was_written_meanwhile(
    make_app, store
):
    """A login reads its user before a slow password check, then saves tracking:
    a deactivation (or logout) written meanwhile must stand."""
    app = make_app(store)
    add_user(app)
    with app.app_context():
        stale = app.datastore.find_user(email="matt@lp.com")
    with app.app_context():
        app.datastore.deactivate_user(app.datastore.find_user(email="matt@lp.com"))
        app.datastore.commit()
    with app.app_context():
        stale.login_count = 5
        app.datastore.put(stale)
        app.datastore.commit()
    assert get_user(app).active is False


def _orm_conflict_error(store):
    """The exception the ORM of ``store`` raises for a broken unique rule."""
    if store == "peewee":
        import peewee

        return peewee.IntegrityError
    if store == "mongo":
        import mongoengine

        return mongoengine.NotUniqueError
    import sqlalchemy.exc

    return sqlalchemy.exc.IntegrityError


def test_a_duplicate_user_is_the_orms_own_error_as_in_174(make_app, store):
    app = make_app(store=store)
    add_user(app)
    with app.app_context():
        with pytest.raises(_orm_conflict_error(store)) as caught:
            app.datastore.create_user(email="matt@lp.com", password=PASSWORD)
            app.datastore.commit()
    assert isinstance(caught.value, fsl.DatastoreConflictError)


def test_a_conflict_at_commit_is_sqlalchemys_integrity_error(make_app):
    import sqlalchemy.exc

    app = make_app()
    add_user(app)
    with app.app_context():
        db = app.datastore.db
        db.session.add(app.datastore.user_model(email="matt@lp.com", password="x"))
        with pytest.raises(sqlalchemy.exc.IntegrityError) as caught:
            app.datastore.commit()
    assert isinstance(caught.value, fsl.DatastoreConflictError)
    assert "UNIQUE" in str(caught.value) and "INSERT" not in str(caught.value)


# =============================================================================
# 4. Users, roles and datastores: the ORM adapters
# =============================================================================


def test_mongo_get_user_accepts_object_ids_and_their_strings(make_app):
    from bson import ObjectId

    app = make_app("mongo")
    user_id = add_user(app)
    with app.test_request_context():
        assert app.datastore.get_user(ObjectId(user_id)).email == "matt@lp.com"
        assert app.datastore.get_user(user_id).email == "matt@lp.com"
        assert app.datastore.get_user(str(ObjectId())) is None


@pytest.mark.parametrize(
    "adapter, module, package",
    [
        ("SQLAlchemyUserDatastore", "sqlalchemy", "Flask-SQLAlchemy"),
        ("MongoEngineUserDatastore", "mongoengine", "mongoengine"),
        ("PeeweeUserDatastore", "peewee", "peewee"),
    ],
)
def test_adapter_without_its_orm_names_the_package_and_the_extra(
    monkeypatch, adapter, module, package
):
    monkeypatch.setitem(sys.modules, module, None)
    arguments = [None] * (4 if adapter == "PeeweeUserDatastore" else 3)
    with pytest.raises(ImportError) as error:
        getattr(fsl, adapter)(*arguments)
    assert f"pip install {package} " in str(error.value)
    assert f"pip install 'flask-security-lite[{module}]'" in str(error.value)


def test_peewee_datastore_accepts_an_object_with_a_database(make_app):
    from types import SimpleNamespace

    app = make_app("peewee")
    datastore = app.datastore
    wrapped = fsl.PeeweeUserDatastore(
        SimpleNamespace(database=datastore.db),
        datastore.user_model,
        datastore.role_model,
        datastore.role_link,
    )
    assert wrapped.db is datastore.db
    with app.test_request_context():
        wrapped.create_user(email="wrapped@lp.com", password=PASSWORD, roles=[])
        assert datastore.find_user(email="wrapped@lp.com") is not None


def test_orm_datastores_are_174s_persistence_classes(app):
    assert isinstance(app.datastore, fsl.SQLAlchemyDatastore)
    assert issubclass(fsl.MongoEngineUserDatastore, fsl.MongoEngineDatastore)
    assert issubclass(fsl.PeeweeUserDatastore, fsl.PeeweeDatastore)


# =============================================================================
# 5. Answers: redirects that stay on this site, and lifetimes
# =============================================================================


UNSAFE_NEXTS = [
    "//evil.com",
    "\\\\evil.com",
    "https:evil.com",
    "/\\evil.com",
    "http://evil.com",
    "https://evil.com/path",
    "%2F%2Fevil.com",
    "%252F%252Fevil.com",
    "  //evil.com",
    "/\t/evil.com",
    "javascript:alert(1)",
    "///evil.com",
]


@pytest.mark.parametrize("target", UNSAFE_NEXTS)
def test_unsafe_next_is_refused_on_login(app, target):
    add_user(app)
    response = login(app.test_client(), next=target)
    assert response.status_code == 200
    assert b"Redirects to other sites are not allowed" in response.data


@pytest.mark.parametrize("target", UNSAFE_NEXTS)
def test_unsafe_next_is_ignored_on_logout(app, target):
    response = app.test_client().get("/logout", query_string={"next": target})
    assert response.status_code == 302
    assert response.location == "/"


@pytest.mark.parametrize("target", ["/profile", "/profile?tab=1", "http://localhost/x"])
def test_safe_next_is_followed_after_login(app, target):
    add_user(app)
    response = login(app.test_client(), next=target)
    assert response.location == target


#: Targets a browser reads as another host, or that no URL parser should emit.
BROWSER_HOST_TRICKS = [
    "http://localhost\\@evil.com",
    "//localhost\\@evil.com",
    "http://localhost@evil.com",
    "http://localhost%5C@evil.com",
    "/\\/evil.com",
    "/x\r\nLocation: http://evil.com",
    "http://[",
    "http://localhost\u00a0@evil.com",
    "\u200b//evil.com",
]


def _next_via_login_form(make_app, target):
    app = make_app()
    add_user(app)
    return login(app.test_client(), next=target)


def _next_via_login_query(make_app, target):
    app = make_app()
    add_user(app)
    data = {"email": "matt@lp.com", "password": PASSWORD}
    return app.test_client().post("/login", query_string={"next": target}, data=data)


def _next_via_logout(make_app, target):
    return make_app().test_client().get("/logout", query_string={"next": target})


def _next_via_register(make_app, target):
    app = make_app(SECURITY_REGISTERABLE=True, SECURITY_SEND_REGISTER_EMAIL=False)
    data = {"email": "new@lp.com", "password": PASSWORD}
    data.update(password_confirm=PASSWORD, next=target)
    return app.test_client().post("/register", data=data)


def _next_via_confirmation_link(make_app, target):
    app = make_app(SECURITY_REGISTERABLE=True, SECURITY_CONFIRMABLE=True)
    link = _register_and_capture_link(app)
    return app.test_client().get(link, query_string={"next": target})


def _next_via_passwordless_link(make_app, target):
    app = make_app(SECURITY_PASSWORDLESS=True)
    add_user(app)
    return app.test_client().get(_login_link(app), query_string={"next": target})


NEXT_ENTRY_POINTS = [
    _next_via_login_form,
    _next_via_login_query,
    _next_via_logout,
    _next_via_register,
    _next_via_confirmation_link,
    _next_via_passwordless_link,
]


@pytest.mark.parametrize("entry_point", NEXT_ENTRY_POINTS)
@pytest.mark.parametrize("target", BROWSER_HOST_TRICKS)
def test_no_entry_point_redirects_where_a_browser_sees_another_host(
    make_app, entry_point, target
):
    response = entry_point(make_app, target)
    assert response.status_code in (200, 302, 400)
    location = response.location or ""
    assert "evil" not in location and "\\" not in location


@pytest.mark.parametrize("entry_point", NEXT_ENTRY_POINTS)
def test_every_entry_point_follows_a_safe_next_exactly(make_app, entry_point):
    response = entry_point(make_app, "/profile?tab=1")
    assert response.location == "/profile?tab=1"


def test_validate_redirect_url_judges_the_string_it_is_given(app):
    with app.test_request_context():
        assert fsl.validate_redirect_url("/a/b?c=d#e")
        assert fsl.validate_redirect_url("http://localhost/x")
        assert fsl.validate_redirect_url("/caf\u00e9")
        for target in BROWSER_HOST_TRICKS + UNSAFE_NEXTS + ["", None, 3]:
            assert not fsl.validate_redirect_url(target), target


def test_get_url_accepts_an_endpoint_or_an_url(app):
    with app.test_request_context():
        assert fsl.get_url("profile") == "/profile"
        assert fsl.get_url("/somewhere") == "/somewhere"
        assert fsl.url_for_security("login") == "/login"


def test_redirect_helpers_of_174(make_app):
    app = make_app(SECURITY_POST_LOGIN_VIEW="profile")
    with app.test_request_context("/?next=/elsewhere"):
        assert fsl.find_redirect("SECURITY_POST_LOGIN_VIEW") == "/profile"
        assert fsl.get_post_action_redirect("SECURITY_POST_LOGIN_VIEW") == "/elsewhere"
        assert fsl.validate_redirect_url("/elsewhere")
        assert not fsl.validate_redirect_url("//evil.com")
        assert fsl.get_security_endpoint_name("login") == "security.login"
        assert fsl.slash_url_suffix("/reset", "<token>") == "/reset/<token>"
        assert fsl.slash_url_suffix("/reset/", "<token>") == "/reset/<token>"
    assert fsl.get_config(app)["POST_LOGIN_VIEW"] == "profile"


def test_get_within_delta_parses_amount_and_unit(make_app):
    from datetime import timedelta

    app = make_app(SECURITY_LOGIN_WITHIN="10 minutes")
    with app.app_context():
        assert fsl.get_within_delta("LOGIN_WITHIN") == timedelta(minutes=10)
        assert fsl.get_within_delta("CONFIRM_EMAIL_WITHIN") == timedelta(days=5)


def test_get_within_delta_rejects_nonsense(app):
    app.config["SECURITY_LOGIN_WITHIN"] = "soon"
    with app.app_context(), pytest.raises(ValueError, match="SECURITY_LOGIN_WITHIN"):
        fsl.get_within_delta("LOGIN_WITHIN")


# =============================================================================
# 5. Answers: JSON or HTML, and every refusal
# =============================================================================


HOSTILE_JSON = [
    {},
    {"email": None},
    {"email": 1, "password": 2.5},
    {"email": True, "password": False},
    {"email": "x" * 5000, "password": "y" * 5000},
    {"email": "matt@lp.com", "password": ["a"]},
    {"email": "\x00\ud800", "password": "\udfff"},
    {"next": "//evil.com", "remember": "maybe"},
    {"password": PASSWORD, "new_password": 12345678, "new_password_confirm": 1},
    {"auth_token": {"a": 1}},
    {"auth_token": "W10.abc.def"},
    [],
    "text",
    3,
]


HOSTILE_BODIES = [b"\xff\xfe", b"{", b"null", b"email=%ff&password=%00&next=%00"]


HOSTILE_HEADERS = [
    {},
    {"Authentication-Token": "W10.abc.def"},
    {"Authorization": "Basic !!!"},
    {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
    {"Authorization": "Bearer x", "Accept": "application/json"},
]


ALL_PATHS = ["/login", "/register", "/reset", "/reset/x", "/confirm", "/confirm/x"]


ALL_PATHS += ["/change", "/logout", "/token", "/basic", "/any", "/admin"]


@pytest.mark.parametrize("logged_in", [False, True])
def test_hostile_input_never_causes_a_server_error(make_app, logged_in):
    app = make_app(**ALL_FLOWS, SECURITY_TRACKABLE=True)
    add_user(app, confirmed_at=datetime.now())
    client = app.test_client()
    if logged_in:
        login(client)
    form_types = ["application/json", "application/x-www-form-urlencoded"]
    server_errors = []
    for path, headers in itertools.product(ALL_PATHS, HOSTILE_HEADERS):
        cases = [("POST", path, {"json": body}) for body in HOSTILE_JSON]
        cases += [
            ("POST", path, {"data": body, "content_type": content_type})
            for body, content_type in itertools.product(HOSTILE_BODIES, form_types)
        ]
        cases.append(("GET", path + "?next=%00%ff&auth_token=%ff", {}))
        for method, url, body in cases:
            response = client.open(url, method=method, headers=headers, **body)
            if response.status_code >= 500:
                server_errors.append((method, url, body, headers))
    assert server_errors == []


def test_login_required_answers_json_with_401(app):
    response = app.test_client().get("/profile", headers={"Accept": "application/json"})
    assert response.status_code == 401
    assert response.json["meta"]["code"] == 401


def test_role_failure_is_json_403_for_api_clients(app):
    client = logged_in_client(app)
    response = client.get("/admin", headers={"Accept": "application/json"})
    assert response.status_code == 403 and response.json["meta"]["code"] == 403


def test_role_failure_goes_through_the_apps_own_403_handler(app):
    app.register_error_handler(403, lambda error: ("custom forbidden page", 403))
    client = logged_in_client(app)
    response = client.get("/admin")
    assert response.status_code == 403 and response.text == "custom forbidden page"


@pytest.mark.parametrize(
    "decorator, browser_status",
    [
        (fsl.login_required, 302),
        (auth_token_required, 401),
        (http_auth_required, 401),
        (fsl.auth_required("token", "session"), 302),
        (roles_required("admin"), 302),
        (roles_accepted("admin"), 302),
    ],
)
@pytest.mark.parametrize("accept", ["text/html", "application/json"])
def test_every_decorator_refusal_is_a_response_object(
    app, decorator, browser_status, accept
):
    with app.test_request_context("/", headers={"Accept": accept}):
        answer = decorator(lambda: "never")()
    assert isinstance(answer, Response)
    assert answer.status_code == (browser_status if accept == "text/html" else 401)


def test_role_refusal_of_a_logged_in_user_is_a_response_object(app):
    add_user(app)
    with app.test_request_context("/"):
        fsl.login_user(get_user(app))
        answer = roles_required("admin")(lambda: "never")()
    assert isinstance(answer, Response) and answer.status_code == 403


def test_missing_token_is_401_json_for_api_clients(app):
    response = app.test_client().get("/token", headers={"Accept": "application/json"})
    assert response.status_code == 401
    assert response.json["meta"]["code"] == 401


def test_missing_token_is_an_html_401_for_browsers(app):
    response = app.test_client().get("/token", headers={"Accept": "text/html"})
    assert response.status_code == 401
    assert "<h1>Unauthorized</h1>" in response.text
    assert "WWW-Authenticate" not in response.headers


def test_basic_auth_failure_is_json_for_api_clients(app):
    response = app.test_client().get("/basic", headers={"Accept": "application/json"})
    assert response.status_code == 401
    assert response.json["meta"]["code"] == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="Login Required"'


def test_basic_auth_failure_is_an_html_page_for_browsers(app):
    response = app.test_client().get("/basic", headers={"Accept": "text/html"})
    assert response.status_code == 401
    assert response.mimetype == "text/html"
    assert "<h1>Unauthorized</h1>" in response.text


def test_basic_auth_realm_quotes_are_escaped(app):
    @app.route("/quoted-realm")
    @http_auth_required('Say "hi"')
    def quoted_realm():
        return "never"

    response = app.test_client().get("/quoted-realm")
    assert response.headers["WWW-Authenticate"] == 'Basic realm="Say \\"hi\\""'


# =============================================================================
# 5. Answers: the request body, and the login view (every store)
# =============================================================================


def test_login_page_renders_a_form_with_csrf_token(make_app):
    app = make_app(WTF_CSRF_ENABLED=True)
    response = app.test_client().get("/login")
    assert response.status_code == 200
    assert b'name="csrf_token"' in response.data
    assert b'name="email"' in response.data
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/login", "/register", "/reset", "/confirm"])
def test_json_get_of_a_form_view_answers_the_csrf_token(make_app, path):
    app = make_app(
        WTF_CSRF_ENABLED=True,
        SECURITY_REGISTERABLE=True,
        SECURITY_RECOVERABLE=True,
        SECURITY_CHANGEABLE=True,
        SECURITY_CONFIRMABLE=True,
    )
    add_user(app, confirmed_at=datetime(2020, 1, 1))
    client = app.test_client()
    answer = client.get(path, headers={"Accept": "application/json"})
    assert answer.status_code == 200
    csrf_token = answer.json["response"]["csrf_token"]
    credentials = {"email": "matt@lp.com", "password": PASSWORD}
    logged_in = client.post(
        "/login", json=credentials, headers={"X-CSRFToken": csrf_token}
    )
    assert logged_in.status_code == 200


def test_json_get_of_change_by_token_needs_no_csrf_token(make_app):
    app = make_app(WTF_CSRF_ENABLED=True, SECURITY_CHANGEABLE=True)
    add_user(app)
    with app.test_request_context():
        token = get_user(app).get_auth_token()
    headers = {"Accept": "application/json", "Authentication-Token": token}
    answer = app.test_client().get("/change", headers=headers)
    assert answer.json == {"meta": {"code": 200}, "response": {}}


def test_csrf_header_names_come_from_flask_wtf_settings(make_app):
    app = make_app(WTF_CSRF_ENABLED=True, WTF_CSRF_HEADERS=["X-My-Csrf"])
    add_user(app)
    client = app.test_client()
    token = client.get("/login", headers={"Accept": "application/json"}).json
    token = token["response"]["csrf_token"]
    payload = {"email": "matt@lp.com", "password": PASSWORD}
    refused = client.post("/login", json=payload, headers={"X-CSRFToken": token})
    assert refused.status_code == 400
    accepted = client.post("/login", json=payload, headers={"X-My-Csrf": token})
    assert accepted.status_code == 200


def test_html_login_redirects_to_post_login_view(store, make_app):
    app = make_app(store)
    add_user(app)
    client = app.test_client()
    response = login(client)
    assert response.status_code == 302 and response.location == "/"
    assert client.get("/profile").data == b"profile of matt@lp.com"


def test_json_login_returns_id_and_token(store, make_app):
    app = make_app(store)
    user_id = add_user(app)
    response = json_login(app.test_client())
    assert response.status_code == 200
    assert response.json["meta"] == {"code": 200}
    user = response.json["response"]["user"]
    assert user["id"] == user_id and user["authentication_token"]


@pytest.mark.parametrize(
    "fields, field, message",
    [
        (
            {"email": "nobody@lp.com", "password": PASSWORD},
            "email",
            "No account matches",
        ),
        ({"email": "matt@lp.com", "password": "wrong password"}, "password", "wrong"),
        ({"email": "", "password": PASSWORD}, "email", "enter your email"),
        ({"email": "matt@lp.com"}, "password", "enter your password"),
    ],
)
def test_json_login_errors_are_400_with_field_errors(
    store, make_app, fields, field, message
):
    app = make_app(store)
    add_user(app)
    response = app.test_client().post("/login", json=fields)
    assert response.status_code == 400
    assert response.json["meta"] == {"code": 400}
    assert message in response.json["response"]["errors"][field][0]


def test_login_of_inactive_user_is_refused(store, make_app):
    app = make_app(store)
    add_user(app, active=False)
    response = json_login(app.test_client())
    assert response.json["response"]["errors"]["email"] == ["This account is disabled."]


def test_login_of_user_without_password_is_refused(make_app):
    app = make_app()
    add_user(app, password=None)
    response = json_login(app.test_client())
    assert response.json["response"]["errors"]["password"] == [
        "This account has no password set."
    ]


def test_html_login_error_is_shown_on_the_form(app):
    response = login(app.test_client(), email="nobody@lp.com")
    assert response.status_code == 200
    assert b"No account matches this email address." in response.data


def test_generic_responses_hide_which_part_was_wrong(make_app):
    app = make_app(SECURITY_RETURN_GENERIC_RESPONSES=True)
    add_user(app)
    client = app.test_client()
    unknown = json_login(client, email="nobody@lp.com").json["response"]["errors"]
    wrong = json_login(client, password="wrong password").json["response"]["errors"]
    assert unknown == wrong == {"password": ["The email address or password is wrong."]}


@pytest.mark.parametrize(
    "body",
    [b"[1, 2]", b'"text"', b"{not json", b"\xff\xfe\x00garbage"],
)
def test_malformed_json_body_is_a_400(app, body):
    response = app.test_client().post(
        "/login", data=body, content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json["meta"]["code"] == 400


def test_wrongly_typed_json_field_is_a_400_field_error(app):
    response = app.test_client().post(
        "/login", json={"email": ["a", "b"], "password": {"x": 1}}
    )
    assert response.status_code == 400
    assert set(response.json["response"]["errors"]) == {"email", "password"}


def test_huge_body_is_refused_with_413(app):
    response = app.test_client().post(
        "/login", json={"email": "a" * 100_000, "password": "x"}
    )
    assert response.status_code == 413


def test_non_utf8_form_body_is_a_form_error_not_a_500(app):
    response = app.test_client().post(
        "/login",
        data=b"email=%ff%fe&password=%ff",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200


def test_json_login_needs_csrf_token_when_csrf_is_on(make_app):
    app = make_app(WTF_CSRF_ENABLED=True)
    add_user(app)
    response = json_login(app.test_client())
    assert response.status_code == 400
    assert "csrf_token" in response.json["response"]["errors"]


def test_json_login_accepts_csrf_token_in_header(make_app):
    app = make_app(WTF_CSRF_ENABLED=True)
    add_user(app)
    client = app.test_client()
    page = client.get("/login").data.decode()
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    response = client.post(
        "/login",
        json={"email": "matt@lp.com", "password": PASSWORD},
        headers={"X-CSRFToken": token},
    )
    assert response.status_code == 200


def test_json_login_answers_the_csrf_token_of_the_new_session(make_app):
    app = make_app(WTF_CSRF_ENABLED=True, SECURITY_CHANGEABLE=True)
    add_user(app)
    client = app.test_client()
    first = client.get("/login", headers={"Accept": "application/json"})
    old_token = first.json["response"]["csrf_token"]
    login = client.post(
        "/login",
        json={"email": "matt@lp.com", "password": PASSWORD},
        headers={"X-CSRFToken": old_token},
    )
    new_token = login.json["response"]["csrf_token"]
    change = {
        "password": PASSWORD,
        "new_password": "a brand new password",
        "new_password_confirm": "a brand new password",
    }
    refused = client.post("/change", json=change, headers={"X-CSRFToken": old_token})
    assert refused.status_code == 400
    changed = client.post("/change", json=change, headers={"X-CSRFToken": new_token})
    assert changed.status_code == 200


def test_default_remember_me_checks_the_box(make_app):
    app = make_app(SECURITY_DEFAULT_REMEMBER_ME=True)
    page = app.test_client().get("/login").get_data(as_text=True)
    assert re.search(r'<input checked[^>]*name="remember"', page)


def test_logout_goes_to_post_logout_view(make_app):
    app = make_app(SECURITY_POST_LOGOUT_VIEW="profile")
    assert app.test_client().get("/logout").location == "/profile"


def test_logout_follows_a_safe_next(app):
    response = app.test_client().get("/logout?next=/profile")
    assert response.location == "/profile"


def test_post_login_view_accepts_an_endpoint(make_app):
    app = make_app(SECURITY_POST_LOGIN_VIEW="profile")
    add_user(app)
    assert login(app.test_client()).location == "/profile"


def test_logout_methods_setting_limits_logout(make_app):
    app = make_app(SECURITY_LOGOUT_METHODS=["POST"])
    assert app.test_client().get("/logout").status_code == 405


def test_blueprint_name_prefix_and_subdomain(make_app):
    app = make_app(
        SECURITY_BLUEPRINT_NAME="auth",
        SECURITY_URL_PREFIX="/account",
        SERVER_NAME="example.test",
        SECURITY_SUBDOMAIN="id",
    )
    with app.test_request_context():
        assert fsl.url_for_security("login", _external=True) == (
            "http://id.example.test/account/login"
        )
    (rule,) = [r for r in app.url_map.iter_rules() if r.endpoint == "auth.login"]
    assert (rule.rule, rule.subdomain) == ("/account/login", "id")


def test_register_blueprint_false_adds_no_views(make_app):
    app = make_app(security_kwargs={"register_blueprint": False})
    assert app.test_client().get("/login").status_code == 404


def test_without_the_blueprint_emails_still_render(make_app):
    app = make_app(security_kwargs={"register_blueprint": False})
    add_user(app)
    with app.test_request_context(), app.mail.record_messages() as outbox:
        user = app.datastore.find_user(email="matt@lp.com")
        fsl.send_mail("Hi", "matt@lp.com", "reset_notice", user=user)
    assert "matt@lp.com" in outbox[0].body


def test_without_the_blueprint_login_required_answers_401(make_app):
    app = make_app(security_kwargs={"register_blueprint": False})
    assert app.test_client().get("/profile").status_code == 401


def test_login_form_override_and_context_processors(make_app, tmp_path):
    (tmp_path / "security").mkdir()
    (tmp_path / "security" / "login_user.html").write_text(
        "{{ hello }} {{ only_login }} {{ login_user_form.__class__.__name__ }}"
    )

    class MyLoginForm(fsl.LoginForm):
        pass

    app = make_app(
        template_folder=str(tmp_path), security_kwargs={"login_form": MyLoginForm}
    )
    app.security.context_processor(lambda: {"hello": "world"})
    app.security.login_context_processor(lambda: {"only_login": "yes"})
    assert app.test_client().get("/login").data == b"world yes MyLoginForm"


def test_login_template_setting_overrides_the_template(make_app, tmp_path):
    (tmp_path / "mine.html").write_text("my login page")
    app = make_app(
        template_folder=str(tmp_path), SECURITY_LOGIN_USER_TEMPLATE="mine.html"
    )
    assert app.test_client().get("/login").data == b"my login page"


def test_authenticated_get_of_login_goes_to_post_login_view(app):
    client = logged_in_client(app)
    assert client.get("/login").location == "/"


def test_login_post_by_a_logged_in_user_goes_to_post_login_view(app):
    add_user(app)
    add_user(app, "other@lp.com")
    client = app.test_client()
    login(client)
    response = login(client, "other@lp.com")
    assert response.status_code == 302 and response.location == "/"
    assert client.get("/profile").data == b"profile of matt@lp.com"


# =============================================================================
# 5. Answers: templates and per-view context processors
# =============================================================================


ALL_FLOWS = dict(
    SECURITY_REGISTERABLE=True,
    SECURITY_CONFIRMABLE=True,
    SECURITY_RECOVERABLE=True,
    SECURITY_CHANGEABLE=True,
)


VIEW_TEMPLATES = [
    # path, template setting, per-view processor, form variable, extra config
    ("/login", "LOGIN_USER", "login", "login_user_form", {}),
    ("/register", "REGISTER_USER", "register", "register_user_form", {}),
    ("/reset", "FORGOT_PASSWORD", "forgot_password", "forgot_password_form", {}),
    (
        "/confirm",
        "SEND_CONFIRMATION",
        "send_confirmation",
        "send_confirmation_form",
        {},
    ),
    ("/change", "CHANGE_PASSWORD", "change_password", "change_password_form", {}),
    ("/login", "SEND_LOGIN", "send_login", "send_login_form", PASSWORDLESS),
    ("RESET_LINK", "RESET_PASSWORD", "reset_password", "reset_password_form", {}),
]


@pytest.mark.parametrize("path, setting, processor, form_name, extra", VIEW_TEMPLATES)
def test_template_setting_and_view_context_processor_reach_each_view(
    make_app, tmp_path, path, setting, processor, form_name, extra
):
    (tmp_path / "custom.html").write_text(
        "[{{ everywhere }} {{ here }} {{ " + form_name + ".__class__.__name__ }}]"
    )
    config = {f"SECURITY_{setting}_TEMPLATE": "custom.html", **ALL_FLOWS, **extra}
    app = make_app(template_folder=str(tmp_path), **config)
    app.security.context_processor(lambda: {"everywhere": "all"})
    getattr(app.security, f"{processor}_context_processor")(lambda: {"here": "mine"})
    add_user(app, confirmed_at=datetime.now())
    client = app.test_client()
    if path == "/change":
        login(client)
    if path == "RESET_LINK":
        path = _reset_link(app)
    page = client.get(path).get_data(as_text=True)
    assert page.startswith("[all mine ") and page.endswith("Form]")


def test_view_context_processor_stays_out_of_other_views(make_app, tmp_path):
    (tmp_path / "security").mkdir()
    (tmp_path / "security" / "forgot_password.html").write_text("[{{ here }}]")
    app = make_app(template_folder=str(tmp_path), **ALL_FLOWS)
    app.security.login_context_processor(lambda: {"here": "login only"})
    assert app.test_client().get("/reset").data == b"[]"


def test_every_default_template_renders(make_app):
    app = make_app(**ALL_FLOWS)
    add_user(app, confirmed_at=datetime.now())
    client = app.test_client()
    for path in ("/login", "/register", "/reset", "/confirm"):
        page = client.get(path)
        assert page.status_code == 200 and b"<form" in page.data, path
    login(client)
    assert b"<form" in client.get("/change").data


def _default_pages(make_app, **config):
    """Every default page, by its heading's view: path -> HTML."""
    app = make_app(**ALL_FLOWS, **config)
    add_user(app, confirmed_at=datetime.now())
    client = app.test_client()
    pages = {
        path: client.get(path).get_data(as_text=True)
        for path in ("/login", "/register", "/reset", "/confirm", _reset_link(app))
    }
    login(client)
    pages["/change"] = client.get("/change").get_data(as_text=True)
    passwordless = make_app(**ALL_FLOWS, **PASSWORDLESS)
    pages["passwordless"] = passwordless.test_client().get("/login").get_data(True)
    return pages


class _Tags(HTMLParser):
    """The attributes of every tag named ``name`` in a page."""

    def __init__(self, page, name):
        super().__init__()
        self.name, self.found = name, []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == self.name:
            self.found.append(dict(attrs))


def _visible_inputs(page):
    return [
        attrs
        for attrs in _Tags(page, "input").found
        if attrs.get("type") not in ("hidden", "submit", "checkbox")
    ]


@pytest.mark.parametrize(
    "view, heading",
    [
        ("/login", "Login"),
        ("/register", "Register"),
        ("/reset", "Send password reset instructions"),
        ("/reset/<token>", "Reset password"),
        ("/change", "Change password"),
        ("/confirm", "Resend confirmation instructions"),
        ("passwordless", "Login"),
    ],
)
def test_default_pages_keep_the_headings_of_174(make_app, view, heading):
    pages = _default_pages(make_app)
    if view == "/reset/<token>":
        (view,) = [path for path in pages if path.startswith("/reset/")]
    assert f"<h1>{heading}</h1>" in pages[view]


def test_every_visible_input_of_the_default_pages_has_autocomplete(make_app):
    for path, page in _default_pages(make_app).items():
        inputs = _visible_inputs(page)
        assert inputs, path
        for attrs in inputs:
            assert attrs.get("autocomplete"), (path, attrs)


def test_password_fields_tell_current_from_new(make_app):
    pages = _default_pages(make_app)
    reset_path = next(path for path in pages if path.startswith("/reset/"))

    def autocomplete(path):
        return {a["name"]: a["autocomplete"] for a in _visible_inputs(pages[path])}

    assert autocomplete("/login")["password"] == "current-password"
    assert autocomplete("/change") == {
        "password": "current-password",
        "new_password": "new-password",
        "new_password_confirm": "new-password",
    }
    assert autocomplete("/register")["password"] == "new-password"
    assert autocomplete(reset_path) == {
        "password": "new-password",
        "password_confirm": "new-password",
    }


def test_change_password_form_labels_the_current_password(make_app):
    page = _default_pages(make_app)["/change"]
    assert '<label for="password">Current password</label>' in page
    assert '<label for="new_password">New password</label>' in page


def test_email_fields_are_email_inputs(make_app):
    pages = _default_pages(make_app)
    for path in ("/login", "/register", "/reset", "/confirm", "passwordless"):
        (email,) = [a for a in _visible_inputs(pages[path]) if a["name"] == "email"]
        assert email["type"] == "email", path


def test_login_identifier_is_a_text_input_when_usernames_may_log_in(make_app):
    app = make_app(SECURITY_USER_IDENTITY_ATTRIBUTES=["email", "username"])
    page = app.test_client().get("/login").get_data(as_text=True)
    (email,) = [a for a in _visible_inputs(page) if a["name"] == "email"]
    assert email["type"] == "text" and email["autocomplete"] == "username"


def test_a_field_in_error_points_to_its_errors(app):
    add_user(app)
    page = login(app.test_client(), password="wrong password").get_data(True)
    (password,) = [a for a in _visible_inputs(page) if a["name"] == "password"]
    assert password["aria-invalid"] == "true"
    errors = [a for a in _Tags(page, "ul").found if a.get("class") == "errors"]
    assert errors == [{"class": "errors", "id": password["aria-describedby"]}]
    (email,) = [a for a in _visible_inputs(page) if a["name"] == "email"]
    assert "aria-invalid" not in email and "aria-describedby" not in email


def test_flashed_errors_are_alerts_and_other_messages_status(make_app):
    app = make_app(**ALL_FLOWS)
    client = app.test_client()
    client.get("/profile")  # flashes "please log in" (info)
    page = client.get("/login").get_data(as_text=True)
    assert [a["role"] for a in _Tags(page, "div").found if "role" in a] == ["status"]
    client.get("/confirm/not-a-token")  # flashes an error
    page = client.get("/confirm").get_data(as_text=True)
    assert [a["role"] for a in _Tags(page, "div").found if "role" in a] == ["alert"]


def test_menu_names_the_current_page_without_linking_to_it(make_app):
    app = make_app(**ALL_FLOWS)
    page = app.test_client().get("/register").get_data(as_text=True)
    menu = page.split('<nav class="security-menu"', 1)[1]
    assert '<span aria-current="page">Register</span>' in menu
    links = [a["href"] for a in _Tags(menu, "a").found]
    assert links == ["/login", "/reset", "/confirm"]


@pytest.mark.parametrize(
    "module_folder, our_templates",
    [
        ("", "flask_security_lite_templates"),  # vendored at the project root
        ("vendor", "templates"),  # vendored in a folder of its own
        ("vendor", "flask_security_lite_templates"),
    ],
)
def test_an_app_page_overrides_ours_in_each_vendored_layout(
    make_app, tmp_path, monkeypatch, module_folder, our_templates
):
    module = tmp_path / module_folder / "flask_security_lite.py"
    shutil.copytree(HERE / "templates", module.parent / our_templates)
    register = module.parent / our_templates / "security" / "register_user.html"
    register.write_text(register.read_text().replace("Register</h1>", "Vendored</h1>"))
    monkeypatch.setattr(fsl, "__file__", str(module))
    app_templates = tmp_path / "templates"  # the app's, at the project root
    (app_templates / "security").mkdir(parents=True)
    (app_templates / "security" / "login_user.html").write_text("<h1>Ours now</h1>")
    app = make_app(template_folder=str(app_templates), **ALL_FLOWS)
    client = app.test_client()
    assert client.get("/login").data == b"<h1>Ours now</h1>"
    assert b"<h1>Vendored</h1>" in client.get("/register").data


def test_an_app_folder_with_a_few_overrides_is_not_taken_for_ours(
    make_app, tmp_path, monkeypatch
):
    (tmp_path / "templates" / "security").mkdir(parents=True)
    (tmp_path / "templates" / "security" / "login_user.html").write_text("mine")
    monkeypatch.setattr(fsl, "__file__", str(tmp_path / "flask_security_lite.py"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError) as error:
        make_app()
    expected = tmp_path / "flask_security_lite_templates"
    assert f"copy the 'templates' folder of the distribution to {expected}" in str(
        error.value
    )


def test_a_174_style_page_imports_our_macros_and_includes(make_app, tmp_path):
    """1.7.4 apps copy a page into templates/security/ and keep its imports."""
    (tmp_path / "security").mkdir()
    (tmp_path / "security" / "login_user.html").write_text(
        '{% from "security/_macros.html" import render_field_with_errors, '
        "render_field %}"
        '{% include "security/_messages.html" %}'
        "<h1>Our own login</h1><form>{{ login_user_form.hidden_tag() }}"
        "{{ render_field_with_errors(login_user_form.email) }}"
        "{{ render_field_with_errors(login_user_form.password) }}"
        "{{ render_field(login_user_form.submit) }}</form>"
        '{% include "security/_menu.html" %}'
    )
    app = make_app(template_folder=str(tmp_path), **ALL_FLOWS)
    page = login(app.test_client(), password="wrong").get_data(as_text=True)
    assert "<h1>Our own login</h1>" in page
    assert 'aria-invalid="true"' in page and 'class="errors"' in page
    assert '<span aria-current="page">Log in</span>' in page
    assert 'href="/register"' in page


#: Field names the views read, and a few they do not.
FUZZ_FIELDS = ["email", "password", "password_confirm", "new_password"]


FUZZ_FIELDS += ["new_password_confirm", "remember", "next", "auth_token", "csrf_token"]


FUZZ_FIELDS += ["username", "id", "__proto__"]


#: Statuses a view may answer; anything else (a 5xx above all) is a bug.
FUZZ_STATUSES = {200, 302, 303, 400, 401, 403, 404, 413}


def _fuzz_strategies():
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text()
        | st.sampled_from(["", "\x00", "x" * 5000, "\ud800", "matt@lp.com", PASSWORD])
    )
    values = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=8,
    )
    keys = st.sampled_from(FUZZ_FIELDS) | st.text(max_size=10)
    json_bodies = st.dictionaries(keys, values, max_size=6) | values
    raw = st.binary(max_size=40) | st.sampled_from([b"\xff\xfe", b"\x00", b"%"])
    form_bodies = st.dictionaries(keys.map(str.encode) | raw, raw, max_size=6)
    return json_bodies, form_bodies


def _nested(depth):
    return "[" * depth + "]" * depth


#: The two shapes of a site with every feature on: /login takes a password, or
#: sends a link (and then answers alike for every address).
FUZZ_SITES = {
    "password": {},
    "passwordless, generic": dict(
        SECURITY_PASSWORDLESS=True, SECURITY_RETURN_GENERIC_RESPONSES=True
    ),
}


def _fuzz_site(make_app, **extra):
    """Every feature on; a confirmed user; reset and confirm links for the paths."""
    app = make_app(
        **ALL_FLOWS,
        SECURITY_TRACKABLE=True,
        SECURITY_SEND_REGISTER_EMAIL=False,
        SECURITY_LOCKOUT_ATTEMPTS=5,
        **extra,
    )
    add_user(app, confirmed_at=datetime.now())
    add_user(app, email="new@lp.com")
    with app.test_request_context():
        user = app.datastore.find_user(email="matt@lp.com")
        pending = app.datastore.find_user(email="new@lp.com")
        reset = fsl.generate_reset_password_token(user)
        confirm = fsl.generate_confirmation_token(pending)
        login_link = fsl.generate_login_token(user)
    posts = ["/login", "/register", "/reset", f"/reset/{reset}", "/confirm"]
    posts += ["/change", "/logout", "/token"]
    gets = [f"/confirm/{confirm}", "/logout", "/token", "/basic", "/any"]
    if app.config["SECURITY_PASSWORDLESS"]:
        gets.append(f"/login/{login_link}")
    return app, [("POST", path) for path in posts] + [("GET", path) for path in gets]


def _fuzz_request(client, method, path, body):
    """Send ``body`` as a form (a dict of bytes), raw JSON text, or JSON; a GET
    carries it in the query string instead."""
    from urllib.parse import quote_from_bytes

    if isinstance(body, dict) and all(isinstance(k, bytes) for k in body):
        data = b"&".join(
            quote_from_bytes(k).encode() + b"=" + quote_from_bytes(v).encode()
            for k, v in body.items()
        )
        if method == "GET":
            return client.get(path + "?" + data.decode())
        form = "application/x-www-form-urlencoded"
        return client.post(path, data=data, content_type=form)
    if method == "GET":
        # Bytes: a lone surrogate cannot be UTF-8 encoded, but a client can send
        # the bytes such an encoding would give.
        query = str(body)[:2000].encode("utf-8", "surrogatepass")
        return client.get(path, query_string={"next": query})
    if isinstance(body, str) and body.startswith("["):
        return client.post(path, data=body, content_type="application/json")
    return client.post(path, json=body)


def _user_rows(app):
    with app.test_request_context():
        model = app.datastore.user_model
        return [(u.email, u.password) for u in app.datastore.db.session.query(model)]


def test_app_templates_see_url_for_security_and_security(make_app, tmp_path):
    (tmp_path / "home.html").write_text(
        "{{ url_for_security('login') }} {{ security.registerable }}"
    )
    app = make_app(template_folder=str(tmp_path), SECURITY_REGISTERABLE=True)

    @app.route("/home")
    def home():
        return flask.render_template("home.html")

    assert app.test_client().get("/home").data == b"/login True"


def test_views_render_through_security_render_template(app):
    rendered = []

    def render_template(template, **context):
        rendered.append(template)
        return f"rendered {template} with {sorted(context)[0]}"

    app.security.render_template = render_template
    page = app.test_client().get("/login").get_data(as_text=True)
    assert rendered == ["security/login_user.html"]
    assert page.startswith("rendered security/login_user.html")


def test_a_replacement_render_template_is_given_the_security_state(app):
    seen = []

    def render_template(template, **context):
        seen.append(context["security"])
        return "rendered"

    app.security.render_template = render_template
    app.test_client().get("/login")
    assert seen == [app.extensions["security"]]


def test_a_switch_turned_on_after_init_links_no_missing_view(app):
    app.config["SECURITY_REGISTERABLE"] = True
    page = app.test_client().get("/login")
    assert page.status_code == 200 and 'href="/register"' not in page.text


# =============================================================================
# 6. Authentication: checking a password login, and the lockout
# =============================================================================


def _lockout_site(make_app, store="sqlite", **extra):
    app = make_app(store, **LOCKOUT, **CHANGE, **extra)
    add_user(app)
    return app


def _fail_logins(app, count, email="matt@lp.com"):
    for _ in range(count):
        assert json_login(app.test_client(), email, "wrong password").status_code == 400


def test_lockout_is_off_by_default(app):
    add_user(app)
    _fail_logins(app, 20)
    assert json_login(app.test_client()).status_code == 200


def test_failed_logins_lock_the_account_even_for_the_right_password(store, make_app):
    app = _lockout_site(make_app, store)
    _fail_logins(app, 3)
    assert get_user(app).failed_login_count == 3
    response = json_login(app.test_client())
    assert response.status_code == 400
    assert "locked" in response.json["response"]["errors"]["email"][0]


def test_html_login_of_a_locked_account_says_it_is_locked(make_app):
    app = _lockout_site(make_app)
    _fail_logins(app, 3)
    assert b"locked" in login(app.test_client()).data


def test_lock_ends_after_lockout_within(make_app, monkeypatch):
    app = _lockout_site(make_app)
    _fail_logins(app, 3)
    later = fsl._now() + fsl.timedelta(minutes=16)
    monkeypatch.setattr(fsl, "_now", lambda: later)
    assert json_login(app.test_client()).status_code == 200
    assert get_user(app).failed_login_count == 0


def test_a_successful_login_clears_the_count(make_app):
    app = _lockout_site(make_app)
    _fail_logins(app, 2)
    assert json_login(app.test_client()).status_code == 200
    _fail_logins(app, 2)
    assert json_login(app.test_client()).status_code == 200


def test_a_password_reset_clears_the_lock(make_app):
    app = _lockout_site(make_app, **RECOVER)
    _fail_logins(app, 3)
    assert get_user(app).locked_until is not None
    assert json_login(app.test_client()).status_code == 400  # locked
    link = _reset_link(app)
    new = {"password": "new password", "password_confirm": "new password"}
    assert app.test_client().post(link, json=new).status_code == 200
    assert get_user(app).locked_until is None
    assert json_login(app.test_client(), password="new password").status_code == 200


def test_basic_auth_failures_count_and_a_locked_account_gets_401(make_app):
    app = _lockout_site(make_app)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/basic", headers=_basic(password="wrong")).status_code == 401
    assert get_user(app).failed_login_count == 3
    assert client.get("/basic", headers=_basic()).status_code == 401


def test_a_wrong_current_password_on_change_counts(make_app):
    app = _lockout_site(make_app)
    client = app.test_client()
    login(client)
    wrong = {"password": "wrong password", "new_password": "new password"}
    wrong["new_password_confirm"] = "new password"
    for _ in range(3):
        assert client.post("/change", json=wrong).status_code == 400
    assert get_user(app).failed_login_count == 3
    assert json_login(app.test_client()).status_code == 400


def test_a_locked_account_costs_one_password_check_like_a_wrong_password(make_app):
    app = _lockout_site(make_app)
    _fail_logins(app, 3)
    context = app.extensions["security"].pwd_context
    checked = []
    verify = context.verify
    context.verify = lambda secret, hashed: (
        checked.append(hashed) or verify(secret, hashed)
    )
    json_login(app.test_client())
    assert len(checked) == 1


def test_with_generic_responses_a_locked_account_answers_as_a_wrong_password(
    make_app,
):
    app = _lockout_site(make_app, SECURITY_RETURN_GENERIC_RESPONSES=True)
    add_user(app, email="other@lp.com")
    _fail_logins(app, 3)
    locked = json_login(app.test_client())
    wrong = json_login(app.test_client(), "other@lp.com", "wrong password")
    assert locked.status_code == wrong.status_code == 400
    assert locked.json == wrong.json


def test_login_failed_signal_names_the_reason_but_never_the_password(make_app):
    app = _lockout_site(make_app)
    add_user(app, email="off@lp.com", active=False)
    failures = []
    fsl.login_failed.connect(lambda sender, **kw: failures.append(kw), app, weak=False)
    json_login(app.test_client(), "nobody@lp.com", "secret one")
    _fail_logins(app, 3)
    json_login(app.test_client())
    json_login(app.test_client(), "off@lp.com")
    reasons = [failure["reason"] for failure in failures]
    assert reasons == ["unknown_user"] + ["invalid_password"] * 3 + ["locked"] + [
        "disabled"
    ]
    assert failures[0]["user"] is None and failures[0]["identifier"] == "nobody@lp.com"
    assert failures[1]["user"].email == "matt@lp.com"
    assert all(failure["remote_addr"] == "127.0.0.1" for failure in failures)
    assert "secret one" not in str(failures) and PASSWORD not in str(failures)


def test_cli_unlock_clears_the_lock(make_app):
    app = _lockout_site(make_app)
    _fail_logins(app, 3)
    assert json_login(app.test_client()).status_code == 400
    result = _cli(app, "users", "unlock", "MATT@lp.com")
    assert result.exit_code == 0 and "unlocked" in result.output
    assert json_login(app.test_client()).status_code == 200
    assert _cli(app, "users", "unlock", "nobody@lp.com").exit_code != 0


def test_lockout_needs_its_fields_on_the_user_model(make_app):
    from flask_sqlalchemy import SQLAlchemy

    with pytest.raises(RuntimeError, match="failed_login_count"):
        app = Flask(__name__)
        app.config.update(
            SECRET_KEY="x", SQLALCHEMY_DATABASE_URI="sqlite://", **LOCKOUT
        )
        db = SQLAlchemy(app)

        class User(db.Model, fsl.UserMixin):
            id = db.Column(db.Integer, primary_key=True)
            email = db.Column(db.String(255), unique=True)
            password = db.Column(db.String(255))
            active = db.Column(db.Boolean())

        class Role(db.Model, fsl.RoleMixin):
            id = db.Column(db.Integer, primary_key=True)
            name = db.Column(db.String(80), unique=True)

        Security(app, fsl.SQLAlchemyUserDatastore(db, User, Role))


def test_per_ip_limit_with_flask_limiter_recipe_works(make_app):
    """The Flask-Limiter recipe of the production checklist, as written."""
    app = make_app()
    add_user(app)
    recipe = _doc_program("docs/security.md", "Per-address limits with Flask-Limiter")
    namespace = {"app": app}
    exec(recipe, namespace)
    client = app.test_client()
    statuses = [json_login(client, password="wrong").status_code for _ in range(12)]
    assert 429 in statuses and statuses[0] == 400
    assert client.get("/").status_code == 200


# =============================================================================
# 6. Authentication and decorators
# =============================================================================


def test_login_required_redirects_html_to_login_with_next(app):
    response = app.test_client().get("/profile?tab=2")
    assert response.status_code == 302
    assert response.location == "/login?next=/profile?tab%3D2"


def test_login_required_lets_cors_preflight_through(app):
    @app.route(
        "/preflight", methods=["GET", "OPTIONS"], provide_automatic_options=False
    )
    @login_required
    def preflight():
        return "preflight"

    assert app.test_client().options("/preflight").data == b"preflight"
    assert app.test_client().get("/preflight").status_code == 302


@pytest.mark.parametrize(
    "roles, path, status",
    [
        (["admin"], "/admin", 200),
        (["editor"], "/admin", 403),
        (["admin"], "/admin-and-editor", 403),
        (["admin", "editor"], "/admin-and-editor", 200),
        (["editor"], "/admin-or-editor", 200),
        ([], "/admin-or-editor", 403),
    ],
)
def test_role_decorators(store, make_app, roles, path, status):
    app = make_app(store)
    client = logged_in_client(app, roles=roles)
    assert client.get(path).status_code == status


def test_role_decorator_sends_anonymous_users_to_login(app):
    response = app.test_client().get("/admin")
    assert response.status_code == 302 and response.location.startswith("/login?next=")


def test_role_failure_redirects_to_unauthorized_view_when_set(make_app):
    app = make_app(SECURITY_UNAUTHORIZED_VIEW="unauthorized")
    client = logged_in_client(app)
    assert client.get("/admin").location == "/unauthorized"


def test_roles_work_for_token_authenticated_users(app):
    add_user(app, roles=["admin"])

    @app.route("/token-admin")
    @auth_token_required
    @roles_required("admin")
    def token_admin():
        return "token admin"

    token = auth_token(app.test_client())
    response = app.test_client().get(
        "/token-admin", headers={"Authentication-Token": token}
    )
    assert response.data == b"token admin"


def test_token_in_header_query_and_json_body(store, make_app):
    app = make_app(store)
    add_user(app)
    token = auth_token(app.test_client())
    client = app.test_client()
    assert (
        client.get("/token", headers={"Authentication-Token": token}).status_code == 200
    )
    assert client.get(f"/token?auth_token={token}").status_code == 200
    assert client.post("/token", json={"auth_token": token}).status_code == 200


def test_token_auth_does_not_create_a_session(app):
    add_user(app)
    token = auth_token(app.test_client())
    client = app.test_client()
    client.get("/token", headers={"Authentication-Token": token})
    assert client.get("/profile").status_code == 302


def test_tampered_token_is_refused(store, make_app):
    app = make_app(store)
    add_user(app)
    token = auth_token(app.test_client())
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for bad in (tampered, "garbage", "a.b.c"):
        response = app.test_client().get(
            "/token", headers={"Authentication-Token": bad}
        )
        assert response.status_code == 401


def test_token_from_another_secret_key_is_refused(make_app):
    first = make_app()
    add_user(first)
    token = auth_token(first.test_client())
    second = make_app(SECRET_KEY="another secret")
    add_user(second)
    response = second.test_client().get(
        "/token", headers={"Authentication-Token": token}
    )
    assert response.status_code == 401


def test_token_expires_after_token_max_age(make_app, clock):
    app = make_app(SECURITY_TOKEN_MAX_AGE=60)
    add_user(app)
    token = auth_token(app.test_client())
    headers = {"Authentication-Token": token}
    assert app.test_client().get("/token", headers=headers).status_code == 200
    clock.advance(seconds=61)
    assert app.test_client().get("/token", headers=headers).status_code == 401


def test_token_without_max_age_keeps_working(app, clock):
    add_user(app)
    token = auth_token(app.test_client())
    clock.advance(days=400)
    response = app.test_client().get("/token", headers={"Authentication-Token": token})
    assert response.status_code == 200


def test_asvs_14_2_1_token_in_the_query_string_can_be_turned_off(make_app):
    app = make_app(SECURITY_TOKEN_IN_QUERY_STRING=False)
    add_user(app)
    token = auth_token(app.test_client())
    assert app.test_client().get(f"/token?auth_token={token}").status_code == 401
    headers = {"Authentication-Token": token}
    assert app.test_client().get("/token", headers=headers).status_code == 200


def test_token_in_the_query_string_works_by_default_as_in_174(app):
    add_user(app)
    token = auth_token(app.test_client())
    assert app.test_client().get(f"/token?auth_token={token}").status_code == 200


def test_custom_token_header_and_key(make_app):
    app = make_app(
        SECURITY_TOKEN_AUTHENTICATION_HEADER="X-Auth",
        SECURITY_TOKEN_AUTHENTICATION_KEY="t",
    )
    add_user(app)
    token = auth_token(app.test_client())
    assert app.test_client().get("/token", headers={"X-Auth": token}).status_code == 200
    assert app.test_client().get(f"/token?t={token}").status_code == 200


def _basic(email="matt@lp.com", password=PASSWORD):
    raw = f"{email}:{password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def test_basic_auth_right_and_wrong(store, make_app):
    app = make_app(store)
    add_user(app)
    client = app.test_client()
    assert client.get("/basic", headers=_basic()).data == b"basic matt@lp.com"
    wrong = client.get("/basic", headers=_basic(password="nope"))
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"] == 'Basic realm="Login Required"'
    assert client.get("/basic", headers=_basic("nobody@lp.com")).status_code == 401
    assert client.get("/basic").status_code == 401


def test_basic_auth_announces_the_given_realm(app):
    response = app.test_client().get("/basic-realm")
    assert response.headers["WWW-Authenticate"] == 'Basic realm="Secret Area"'


def test_auth_required_accepts_any_listed_method(app):
    add_user(app)
    token = auth_token(app.test_client())
    assert (
        app.test_client()
        .get("/any", headers={"Authentication-Token": token})
        .status_code
        == 200
    )
    assert app.test_client().get("/any", headers=_basic()).status_code == 200
    client = app.test_client()
    login(client)
    assert client.get("/any").status_code == 200
    refused = app.test_client().get("/any")
    assert refused.status_code == 401 and "WWW-Authenticate" in refused.headers


def test_auth_required_rejects_unknown_methods():
    with pytest.raises(ValueError):
        auth_required("password")


def test_anonymous_user_required_redirects_logged_in_users(app):
    add_user(app)
    client = app.test_client()
    assert client.get("/anonymous").data == b"anonymous"
    login(client)
    assert client.get("/anonymous").location == "/"


@pytest.mark.parametrize("path", ["session", "remember", "token", "basic"])
def test_inactive_user_is_refused_on_every_path(store, make_app, path):
    app = make_app(store)
    add_user(app)
    client = app.test_client()
    login(client, remember="y")
    token = auth_token(app.test_client())
    remember = client.get_cookie("remember_token").value
    with app.test_request_context():
        app.datastore.deactivate_user(app.datastore.find_user(email="matt@lp.com"))
        app.datastore.commit()
    if path == "session":
        client.delete_cookie("remember_token")
        assert client.get("/profile").status_code == 302
    elif path == "remember":
        fresh = app.test_client()
        fresh.set_cookie("remember_token", remember)
        assert fresh.get("/profile").status_code == 302
    elif path == "token":
        headers = {"Authentication-Token": token}
        assert app.test_client().get("/token", headers=headers).status_code == 401
    else:
        assert app.test_client().get("/basic", headers=_basic()).status_code == 401


def test_asvs_7_4_2_a_reactivated_user_gets_no_old_session_or_token_back(
    store, make_app
):
    app = make_app(store)
    add_user(app)
    client = app.test_client()
    login(client, remember="y")
    headers = {"Authentication-Token": auth_token(app.test_client())}
    remembered = _copy_cookies(client, app, "remember_token")
    with app.test_request_context():
        user = app.datastore.find_user(email="matt@lp.com")
        app.datastore.deactivate_user(user)
        app.datastore.commit()
        app.datastore.activate_user(user)
        app.datastore.commit()
    assert client.get("/profile").status_code == 302
    assert remembered.get("/profile").status_code == 302
    assert app.test_client().get("/token", headers=headers).status_code == 401
    assert json_login(app.test_client()).status_code == 200


def test_current_user_is_loaded_with_one_query(app):
    from sqlalchemy import event

    @app.route("/twice")
    @login_required
    def twice():
        return f"{current_user.email} {current_user.email} {current_user.id}"

    client = logged_in_client(app)

    statements = []
    with app.app_context():
        engine = app.datastore.db.engine
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        assert client.get("/twice").status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert len(statements) == 1


def _statements_of(app, client, path, **kwargs):
    """The SQL statements ``client.get(path)`` runs, after checking it answers 200."""
    from sqlalchemy import event

    statements = []
    with app.app_context():
        engine = app.datastore.db.engine
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        assert client.get(path, **kwargs).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    return statements


@pytest.mark.parametrize("page", ["session", "token", "roles_required"])
def test_protected_pages_run_one_query_roles_included(app, page):
    add_user(app, roles=["admin"])
    client, headers = app.test_client(), {}
    if page == "token":
        headers["Authentication-Token"] = auth_token(app.test_client())
    else:
        login(client)
    path = "/admin" if page == "roles_required" else "/token" if headers else "/profile"
    assert len(_statements_of(app, client, path, headers=headers)) == 1


def test_pages_that_check_no_roles_load_the_user_without_a_join(app):
    client = logged_in_client(app, roles=["admin"])
    (statement,) = _statements_of(app, client, "/profile")
    assert "role" not in statement.lower()


def test_roles_required_under_more_decorators_still_reads_roles_in_the_user_query(
    app,
):
    def logged(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            return view(*args, **kwargs)

        return wrapper

    @app.route("/wrapped-admin")
    @logged
    @login_required
    @roles_required("admin")
    def wrapped_admin():
        return "admin"

    client = logged_in_client(app, roles=["admin"])
    (statement,) = _statements_of(app, client, "/wrapped-admin")
    assert "role" in statement.lower()


def test_a_basic_request_to_a_roles_page_finds_user_and_roles_in_one_query(app):
    @app.route("/basic-admin")
    @http_auth_required
    @roles_required("admin")
    def basic_admin():
        return "admin"

    add_user(app, roles=["admin"])
    client = app.test_client()
    statements = _statements_of(app, client, "/basic-admin", headers=_basic())
    assert len(statements) == 1 and "role" in statements[0].lower()


def test_roles_read_on_a_page_that_checks_none_are_still_the_users(app):
    @app.route("/my-roles")
    @login_required
    def my_roles():
        return ",".join(sorted(role.name for role in current_user.roles))

    client = logged_in_client(app, roles=["admin", "editor"])
    assert client.get("/my-roles").data == b"admin,editor"


def test_a_kept_request_context_still_shows_the_users_roles(app):
    client = logged_in_client(app, roles=["admin"])
    with client:
        client.get("/profile")
        assert [role.name for role in current_user.roles] == ["admin"]


def test_a_user_without_roles_loads_with_one_query_and_has_none(app):
    client = logged_in_client(app)
    assert len(_statements_of(app, client, "/profile")) == 1
    assert client.get("/admin").status_code == 403


def test_the_login_redirect_drops_an_auth_token_from_next(app):
    add_user(app)
    token = auth_token(app.test_client())
    response = app.test_client().get(f"/profile?auth_token={token}&tab=1")
    assert response.status_code == 302
    assert token not in response.location
    assert response.location == "/login?next=/profile?tab%3D1"


def test_a_stale_session_on_a_fresh_login_page_goes_to_login_without_its_token(app):
    from flask_login import fresh_login_required

    @app.route("/fresh")
    @fresh_login_required
    def fresh():
        return "fresh"

    add_user(app)
    token = auth_token(app.test_client())
    client = app.test_client()
    login(client, remember="y")
    remembered = app.test_client()
    remembered.set_cookie("remember_token", client.get_cookie("remember_token").value)
    response = remembered.get(f"/fresh?auth_token={token}&tab=1")
    assert response.location == "/login?next=/fresh?tab%3D1"
    with remembered.session_transaction() as session:
        (message,) = session["_flashes"]
    assert message == ("info", "Please log in again to see this page.")


def test_login_disabled_turns_off_login_required(make_app):
    app = make_app(LOGIN_DISABLED=True)

    @app.route("/open")
    @login_required
    def open_view():
        return "open"

    assert app.test_client().get("/open").data == b"open"


# =============================================================================
# 7. Forms
# =============================================================================


def test_validators_of_174_extend_forms(make_app):
    from wtforms import StringField

    class ContactForm(fsl.Form):
        email = StringField("Email", [fsl.email_required, fsl.email_validator])

    app = make_app()
    with app.test_request_context(method="POST", data={"email": "nope"}):
        form = ContactForm()
        assert not form.validate()
        assert form.email.errors == ["This is not a valid email address."]


def test_validator_given_a_message_key_shows_that_message(make_app):
    from wtforms import StringField

    class ContactForm(fsl.Form):
        email = StringField("Email", [fsl.Required(message="EMAIL_NOT_PROVIDED")])
        code = StringField("Code", [fsl.Length(min=4, message="PASSWORD_NOT_SET")])

    app = make_app(SECURITY_MSG_EMAIL_NOT_PROVIDED=("Your email, please.", "error"))
    with app.test_request_context(method="POST", data={"code": "abc"}):
        form = ContactForm()
        assert not form.validate()
        assert form.email.errors == ["Your email, please."]
        assert form.code.errors == ["This account has no password set."]


def test_validator_given_plain_text_shows_it(make_app):
    from wtforms import StringField

    class ContactForm(fsl.Form):
        email = StringField("Email", [fsl.Required(message="Who are you?")])

    with make_app().test_request_context(method="POST", data={}):
        form = ContactForm()
        assert not form.validate()
        assert form.email.errors == ["Who are you?"]


# =============================================================================
# 7. Forms: passwords too easy to guess
# =============================================================================


#: The settings of the three flows that choose a password, with no mail to send.
CHOOSING = dict(
    **REGISTER,
    **RECOVER,
    **CHANGE,
    SECURITY_SEND_REGISTER_EMAIL=False,
    SECURITY_SEND_PASSWORD_CHANGE_EMAIL=False,
    SECURITY_SEND_PASSWORD_RESET_NOTICE_EMAIL=False,
)

PASSWORD_FLOWS = ["register", "reset", "change"]


def _choose_password(app, flow, password, email="matt@lp.com"):
    """Choose ``password`` by ``flow`` (register, reset, change) as the owner of
    ``email``; return the JSON answer."""
    client = app.test_client()
    if flow == "register":
        return _register(client, email, password)
    add_user(app, email=email)
    if flow == "reset":
        return client.post(_reset_link(app, email), json={"password": password})
    json_login(client, email)
    return client.post("/change", json={"password": PASSWORD, "new_password": password})


def _password_error(answer):
    """The one error of the password field of a refused JSON answer."""
    errors = answer.json["response"]["errors"]
    (error,) = errors.get("password") or errors["new_password"]
    return error


def _shipped_list():
    path = os.path.join(fsl._templates_folder(), fsl._COMMON_PASSWORDS_FILE)
    return fsl._password_list(path)


@pytest.mark.parametrize(
    "password", ["password1 ", " password1", "pass\u200bword1", "password\xa01"]
)
def test_asvs_6_2_4_a_common_password_with_spaces_or_invisible_marks_is_refused(
    make_app, password
):
    app = make_app()
    with app.test_request_context():
        assert fsl._guessable(password, "someone@lp.com") == "PASSWORD_COMMON"


def test_asvs_6_2_11_a_password_holding_a_punycode_domain_as_stored_is_refused(
    make_app,
):
    app = make_app()
    with app.test_request_context():
        refused = fsl._guessable("bücherwurm77", "anna@xn--bcher-kva.de")
    assert refused == "PASSWORD_HOLDS_ADDRESS"


@pytest.mark.parametrize("flow", PASSWORD_FLOWS)
@pytest.mark.parametrize("password", ["password", "12345678", "iloveyou", "Qwerty123"])
def test_asvs_6_2_4_common_password_is_refused(make_app, flow, password):
    answer = _choose_password(make_app(**CHOOSING), flow, password)
    assert answer.status_code == 400
    assert _password_error(answer) == (
        "This password is one of the most common ones: please choose another."
    )


def test_asvs_6_2_4_common_password_is_refused_by_the_command_line(app):
    result = _cli(app, "users", "create", "cli@lp.com", "--password", "iloveyou")
    assert result.exit_code == 2 and "most common" in result.output
    assert get_user(app, "cli@lp.com") is None


def test_asvs_6_2_4_shipped_list_has_3000_passwords_long_enough_to_choose():
    assert sum(len(password) >= 8 for password in _shipped_list()) >= 3000


def test_shipped_list_is_folded_and_holds_no_comment():
    passwords = _shipped_list()
    assert "password1" in passwords and "qwerty123" in passwords
    assert all(p == fsl._fold(p) and not p.startswith("#") for p in passwords)


def test_password_not_on_the_list_is_accepted(make_app):
    answer = _choose_password(make_app(**CHOOSING), "register", "plum tree in june")
    assert answer.status_code == 200


def test_common_password_list_may_be_another_file(make_app, tmp_path):
    own_list = tmp_path / "list.txt"
    own_list.write_text("# our own\nZebra Crossing\n", encoding="utf-8")
    app = make_app(SECURITY_PASSWORD_COMMON_LIST=str(own_list), **CHOOSING)
    assert _choose_password(app, "register", "zebra crossing").status_code == 400
    assert _choose_password(app, "register", "password", "b@lp.com").status_code == 200


def test_comment_lines_of_a_password_list_are_not_passwords(make_app, tmp_path):
    own_list = tmp_path / "list.txt"
    own_list.write_text("# a list of our own\n", encoding="utf-8")
    app = make_app(SECURITY_PASSWORD_COMMON_LIST=str(own_list), **CHOOSING)
    assert _choose_password(app, "register", "# a list of our own").status_code == 200


def test_common_password_check_can_be_turned_off(make_app):
    app = make_app(SECURITY_PASSWORD_CHECK_COMMON=False, **CHOOSING)
    assert _choose_password(app, "register", "password").status_code == 200


@pytest.mark.parametrize("flow", PASSWORD_FLOWS)
@pytest.mark.parametrize(
    "password",
    ["Rose.Tyler@Tardis.example!", "ROSE.TYLER 2005", "bad wolf tyler", "my tardis"],
)
def test_asvs_6_2_11_password_holding_the_address_is_refused(make_app, flow, password):
    app = make_app(**CHOOSING)
    answer = _choose_password(app, flow, password, "rose.tyler@tardis.example")
    assert answer.status_code == 400
    assert _password_error(answer) == (
        "Your password must not contain your email address or a part of it."
    )


def test_asvs_6_2_11_password_holding_the_address_is_refused_by_the_command_line(app):
    result = _cli(
        app, "users", "create", "rose@tardis.example", "--password", "tardis!!"
    )
    assert result.exit_code == 2 and "email address" in result.output


@pytest.mark.parametrize("password", ["jo and ab unite", "dot com boom", "example, no"])
def test_short_address_parts_and_the_last_domain_label_may_be_in_passwords(
    make_app, password
):
    app = make_app(**CHOOSING)
    answer = _choose_password(app, "register", password, "jo.ab@x.example")
    assert answer.status_code == 200


def test_address_check_can_be_turned_off(make_app):
    app = make_app(SECURITY_PASSWORD_CHECK_ADDRESS=False, **CHOOSING)
    answer = _choose_password(app, "register", "matt's own key", "matt@lp.com")
    assert answer.status_code == 200


def test_too_short_password_gets_that_error_alone(make_app):
    answer = _choose_password(make_app(**CHOOSING), "register", "1234")
    assert _password_error(answer) == "This password is too short."


@pytest.fixture
def range_api(monkeypatch):
    """A breached-password range API on loopback, like the real one: it answers
    ``/range/<five hex digits>`` with the SHA-1 suffixes of ``api.breached`` that
    have that prefix, each with a count, among padding lines of count 0; it
    records what it was asked, and waits ``api.delay`` seconds first."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    api = types.SimpleNamespace(
        breached=[], asked=[], delay=0, status=200, location=None
    )

    class RangeHandler(BaseHTTPRequestHandler):
        def do_GET(self):
            api.asked.append((self.path, dict(self.headers)))
            time.sleep(api.delay)
            prefix = self.path.rsplit("/", 1)[-1]
            lines = [f"{'0' * 35}:0"]
            for password in api.breached:
                digest = hashlib.sha1(password.encode()).hexdigest().upper()
                if digest.startswith(prefix):
                    lines += [f"{digest[5:]}:42", f"{digest[5:-1]}0:0"]
            body = "\r\n".join(lines).encode()
            self.send_response(api.status)
            if api.location:
                self.send_header("Location", api.location)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class RangeServer(ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a client that gave up waiting (the slow case) is no error here

    # Loopback is never sent to a proxy the environment may name.
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    server = RangeServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api.url = f"http://127.0.0.1:{server.server_port}/range/"
    yield api
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _breach_checking_app(make_app, url, **config):
    return make_app(
        SECURITY_PASSWORD_CHECK_BREACHED=True,
        SECURITY_PASSWORD_BREACHED_URL=url,
        **CHOOSING,
        **config,
    )


@pytest.mark.parametrize("flow", PASSWORD_FLOWS)
def test_asvs_6_2_12_breached_password_is_refused(make_app, range_api, flow):
    range_api.breached.append("plum tree in june")
    app = _breach_checking_app(make_app, range_api.url)
    answer = _choose_password(app, flow, "plum tree in june")
    assert answer.status_code == 400
    assert _password_error(answer) == (
        "This password has appeared in a data breach: please choose another."
    )


def test_asvs_6_2_12_the_range_api_is_never_followed_elsewhere(make_app, range_api):
    app = _breach_checking_app(make_app, range_api.url)
    range_api.status, range_api.location = 302, range_api.url + "../elsewhere/"
    with app.test_request_context():
        assert fsl._is_breached("a long unusual password") is False
    assert [path for path, _ in range_api.asked if "elsewhere" in path] == []


def test_asvs_6_2_12_breached_password_is_refused_by_the_command_line(
    make_app, range_api
):
    range_api.breached.append("plum tree in june")
    app = _breach_checking_app(make_app, range_api.url)
    result = _cli(app, "users", "create", "a@lp.com", "--password", "plum tree in june")
    assert result.exit_code == 2 and "data breach" in result.output


def test_range_api_is_sent_five_hex_digits_of_the_sha1_and_asked_for_padding(
    make_app, range_api
):
    app = _breach_checking_app(make_app, range_api.url)
    assert _choose_password(app, "register", "plum tree in june").status_code == 200
    digest = hashlib.sha1(b"plum tree in june").hexdigest().upper()
    ((path, headers),) = range_api.asked
    assert path == "/range/" + digest[:5]
    assert headers["Add-Padding"] == "true"


def test_breached_password_check_is_off_by_default(make_app, range_api):
    range_api.breached.append("plum tree in june")
    app = make_app(SECURITY_PASSWORD_BREACHED_URL=range_api.url, **CHOOSING)
    assert _choose_password(app, "register", "plum tree in june").status_code == 200
    assert range_api.asked == []


def test_common_password_is_refused_without_asking_the_range_api(make_app, range_api):
    app = _breach_checking_app(make_app, range_api.url)
    assert _choose_password(app, "register", "password").status_code == 400
    assert range_api.asked == []


def _closed_port_url():
    return f"http://127.0.0.1:{_free_port()}/range/"


@pytest.mark.parametrize("failure", ["no server", "server error", "too slow"])
def test_range_api_failing_lets_the_password_through_and_warns(
    make_app, range_api, caplog, failure
):
    range_api.breached.append("plum tree in june")
    range_api.status = 500 if failure == "server error" else 200
    range_api.delay = 3 if failure == "too slow" else 0
    url = _closed_port_url() if failure == "no server" else range_api.url
    app = _breach_checking_app(make_app, url, SECURITY_PASSWORD_BREACHED_TIMEOUT=1)
    started = time.monotonic()
    answer = _choose_password(app, "register", "plum tree in june")
    assert answer.status_code == 200
    assert time.monotonic() - started < 2.5
    assert "breached-password check could not ask" in caplog.text


# =============================================================================
# 8. Session login and logout
# =============================================================================


def test_login_starts_a_fresh_session(app):
    add_user(app)
    client = app.test_client()
    with client.session_transaction() as session:
        session["planted"] = "by attacker"
    login(client)
    with client.session_transaction() as session:
        assert "planted" not in session


def test_remember_me_cookie_logs_in_a_new_session(store, make_app):
    app = make_app(store)
    add_user(app)
    client = app.test_client()
    login(client, remember="y")
    cookie = client.get_cookie("remember_token")
    assert cookie is not None
    fresh = app.test_client()
    fresh.set_cookie("remember_token", cookie.value)
    assert fresh.get("/profile").status_code == 200


def test_remember_cookie_is_lax_and_http_only(app):
    add_user(app)
    response = login(app.test_client(), remember="y")
    cookie = next(
        header
        for header in response.headers.getlist("Set-Cookie")
        if header.startswith("remember_token=")
    )
    assert "SameSite=Lax" in cookie and "HttpOnly" in cookie


def test_without_remember_me_no_cookie_is_set(app):
    client = logged_in_client(app)
    assert client.get_cookie("remember_token") is None


def test_default_remember_me_applies_to_login_user(make_app):
    app = make_app(SECURITY_DEFAULT_REMEMBER_ME=True)

    @app.route("/force-login/<user_id>")
    def force_login(user_id):
        fsl.login_user(app.datastore.get_user(user_id))
        return "ok"

    user_id = add_user(app)
    client = app.test_client()
    client.get(f"/force-login/{user_id}")
    assert client.get_cookie("remember_token") is not None


def test_logout_by_get_and_post(app):
    add_user(app)
    for method in ("get", "post"):
        client = app.test_client()
        login(client)
        response = getattr(client, method)("/logout")
        assert response.status_code == 302
        assert client.get("/profile").status_code == 302


def test_logout_forgets_the_remember_cookie(app):
    add_user(app)
    client = app.test_client()
    login(client, remember="y")
    client.get("/logout")
    assert client.get_cookie("remember_token") is None


def test_trackable_records_logins(store, make_app):
    app = make_app(store, SECURITY_TRACKABLE=True)
    add_user(app)
    app.test_client().post(
        "/login",
        data={"email": "matt@lp.com", "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "10.0.0.1"},
    )
    app.test_client().post(
        "/login",
        data={"email": "matt@lp.com", "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "10.0.0.2"},
        headers={"X-Forwarded-For": "6.6.6.6"},
    )
    user = get_user(app)
    assert user.login_count == 2
    assert (user.last_login_ip, user.current_login_ip) == ("10.0.0.1", "10.0.0.2")
    assert user.current_login_at >= user.last_login_at


def test_trackable_records_untrackable_without_a_remote_address(make_app):
    app = make_app(SECURITY_TRACKABLE=True)
    add_user(app)
    app.test_client().post(
        "/login",
        data={"email": "matt@lp.com", "password": PASSWORD},
        environ_overrides={"REMOTE_ADDR": ""},
    )
    assert get_user(app).current_login_ip == "untrackable"


# -- what logout ends (ASVS 7.4.1) ---------------------------------------------


def _copy_cookies(client, app, *names):
    """A new client holding copies of ``client``'s cookies ``names``."""
    copy = app.test_client()
    for name in names:
        copy.set_cookie(name, client.get_cookie(name).value)
    return copy


#: What a browser sends with a request from one of this site's own pages.
SAME_SITE = {"Sec-Fetch-Site": "same-origin"}


def test_asvs_7_4_1_session_cookie_copied_before_logout_is_refused_after(
    store, make_app
):
    app = make_app(store)
    client = logged_in_client(app)
    copy = _copy_cookies(client, app, "session")
    assert copy.get("/profile").status_code == 200
    client.get("/logout", headers=SAME_SITE)
    assert copy.get("/profile").status_code == 302


def test_asvs_7_4_1_remember_cookie_copied_before_logout_is_refused_after(make_app):
    app = make_app()
    add_user(app)
    client = app.test_client()
    login(client, remember="y")
    copy = _copy_cookies(client, app, "remember_token")
    assert copy.get("/profile").status_code == 200
    client.post("/logout")
    assert _copy_cookies(client, app).get("/profile").status_code == 302
    assert copy.get("/profile").status_code == 302


def test_asvs_7_4_1_auth_token_given_before_logout_is_refused_after(make_app):
    app = make_app()
    add_user(app)
    client = app.test_client()
    headers = {"Authentication-Token": auth_token(client)}
    client.get("/logout", headers=SAME_SITE)
    assert app.test_client().get("/token", headers=headers).status_code == 401


def test_asvs_7_4_1_logout_with_an_auth_token_ends_that_token(make_app):
    app = make_app()
    add_user(app)
    headers = {"Authentication-Token": auth_token(app.test_client())}
    app.config["WTF_CSRF_ENABLED"] = True  # a token alone needs no CSRF token
    response = app.test_client().post("/logout", json={}, headers=headers)
    assert response.status_code == 200
    assert app.test_client().get("/token", headers=headers).status_code == 401


def test_asvs_7_4_1_logout_ends_the_users_sessions_on_other_devices_too(make_app):
    app = make_app()
    add_user(app)
    phone, laptop = app.test_client(), app.test_client()
    login(phone, remember="y")
    login(laptop)
    laptop.get("/logout", headers=SAME_SITE)
    assert phone.get("/profile").status_code == 302


def test_asvs_3_5_1_a_logout_link_on_another_site_ends_only_that_browsers_session(
    make_app,
):
    app = make_app()
    add_user(app)
    phone, laptop = app.test_client(), app.test_client()
    login(phone)
    login(laptop)
    token_headers = {"Authentication-Token": auth_token(app.test_client())}
    laptop.get("/logout", headers={"Sec-Fetch-Site": "cross-site"})
    assert laptop.get("/profile").status_code == 302
    assert phone.get("/profile").status_code == 200
    assert app.test_client().get("/token", headers=token_headers).status_code == 200


def test_asvs_3_5_1_a_post_that_brought_no_session_changes_nothing(make_app):
    app = make_app(WTF_CSRF_ENABLED=True)
    add_user(app)
    client = app.test_client()
    csrf_login(client)
    response = app.test_client().post("/logout")  # another site's form: no cookie
    assert "Set-Cookie" not in response.headers
    assert client.get("/profile").status_code == 200


def test_asvs_7_5_2_the_sessions_page_needs_the_password_again(make_app):
    app = make_app()
    client = logged_in_client(app)
    other = app.test_client()
    login(other)
    response = client.post("/sessions", json={"end": "others", "password": "wrong"})
    assert response.status_code == 400
    assert other.get("/profile").status_code == 200


def test_logout_leaves_other_users_logged_in(make_app):
    app = make_app()
    add_user(app)
    add_user(app, email="joe@lp.com")
    matt, joe = app.test_client(), app.test_client()
    login(matt)
    login(joe, email="joe@lp.com")
    matt.get("/logout")
    assert joe.get("/profile").status_code == 200


def app_without_security_stamp(**config):
    """An app on a user model of 1.7.4's fields, without ``security_stamp``."""
    app, datastore = _app_with_user_fields(
        ALWAYS_NEEDED,
        TESTING=True,
        WTF_CSRF_ENABLED=False,
        SECURITY_PASSWORD_HASH_OPTIONS=FAST_HASHING,
        **config,
    )
    Security(app, datastore)
    app.datastore, app.mail = datastore, Mail(app)
    _add_test_views(app)
    with app.app_context():
        datastore.db.create_all()
    return app


def test_without_a_security_stamp_logout_ends_this_session_only():
    app = app_without_security_stamp()
    client = logged_in_client(app)
    copy = _copy_cookies(client, app, "session")
    client.get("/logout")
    assert client.get("/profile").status_code == 302
    assert copy.get("/profile").status_code == 200
    assert client.get("/sessions").status_code == 404


# -- session lifetimes (ASVS 7.3.1, 7.3.2) -------------------------------------


def test_asvs_7_3_1_session_idle_longer_than_session_idle_within_is_refused(
    make_app, later
):
    app = make_app(SECURITY_SESSION_IDLE_WITHIN="30 minutes")
    client = logged_in_client(app)
    later.advance(minutes=31)
    assert client.get("/profile").status_code == 302


def test_each_request_restarts_the_idle_time_of_a_session(make_app, later):
    app = make_app(SECURITY_SESSION_IDLE_WITHIN="30 minutes")
    client = logged_in_client(app)
    for _ in range(4):
        later.advance(minutes=20)
        assert client.get("/profile").status_code == 200


def test_asvs_7_3_1_idle_limit_holds_for_a_copy_of_the_session_cookie(make_app, later):
    app = make_app(SECURITY_SESSION_IDLE_WITHIN="30 minutes")
    client = logged_in_client(app)
    copy = _copy_cookies(client, app, "session")
    later.advance(minutes=31)
    assert copy.get("/profile").status_code == 302


def test_asvs_7_3_2_session_older_than_session_absolute_within_is_refused(
    make_app, later
):
    app = make_app(SECURITY_SESSION_ABSOLUTE_WITHIN="2 hours")
    client = logged_in_client(app)
    for _ in range(3):
        later.advance(minutes=40)
        assert client.get("/profile").status_code == 200
    later.advance(minutes=40)
    assert client.get("/profile").status_code == 302


def test_session_lifetimes_default_to_an_hour_idle_and_a_day_in_all(app, later):
    client = logged_in_client(app)
    later.advance(minutes=59)
    assert client.get("/profile").status_code == 200
    later.advance(minutes=61)
    assert client.get("/profile").status_code == 302
    login(client)
    for _ in range(29):
        later.advance(minutes=50)
        client.get("/profile")
    assert client.get("/profile").status_code == 302


def test_remember_cookie_starts_a_new_session_when_one_lapses(make_app, later):
    app = make_app()
    add_user(app)
    client = app.test_client()
    login(client, remember="y")
    later.advance(hours=2)
    assert client.get("/profile").status_code == 200
    later.advance(minutes=30)
    assert client.get("/profile").status_code == 200


def test_asvs_7_3_2_remember_cookie_older_than_remember_within_is_refused(
    make_app, later
):
    app = make_app(SECURITY_REMEMBER_WITHIN="7 days")
    add_user(app)
    client = app.test_client()
    login(client, remember="y")
    copy = _copy_cookies(client, app, "remember_token")
    later.advance(days=6)
    assert (
        _copy_cookies(client, app, "remember_token").get("/profile").status_code == 200
    )
    later.advance(days=2)
    # The browser would still send it: the server refuses it.
    assert copy.get("/profile").status_code == 302


def test_asvs_7_3_2_remember_cookie_expires_with_remember_within(make_app):
    app = make_app(SECURITY_REMEMBER_WITHIN="7 days")
    add_user(app)
    response = login(app.test_client(), remember="y")
    cookie = next(
        header
        for header in response.headers.getlist("Set-Cookie")
        if header.startswith("remember_token=")
    )
    expires = re.search(r"Expires=([^;]+)", cookie).group(1)
    left = parsedate_to_datetime(expires) - datetime.now(timezone.utc)
    assert 6.9 < left.total_seconds() / 86400 <= 7


def test_remember_within_defaults_to_30_days(app, later):
    add_user(app)
    client = app.test_client()
    login(client, remember="y")
    copy = _copy_cookies(client, app, "remember_token")
    later.advance(days=29)
    assert (
        _copy_cookies(client, app, "remember_token").get("/profile").status_code == 200
    )
    later.advance(days=2)
    assert copy.get("/profile").status_code == 302


def test_an_app_own_remember_cookie_duration_is_kept(make_app):
    from datetime import timedelta

    app = make_app(REMEMBER_COOKIE_DURATION=timedelta(days=2))
    assert app.config["REMEMBER_COOKIE_DURATION"] == timedelta(days=2)


# -- cookies and forged requests (ASVS V3) -------------------------------------


def test_asvs_3_3_2_session_cookie_is_samesite_lax_by_default(app):
    add_user(app)
    response = login(app.test_client())
    cookie = next(
        header
        for header in response.headers.getlist("Set-Cookie")
        if header.startswith("session=")
    )
    assert "SameSite=Lax" in cookie


def test_an_app_that_chose_a_session_cookie_samesite_keeps_it(make_app):
    app = make_app(SESSION_COOKIE_SAMESITE="Strict")
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Strict"


def csrf_login(client):
    """Log in over JSON with CSRF on, as a script does; return the new CSRF token."""
    first = client.get("/login", headers={"Accept": "application/json"})
    headers = {"X-CSRFToken": first.json["response"]["csrf_token"]}
    response = client.post(
        "/login", json={"email": "matt@lp.com", "password": PASSWORD}, headers=headers
    )
    return response.json["response"]["csrf_token"]


def test_asvs_3_5_1_post_logout_without_the_csrf_token_is_refused(make_app):
    app = make_app(WTF_CSRF_ENABLED=True)
    add_user(app)
    client = app.test_client()
    csrf = csrf_login(client)
    response = client.post("/logout", json={})
    assert response.status_code == 400
    assert response.json["response"]["errors"]["csrf_token"]
    assert client.get("/profile").status_code == 200
    assert client.post("/logout", data={"csrf_token": "forged"}).status_code == 400
    response = client.post("/logout", json={}, headers={"X-CSRFToken": csrf})
    assert response.status_code == 200
    assert client.get("/profile").status_code == 302


def test_post_logout_from_a_form_with_its_csrf_token_logs_out(make_app):
    app = make_app(WTF_CSRF_ENABLED=True)
    add_user(app)
    client = app.test_client()
    csrf = csrf_login(client)
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 302
    assert client.get("/profile").status_code == 302


def test_get_logout_needs_no_csrf_token_as_in_174(make_app):
    app = make_app(WTF_CSRF_ENABLED=True)
    add_user(app)
    client = app.test_client()
    csrf_login(client)
    assert client.get("/logout").status_code == 302
    assert client.get("/profile").status_code == 302


def test_anonymous_post_logout_needs_no_csrf_token(make_app):
    app = make_app(WTF_CSRF_ENABLED=True)
    assert app.test_client().post("/logout").status_code == 302


def test_with_logout_by_post_only_our_menu_logs_out_with_a_form(make_app):
    app = make_app(WTF_CSRF_ENABLED=True, SECURITY_LOGOUT_METHODS=["POST"])
    add_user(app)
    client = app.test_client()
    csrf_login(client)
    page = client.get("/sessions").get_data(as_text=True)
    menu = page[page.index('class="security-menu"') :]
    form = _Tags(menu, "form").found[0]
    token = _Tags(menu, "input").found[0]
    assert (form["action"], form["method"]) == ("/logout", "post")
    assert client.get("/logout").status_code == 405
    response = client.post("/logout", data={token["name"]: token["value"]})
    assert response.status_code == 302
    assert client.get("/profile").status_code == 302


def _security_doc_section(heading):
    text = (HERE / "docs" / "security.md").read_text()
    return text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_asvs_7_1_1_sessions_doc_gives_each_lifetime_with_its_default():
    section = _security_doc_section("Sessions")
    for key in ("SESSION_IDLE_WITHIN", "SESSION_ABSOLUTE_WITHIN", "REMEMBER_WITHIN"):
        assert f"`SECURITY_{key}` (`'{fsl._default_config[key]}'`)" in section, key
    assert "`SECURITY_TOKEN_MAX_AGE`" in section


def test_asvs_7_1_2_sessions_doc_says_what_logout_ends_on_other_devices():
    section = _security_doc_section("Sessions")
    assert "as many at once as the user has devices" in section
    assert "logs the user out of their\nother browsers and phones" in section


def test_asvs_table_names_a_test_for_each_requirement_it_lists():
    table = _security_doc_section("OWASP ASVS 5.0: authentication and sessions")
    ids = re.findall(r"^\| ([\d.]+(?:, [\d.]+)*) \|", table, re.M)
    tests = " ".join(name for name in globals() if name.startswith("test_asvs_"))
    for group in ids:
        for asvs in group.split(", "):
            prefix = "test_asvs_" + asvs.replace(".", "_") + "_"
            assert prefix in tests, asvs


def test_asvs_3_3_1_host_prefixed_cookie_names_of_the_checklist_work_over_https(
    make_app,
):
    app = make_app(
        SESSION_COOKIE_NAME="__Host-session",
        SESSION_COOKIE_SECURE=True,
        REMEMBER_COOKIE_NAME="__Host-remember",
        REMEMBER_COOKIE_SECURE=True,
    )
    add_user(app)
    client = app.test_client()
    https = {"base_url": "https://localhost"}
    response = client.post(
        "/login",
        data={"email": "matt@lp.com", "password": PASSWORD, "remember": "y"},
        **https,
    )
    cookies = response.headers.getlist("Set-Cookie")
    assert {c.split("=")[0] for c in cookies} == {"__Host-session", "__Host-remember"}
    assert all("Secure" in c and "Path=/" in c and "Domain" not in c for c in cookies)
    assert client.get("/profile", **https).status_code == 200
    restored = app.test_client()
    restored.set_cookie("__Host-remember", client.get_cookie("__Host-remember").value)
    assert restored.get("/profile", **https).status_code == 200


# -- the sessions page (ASVS 7.5.2) --------------------------------------------


def test_asvs_7_5_2_sessions_page_logs_out_other_devices_and_keeps_this_one(
    store, make_app
):
    app = make_app(store)
    client = logged_in_client(app)
    other = app.test_client()
    login(other, remember="y")
    token_headers = {"Authentication-Token": auth_token(app.test_client())}
    page = client.get("/sessions").get_data(as_text=True)
    assert "<h1>Sessions</h1>" in page and 'value="others"' in page
    response = client.post("/sessions", data={"end": "others", "password": PASSWORD})
    assert response.location == "/sessions"
    assert client.get("/profile").status_code == 200
    assert other.get("/profile").status_code == 302
    assert app.test_client().get("/token", headers=token_headers).status_code == 401


def test_asvs_7_5_2_sessions_page_logs_out_everywhere(make_app):
    app = make_app()
    client = logged_in_client(app)
    other = app.test_client()
    login(other)
    response = client.post("/sessions", json={"end": "all", "password": PASSWORD})
    assert response.status_code == 200
    assert client.get("/profile").status_code == 302
    assert other.get("/profile").status_code == 302


def test_asvs_7_5_2_sessions_json_shows_this_session(make_app):
    app = make_app()
    add_user(app)
    client = app.test_client()
    login(client, remember="y")
    answer = client_get_json(client, "/sessions").json["response"]["session"]
    started = datetime.fromisoformat(answer["started_at"])
    assert abs((datetime.now(timezone.utc) - started).total_seconds()) < 60
    ends = datetime.fromisoformat(answer["ends_at"]) - started
    assert ends.total_seconds() == 24 * 3600
    assert answer["idle_within"] == "60 minutes" and answer["remembered"] is True


def test_asvs_7_5_2_sessions_page_needs_a_login_of_this_session(make_app):
    app = make_app()
    add_user(app)
    client = app.test_client()
    login(client, remember="y")
    restored = _copy_cookies(client, app, "remember_token")
    assert restored.get("/profile").status_code == 200
    response = restored.post("/sessions", json={"end": "others"})
    assert response.status_code == 401
    assert response.json["response"]["error"] == "Please log in again to see this page."
    assert client.get("/profile").status_code == 200
    assert app.test_client().get("/sessions").location.startswith("/login?next=")


def test_asvs_7_5_2_sessions_page_needs_the_csrf_token(make_app):
    app = make_app(WTF_CSRF_ENABLED=True)
    add_user(app)
    client = app.test_client()
    csrf = csrf_login(client)
    other = app.test_client()
    csrf_login(other)
    assert (
        client.post(
            "/sessions", data={"end": "others", "password": PASSWORD}
        ).status_code
        == 400
    )
    assert other.get("/profile").status_code == 200
    page = client.get("/sessions").get_data(as_text=True)
    assert 'name="csrf_token"' in page
    response = client.post(
        "/sessions",
        json={"end": "others", "password": PASSWORD},
        headers={"X-CSRFToken": csrf},
    )
    assert response.status_code == 200
    assert other.get("/profile").status_code == 302


def test_sessions_page_refuses_other_choices(app):
    client = logged_in_client(app)
    response = client.post("/sessions", json={"end": "mine", "password": PASSWORD})
    assert response.status_code == 400
    assert response.json["response"]["errors"] == {
        "end": ['Expected "others" or "all".']
    }


# =============================================================================
# 9. Mail and emailed links
# =============================================================================


def test_send_mail_renders_text_and_html_with_sender(make_app):
    app = make_app(SECURITY_EMAIL_SENDER="auth@lp.com")
    add_user(app)
    with app.test_request_context(), app.mail.record_messages() as outbox:
        user = app.datastore.find_user(email="matt@lp.com")
        fsl.send_mail("Hi", "matt@lp.com", "reset_notice", user=user)
    (message,) = outbox
    assert message.subject == "Hi" and message.sender == "auth@lp.com"
    assert "matt@lp.com" in message.body and "<p>" in message.html


def test_send_mail_task_replaces_sending(app):
    add_user(app)
    queued = []
    app.security.send_mail_task(queued.append)
    with app.test_request_context(), app.mail.record_messages() as outbox:
        user = app.datastore.find_user(email="matt@lp.com")
        fsl.send_mail("Hi", "matt@lp.com", "reset_notice", user=user)
    assert outbox == [] and queued[0].recipients == ["matt@lp.com"]


def test_mail_context_processor_adds_values(make_app, tmp_path):
    (tmp_path / "security" / "email").mkdir(parents=True)
    (tmp_path / "security" / "email" / "reset_notice.txt").write_text("{{ hello }}")
    (tmp_path / "security" / "email" / "reset_notice.html").write_text(
        "<b>{{ hello }}</b>"
    )
    app = make_app(template_folder=str(tmp_path))
    app.security.mail_context_processor(lambda: {"hello": "from processor"})
    with app.test_request_context(), app.mail.record_messages() as outbox:
        fsl.send_mail("Hi", "matt@lp.com", "reset_notice", user=None)
    assert outbox[0].body == "from processor"


def test_context_processor_for_every_template_reaches_the_emails(make_app, tmp_path):
    (tmp_path / "security" / "email").mkdir(parents=True)
    (tmp_path / "security" / "email" / "reset_notice.txt").write_text("{{ site }}")
    (tmp_path / "security" / "email" / "reset_notice.html").write_text("{{ site }}")
    app = make_app(template_folder=str(tmp_path))
    app.security.context_processor(lambda: {"site": "Example Ltd"})
    with app.test_request_context(), app.mail.record_messages() as outbox:
        fsl.send_mail("Hi", "matt@lp.com", "reset_notice", user=None)
    assert outbox[0].body == "Example Ltd"


#: The first sentence of each of 1.7.4's emails, which apps and its tests look for.
FIRST_SENTENCES_OF_174 = {
    "welcome": "Welcome matt@lp.com!",
    "confirmation_instructions": "Please confirm your email through the link below:",
    "login_instructions": "Welcome matt@lp.com!",
    "reset_instructions": "Click the link below to reset your password:",
    "reset_notice": "Your password has been reset",
    "change_notice": "Your password has been changed",
}


@pytest.mark.parametrize("template, sentence", FIRST_SENTENCES_OF_174.items())
def test_each_default_email_starts_with_the_sentence_of_174(
    make_app, template, sentence
):
    app = make_app(**RECOVER)
    add_user(app)
    links = dict(confirmation_link="L", login_link="L", reset_link="L")
    with app.test_request_context(), app.mail.record_messages() as outbox:
        user = app.datastore.find_user(email="matt@lp.com")
        fsl.send_mail("Hi", "matt@lp.com", template, user=user, **links)
    assert outbox[0].body.startswith(sentence)
    assert outbox[0].html.startswith(f"<p>{sentence}")


def test_a_registration_whose_mail_server_is_down_still_makes_the_account(
    make_app, caplog
):
    closed_port = _free_port()  # nothing listens there
    app = make_app(
        **CONFIRM,
        MAIL_SUPPRESS_SEND=False,
        MAIL_SERVER="127.0.0.1",
        MAIL_PORT=closed_port,
    )
    fields = {"email": "new@lp.com", "password": PASSWORD}
    response = app.test_client().post("/register", json=fields)
    assert response.status_code == 200
    assert get_user(app, "new@lp.com") is not None
    assert "the welcome email to user" in caplog.text
    assert "could not be sent" in caplog.text


def test_send_mail_without_flask_mail_says_what_to_do(app):
    del app.extensions["mail"]
    with app.test_request_context(), pytest.raises(RuntimeError, match="Mail"):
        fsl.send_mail("Hi", "matt@lp.com", "reset_notice", user=None)


def test_form_classes_are_attributes_as_in_174(make_app):
    class MyLoginForm(fsl.LoginForm):
        pass

    app = make_app(security_kwargs={"login_form": MyLoginForm})
    assert app.security.login_form is MyLoginForm
    assert app.extensions["security"].register_form is fsl.RegisterForm


def test_send_mail_task_can_be_registered_on_the_state_as_in_174(app):
    add_user(app)
    queued = []
    app.extensions["security"].send_mail_task(queued.append)
    with app.test_request_context():
        user = app.datastore.find_user(email="matt@lp.com")
        fsl.send_mail("Hi", "matt@lp.com", "reset_notice", user=user)
    assert queued[0].recipients == ["matt@lp.com"]


# =============================================================================
# 10. Account flows: registration (every store)
# =============================================================================


def test_register_creates_user_logs_in_and_welcomes(store, make_app):
    app = make_app(store, **REGISTER)
    client = app.test_client()
    received = []

    @fsl.user_registered.connect_via(app)
    def on_registered(sender, user, confirm_token):
        received.append((sender, user.email, confirm_token))

    with app.mail.record_messages() as outbox:
        response = client.post(
            "/register",
            data={
                "email": "new@lp.com",
                "password": PASSWORD,
                "password_confirm": PASSWORD,
            },
        )
    assert response.status_code == 302 and response.location == "/"
    assert received == [(app, "new@lp.com", None)]
    assert outbox[0].subject == "Welcome" and outbox[0].recipients == ["new@lp.com"]
    assert client.get("/profile").data == b"profile of new@lp.com"


def test_json_register_returns_id_and_token(store, make_app):
    app = make_app(store, **REGISTER)
    response = app.test_client().post(
        "/register", json={"email": "new@lp.com", "password": PASSWORD}
    )
    assert response.status_code == 200
    user = response.json["response"]["user"]
    assert user["id"] and user["authentication_token"]
    assert "password" not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"email": "matt@LP.com", "password": PASSWORD}, "email", "already belongs"),
        ({"email": "not-an-email", "password": PASSWORD}, "email", "not a valid email"),
        ({"email": "new@lp.com", "password": "short"}, "password", "too short"),
        ({"email": "new@lp.com"}, "password", "enter your password"),
    ],
)
def test_json_register_errors(store, make_app, fields, field, message):
    app = make_app(store, **REGISTER)
    add_user(app)
    response = app.test_client().post("/register", json=fields)
    assert response.status_code == 400
    assert message in response.json["response"]["errors"][field][0]


def test_html_register_checks_the_retyped_password(make_app):
    app = make_app(**REGISTER)
    response = app.test_client().post(
        "/register",
        data={
            "email": "new@lp.com",
            "password": PASSWORD,
            "password_confirm": "other pw!",
        },
    )
    assert b"The two passwords are not the same." in response.data
    assert get_user(app, "new@lp.com") is None


def test_register_follows_safe_next_and_post_register_view(make_app):
    app = make_app(SECURITY_POST_REGISTER_VIEW="/welcome", **REGISTER)
    data = {"email": "a@lp.com", "password": PASSWORD, "password_confirm": PASSWORD}
    assert app.test_client().post("/register", data=data).location == "/welcome"
    data = dict(data, email="b@lp.com", next="/profile")
    assert app.test_client().post("/register", data=data).location == "/profile"


def test_register_is_404_when_off(app):
    assert app.test_client().get("/register").status_code == 404
    data = {"email": "new@lp.com", "password": PASSWORD, "password_confirm": PASSWORD}
    assert app.test_client().post("/register", data=data).status_code == 404
    assert get_user(app, "new@lp.com") is None


def test_extended_register_form_passes_extra_fields_to_the_user(make_app):
    from wtforms import StringField
    from wtforms.validators import DataRequired

    class ExtendedRegisterForm(fsl.RegisterForm):
        first_name = StringField("First name", [DataRequired()])

    app = make_app(security_kwargs={"register_form": ExtendedRegisterForm}, **REGISTER)
    page = app.test_client().get("/register").data
    assert b'name="first_name"' in page
    app.test_client().post(
        "/register",
        data={
            "email": "new@lp.com",
            "password": PASSWORD,
            "password_confirm": PASSWORD,
            "first_name": "Ada",
        },
    )
    assert get_user(app, "new@lp.com").first_name == "Ada"


def test_extended_confirm_register_form_passes_extra_fields_from_json(make_app):
    from wtforms import StringField

    class ExtendedConfirmRegisterForm(fsl.ConfirmRegisterForm):
        first_name = StringField("First name")

    app = make_app(
        security_kwargs={"confirm_register_form": ExtendedConfirmRegisterForm},
        **REGISTER,
        SECURITY_CONFIRMABLE=True,
    )
    response = app.test_client().post(
        "/register",
        json={"email": "new@lp.com", "password": PASSWORD, "first_name": "Grace"},
    )
    assert response.status_code == 200
    assert get_user(app, "new@lp.com").first_name == "Grace"


@pytest.mark.parametrize(
    "emails", [("race@lp.com", "race@lp.com"), ("race@lp.com", "RACE@lp.com")]
)
def test_concurrent_duplicate_registrations_leave_one_user(make_app, emails):
    app = make_app("postgres", **REGISTER, SECURITY_SEND_REGISTER_EMAIL=False)
    both_validated = threading.Barrier(2, timeout=10)
    create_user = app.datastore.create_user

    def create_after_both_validated(**fields):
        both_validated.wait()
        return create_user(**fields)

    app.datastore.create_user = create_after_both_validated
    results = []

    def register(email):
        response = app.test_client().post(
            "/register", json={"email": email, "password": PASSWORD}
        )
        results.append((response.status_code, response.json))

    threads = [threading.Thread(target=register, args=(email,)) for email in emails]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(code for code, _ in results) == [200, 400]
    loser = next(body for code, body in results if code == 400)
    assert "already belongs" in loser["response"]["errors"]["email"][0]
    with app.app_context():
        from sqlalchemy import func, select

        count = app.datastore.db.session.scalar(
            select(func.count()).select_from(app.datastore.user_model)
        )
    assert count == 1


# =============================================================================
# 10. Account flows: confirmation
# =============================================================================


def _emailed_link(app, url, payload, prefix):
    """POST ``payload`` to ``url``; return the path of the ``prefix`` link mailed."""
    with app.mail.record_messages() as outbox:
        app.test_client().post(url, json=payload)
    return re.search(rf"http://localhost({prefix}/\S+)", outbox[0].body).group(1)


def _register_and_capture_link(app, email="new@lp.com"):
    payload = {"email": email, "password": PASSWORD}
    return _emailed_link(app, "/register", payload, "/confirm")


def test_confirmable_register_sends_link_and_does_not_log_in(make_app):
    app = make_app(**CONFIRM)
    tokens = []
    fsl.user_registered.connect(
        lambda sender, user, confirm_token: tokens.append(confirm_token),
        app,
        weak=False,
    )
    client = app.test_client()
    with app.mail.record_messages() as outbox:
        response = client.post(
            "/register", json={"email": "new@lp.com", "password": PASSWORD}
        )
    assert response.status_code == 200
    assert tokens[0] in outbox[0].body
    assert client.get("/profile").status_code == 302


def test_login_refused_until_confirmed(make_app):
    app = make_app(**CONFIRM)
    _register_and_capture_link(app)
    response = json_login(app.test_client(), "new@lp.com")
    assert response.json["response"]["errors"]["email"] == [
        "Please confirm your email address first."
    ]


def test_login_without_confirmation_setting_allows_login(make_app):
    app = make_app(SECURITY_LOGIN_WITHOUT_CONFIRMATION=True, **CONFIRM)
    _register_and_capture_link(app)
    assert json_login(app.test_client(), "new@lp.com").status_code == 200


def test_confirmation_link_confirms_logs_in_and_signals(make_app):
    app = make_app(**CONFIRM)
    link = _register_and_capture_link(app)
    confirmed = []
    fsl.user_confirmed.connect(
        lambda sender, user: confirmed.append(user.email), app, weak=False
    )
    client = app.test_client()
    response = client.get(link)
    assert response.status_code == 302 and response.location == "/"
    assert confirmed == ["new@lp.com"]
    assert get_user(app, "new@lp.com").confirmed_at is not None
    assert client.get("/profile").status_code == 200


def test_confirmation_link_works_once(make_app):
    app = make_app(**CONFIRM)
    link = _register_and_capture_link(app)
    app.test_client().get(link)
    client = app.test_client()
    client.get(link)
    with client.session_transaction() as session:
        assert ("info", "This email address is already confirmed.") in session[
            "_flashes"
        ]
    assert client.get("/profile").status_code == 302


def test_invalid_confirmation_token_goes_to_the_resend_view(make_app):
    app = make_app(**CONFIRM)
    response = app.test_client().get("/confirm/not-a-token")
    assert response.location == "/confirm"


def test_confirm_error_view_setting(make_app):
    app = make_app(SECURITY_CONFIRM_ERROR_VIEW="/oops", **CONFIRM)
    assert app.test_client().get("/confirm/not-a-token").location == "/oops"


def test_expired_confirmation_sends_new_instructions(make_app, clock):
    app = make_app(SECURITY_CONFIRM_EMAIL_WITHIN="1 hours", **CONFIRM)
    link = _register_and_capture_link(app)
    clock.advance(hours=2)
    with app.mail.record_messages() as outbox:
        response = app.test_client().get(link, headers={"Accept": "application/json"})
    assert response.status_code == 400
    assert "valid for 1 hours" in response.json["response"]["errors"]["token"][0]
    assert outbox[0].subject == "Please confirm your email"
    assert get_user(app, "new@lp.com").confirmed_at is None


def test_post_confirm_view_setting(make_app):
    app = make_app(SECURITY_POST_CONFIRM_VIEW="/confirmed", **CONFIRM)
    link = _register_and_capture_link(app)
    assert app.test_client().get(link).location == "/confirmed"


def test_resend_confirmation(make_app):
    app = make_app(**CONFIRM)
    _register_and_capture_link(app)
    sent = []
    fsl.confirm_instructions_sent.connect(
        lambda sender, user: sent.append(user.email), app, weak=False
    )
    with app.mail.record_messages() as outbox:
        response = app.test_client().post("/confirm", json={"email": "new@lp.com"})
    assert response.status_code == 200 and sent == ["new@lp.com"]
    assert "/confirm/" in outbox[0].body


def test_resend_confirmation_refuses_confirmed_users(make_app):
    app = make_app(**CONFIRM)
    app.test_client().get(_register_and_capture_link(app))
    response = app.test_client().post("/confirm", json={"email": "new@lp.com"})
    assert response.json["response"]["errors"]["email"] == [
        "This email address is already confirmed."
    ]


def test_confirm_views_are_404_when_off(app):
    assert app.test_client().get("/confirm").status_code == 404


def test_confirmation_email_over_real_smtp(make_app):
    from aiosmtpd.controller import Controller

    class Inbox:
        messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append(envelope.content.decode("utf-8", "replace"))
            return "250 OK"

    inbox = Inbox()
    port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        app = make_app(
            MAIL_SERVER="127.0.0.1", MAIL_PORT=port, MAIL_SUPPRESS_SEND=False, **CONFIRM
        )
        app.extensions["mail"] = Mail(app)
        app.test_client().post(
            "/register", json={"email": "smtp@lp.com", "password": PASSWORD}
        )
    finally:
        controller.stop()
    (raw,) = inbox.messages
    import email

    message = email.message_from_string(raw)
    text = next(
        part for part in message.walk() if part.get_content_type() == "text/plain"
    )
    body = text.get_payload(decode=True).decode()
    link = re.search(r"http://localhost(/confirm/\S+)", body).group(1)
    assert app.test_client().get(link).location == "/"
    assert get_user(app, "smtp@lp.com").confirmed_at is not None


def test_logged_in_user_can_ask_for_confirmation_instructions(make_app):
    app = make_app(SECURITY_LOGIN_WITHOUT_CONFIRMATION=True, **CONFIRM)
    _register_and_capture_link(app)
    client = app.test_client()
    login(client, "new@lp.com")
    assert client.get("/profile").data == b"profile of new@lp.com"
    with app.mail.record_messages() as outbox:
        response = client.post("/confirm", json={"email": "new@lp.com"})
    assert response.status_code == 200 and len(outbox) == 1
    assert outbox[0].recipients == ["new@lp.com"] and "/confirm/" in outbox[0].body


# =============================================================================
# 10. Account flows: recovery
# =============================================================================


def _reset_link(app, email="matt@lp.com"):
    return _emailed_link(app, "/reset", {"email": email}, "/reset")


def test_forgot_password_sends_instructions_and_signals(make_app):
    app = make_app(**RECOVER)
    add_user(app)
    sent = []
    fsl.reset_password_instructions_sent.connect(
        lambda sender, user, token: sent.append((user.email, token)), app, weak=False
    )
    with app.mail.record_messages() as outbox:
        response = app.test_client().post("/reset", json={"email": "matt@lp.com"})
    assert response.status_code == 200 and response.json["response"] == {}
    assert outbox[0].subject == "Password reset instructions"
    assert sent[0][0] == "matt@lp.com" and sent[0][1] in outbox[0].body


def test_forgot_password_for_unknown_email_is_an_error(make_app):
    app = make_app(**RECOVER)
    response = app.test_client().post("/reset", json={"email": "nobody@lp.com"})
    assert response.status_code == 400


def test_forgot_password_with_generic_responses_hides_unknown_emails(make_app):
    app = make_app(SECURITY_RETURN_GENERIC_RESPONSES=True, **RECOVER)
    with app.mail.record_messages() as outbox:
        response = app.test_client().post("/reset", json={"email": "nobody@lp.com"})
    assert response.status_code == 200 and outbox == []


def test_reset_password_sets_password_logs_in_and_notifies(make_app):
    app = make_app(**RECOVER)
    add_user(app)
    link = _reset_link(app)
    reset = []
    fsl.password_reset.connect(
        lambda sender, user: reset.append(user.email), app, weak=False
    )
    client = app.test_client()
    assert b"<h1>Reset password</h1>" in client.get(link).data
    with app.mail.record_messages() as outbox:
        response = client.post(
            link, data={"password": "new password", "password_confirm": "new password"}
        )
    assert response.status_code == 302 and response.location == "/"
    assert reset == ["matt@lp.com"]
    assert outbox[0].subject == "Your password has been reset"
    assert client.get("/profile").status_code == 200
    assert json_login(app.test_client(), password="new password").status_code == 200
    assert json_login(app.test_client()).status_code == 400


def test_json_reset_password(make_app):
    app = make_app(**RECOVER)
    add_user(app)
    link = _reset_link(app)
    response = app.test_client().post(
        link, json={"password": "new password", "password_confirm": "new password"}
    )
    assert response.status_code == 200
    assert response.json["response"]["user"]["authentication_token"]
    assert link.split("/")[-1] not in response.get_data(as_text=True)


def test_reset_link_works_once(make_app):
    app = make_app(**RECOVER)
    add_user(app)
    link = _reset_link(app)
    data = {"password": "new password", "password_confirm": "new password"}
    assert app.test_client().post(link, json=data).status_code == 200
    data = {"password": "another password", "password_confirm": "another password"}
    response = app.test_client().post(link, json=data)
    assert response.status_code == 400
    assert response.json["response"]["errors"]["token"] == [
        "This password reset link is not valid."
    ]


def test_expired_reset_link_sends_new_instructions(make_app, clock):
    app = make_app(**RECOVER)
    add_user(app)
    link = _reset_link(app)
    clock.advance(days=6)
    with app.mail.record_messages() as outbox:
        response = app.test_client().get(link)
    assert response.location == "/reset"
    assert outbox[0].subject == "Password reset instructions"


def test_reset_password_checks_length_and_retype(make_app):
    app = make_app(**RECOVER)
    add_user(app)
    link = _reset_link(app)
    errors = (
        app.test_client()
        .post(link, json={"password": "short", "password_confirm": "other"})
        .json["response"]["errors"]
    )
    assert "password" in errors and "password_confirm" in errors


def test_post_reset_view_and_no_notice_setting(make_app):
    app = make_app(
        SECURITY_POST_RESET_VIEW="/after-reset",
        SECURITY_SEND_PASSWORD_RESET_NOTICE_EMAIL=False,
        **RECOVER,
    )
    add_user(app)
    link = _reset_link(app)
    with app.mail.record_messages() as outbox:
        response = app.test_client().post(
            link, data={"password": "new password", "password_confirm": "new password"}
        )
    assert response.location == "/after-reset" and outbox == []


def test_reset_ends_other_sessions_and_tokens(make_app):
    app = make_app(**RECOVER)
    add_user(app)
    other = app.test_client()
    login(other)
    token = auth_token(app.test_client())
    link = _reset_link(app)
    app.test_client().post(
        link, json={"password": "new password", "password_confirm": "new password"}
    )
    assert other.get("/profile").status_code == 302
    assert (
        app.test_client()
        .get("/token", headers={"Authentication-Token": token})
        .status_code
        == 401
    )


def test_logged_in_user_can_ask_for_reset_instructions(make_app):
    app = make_app(**RECOVER)
    client = logged_in_client(app)
    assert client.get("/profile").data == b"profile of matt@lp.com"
    with app.mail.record_messages() as outbox:
        response = client.post("/reset", json={"email": "matt@lp.com"})
    assert response.status_code == 200 and len(outbox) == 1
    assert outbox[0].recipients == ["matt@lp.com"] and "/reset/" in outbox[0].body


def test_forgot_password_of_an_unconfirmed_account_says_confirm_first(make_app):
    app = make_app(**RECOVER, **CONFIRM)
    _register_and_capture_link(app)
    with app.mail.record_messages() as outbox:
        response = app.test_client().post("/reset", json={"email": "new@lp.com"})
    assert response.status_code == 400 and outbox == []
    assert response.json["response"]["errors"]["email"] == [
        "Please confirm your email address first."
    ]


def test_forgot_password_of_an_unconfirmed_account_is_generic_when_asked(make_app):
    app = make_app(SECURITY_RETURN_GENERIC_RESPONSES=True, **RECOVER, **CONFIRM)
    _register_and_capture_link(app)
    with app.mail.record_messages() as outbox:
        unconfirmed = app.test_client().post("/reset", json={"email": "new@lp.com"})
        unknown = app.test_client().post("/reset", json={"email": "nobody@lp.com"})
    assert outbox == []
    assert unconfirmed.status_code == unknown.status_code == 200
    assert unconfirmed.json == unknown.json


# =============================================================================
# 10. Account flows: change password
# =============================================================================


NEW = {
    "password": PASSWORD,
    "new_password": "new password",
    "new_password_confirm": "new password",
}


def test_change_password_requires_login(make_app):
    app = make_app(**CHANGE)
    assert app.test_client().get("/change").status_code == 302


def test_change_password_changes_notifies_and_signals(make_app):
    app = make_app(**CHANGE)
    client = logged_in_client(app)
    changed = []
    fsl.password_changed.connect(
        lambda sender, user: changed.append(user.email), app, weak=False
    )
    assert b"<h1>Change password</h1>" in client.get("/change").data
    with app.mail.record_messages() as outbox:
        response = client.post("/change", data=NEW)
    assert response.status_code == 302 and response.location == "/"
    assert changed == ["matt@lp.com"]
    assert outbox[0].subject == "Your password has been changed"
    assert json_login(app.test_client(), password="new password").status_code == 200
    assert json_login(app.test_client()).status_code == 400


@pytest.mark.parametrize(
    "fields, field, message",
    [
        (dict(NEW, password="wrong password"), "password", "wrong"),
        (
            dict(NEW, new_password=PASSWORD, new_password_confirm=PASSWORD),
            "new_password",
            "must differ",
        ),
        (
            dict(NEW, new_password_confirm="something else"),
            "new_password_confirm",
            "not the same",
        ),
        (
            dict(NEW, new_password="short", new_password_confirm="short"),
            "new_password",
            "too short",
        ),
    ],
)
def test_change_password_errors(make_app, fields, field, message):
    app = make_app(**CHANGE)
    client = logged_in_client(app)
    response = client.post("/change", json=fields)
    assert response.status_code == 400
    assert message in response.json["response"]["errors"][field][0]


def test_change_password_keeps_this_session_and_ends_the_others(make_app):
    app = make_app(**CHANGE)
    add_user(app)
    this, other, remembered = app.test_client(), app.test_client(), app.test_client()
    login(this, remember="y")
    login(other)
    login(remembered, remember="y")
    remember_cookie = remembered.get_cookie("remember_token").value
    token = auth_token(app.test_client())
    assert this.post("/change", data=NEW).status_code == 302
    assert this.get("/profile").status_code == 200
    assert other.get("/profile").status_code == 302
    stale = app.test_client()
    stale.set_cookie("remember_token", remember_cookie)
    assert stale.get("/profile").status_code == 302
    assert (
        app.test_client()
        .get("/token", headers={"Authentication-Token": token})
        .status_code
        == 401
    )
    kept = app.test_client()
    kept.set_cookie("remember_token", this.get_cookie("remember_token").value)
    assert kept.get("/profile").status_code == 200


def test_change_password_by_token_needs_no_csrf(make_app):
    app = make_app(WTF_CSRF_ENABLED=True, **CHANGE)
    add_user(app)
    client = app.test_client()
    page = client.get("/login").data.decode()
    csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    token = client.post(
        "/login",
        json={"email": "matt@lp.com", "password": PASSWORD},
        headers={"X-CSRFToken": csrf},
    ).json["response"]["user"]["authentication_token"]
    response = app.test_client().post(
        "/change", json=NEW, headers={"Authentication-Token": token}
    )
    assert response.status_code == 200
    new_token = response.json["response"]["user"]["authentication_token"]
    assert (
        app.test_client()
        .get("/token", headers={"Authentication-Token": new_token})
        .status_code
        == 200
    )


def test_post_change_view_and_no_notice_setting(make_app):
    app = make_app(
        SECURITY_POST_CHANGE_VIEW="/changed",
        SECURITY_SEND_PASSWORD_CHANGE_EMAIL=False,
        **CHANGE,
    )
    client = logged_in_client(app)
    with app.mail.record_messages() as outbox:
        assert client.post("/change", data=NEW).location == "/changed"
    assert outbox == []


# =============================================================================
# 10. Account flows: passwordless login
# =============================================================================


def _login_link(app, email="matt@lp.com"):
    return _emailed_link(app, "/login", {"email": email}, "/login")


def test_passwordless_sends_a_login_link_and_signals(make_app):
    app = make_app(**PASSWORDLESS)
    add_user(app)
    sent = []
    fsl.login_instructions_sent.connect(
        lambda sender, user, login_token: sent.append(login_token), app, weak=False
    )
    page = app.test_client().get("/login").data
    assert b"<h1>Login</h1>" in page and b'name="send_login_form"' in page
    with app.mail.record_messages() as outbox:
        response = app.test_client().post("/login", json={"email": "matt@lp.com"})
    assert response.status_code == 200
    assert response.json["response"]["user"]["id"]
    assert outbox[0].subject == "Login instructions" and sent[0] in outbox[0].body


def test_passwordless_link_logs_in(make_app):
    app = make_app(**PASSWORDLESS)
    add_user(app)
    client = app.test_client()
    response = client.get(_login_link(app))
    assert response.location == "/"
    assert client.get("/profile").status_code == 200
    with client.session_transaction() as session:
        assert ("success", "You are logged in.") in session["_flashes"]


def test_expired_passwordless_link_sends_a_new_one(make_app, clock):
    app = make_app(**PASSWORDLESS)
    add_user(app)
    link = _login_link(app)
    clock.advance(days=2)
    client = app.test_client()
    with app.mail.record_messages() as outbox:
        assert client.get(link).location == "/login"
    assert outbox[0].subject == "Login instructions"
    assert client.get("/profile").status_code == 302


def test_invalid_passwordless_link_is_refused(make_app):
    app = make_app(**PASSWORDLESS)
    response = app.test_client().get(
        "/login/nonsense", headers={"Accept": "application/json"}
    )
    assert response.status_code == 400
    assert response.json["response"]["errors"]["token"] == [
        "This login link is not valid."
    ]


def test_passwordless_with_generic_responses_tells_nothing(make_app):
    app = make_app(SECURITY_RETURN_GENERIC_RESPONSES=True, **PASSWORDLESS)
    add_user(app)
    known = app.test_client().post("/login", json={"email": "matt@lp.com"})
    unknown = app.test_client().post("/login", json={"email": "nobody@lp.com"})
    assert known.json == unknown.json == {"meta": {"code": 200}, "response": {}}


def test_passwordless_refuses_disabled_accounts(make_app):
    app = make_app(**PASSWORDLESS)
    add_user(app, active=False)
    response = app.test_client().post("/login", json={"email": "matt@lp.com"})
    assert response.json["response"]["errors"]["email"] == ["This account is disabled."]


def test_logged_in_user_sees_the_passwordless_form(make_app):
    app = make_app(**PASSWORDLESS)
    add_user(app)
    client = app.test_client()
    client.get(_login_link(app))
    assert client.get("/profile").status_code == 200
    assert client.get("/login").status_code == 200


def test_asvs_6_5_1_passwordless_link_logs_in_once(store, make_app):
    app = make_app(store, **PASSWORDLESS)
    add_user(app)
    link = _login_link(app)
    first, second = app.test_client(), app.test_client()
    assert first.get(link).location == "/"
    response = second.get(link, headers={"Accept": "application/json"})
    assert response.status_code == 400
    assert response.json["response"]["errors"]["token"] == [
        "This login link is not valid."
    ]
    assert second.get("/profile").status_code == 302
    assert first.get("/profile").status_code == 200


def test_asvs_6_5_1_passwordless_link_opened_twice_at_once_logs_in_once(make_app):
    app = make_app("postgres", **PASSWORDLESS)
    add_user(app)
    link = _login_link(app)
    _hold_token_readers(app, 2)

    def open_link():
        client = app.test_client()
        client.get(link, headers={"Accept": "application/json"})
        return client.get("/profile").status_code

    assert sorted(_in_threads(open_link, 2)) == [200, 302]


def test_asvs_6_6_2_a_newer_passwordless_link_voids_the_older_ones(make_app):
    app = make_app(**PASSWORDLESS)
    add_user(app)
    older, newer = _login_link(app), _login_link(app)
    client = app.test_client()
    assert client.get(older).location == "/login"
    assert client.get("/profile").status_code == 302
    assert client.get(newer).location == "/"


def test_asvs_6_5_5_passwordless_link_lasts_ten_minutes_by_default(make_app, clock):
    app = make_app(**PASSWORDLESS)
    assert app.config["SECURITY_LOGIN_WITHIN"] == "10 minutes"
    add_user(app)
    link = _login_link(app)
    clock.advance(minutes=11)
    client = app.test_client()
    with app.mail.record_messages() as outbox:
        assert client.get(link).location == "/login"
    assert "10 minutes" in client.get("/login").get_data(as_text=True)
    assert client.get("/profile").status_code == 302
    assert outbox[0].subject == "Login instructions"


def test_passwordless_links_leave_the_users_sessions_alone(make_app):
    app = make_app(**PASSWORDLESS)
    add_user(app)
    laptop = app.test_client()
    laptop.get(_login_link(app))
    phone = app.test_client()
    phone.get(_login_link(app))
    assert laptop.get("/profile").status_code == 200
    assert phone.get("/profile").status_code == 200


def test_without_a_security_stamp_a_passwordless_link_works_until_it_expires():
    app = app_without_security_stamp(**PASSWORDLESS)
    add_user(app)
    link = _login_link(app)
    for _ in range(2):
        client = app.test_client()
        client.get(link)
        assert client.get("/profile").status_code == 200


# =============================================================================
# 11. Two-factor login: codes
# =============================================================================


#: RFC 4226, Appendix D: HOTP values of counters 0..9 for this ASCII key.
RFC4226_KEY = b"12345678901234567890"


RFC4226_VALUES = [
    "755224",
    "287082",
    "359152",
    "969429",
    "338314",
    "254676",
    "287922",
    "162583",
    "399871",
    "520489",
]


#: RFC 6238, Appendix B: (Unix time, eight-digit code) for SHA-1, SHA-256, SHA-512.
RFC6238_KEYS = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}


RFC6238_VECTORS = [
    (59, ("94287082", "46119246", "90693936")),
    (1111111109, ("07081804", "68084774", "25091201")),
    (1111111111, ("14050471", "67062674", "99943326")),
    (1234567890, ("89005924", "91819424", "93441116")),
    (2000000000, ("69279037", "90698825", "38618901")),
    (20000000000, ("65353130", "77737706", "47863826")),
]


@pytest.mark.parametrize("counter", range(10))
def test_hotp_matches_rfc4226_vectors(counter):
    assert fsl._hotp(RFC4226_KEY, counter) == RFC4226_VALUES[counter]


@pytest.mark.parametrize("at, codes", RFC6238_VECTORS)
def test_totp_matches_rfc6238_vectors_for_every_hash(at, codes):
    for name, code in zip(("sha1", "sha256", "sha512"), codes, strict=True):
        digest = getattr(hashlib, name)
        step = int(at // 30)
        assert fsl._hotp(RFC6238_KEYS[name], step, 8, digest) == code


@pytest.mark.parametrize("at, codes", RFC6238_VECTORS)
def test_six_digit_code_is_the_rfc_code_cut_to_six(at, codes):
    key = base64.b32encode(RFC6238_KEYS["sha1"]).decode()
    assert fsl.totp_code(key, at) == codes[0][-6:]


def test_new_key_is_160_bits_of_base32():
    key = fsl._new_totp_key()
    assert len(base64.b32decode(key)) == 20
    assert key != fsl._new_totp_key()


def test_key_is_read_forgiving_spaces_case_and_padding():
    key = base64.b32encode(b"0123456789").decode()
    sloppy = " ".join(key.lower()[i : i + 4] for i in range(0, 16, 4))
    assert fsl._decode_totp_key(sloppy) == b"0123456789"


@pytest.fixture
def app_context(app):
    """The context of a default app, for the checks that read a setting."""
    with app.app_context():
        yield app


def test_code_of_this_step_is_accepted_and_step_recorded(app_context):
    key, at = fsl._new_totp_key(), 1_700_000_000
    stored = fsl._accept_totp(key, fsl.totp_code(key, at), at)
    assert stored == f"{key}:{at // 30}"


def test_code_one_step_late_is_accepted(app_context):
    key, at = fsl._new_totp_key(), 1_700_000_000
    assert fsl._accept_totp(key, fsl.totp_code(key, at - 30), at) is not None


@pytest.mark.parametrize("drift", [-60, 60, -3600])
def test_code_two_or_more_steps_away_is_refused(app_context, drift):
    key, at = fsl._new_totp_key(), 1_700_000_000
    assert fsl._accept_totp(key, fsl.totp_code(key, at + drift), at) is None


def test_asvs_6_5_5_code_of_a_later_step_is_refused(app_context):
    key, at = fsl._new_totp_key(), 1_700_000_000
    assert fsl._accept_totp(key, fsl.totp_code(key, at + 30), at) is None


def test_asvs_6_5_5_drift_steps_zero_accepts_the_current_code_only(app_context):
    app_context.config["SECURITY_TWO_FACTOR_DRIFT_STEPS"] = 0
    key, step_start = fsl._new_totp_key(), 30 * 56_666_667
    code = fsl.totp_code(key, step_start)
    assert fsl._accept_totp(key, code, step_start + 29) is not None
    assert fsl._accept_totp(key, code, step_start + 30) is None


def test_drift_steps_widen_the_window_to_earlier_steps_only(app_context):
    app_context.config["SECURITY_TWO_FACTOR_DRIFT_STEPS"] = 3
    key, at = fsl._new_totp_key(), 1_700_000_000
    assert fsl._accept_totp(key, fsl.totp_code(key, at - 90), at) is not None
    assert fsl._accept_totp(key, fsl.totp_code(key, at - 120), at) is None
    assert fsl._accept_totp(key, fsl.totp_code(key, at + 30), at) is None


def test_used_code_is_refused_within_its_window(app_context):
    key, at = fsl._new_totp_key(), 1_700_000_000
    code = fsl.totp_code(key, at)
    stored = fsl._accept_totp(key, code, at)
    assert fsl._accept_totp(stored, code, at) is None
    assert fsl._accept_totp(stored, code, at + 29) is None
    assert fsl._accept_totp(stored, code, at + 30) is None


def test_code_older_than_the_last_used_one_is_refused(app_context):
    key, at = fsl._new_totp_key(), 1_700_000_000
    stored = fsl._accept_totp(key, fsl.totp_code(key, at), at + 30)
    assert fsl._accept_totp(stored, fsl.totp_code(key, at - 30), at) is None
    assert fsl._accept_totp(stored, fsl.totp_code(key, at + 60), at + 60) is not None


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "١٢٣٤٥٦", None, 7])
def test_malformed_code_is_refused(code):
    assert fsl._accept_totp(fsl._new_totp_key(), code) is None


def test_code_may_be_typed_with_spaces(app_context):
    key = fsl._new_totp_key()
    code = fsl.totp_code(key)
    assert fsl._accept_totp(key, f" {code[:3]} {code[3:]} ") is not None


def test_damaged_stored_key_refuses_codes_and_logs(caplog):
    assert fsl._accept_totp("not base32 at all!", "123456") is None
    assert "tf_totp_secret" in caplog.text


def test_otpauth_uri_names_issuer_account_and_parameters():
    uri = fsl._totp_uri("JBSWY3DPEHPK3PXP", "matt@lp.com", "Example Co")
    assert uri == (
        "otpauth://totp/Example%20Co:matt@lp.com?secret=JBSWY3DPEHPK3PXP"
        "&issuer=Example%20Co&algorithm=SHA1&digits=6&period=30"
    )


def test_qr_code_is_an_svg_with_a_title():
    svg = fsl._qr_svg("otpauth://totp/x:y?secret=JBSWY3DPEHPK3PXP")
    assert svg.startswith("<svg") and "<title>" in svg


def test_without_segno_there_is_no_qr_code(monkeypatch):
    monkeypatch.setitem(sys.modules, "segno", None)
    assert fsl._qr_svg("otpauth://totp/x:y?secret=JBSWY3DPEHPK3PXP") is None


def test_key_is_shown_in_groups_of_four():
    assert fsl._key_in_groups("JBSWY3DPEHPK3PXP") == "JBSW Y3DP EHPK 3PXP"


def test_asvs_6_5_2_ten_distinct_recovery_codes_of_120_bits():
    codes = fsl._new_recovery_codes()
    assert len(set(codes)) == 10
    # 24 base32 characters, 5 bits each.
    assert all(re.fullmatch(r"[a-z2-7]{4}(-[a-z2-7]{4}){5}", code) for code in codes)


def test_recovery_codes_of_the_former_80_bit_kind_still_work():
    # As stored by earlier versions: the unsalted SHA-256 of the code, cut to 128
    # bits, in URL-safe base64 without padding.
    printed = "abcd-efgh-ijkl-mnop"
    digest = hashlib.sha256(b"abcdefghijklmnop").digest()[:16]
    stored = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert fsl._use_recovery_code(f"{stored} other", printed) == "other"


def test_only_hashes_of_recovery_codes_are_stored():
    codes = fsl._new_recovery_codes()
    stored = fsl._stored_recovery_codes(codes)
    assert len(stored.split()) == 10
    assert not any(code.replace("-", "") in stored for code in codes)


def test_recovery_code_works_once():
    codes = fsl._new_recovery_codes()
    stored = fsl._stored_recovery_codes(codes)
    left = fsl._use_recovery_code(stored, codes[3])
    assert len(left.split()) == 9
    assert fsl._use_recovery_code(left, codes[3]) is None
    assert fsl._use_recovery_code(left, codes[4]) is not None


def test_recovery_code_may_be_typed_in_capitals_without_dashes():
    codes = fsl._new_recovery_codes()
    stored = fsl._stored_recovery_codes(codes)
    typed = codes[0].replace("-", " ").upper()
    assert fsl._use_recovery_code(stored, typed) is not None


@pytest.mark.parametrize("code", ["", "nope", "\ud800", None])
def test_unknown_recovery_code_is_refused(code):
    stored = fsl._stored_recovery_codes(fsl._new_recovery_codes())
    assert fsl._use_recovery_code(stored, code) is None


def test_last_recovery_code_leaves_an_empty_list():
    codes = fsl._new_recovery_codes()[:1]
    assert fsl._use_recovery_code(fsl._stored_recovery_codes(codes), codes[0]) == ""


# =============================================================================
# 11. Two-factor login: enrolment and the login step
# =============================================================================


def give_key(app, email="matt@lp.com"):
    """Set a two-factor key straight in the datastore, as an admin could; return it."""
    key = fsl._new_totp_key()
    with app.test_request_context():
        user = app.datastore.find_user(email=email)
        user.tf_totp_secret = key
        app.datastore.put(user)
        app.datastore.commit()
    return key


def next_code(key, steps=0):
    """The code of the current time step (or ``steps`` later)."""
    return fsl.totp_code(key, time.time() + 30 * steps)


def code_a_step_late(key):
    """The code of the step before this one, still accepted (one step late), which
    leaves this step's code for the next login of a server whose clock a test
    cannot move; taken ten seconds or more before the step ends, so the form
    carrying it arrives in time."""
    if time.time() % 30 > 20:
        time.sleep(30 - time.time() % 30)
    return next_code(key, -1)


@pytest.fixture
def wait_a_step(monkeypatch):
    """Move the clock on by one code step, as waiting 30 seconds would: once a step's
    code is used, the next login needs the code of a later step, and a code is
    accepted only when its step has begun."""

    def wait():
        now = time.time
        monkeypatch.setattr(time, "time", lambda: now() + 30)

    return wait


def setup_page(client):
    """The set-up page once the password is confirmed: it shows the new key."""
    answer = client.post(
        "/tf-setup", data={"password": PASSWORD}, follow_redirects=True
    )
    return answer.get_data(True)


def shown_key(page):
    """The key as the set-up page shows it, in groups of four."""
    return re.search(r'id="tf-key"[^>]*>([A-Z2-7 ]+)<', page).group(1)


def test_two_factor_is_off_by_default(app):
    assert app.config["SECURITY_TWO_FACTOR"] is False
    assert app.test_client().get("/tf-setup").status_code == 404


@pytest.mark.parametrize("missing", ["tf_totp_secret", "tf_recovery_codes"])
def test_init_app_names_missing_two_factor_fields(missing):
    fields = ALWAYS_NEEDED + ["tf_totp_secret", "tf_recovery_codes"]
    fields.remove(missing)
    app, datastore = _app_with_user_fields(fields, SECURITY_TWO_FACTOR=True)
    with pytest.raises(RuntimeError) as error:
        Security(app, datastore)
    message = str(error.value)
    assert f"has no {missing!r} field (needed by SECURITY_TWO_FACTOR)" in message


def test_enrolment_in_html_then_login_needs_a_code(store, make_app, wait_a_step):
    app = make_app(store, **TWO_FACTOR)
    client = logged_in_client(app)
    assert b'name="password"' in client.get("/tf-setup").data
    page = setup_page(client)
    key = shown_key(page).replace(" ", "")
    assert "<svg" in page and "otpauth://" not in page.split("<svg")[0][-20:]
    page = client.post("/tf-setup", data={"code": next_code(key)}).get_data(True)
    assert len(re.findall(r"<li><code>[a-z2-7-]{29}</code></li>", page)) == 10
    assert get_user(app).tf_totp_secret.startswith(key + ":")

    client.get("/logout")
    response = login(client)
    assert response.headers["Location"] == "/tf-validate"
    assert client.get("/profile").status_code == 302
    wait_a_step()
    response = client.post("/tf-validate", data={"code": next_code(key)})
    assert response.headers["Location"] == "/"
    assert client.get("/profile").status_code == 200


def test_enrolment_over_json(make_app):
    app = make_app(**TWO_FACTOR)
    add_user(app)
    client = app.test_client()
    json_login(client)
    answer = client.post("/tf-setup", json={"password": PASSWORD}).json["response"]
    key = answer["tf_key"]
    assert answer["tf_uri"].startswith("otpauth://totp/localhost:matt@lp.com?secret=")
    response = client.post("/tf-setup", json={"code": next_code(key)})
    assert len(response.json["response"]["recovery_codes"]) == 10
    answer = client_get_json(client, "/tf-setup").json["response"]
    assert answer == {"tf_enabled": True}
    assert get_user(app).tf_totp_secret.startswith(key)


def test_enrolment_needs_the_password_again(make_app):
    app = make_app(**TWO_FACTOR)
    client = logged_in_client(app)
    page = client.post("/tf-setup", data={"password": "wrong one"}).get_data(True)
    assert "The password is wrong." in page and 'id="tf-key"' not in page


def test_enrolment_needs_a_right_first_code(make_app):
    app = make_app(**TWO_FACTOR)
    client = logged_in_client(app)
    key = shown_key(setup_page(client))
    page = client.post("/tf-setup", data={"code": "000000"}).get_data(True)
    assert "This code is not valid." in page
    assert get_user(app).tf_totp_secret is None
    assert shown_key(page) == key


def test_set_up_page_needs_a_login(make_app):
    app = make_app(**TWO_FACTOR)
    assert client_get_json(app.test_client(), "/tf-setup").status_code == 401


def client_get_json(client, path):
    return client.get(path, headers={"Accept": "application/json"})


def test_without_segno_the_key_is_shown_in_groups(make_app, monkeypatch):
    monkeypatch.setitem(sys.modules, "segno", None)
    app = make_app(**TWO_FACTOR)
    client = logged_in_client(app)
    page = setup_page(client)
    assert "<svg" not in page
    assert re.fullmatch(r"([A-Z2-7]{4} ){7}[A-Z2-7]{4}", shown_key(page))


def test_code_page_is_accessible_to_autofill_and_keypads(make_app):
    app = make_app(**TWO_FACTOR)
    add_user(app)
    give_key(app)
    client = app.test_client()
    login(client)
    page = client.get("/tf-validate").get_data(True)
    assert '<label for="code">Authentication code</label>' in page
    assert 'autocomplete="one-time-code"' in page and 'inputmode="numeric"' in page


def test_wrong_code_is_refused(store, make_app):
    app = make_app(store, **TWO_FACTOR)
    add_user(app)
    give_key(app)
    client = app.test_client()
    login(client)
    page = client.post("/tf-validate", data={"code": "123456"}).get_data(True)
    assert "This code is not valid." in page
    assert client.get("/profile").status_code == 302


def test_replayed_code_is_refused(make_app):
    app = make_app(**TWO_FACTOR)
    add_user(app)
    key = give_key(app)
    code = next_code(key)
    first, second = app.test_client(), app.test_client()
    login(first)
    assert first.post("/tf-validate", data={"code": code}).status_code == 302
    login(second)
    page = second.post("/tf-validate", data={"code": code}).get_data(True)
    assert "This code is not valid." in page


def test_same_code_in_two_racing_requests_gets_in_once(store, make_app):
    app = make_app(store, **TWO_FACTOR)
    add_user(app)
    key = give_key(app)
    code = next_code(key)
    with app.test_request_context():
        slow = app.datastore.find_user(email="matt@lp.com")
        with app.test_request_context():
            fast = app.datastore.find_user(email="matt@lp.com")
            assert fsl._use_code(fast, "authenticator", code)
        assert not fsl._use_code(slow, "authenticator", code)


def test_code_of_two_steps_ago_is_refused(make_app):
    app = make_app(**TWO_FACTOR)
    add_user(app)
    key = give_key(app)
    client = app.test_client()
    login(client)
    response = client.post("/tf-validate", data={"code": next_code(key, -2)})
    assert response.status_code == 200
    assert client.get("/profile").status_code == 302


def test_code_step_expires_after_two_factor_login_within(make_app, clock):
    app = make_app(**TWO_FACTOR)
    add_user(app)
    key = give_key(app)
    client = app.test_client()
    login(client)
    clock.advance(minutes=6)
    response = client.post("/tf-validate", data={"code": next_code(key)})
    assert response.headers["Location"] == "/login"
    assert client.get("/profile").status_code == 302


def test_code_step_without_a_password_first_goes_to_login(make_app):
    app = make_app(**TWO_FACTOR)
    response = app.test_client().post("/tf-validate", json={"code": "123456"})
    assert response.status_code == 400
    assert response.json["response"]["errors"]["code"] == ["Please log in again."]


LOCKOUT_3 = dict(SECURITY_LOCKOUT_ATTEMPTS=3, **TWO_FACTOR)


def test_wrong_codes_count_toward_the_lockout(store, make_app):
    app = make_app(store, **LOCKOUT_3)
    add_user(app)
    key = give_key(app)
    client = app.test_client()
    login(client)
    for _ in range(3):
        client.post("/tf-validate", data={"code": "000000"})
    assert get_user(app).locked_until is not None
    page = client.post("/tf-validate", data={"code": next_code(key)}).get_data(True)
    assert "This account is locked" in page
    assert client.get("/profile").status_code == 302


def test_a_right_password_does_not_reset_the_count_of_wrong_codes(make_app):
    app = make_app(**LOCKOUT_3)
    add_user(app)
    give_key(app)
    client = app.test_client()
    for _ in range(3):
        login(client)
        client.post("/tf-validate", data={"code": "000000"})
    assert get_user(app).locked_until is not None


def test_a_right_code_clears_the_count_of_wrong_ones(make_app):
    app = make_app(**LOCKOUT_3)
    add_user(app)
    key = give_key(app)
    client = app.test_client()
    login(client)
    client.post("/tf-validate", data={"code": "000000"})
    client.post("/tf-validate", data={"code": next_code(key)})
    assert get_user(app).failed_login_count == 0


def test_wrong_code_sends_login_failed(make_app):
    app = make_app(**TWO_FACTOR)
    add_user(app)
    give_key(app)
    client = app.test_client()
    login(client)
    failures = []
    receiver = lambda sender, **kwargs: failures.append(kwargs)  # noqa: E731
    fsl.login_failed.connect(receiver)
    try:
        client.post("/tf-rescue", data={"code": "nope-nope"})
    finally:
        fsl.login_failed.disconnect(receiver)
    assert [(f["reason"], f["identifier"]) for f in failures] == [
        ("invalid_code", "matt@lp.com")
    ]


def test_recovery_code_logs_in_once(store, make_app):
    app = make_app(store, **TWO_FACTOR)
    client = logged_in_client(app)
    key = shown_key(setup_page(client))
    page = client.post("/tf-setup", data={"code": next_code(key)}).get_data(True)
    code = re.findall(r"<li><code>([a-z2-7-]{29})</code></li>", page)[0]
    client.get("/logout")

    login(client)
    assert client.post("/tf-rescue", data={"code": code}).status_code == 302
    assert "9 are left" in client.get("/tf-setup").get_data(True)
    assert client.get("/profile").status_code == 200
    client.get("/logout")
    login(client)
    page = client.post("/tf-rescue", data={"code": code}).get_data(True)
    assert "This code is not valid." in page
    assert client.get("/profile").status_code == 302


def test_json_login_asks_for_the_code_then_answers_like_a_login(store, make_app):
    app = make_app(store, **TWO_FACTOR)
    user_id = add_user(app)
    key = give_key(app)
    client = app.test_client()
    response = json_login(client)
    assert response.status_code == 200
    assert response.json["response"] == {
        "tf_required": True,
        "tf_setup_required": False,
    }
    assert (
        client.get("/profile", headers={"Accept": "application/json"}).status_code
        == 401
    )

    response = client.post("/tf-validate", json={"code": next_code(key)})
    assert response.status_code == 200
    user = response.json["response"]["user"]
    assert user["id"] == user_id
    token = user["authentication_token"]
    assert app.test_client().get("/token", headers={"Authentication-Token": token}).json


def test_json_wrong_code_is_a_400_field_error(make_app):
    app = make_app(**TWO_FACTOR)
    add_user(app)
    give_key(app)
    client = app.test_client()
    json_login(client)
    response = client.post("/tf-validate", json={"code": "12345x"})
    assert response.status_code == 400
    assert response.json["response"]["errors"] == {"code": ["This code is not valid."]}


def test_remember_cookie_is_set_only_after_the_second_step(make_app):
    app = make_app(**TWO_FACTOR)
    add_user(app)
    key = give_key(app)
    client = app.test_client()
    response = login(client, remember="y")
    assert "remember_token" not in response.headers.get("Set-Cookie", "")
    response = client.post("/tf-validate", data={"code": next_code(key)})
    assert "remember_token=" in ";".join(response.headers.getlist("Set-Cookie"))


def test_no_token_before_the_second_step(make_app):
    app = make_app(**TWO_FACTOR)
    add_user(app)
    give_key(app)
    response = json_login(app.test_client())
    assert "authentication_token" not in str(response.json)


def test_setting_up_a_key_ends_tokens_issued_before(make_app):
    app = make_app(**TWO_FACTOR)
    add_user(app)
    token = auth_token(app.test_client())
    give_key(app)
    response = app.test_client().get("/token", headers={"Authentication-Token": token})
    assert response.status_code == 401


def test_enrolling_keeps_the_current_session(make_app):
    app = make_app(**TWO_FACTOR)
    client = logged_in_client(app)
    key = shown_key(setup_page(client))
    client.post("/tf-setup", data={"code": next_code(key)})
    assert "Two-factor login is on" in client.get("/tf-setup").get_data(True)
    assert login(app.test_client()).headers["Location"] == "/tf-validate"
    assert client.get("/profile").get_data(True) == "profile of matt@lp.com"


def test_basic_auth_is_refused_for_two_factor_users(make_app):
    app = make_app(**TWO_FACTOR)
    add_user(app)
    give_key(app)
    credentials = base64.b64encode(f"matt@lp.com:{PASSWORD}".encode()).decode()
    headers = {"Authorization": f"Basic {credentials}"}
    assert app.test_client().get("/basic", headers=headers).status_code == 401


def test_basic_auth_for_two_factor_users_when_allowed(make_app):
    app = make_app(SECURITY_TWO_FACTOR_ALLOW_BASIC=True, **TWO_FACTOR)
    add_user(app)
    give_key(app)
    credentials = base64.b64encode(f"matt@lp.com:{PASSWORD}".encode()).decode()
    headers = {"Authorization": f"Basic {credentials}"}
    assert app.test_client().get("/basic", headers=headers).status_code == 200


def test_users_without_a_key_log_in_with_the_password_alone(make_app):
    app = make_app(**TWO_FACTOR)
    add_user(app)
    client = app.test_client()
    assert login(client).headers["Location"] == "/"
    assert client.get("/profile").status_code == 200


def test_required_two_factor_makes_users_set_it_up_at_login(store, make_app):
    app = make_app(store, SECURITY_TWO_FACTOR_REQUIRED=True, **TWO_FACTOR)
    add_user(app)
    client = app.test_client()
    response = login(client, next="/profile")
    assert response.headers["Location"] == "/tf-setup"
    assert client.get("/profile").status_code == 302
    key = shown_key(client.get("/tf-setup").get_data(True)).replace(" ", "")
    page = client.post("/tf-setup", data={"code": next_code(key)}).get_data(True)
    assert len(re.findall(r"<li><code>", page)) == 10
    assert 'href="/profile"' in page
    assert client.get("/profile").status_code == 200


def test_required_two_factor_over_json(make_app):
    app = make_app(SECURITY_TWO_FACTOR_REQUIRED=True, **TWO_FACTOR)
    add_user(app)
    client = app.test_client()
    response = json_login(client)
    assert response.json["response"] == {"tf_required": True, "tf_setup_required": True}
    key = client.post("/tf-setup", json={}).json["response"]["tf_key"]
    response = client.post("/tf-setup", json={"code": next_code(key)})
    assert len(response.json["response"]["recovery_codes"]) == 10
    assert response.json["response"]["user"]["authentication_token"]


def test_passwordless_link_needs_the_second_factor(make_app):
    app = make_app(SECURITY_PASSWORDLESS=True, **TWO_FACTOR)
    add_user(app)
    key = give_key(app)
    client = app.test_client()
    with fsl.capture_passwordless_login_requests() as requests:
        client.post("/login", data={"email": "matt@lp.com"})
    response = client.get(f"/login/{requests[0]['login_token']}")
    assert response.headers["Location"] == "/tf-validate"
    assert client.get("/profile").status_code == 302
    client.post("/tf-validate", data={"code": next_code(key)})
    assert client.get("/profile").status_code == 200


def test_reset_link_needs_the_second_factor_to_log_in(make_app):
    app = make_app(SECURITY_RECOVERABLE=True, **TWO_FACTOR)
    add_user(app)
    give_key(app)
    client = app.test_client()
    with fsl.capture_reset_password_requests() as requests:
        client.post("/reset", data={"email": "matt@lp.com"})
    new = {"password": "a new password", "password_confirm": "a new password"}
    response = client.post(f"/reset/{requests[0]['token']}", data=new)
    assert response.headers["Location"] == "/tf-validate"
    assert client.get("/profile").status_code == 302


def test_disabling_needs_the_password_and_ends_the_code_step(
    store, make_app, wait_a_step
):
    app = make_app(store, **TWO_FACTOR)
    add_user(app)
    key = give_key(app)
    client = app.test_client()
    login(client)
    client.post("/tf-validate", data={"code": next_code(key)})
    wait_a_step()
    wrong = {"password": "wrong one", "code": next_code(key)}
    assert b"The password is wrong." in client.post("/tf-disable", data=wrong).data
    right = {"password": PASSWORD, "code": next_code(key)}
    assert client.post("/tf-disable", data=right).status_code == 302
    assert client.get("/profile").status_code == 200
    user = get_user(app)
    assert user.tf_totp_secret is None and user.tf_recovery_codes is None
    client.get("/logout")
    assert login(client).headers["Location"] == "/"


def test_new_recovery_codes_replace_the_old_ones(make_app):
    app = make_app(**TWO_FACTOR)
    client = logged_in_client(app)
    key = shown_key(setup_page(client))
    page = client.post("/tf-setup", data={"code": next_code(key)}).get_data(True)
    old = re.findall(r"<li><code>([a-z2-7-]{29})</code></li>", page)
    page = client.post("/tf-recovery-codes", data={"password": PASSWORD})
    new = re.findall(r"<li><code>([a-z2-7-]{29})</code></li>", page.get_data(True))
    assert len(new) == 10 and not set(old) & set(new)
    client.get("/logout")
    login(client)
    assert client.post("/tf-rescue", data={"code": old[0]}).status_code == 200
    assert client.post("/tf-rescue", data={"code": new[0]}).status_code == 302


def test_asvs_7_5_1_turning_two_factor_off_needs_a_code_as_well_as_the_password(
    store, make_app, wait_a_step
):
    app = make_app(store, **TWO_FACTOR)
    client, key, _ = _enrolled_client(app)
    response = client.post("/tf-disable", json={"password": PASSWORD})
    assert response.json["response"]["errors"] == {"code": ["Please enter the code."]}
    wrong = {"password": PASSWORD, "code": next_code(key, 5)}
    response = client.post("/tf-disable", json=wrong)
    assert response.json["response"]["errors"] == {"code": ["This code is not valid."]}
    assert get_user(app).tf_totp_secret is not None
    wait_a_step()
    right = {"password": PASSWORD, "code": next_code(key)}
    assert client.post("/tf-disable", json=right).status_code == 200
    assert get_user(app).tf_totp_secret is None


def test_asvs_7_5_1_wrong_codes_to_turn_two_factor_off_lock_the_account(
    make_app, wait_a_step
):
    app = make_app(**TWO_FACTOR, **LOCKOUT)
    client, key, _ = _enrolled_client(app)
    for _ in range(3):
        client.post("/tf-disable", json={"password": PASSWORD, "code": "000000"})
    wait_a_step()
    right = {"password": PASSWORD, "code": next_code(key)}
    response = client.post("/tf-disable", json=right)
    assert "This account is locked" in str(response.json["response"]["errors"])
    assert get_user(app).tf_totp_secret is not None


def test_a_recovery_code_turns_two_factor_off_when_the_phone_is_lost(make_app):
    app = make_app(**TWO_FACTOR)
    client, _, codes = _enrolled_client(app)
    response = client.post("/tf-disable", json={"password": PASSWORD, "code": codes[3]})
    assert response.status_code == 200
    assert get_user(app).tf_totp_secret is None


def test_turn_off_page_asks_for_the_password_and_a_code(make_app):
    app = make_app(**TWO_FACTOR)
    client, _, _ = _enrolled_client(app)
    page = client.get("/tf-disable").get_data(as_text=True)
    assert 'name="password"' in page and 'name="code"' in page


def test_asvs_7_4_3_new_recovery_codes_end_the_other_sessions_but_this_one(
    make_app, wait_a_step
):
    app = make_app(**TWO_FACTOR)
    client, key, _ = _enrolled_client(app)
    other = app.test_client()
    login(other)
    wait_a_step()
    other.post("/tf-validate", data={"code": next_code(key)})
    assert other.get("/profile").status_code == 200
    client.post("/tf-recovery-codes", data={"password": PASSWORD})
    assert client.get("/profile").status_code == 200
    assert other.get("/profile").status_code == 302


def test_two_factor_changes_are_emailed_to_the_user(make_app):
    app = make_app(**TWO_FACTOR)
    client = logged_in_client(app)
    with app.mail.record_messages() as outbox:
        page = setup_page(client)
        key = shown_key(page).replace(" ", "")
        page = client.post("/tf-setup", data={"code": next_code(key)}).get_data(True)
        codes = re.findall(r"<li><code>([a-z2-7-]{29})</code></li>", page)
        client.get("/logout")
        login(client)
        client.post("/tf-rescue", data={"code": codes[0]})
        client.post("/tf-disable", data={"password": PASSWORD, "code": codes[1]})
    assert [message.recipients for message in outbox] == [["matt@lp.com"]] * 3
    assert outbox[0].subject == "Two-factor login on your account"
    assert "turned on" in outbox[0].body
    assert "recovery codes" in outbox[1].body and "<p>" in outbox[1].html
    assert "turned off" in outbox[2].body


def test_two_factor_notice_can_be_turned_off(make_app):
    app = make_app(SECURITY_SEND_TWO_FACTOR_NOTICE_EMAIL=False, **TWO_FACTOR)
    add_user(app)
    give_key(app)
    with app.mail.record_messages() as outbox:
        assert _cli(app, "users", "tf-reset", "matt@lp.com").exit_code == 0
    assert outbox == []


def test_two_factor_signals(make_app, wait_a_step):
    app = make_app(**TWO_FACTOR)
    add_user(app)
    client = app.test_client()
    seen = []

    def record(name):
        return lambda sender, **kwargs: seen.append((name, kwargs))

    receivers = [
        (fsl.tf_enrolled, record("enrolled")),
        (fsl.tf_code_confirmed, record("confirmed")),
        (fsl.tf_disabled, record("disabled")),
    ]
    for tf_signal, receiver in receivers:
        tf_signal.connect(receiver)
    try:
        login(client)
        page = setup_page(client)
        key = shown_key(page).replace(" ", "")
        page = client.post("/tf-setup", data={"code": next_code(key)}).get_data(True)
        code = re.findall(r"<li><code>([a-z2-7-]{29})</code></li>", page)[0]
        client.get("/logout")
        login(client)
        wait_a_step()
        client.post("/tf-validate", data={"code": next_code(key)})
        client.post("/tf-disable", data={"password": PASSWORD, "code": code})
    finally:
        for tf_signal, receiver in receivers:
            tf_signal.disconnect(receiver)
    assert [name for name, _ in seen] == ["enrolled", "confirmed", "disabled"]
    assert seen[1][1]["method"] == "authenticator"
    assert all(kwargs["user"].email == "matt@lp.com" for _, kwargs in seen)


def test_disabled_feature_adds_no_query_to_a_login(make_app):
    from sqlalchemy import event

    counts = []
    for config in ({}, TWO_FACTOR):
        app = make_app(**config)
        add_user(app)
        statements = []
        with app.app_context():
            engine = app.datastore.db.engine
        listener = lambda *args, found=statements: found.append(args[2])  # noqa: E731
        event.listen(engine, "before_cursor_execute", listener)
        try:
            client = app.test_client()
            login(client)
            client.get("/profile")
        finally:
            event.remove(engine, "before_cursor_execute", listener)
        counts.append(len(statements))
    assert counts[0] == counts[1]


@pytest.mark.slow
def test_disabled_feature_imports_nothing_for_it(tmp_path):
    script = tmp_path / "check.py"
    script.write_text(
        "import sys\n"
        "from test_flask_security_lite import _sqlalchemy_store, add_user, login\n"
        "from flask import Flask\nimport flask_security_lite as fsl\n"
        "app = Flask('x')\n"
        "app.config.update(SECRET_KEY='s', TESTING=True, WTF_CSRF_ENABLED=False)\n"
        "datastore, _ = _sqlalchemy_store(app, 'sqlite://')\n"
        "app.datastore = datastore\n"
        "fsl.Security(app, datastore)\n"
        "add_user(app)\n"
        "assert login(app.test_client()).status_code == 302\n"
        "print('segno' in sys.modules)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(HERE))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env
    )
    assert result.stdout.strip() == "False", result.stderr


TF_PATHS = ["/tf-setup", "/tf-validate", "/tf-rescue", "/tf-disable"]


TF_PATHS += ["/tf-recovery-codes"]


TF_HOSTILE_JSON = HOSTILE_JSON + [
    {"code": ["123456"]},
    {"code": "\ud800\x00"},
    {"code": "9" * 5000},
    {"code": 123456},
    {"code": "١٢٣٤٥٦"},
    {"password": None, "code": None},
]


@pytest.mark.parametrize("state", ["anonymous", "pending", "logged in", "enrolling"])
def test_hostile_input_to_two_factor_views_never_causes_a_server_error(make_app, state):
    app = make_app(SECURITY_TWO_FACTOR_REQUIRED=(state == "enrolling"), **TWO_FACTOR)
    add_user(app)
    if state != "enrolling":
        key = give_key(app)
    client = app.test_client()
    if state != "anonymous":
        login(client)
    if state == "logged in":
        client.post("/tf-validate", data={"code": next_code(key)})
    for path in TF_PATHS:
        responses = [client.post(path, json=body) for body in TF_HOSTILE_JSON]
        for body, content_type in itertools.product(
            HOSTILE_BODIES, ["application/json", "application/x-www-form-urlencoded"]
        ):
            responses.append(client.post(path, data=body, content_type=content_type))
        responses.append(client.get(path, headers={"Accept": "application/json"}))
        assert all(response.status_code < 500 for response in responses), path


@pytest.fixture
def two_factor_site(make_app):
    """A live server of a two-factor app (CSRF on) with one user, for the browser."""
    from werkzeug.serving import make_server

    app = make_app(WTF_CSRF_ENABLED=True, SECURITY_RECOVERABLE=True, **TWO_FACTOR)
    add_user(app)
    server = make_server("127.0.0.1", _free_port(), app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


def _browser_login(page, url):
    page.goto(url + "/login")
    page.fill("input[name=email]", "matt@lp.com")
    page.fill("input[name=password]", PASSWORD)
    page.click("input[type=submit]")


@pytest.mark.slow
def test_browser_enrols_with_a_code_from_the_shown_key(
    two_factor_site, browser, wait_a_step
):
    url, page = two_factor_site, browser.new_page()
    _browser_login(page, url)
    page.goto(url + "/tf-setup")
    page.fill("input[name=password]", PASSWORD)
    page.click("input[type=submit]")
    key = page.inner_text("#tf-key").replace(" ", "")
    assert page.locator("figure.tf-qr svg").count() == 1
    page.fill("input[name=code]", next_code(key))
    page.click("input[type=submit]")
    recovery = page.locator("ul.tf-recovery-codes code").all_inner_texts()
    assert len(recovery) == 10

    page.goto(url + "/logout")
    _browser_login(page, url)
    assert page.url == url + "/tf-validate"
    wait_a_step()
    page.fill("input[name=code]", next_code(key))
    page.click("input[type=submit]")
    page.goto(url + "/profile")
    assert "profile of matt@lp.com" in page.content()

    page.goto(url + "/logout")
    _browser_login(page, url)
    page.click("text=Use a recovery code")
    page.fill("input[name=code]", recovery[0])
    page.click("input[type=submit]")
    page.goto(url + "/profile")
    assert "profile of matt@lp.com" in page.content()


@pytest.mark.slow
def test_two_factor_pages_pass_axe(two_factor_site, axe_page):
    url, page, found = two_factor_site, axe_page, []
    _browser_login(page, url)
    page.goto(url + "/tf-setup")
    found += page.check()  # the password form
    _submit_unchecked(page)
    found += page.check()  # and its error
    page.fill("input[name=password]", PASSWORD)
    page.click("input[type=submit]")
    found += page.check()  # the key and the QR code
    key = page.inner_text("#tf-key").replace(" ", "")
    _submit_unchecked(page)
    found += page.check()  # the code's error
    page.fill("input[name=code]", next_code(key))
    page.click("input[type=submit]")
    found += page.check()  # the recovery codes
    for path in ("/tf-setup", "/tf-recovery-codes", "/tf-disable"):
        page.goto(url + path)
        found += page.check()
    page.goto(url + "/logout")
    _browser_login(page, url)
    for path in ("/tf-validate", "/tf-rescue"):
        page.goto(url + path)
        found += page.check()
        _submit_unchecked(page)
        found += page.check()
    assert found == []


# =============================================================================
# 11. Two-factor login: no login before the second factor, one login after it
# =============================================================================

TRACKED_TWO_FACTOR = dict(
    SECURITY_TRACKABLE=True, SECURITY_RECOVERABLE=True, **CONFIRM, **TWO_FACTOR
)


@pytest.fixture
def logins(make_app):
    """Every ``user_logged_in`` of the app under test, as the emails logged in."""
    seen = []

    def record(sender, user):
        seen.append(user.email)

    import flask_login

    flask_login.user_logged_in.connect(record)
    yield seen
    flask_login.user_logged_in.disconnect(record)


def _login_count(app, email="new@lp.com"):
    return get_user(app, email).login_count or 0


def test_one_registration_is_one_login(store, make_app, logins):
    app = make_app(store, SECURITY_TRACKABLE=True, **REGISTER)
    client = app.test_client()
    form = {"email": "new@lp.com", "password": PASSWORD, "password_confirm": PASSWORD}
    assert client.post("/register", data=form).status_code == 302
    assert logins == ["new@lp.com"]
    assert _login_count(app) == 1


def test_one_json_registration_is_one_login(make_app, logins):
    app = make_app(SECURITY_TRACKABLE=True, **REGISTER)
    payload = {"email": "new@lp.com", "password": PASSWORD}
    assert app.test_client().post("/register", json=payload).status_code == 200
    assert logins == ["new@lp.com"]
    assert _login_count(app) == 1


def _code_step_logs_in_once(app, client, key, logins, email="new@lp.com"):
    """Nobody was logged in before the code; the code logs in exactly once."""
    assert logins == [] and _login_count(app, email) == 0
    assert client.get("/profile").status_code == 302
    client.post("/tf-validate", data={"code": next_code(key)})
    assert logins == [email] and _login_count(app, email) == 1
    assert client.get("/profile").status_code == 200


@pytest.mark.parametrize("as_json", [False, True])
def test_registration_with_required_two_factor_logs_in_only_after_set_up(
    make_app, logins, as_json
):
    app = make_app(
        SECURITY_TRACKABLE=True,
        SECURITY_TWO_FACTOR_REQUIRED=True,
        **REGISTER,
        **TWO_FACTOR,
    )
    client = app.test_client()
    form = {"email": "new@lp.com", "password": PASSWORD, "password_confirm": PASSWORD}
    if as_json:
        answer = client.post("/register", json=form).json["response"]
        assert answer["tf_required"] and "user" not in answer
    else:
        assert client.post("/register", data=form).location == "/tf-setup"
    assert logins == [] and _login_count(app) == 0
    assert client.get("/profile").status_code == 302
    key = client.post("/tf-setup", json={}).json["response"]["tf_key"]
    client.post("/tf-setup", json={"code": next_code(key)})
    assert logins == ["new@lp.com"] and _login_count(app) == 1


def test_confirmation_link_logs_in_only_after_the_code(make_app, logins):
    app = make_app(**TRACKED_TWO_FACTOR)
    link = _register_and_capture_link(app)
    key = give_key(app, "new@lp.com")
    client = app.test_client()
    assert client.get(link).location == "/tf-validate"
    _code_step_logs_in_once(app, client, key, logins)


def test_reset_link_logs_in_only_after_the_code(make_app, logins):
    app = make_app(**TRACKED_TWO_FACTOR)
    add_user(app, "new@lp.com", confirmed_at=datetime(2020, 1, 1))
    key = give_key(app, "new@lp.com")
    client = app.test_client()
    with fsl.capture_reset_password_requests() as requests:
        client.post("/reset", data={"email": "new@lp.com"})
    new = {"password": "a new password", "password_confirm": "a new password"}
    answer = client.post(f"/reset/{requests[0]['token']}", data=new)
    assert answer.location == "/tf-validate"
    _code_step_logs_in_once(app, client, key, logins)


def test_passwordless_link_logs_in_only_after_the_code(make_app, logins):
    app = make_app(SECURITY_PASSWORDLESS=True, SECURITY_TRACKABLE=True, **TWO_FACTOR)
    add_user(app, "new@lp.com")
    key = give_key(app, "new@lp.com")
    client = app.test_client()
    with fsl.capture_passwordless_login_requests() as requests:
        client.post("/login", data={"email": "new@lp.com"})
    answer = client.get(f"/login/{requests[0]['login_token']}")
    assert answer.location == "/tf-validate"
    _code_step_logs_in_once(app, client, key, logins)


def test_json_login_logs_in_only_after_the_code(make_app, logins):
    app = make_app(SECURITY_TRACKABLE=True, **TWO_FACTOR)
    add_user(app, "new@lp.com")
    key = give_key(app, "new@lp.com")
    client = app.test_client()
    answer = json_login(client, "new@lp.com").json["response"]
    assert answer["tf_required"] and "user" not in answer
    _code_step_logs_in_once(app, client, key, logins)


def test_a_confirmation_link_confirms_once(make_app, monkeypatch):
    app = make_app(**CONFIRM)
    link = _register_and_capture_link(app)
    calls = []
    confirm_user = fsl.confirm_user

    def counted(user):
        calls.append(user.email)
        return confirm_user(user)

    monkeypatch.setattr(fsl, "confirm_user", counted)
    assert app.test_client().get(link).location == "/"
    assert calls == ["new@lp.com"]


# =============================================================================
# 11. Two-factor login: side doors the second attack review found (issue 17)
# =============================================================================


def test_logout_ends_a_login_waiting_for_its_code(make_app):
    app = make_app(**TWO_FACTOR)
    add_user(app)
    key = give_key(app)
    client = app.test_client()
    assert login(client).location == "/tf-validate"
    client.get("/logout")
    answer = client.post("/tf-validate", data={"code": next_code(key)})
    assert answer.status_code == 302 and answer.location == "/login"
    assert client.get("/profile").status_code == 302


def test_logout_ends_a_required_set_up_before_anyone_enrols(make_app):
    app = make_app(SECURITY_TWO_FACTOR_REQUIRED=True, **TWO_FACTOR)
    add_user(app)
    client = app.test_client()
    assert login(client).location == "/tf-setup"
    client.get("/logout")
    assert client.post("/tf-setup", json={}).status_code == 401


def test_the_password_asked_again_for_two_factor_counts_and_obeys_the_lock(make_app):
    app = _lockout_site(make_app, **TWO_FACTOR)
    client = app.test_client()
    login(client)
    reasons = []
    fsl.login_failed.connect(
        lambda sender, **data: reasons.append(data["reason"]), app, weak=False
    )
    for _ in range(3):
        client.post("/tf-setup", data={"password": "wrong password"})
    assert reasons == ["invalid_password"] * 3
    assert get_user(app).locked_until is not None
    page = client.post("/tf-setup", data={"password": PASSWORD}, follow_redirects=True)
    assert "This account is locked" in page.text and 'id="tf-key"' not in page.text


def test_an_unconfirmed_registration_gets_no_second_factor_step_nor_token(make_app):
    app = make_app(SECURITY_TWO_FACTOR_REQUIRED=True, **CONFIRM, **TWO_FACTOR)
    client = app.test_client()
    payload = {"email": "new@lp.com", "password": PASSWORD}
    answer = client.post("/register", json=payload).json["response"]
    assert "tf_required" not in answer
    assert "authentication_token" not in answer.get("user", {})
    assert client.post("/tf-setup", json={}).status_code == 401


def test_a_json_two_factor_login_completes_with_csrf_on(make_app):
    app = make_app(WTF_CSRF_ENABLED=True, **TWO_FACTOR)
    add_user(app)
    key = give_key(app)
    client = app.test_client()
    csrf = client.get("/login", headers={"Accept": "application/json"})
    credentials = {"email": "matt@lp.com", "password": PASSWORD}
    first = client.post(
        "/login",
        json=credentials,
        headers={"X-CSRFToken": csrf.json["response"]["csrf_token"]},
    ).json["response"]
    assert first["tf_required"]
    second = client.post(
        "/tf-validate",
        json={"code": next_code(key)},
        headers={"X-CSRFToken": first["csrf_token"]},
    )
    assert second.status_code == 200
    assert second.json["response"]["user"]["authentication_token"]


@pytest.mark.parametrize(
    "declared",
    [
        {"SECURITY_LINK_BASE_URL": "http://localhost"},
        {"SERVER_NAME": "localhost"},
        {"TRUSTED_HOSTS": ["localhost"]},
    ],
)
@pytest.mark.parametrize("prefix", ["@evil.com", "//evil.com", ".evil.com", ":666"])
def test_a_proxy_prefix_cannot_take_an_emailed_link_off_the_declared_host(
    make_app, declared, prefix
):
    from werkzeug.middleware.proxy_fix import ProxyFix

    app = make_app(**RECOVER, **declared)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_prefix=1)
    add_user(app)
    with app.mail.record_messages() as outbox:
        answer = app.test_client().post(
            "/reset",
            json={"email": "matt@lp.com"},
            headers={"X-Forwarded-Prefix": prefix},
        )
    assert answer.status_code == 400 and outbox == []


def test_a_trusted_host_does_not_lend_its_name_to_any_port(make_app):
    app = make_app(TRUSTED_HOSTS=["example.com"], **RECOVER)
    add_user(app)
    client = app.test_client()
    with app.mail.record_messages() as outbox:
        client.post(
            "/reset", json={"email": "matt@lp.com"}, base_url="http://example.com"
        )
        answer = client.post(
            "/reset", json={"email": "matt@lp.com"}, base_url="http://example.com:666"
        )
    assert answer.status_code == 400
    assert len(outbox) == 1 and "http://example.com/reset/" in outbox[0].body


def test_a_port_listed_in_trusted_hosts_gets_its_links(make_app):
    app = make_app(TRUSTED_HOSTS=["example.com", "example.com:8081"], **RECOVER)
    add_user(app)
    with app.mail.record_messages() as outbox:
        app.test_client().post(
            "/reset", json={"email": "matt@lp.com"}, base_url="http://example.com:8081"
        )
    assert "http://example.com:8081/reset/" in outbox[0].body


def _burst(count, request):
    """Run ``request()`` in ``count`` threads released at once; their results."""
    start, results = threading.Barrier(count), []

    def run():
        start.wait()
        results.append(request())

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _reasons(app):
    """The reason of every ``login_failed`` the app sends, as a list kept current."""
    reasons = []
    fsl.login_failed.connect(
        lambda sender, **data: reasons.append(data["reason"]), app, weak=False
    )
    return reasons


def test_a_burst_of_wrong_passwords_gets_no_more_checks_than_the_limit(make_app):
    app = _lockout_site(make_app, "postgres")  # 3 attempts
    reasons = _reasons(app)
    wrong = {"email": "matt@lp.com", "password": "wrong password"}
    statuses = _burst(
        24, lambda: app.test_client().post("/login", json=wrong).status_code
    )
    assert statuses == [400] * 24
    assert reasons.count("invalid_password") <= 3
    assert reasons.count("locked") >= 21
    assert json_login(app.test_client()).status_code == 400  # and still locked


def test_a_burst_of_wrong_codes_gets_no_more_checks_than_the_limit(make_app):
    app = _lockout_site(make_app, "postgres", **TWO_FACTOR)  # 3 attempts
    key = give_key(app)
    reasons = _reasons(app)
    pending = app.test_client()
    assert login(pending).location == "/tf-validate"  # a right password: no attempt
    cookie = pending.get_cookie("session").value
    wrong = f"{int(next_code(key)) ^ 1:06d}"

    def guess():
        client = app.test_client()
        client.set_cookie("session", cookie)
        return client.post("/tf-validate", json={"code": wrong}).status_code

    assert _burst(16, guess) == [400] * 16
    assert reasons.count("invalid_code") <= 3
    right = pending.post("/tf-validate", json={"code": next_code(key)})
    assert right.status_code == 400  # locked: the right code waits for the time


@pytest.mark.parametrize("allow_basic", [True, False])
def test_right_passwords_never_lock_out_a_user_with_a_second_factor(
    make_app, allow_basic
):
    app = _lockout_site(
        make_app, SECURITY_TWO_FACTOR_ALLOW_BASIC=allow_basic, **TWO_FACTOR
    )
    give_key(app)
    for _ in range(6):
        app.test_client().get("/basic", headers=_basic())
    client = app.test_client()
    login(client)
    for _ in range(6):
        client.post("/tf-setup", data={"password": PASSWORD})
    assert get_user(app).locked_until is None
    assert login(app.test_client()).location == "/tf-validate"


def test_a_right_password_gives_no_code_guesses_back(make_app):
    app = _lockout_site(make_app, **TWO_FACTOR)  # 3 attempts
    key = give_key(app)
    client = app.test_client()
    wrong = f"{int(next_code(key)) ^ 1:06d}"
    login(client)
    client.post("/tf-validate", data={"code": wrong})
    client.post("/tf-validate", data={"code": wrong})
    login(client)  # the password again: the two wrong codes still count
    client.post("/tf-validate", data={"code": wrong})
    assert get_user(app).locked_until is not None


def test_a_password_reset_gives_no_code_guesses_back(make_app):
    app = _lockout_site(make_app, **TWO_FACTOR, **RECOVER)  # 3 attempts
    key = give_key(app)
    client = app.test_client()
    login(client)  # a right password: no attempt used
    wrong = f"{int(next_code(key)) ^ 1:06d}"
    for _ in range(3):  # the third wrong code locks
        client.post("/tf-validate", data={"code": wrong})
    new = {"password": "new password", "password_confirm": "new password"}
    assert app.test_client().post(_reset_link(app), json=new).status_code == 200
    assert get_user(app).locked_until is not None
    page = login(app.test_client(), password="new password").get_data(True)
    assert "This account is locked" in page  # until the lock runs out


#: Values no client should send, for every request header the module reads.
ODD_HEADER_VALUES = [
    "Basic " + "é" * 5,
    "é",
    "Basic \x01\x02",
    "Basic " + "A" * 20_000,
    "Basic " + base64.b64encode(b"\xff:\xfe").decode(),
    "Bearer ü",
]
READ_HEADERS = [
    "Authorization",
    "Authentication-Token",
    "X-CSRFToken",
    "Accept",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Prefix",
]


@pytest.mark.parametrize("header", READ_HEADERS)
def test_odd_values_in_any_header_read_are_never_a_500(make_app, header):
    app = make_app(WTF_CSRF_ENABLED=True, **TWO_FACTOR, **RECOVER)
    add_user(app)
    paths = ["/basic", "/token", "/any", "/login", "/reset", "/profile", "/tf-setup"]
    statuses = {
        (path, value[:12]): app.test_client()
        .get(path, headers={header: value})
        .status_code
        for path in paths
        for value in ODD_HEADER_VALUES
    }
    assert {key: code for key, code in statuses.items() if code >= 500} == {}
    assert statuses[("/basic", ODD_HEADER_VALUES[0][:12])] in (200, 401)


def test_equal_token_salts_are_refused_at_startup(make_app):
    with pytest.raises(RuntimeError, match="SECURITY_REMEMBER_SALT and SECURITY_TWO"):
        make_app(SECURITY_TWO_FACTOR_SALT="remember-salt", **TWO_FACTOR)


def test_a_token_of_one_kind_never_passes_for_another_even_on_one_salt(app):
    add_user(app)
    app.config["SECURITY_TWO_FACTOR_SALT"] = app.config["SECURITY_REMEMBER_SALT"]
    with app.test_request_context():
        marker = fsl._make_token(
            "two_factor", app.datastore.find_user(email="matt@lp.com")
        )
    headers = {"Authentication-Token": marker}
    assert app.test_client().get("/token", headers=headers).status_code == 401


# =============================================================================
# 12. Passkeys: a software authenticator
# =============================================================================


PASSKEYS = dict(SECURITY_PASSKEYS=True)

#: The AAGUID Google Password Manager's passkeys report.
GOOGLE_AAGUID = "ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4"


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SoftAuthenticator:
    """A passkey device in software: an ES256 key per passkey, answering as a
    browser's ``PublicKeyCredential.toJSON()`` does. Each keyword of ``create`` and
    ``get`` is a way to lie, for the attack tests."""

    def __init__(self):
        #: credential id -> [private key, user handle, sign count]
        self.passkeys = {}

    def create(
        self,
        options,
        origin="http://localhost",
        rp_id=None,
        verified=True,
        aaguid="00000000-0000-0000-0000-000000000000",
        credential_id=None,
    ):
        import cbor2
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        numbers = key.public_key().public_numbers()
        cose_key = {
            1: 2,
            3: -7,
            -1: 1,
            -2: numbers.x.to_bytes(32, "big"),
            -3: numbers.y.to_bytes(32, "big"),
        }
        credential_id = credential_id or os.urandom(16)
        attested = (
            uuid.UUID(aaguid).bytes
            + len(credential_id).to_bytes(2, "big")
            + credential_id
            + cbor2.dumps(cose_key)
        )
        flags = 0x01 | 0x40 | (0x04 if verified else 0) | 0x08 | 0x10
        auth_data = self._auth_data(rp_id or options["rp"]["id"], flags, 0)
        client_data = self._client_data("webauthn.create", options, origin)
        attestation = {"fmt": "none", "attStmt": {}, "authData": auth_data + attested}
        handle = _unb64url(options["user"]["id"])
        self.passkeys[credential_id] = [key, handle, 0]
        return {
            "id": _b64url(credential_id),
            "rawId": _b64url(credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": _b64url(client_data),
                "attestationObject": _b64url(cbor2.dumps(attestation)),
                "transports": ["internal", "hybrid"],
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }

    def get(
        self,
        options,
        origin="http://localhost",
        rp_id=None,
        verified=True,
        counter=None,
        credential_id=None,
        user_handle=None,
    ):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        credential_id = credential_id or next(reversed(self.passkeys))
        key, handle, count = self.passkeys[credential_id]
        count = count + 1 if counter is None else counter
        self.passkeys[credential_id][2] = count
        flags = 0x01 | (0x04 if verified else 0) | 0x08 | 0x10
        auth_data = self._auth_data(rp_id or options["rpId"], flags, count)
        client_data = self._client_data("webauthn.get", options, origin)
        signed = auth_data + hashlib.sha256(client_data).digest()
        signature = key.sign(signed, ec.ECDSA(hashes.SHA256()))
        return {
            "id": _b64url(credential_id),
            "rawId": _b64url(credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": _b64url(client_data),
                "authenticatorData": _b64url(auth_data),
                "signature": _b64url(signature),
                "userHandle": _b64url(user_handle or handle),
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }

    @staticmethod
    def _auth_data(rp_id, flags, counter):
        rp_hash = hashlib.sha256(rp_id.encode()).digest()
        return rp_hash + bytes([flags]) + counter.to_bytes(4, "big")

    @staticmethod
    def _client_data(kind, options, origin):
        data = {"type": kind, "challenge": options["challenge"], "origin": origin}
        return json.dumps(data).encode()


def passkey_options(client, purpose, password=PASSWORD):
    """The options of a ceremony; adding a passkey asks for the password again."""
    body = {"password": password} if purpose == "register" else {}
    response = client.post(f"/passkeys/{purpose}-options", json=body)
    assert response.status_code == 200, response.json
    return response.json["response"]["options"]


def add_passkey(client, device, label=None, password=PASSWORD, **lies):
    """Register a passkey of ``device`` for the client's user; the response."""
    options = passkey_options(client, "register", password)
    credential = device.create(options, **lies)
    body = {"credential": credential} | ({"label": label} if label else {})
    return client.post("/passkeys/register", json=body)


def sign_in_with_passkey(client, device, **lies):
    """Sign in with the last passkey of ``device``; the response."""
    credential = device.get(passkey_options(client, "login"), **lies)
    return client.post("/passkeys/login", json={"credential": credential})


def passkey_user(make_app, store="sqlite", **config):
    """An app with passkeys on, its user logged in with a passkey added, the
    logged-in client and the device."""
    app = make_app(store, **PASSKEYS, **config)
    add_user(app, confirmed_at=datetime(2026, 1, 1))
    client = app.test_client()
    login(client)
    device = SoftAuthenticator()
    assert add_passkey(client, device).status_code == 200
    return app, client, device


def stored_passkeys(app, email="matt@lp.com"):
    with app.test_request_context():
        return app.datastore._find_passkeys(user=app.datastore.find_user(email=email))


# =============================================================================
# 12. Passkeys: adding one
# =============================================================================


def test_a_passkey_is_added_and_stored_on_every_store(store, make_app):
    app, _, device = passkey_user(make_app, store)
    (passkey,) = stored_passkeys(app)
    assert bytes(passkey.credential_id) == next(iter(device.passkeys))
    assert passkey.label == "Passkey"
    assert passkey.sign_count == 0
    assert passkey.transports == "hybrid,internal"
    assert passkey.created_at is not None and passkey.last_used_at is None
    assert passkey.backup_eligible and passkey.backed_up
    with app.test_request_context():
        user = app.datastore.find_user(email="matt@lp.com")
        (owned,) = app.datastore._find_passkeys(user=user)
        assert str(owned.user.id) == str(user.id)


def test_a_new_passkey_is_offered_its_providers_name(make_app):
    app, client, device = passkey_user(make_app)
    response = add_passkey(client, device, aaguid=GOOGLE_AAGUID)
    assert response.json["response"]["passkey"]["label"] == "Google Password Manager"


def test_a_new_passkey_takes_the_name_typed(make_app):
    app, client, device = passkey_user(make_app)
    response = add_passkey(client, device, label="  Work laptop ")
    assert response.json["response"]["passkey"]["label"] == "Work laptop"


def test_registration_asks_a_discoverable_verified_passkey_without_attestation(
    make_app,
):
    app, client, device = passkey_user(make_app)
    options = passkey_options(client, "register")
    assert options["authenticatorSelection"]["residentKey"] == "required"
    assert options["authenticatorSelection"]["userVerification"] == "required"
    assert options["attestation"] == "none"
    assert options["rp"]["id"] == "localhost"
    excluded = [_unb64url(c["id"]) for c in options["excludeCredentials"]]
    assert excluded == list(device.passkeys)


def test_the_user_handle_is_random_stable_and_names_neither_id_nor_email(make_app):
    app, client, _ = passkey_user(make_app)
    first = passkey_options(client, "register")["user"]
    second = passkey_options(client, "register")["user"]
    handle = _unb64url(first["id"]).decode()
    assert first["id"] == second["id"] and len(handle) >= 32
    assert handle == get_user(app).passkey_handle
    assert "matt" not in handle and handle != str(get_user(app).id)


def test_a_passkey_registered_to_anyone_is_refused(make_app):
    app, _, device = passkey_user(make_app)
    add_user(app, "joe@lp.com")
    joe = app.test_client()
    login(joe, "joe@lp.com")
    taken = next(iter(device.passkeys))
    response = add_passkey(joe, SoftAuthenticator(), credential_id=taken)
    assert response.status_code == 400
    assert "registered already" in response.json["response"]["errors"]["credential"][0]
    assert stored_passkeys(app, "joe@lp.com") == []


def test_a_new_passkey_from_another_origin_is_refused(make_app):
    app, client, device = passkey_user(make_app)
    response = add_passkey(client, device, origin="http://evil.example")
    assert response.status_code == 400
    assert len(stored_passkeys(app)) == 1


def test_a_new_passkey_for_another_rp_id_is_refused(make_app):
    app, client, device = passkey_user(make_app)
    response = add_passkey(client, device, rp_id="evil.example")
    assert response.status_code == 400
    assert len(stored_passkeys(app)) == 1


def test_a_new_passkey_without_user_verification_is_refused_when_required(make_app):
    app, client, device = passkey_user(make_app)
    response = add_passkey(client, device, verified=False)
    assert response.status_code == 400
    assert len(stored_passkeys(app)) == 1


def test_a_registration_answer_serves_once(make_app):
    app, client, device = passkey_user(make_app)
    credential = device.create(passkey_options(client, "register"))
    assert (
        client.post("/passkeys/register", json={"credential": credential}).status_code
        == 200
    )
    again = client.post("/passkeys/register", json={"credential": credential})
    assert again.status_code == 400
    assert "expired" in again.json["response"]["errors"]["credential"][0]
    assert len(stored_passkeys(app)) == 2


def test_adding_a_passkey_needs_a_fresh_login(make_app):
    app = make_app(**PASSKEYS)
    add_user(app)
    client = app.test_client()
    login(client, remember="y")
    with client.session_transaction() as session:
        session["_fresh"] = False  # as after the remember cookie's return
    response = client.post("/passkeys/register-options", json={})
    assert response.status_code == 401
    assert client.get("/passkeys").status_code == 302


@pytest.mark.parametrize("password", [None, "not the password"])
def test_adding_a_passkey_needs_the_password_again(make_app, password):
    app, client, device = passkey_user(make_app)
    body = {} if password is None else {"password": password}
    response = client.post("/passkeys/register-options", json=body)
    assert response.status_code == 400
    assert "password" in response.json["response"]["errors"]


def test_a_passkey_answer_refused_for_a_locked_account_stays_spent(make_app):
    app, _, device = passkey_user(make_app, SECURITY_LOCKOUT_ATTEMPTS=3)
    client = app.test_client()
    credential = device.get(passkey_options(client, "login"))
    with client.session_transaction() as session:
        copied = dict(session)
    with app.test_request_context():
        user = app.datastore.find_user(email="matt@lp.com")
        user.locked_until = datetime(2999, 1, 1)
        app.datastore.put(user)
        app.datastore.commit()
    assert (
        client.post("/passkeys/login", json={"credential": credential}).status_code
        == 400
    )
    with app.test_request_context():
        user = app.datastore.find_user(email="matt@lp.com")
        user.locked_until = None
        app.datastore.put(user)
        app.datastore.commit()
    replay = app.test_client()
    with replay.session_transaction() as session:
        session.update(copied)
    response = replay.post("/passkeys/login", json={"credential": credential})
    assert response.status_code == 400


@pytest.mark.parametrize("label", ["\x1b[2K\r2  YubiKey", "Phone\nBackup", "a\u202eb"])
def test_a_passkey_name_with_control_characters_is_refused(make_app, label):
    app, client, device = passkey_user(make_app)
    assert add_passkey(client, device, label=label).status_code == 400


def test_a_passkey_with_odd_transports_is_stored_without_them(make_app):
    app, client, device = passkey_user(make_app)
    credential = device.create(passkey_options(client, "register"))
    credential["response"]["transports"] = [{}, ["usb"], "internal"]
    response = client.post("/passkeys/register", json={"credential": credential})
    assert response.status_code == 200
    assert stored_passkeys(app)[-1].transports == "internal"


def test_deleting_a_user_deletes_their_passkeys(make_app, store):
    app, client, device = passkey_user(make_app, store=store)
    with app.test_request_context():
        app.datastore.delete_user(app.datastore.find_user(email="matt@lp.com"))
        app.datastore.commit()
        assert app.datastore._find_passkeys() == []


def test_a_user_asked_to_log_in_again_gets_the_login_form(make_app):
    app = make_app(**PASSKEYS)
    add_user(app)
    client = app.test_client()
    login(client, remember="y")
    with client.session_transaction() as session:
        session["_fresh"] = False  # as after the remember cookie's return
    assert client.get("/passkeys").location.startswith("/login?next=")
    assert client.get("/login?next=/passkeys").status_code == 200
    response = login(client, next="/passkeys")
    assert response.location == "/passkeys"
    assert client.get("/passkeys").status_code == 200


def test_a_freshly_logged_in_user_is_sent_on_from_the_login_page(app):
    client = logged_in_client(app)
    assert client.get("/login").status_code == 302


def test_without_mail_a_passkey_is_refused_before_the_browser_makes_it(make_app):
    app = make_app(**PASSKEYS)
    del app.extensions["mail"]
    add_user(app)
    client = app.test_client()
    login(client)
    response = client.post("/passkeys/register-options", json={"password": PASSWORD})
    assert response.status_code == 503


@pytest.mark.parametrize(
    "setting",
    [
        {"SECURITY_LINK_BASE_URL": "http://127.0.0.1:5000"},
        {"SERVER_NAME": "127.0.0.1:5000"},
    ],
)
def test_passkeys_refuse_a_host_declared_as_an_address_at_init_app(make_app, setting):
    with pytest.raises(RuntimeError) as error:
        make_app(**PASSKEYS, **setting)
    assert "passkeys need a domain name" in str(error.value)


def test_adding_and_deleting_a_passkey_email_a_notice_and_signal(make_app):
    app = make_app(**PASSKEYS)
    add_user(app)
    client = app.test_client()
    login(client)
    device = SoftAuthenticator()
    with app.mail.record_messages() as outbox:
        with fsl._capture(fsl.passkey_registered) as added:
            add_passkey(client, device, label="Phone")
        passkey_id = stored_passkeys(app)[0].id
        with fsl._capture(fsl.passkey_deleted) as deleted:
            client.post(f"/passkeys/{passkey_id}/delete", json={})
    assert [m.subject for m in outbox] == ["Passkeys on your account"] * 2
    assert '"Phone" was added' in outbox[0].body
    assert '"Phone" was deleted' in outbox[1].body
    assert [a["passkey"].label for a in added] == ["Phone"]
    assert [d["user"].email for d in deleted] == ["matt@lp.com"]


def test_the_passkey_notice_can_be_turned_off(make_app):
    app = make_app(SECURITY_SEND_PASSKEY_NOTICE_EMAIL=False, **PASSKEYS)
    add_user(app)
    client = app.test_client()
    login(client)
    with app.mail.record_messages() as outbox:
        add_passkey(client, SoftAuthenticator())
    assert outbox == []


def test_passkey_posts_need_the_csrf_header(make_app):
    app = make_app(WTF_CSRF_ENABLED=True, **PASSKEYS)
    client = app.test_client()
    answer = client.get("/login", headers={"Accept": "application/json"})
    csrf = {"X-CSRFToken": answer.json["response"]["csrf_token"]}
    refused = client.post("/passkeys/login-options", json={})
    assert (
        refused.status_code == 400
        and "csrf_token" in refused.json["response"]["errors"]
    )
    assert (
        client.post("/passkeys/login-options", json={}, headers=csrf).status_code == 200
    )


# =============================================================================
# 12. Passkeys: signing in
# =============================================================================


def test_a_passkey_signs_in_on_every_store(store, make_app, logins):
    app, client, device = passkey_user(make_app, store)
    client = app.test_client()
    response = sign_in_with_passkey(client, device)
    assert response.status_code == 200
    assert response.json["response"]["next"] == "/"
    assert "authentication_token" in response.json["response"]["user"]
    assert client.get("/profile").data == b"profile of matt@lp.com"
    assert logins[-1] == "matt@lp.com"
    (passkey,) = stored_passkeys(app)
    assert passkey.sign_count == 1 and passkey.last_used_at is not None


def test_login_options_list_no_passkey_and_are_alike_for_everyone(make_app):
    app, client, _ = passkey_user(make_app)
    options = [passkey_options(c, "login") for c in (client, app.test_client())]
    for option in options:
        assert "allowCredentials" not in option or option["allowCredentials"] == []
        option.pop("challenge")
    assert options[0] == options[1]
    assert options[0]["userVerification"] == "required"


def test_a_passkey_sign_in_starts_a_new_session(make_app):
    app, _, device = passkey_user(make_app)
    client = app.test_client()
    with client.session_transaction() as session:
        session["planted"] = "by an attacker"
    sign_in_with_passkey(client, device)
    with client.session_transaction() as session:
        assert "planted" not in session


def test_a_passkey_sign_in_is_tracked(make_app):
    app, _, device = passkey_user(make_app, SECURITY_TRACKABLE=True)
    before = get_user(app).login_count
    sign_in_with_passkey(app.test_client(), device)
    assert get_user(app).login_count == before + 1


def test_a_passkey_sign_in_goes_to_a_safe_next_only(make_app):
    app, _, device = passkey_user(make_app)
    for declared, expected in (("/profile", "/profile"), ("//evil.com", "/")):
        client = app.test_client()
        credential = device.get(passkey_options(client, "login"))
        body = {"credential": credential, "next": declared}
        response = client.post("/passkeys/login", json=body)
        assert response.json["response"]["next"] == expected


def test_a_passkey_answer_serves_once(make_app):
    app, _, device = passkey_user(make_app)
    client = app.test_client()
    credential = device.get(passkey_options(client, "login"))
    assert (
        client.post("/passkeys/login", json={"credential": credential}).status_code
        == 200
    )
    client.get("/logout")
    again = client.post("/passkeys/login", json={"credential": credential})
    assert again.status_code == 400
    assert client.get("/profile").status_code == 302


def test_a_passkey_answer_replayed_with_its_old_session_cookie_is_refused(make_app):
    app, _, device = passkey_user(make_app)
    client = app.test_client()
    credential = device.get(passkey_options(client, "login"), counter=0)
    cookie = client.get_cookie("session").value
    assert (
        client.post("/passkeys/login", json={"credential": credential}).status_code
        == 200
    )
    attacker = app.test_client()
    attacker.set_cookie("session", cookie)
    replay = attacker.post("/passkeys/login", json={"credential": credential})
    assert replay.status_code == 400
    assert attacker.get("/profile").status_code == 302


def test_a_passkey_answer_from_another_origin_is_refused(make_app):
    app, _, device = passkey_user(make_app)
    client = app.test_client()
    response = sign_in_with_passkey(client, device, origin="http://evil.example")
    assert response.status_code == 400
    assert client.get("/profile").status_code == 302


def test_a_passkey_answer_for_another_rp_id_is_refused(make_app):
    app, _, device = passkey_user(make_app)
    client = app.test_client()
    assert sign_in_with_passkey(client, device, rp_id="evil.example").status_code == 400
    assert client.get("/profile").status_code == 302


def test_a_passkey_answer_without_user_verification_is_refused_when_required(
    make_app,
):
    app, _, device = passkey_user(make_app)
    client = app.test_client()
    assert sign_in_with_passkey(client, device, verified=False).status_code == 400
    assert client.get("/profile").status_code == 302


def test_a_sign_count_going_back_is_refused_and_logged(make_app, caplog):
    app, _, device = passkey_user(make_app)
    assert sign_in_with_passkey(app.test_client(), device, counter=5).status_code == 200
    client = app.test_client()
    response = sign_in_with_passkey(client, device, counter=3)
    assert response.status_code == 400
    assert client.get("/profile").status_code == 302
    assert "sign count of 3 was not greater than current count of 5" in caplog.text


def test_a_sign_count_past_two_to_the_31_is_stored_on_every_store(make_app, store):
    app, _, device = passkey_user(make_app, store=store)
    big = 2**32 - 1  # the counter is an unsigned 32-bit number
    assert (
        sign_in_with_passkey(app.test_client(), device, counter=big).status_code == 200
    )
    assert stored_passkeys(app)[0].sign_count == big


def test_an_expired_passkey_challenge_is_refused(make_app, monkeypatch):
    app, _, device = passkey_user(make_app)
    client = app.test_client()
    credential = device.get(passkey_options(client, "login"))
    later = time.time() + 6 * 60
    monkeypatch.setattr(fsl.time, "time", lambda: later)
    response = client.post("/passkeys/login", json={"credential": credential})
    assert response.status_code == 400
    assert "expired" in response.json["response"]["errors"]["credential"][0]


def test_an_unknown_passkey_is_refused(make_app):
    app, _, _ = passkey_user(make_app)
    stranger = SoftAuthenticator()
    options = {"rp": {"id": "localhost"}, "user": {"id": "AA"}, "challenge": "AA"}
    stranger.create(options)
    client = app.test_client()
    assert sign_in_with_passkey(client, stranger).status_code == 400


def test_a_passkey_naming_another_users_handle_is_refused(make_app):
    app, _, device = passkey_user(make_app)
    add_user(app, "joe@lp.com", passkey_handle="joes-handle")
    client = app.test_client()
    response = sign_in_with_passkey(client, device, user_handle=b"joes-handle")
    assert response.status_code == 400
    assert client.get("/profile").status_code == 302


@pytest.mark.parametrize(
    "config, change, message",
    [
        ({}, {"active": False}, "This account is disabled."),
        (CONFIRM, {"confirmed_at": None}, "Please confirm your email address first."),
        (LOCKOUT, {"locked_until": datetime(2999, 1, 1)}, "This account is locked"),
    ],
)
def test_a_passkey_of_a_user_who_may_not_log_in_is_refused(
    make_app, config, change, message
):
    app, _, device = passkey_user(make_app, **config)
    with app.test_request_context():
        user = app.datastore.find_user(email="matt@lp.com")
        for name, value in change.items():
            setattr(user, name, value)
        app.datastore.put(user)
        app.datastore.commit()
    client = app.test_client()
    response = sign_in_with_passkey(client, device)
    assert response.status_code == 400
    assert message in response.json["response"]["errors"]["credential"][0]
    assert client.get("/profile").status_code == 302


def test_a_passkey_sign_in_clears_the_wrong_passwords(make_app):
    app, _, device = passkey_user(make_app, **LOCKOUT)
    login(app.test_client(), password="wrong password")
    assert get_user(app).failed_login_count == 1
    assert sign_in_with_passkey(app.test_client(), device).status_code == 200
    assert get_user(app).failed_login_count == 0


def test_a_verified_passkey_is_two_factors(make_app):
    app, _, device = passkey_user(make_app, **TWO_FACTOR)
    fsl_key = "JBSWY3DPEHPK3PXP"
    with app.test_request_context():
        user = app.datastore.find_user(email="matt@lp.com")
        user.tf_totp_secret = fsl_key
        app.datastore.put(user)
        app.datastore.commit()
    client = app.test_client()
    response = sign_in_with_passkey(client, device)
    assert "tf_required" not in response.json["response"]
    assert client.get("/profile").status_code == 200


def test_an_unverified_passkey_is_followed_by_the_code_step(make_app):
    app, _, device = passkey_user(
        make_app, SECURITY_PASSKEYS_USER_VERIFICATION="preferred", **TWO_FACTOR
    )
    with app.test_request_context():
        user = app.datastore.find_user(email="matt@lp.com")
        user.tf_totp_secret = "JBSWY3DPEHPK3PXP"
        app.datastore.put(user)
        app.datastore.commit()
    client = app.test_client()
    response = sign_in_with_passkey(client, device, verified=False)
    assert response.json["response"]["tf_required"] is True
    assert response.json["response"]["next"] == "/tf-validate"
    assert client.get("/profile").status_code == 302
    code = fsl.totp_code("JBSWY3DPEHPK3PXP")
    assert client.post("/tf-validate", data={"code": code}).status_code == 302
    assert client.get("/profile").status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"credential": "x"},
        {"credential": {}},
        {"credential": {"rawId": 5, "response": None}},
        {"credential": {"rawId": "!!", "id": "!!", "response": {"userHandle": "%"}}},
    ],
)
def test_a_malformed_passkey_answer_is_a_400(make_app, body):
    app, _, _ = passkey_user(make_app)
    client = app.test_client()
    passkey_options(client, "login")
    response = client.post("/passkeys/login", json=body)
    assert response.status_code == 400


def test_a_malformed_registration_answer_is_a_400(make_app):
    app, client, _ = passkey_user(make_app)
    passkey_options(client, "register")
    credential = {"id": "AA", "rawId": "AA", "type": "public-key", "response": {}}
    response = client.post("/passkeys/register", json={"credential": credential})
    assert response.status_code == 400


def test_passkeys_refuse_an_ip_address_host(make_app):
    app, client, _ = passkey_user(make_app)
    response = client.post(
        "/passkeys/login-options", json={}, base_url="http://127.0.0.1"
    )
    assert response.status_code == 400
    assert "http://localhost" in response.json["response"]["error"]


def test_passkeys_take_origin_and_rp_id_from_the_declared_host(make_app):
    app, _, device = passkey_user(make_app)
    app.config["SECURITY_LINK_BASE_URL"] = "https://www.example.com"
    client = app.test_client()
    assert passkey_options(client, "login")["rpId"] == "www.example.com"
    local = sign_in_with_passkey(client, device, rp_id="localhost")
    assert local.status_code == 400
    credential = device.get(
        passkey_options(client, "login"), origin="https://www.example.com"
    )
    response = client.post("/passkeys/login", json={"credential": credential})
    assert response.status_code == 200


def test_passkeys_refuse_a_host_the_app_did_not_declare(make_app):
    app, client, _ = passkey_user(make_app)
    response = client.post(
        "/passkeys/login-options", json={}, base_url="http://evil.example"
    )
    assert response.status_code == 400
    assert "SERVER_NAME" in response.json["response"]["error"]


# =============================================================================
# 12. Passkeys: managing them
# =============================================================================


def test_the_passkeys_page_lists_name_added_and_last_used(make_app):
    app, client, device = passkey_user(make_app)
    add_passkey(client, device, label="Work <laptop>")
    sign_in_with_passkey(app.test_client(), device)
    page = client.get("/passkeys").get_data(as_text=True)
    assert "Work &lt;laptop&gt;" in page and "never used" in page
    assert "last used <time" in page and "Added <time" in page
    listed = client.get("/passkeys", headers={"Accept": "application/json"}).json
    labels = [p["label"] for p in listed["response"]["passkeys"]]
    assert labels == ["Passkey", "Work <laptop>"]
    assert listed["response"]["passkeys"][1]["last_used_at"] is not None


def test_a_passkey_is_renamed_by_form_and_by_json(make_app):
    app, client, _ = passkey_user(make_app)
    passkey_id = stored_passkeys(app)[0].id
    response = client.post(f"/passkeys/{passkey_id}/rename", data={"label": "Phone"})
    assert response.status_code == 302 and response.location == "/passkeys"
    assert stored_passkeys(app)[0].label == "Phone"
    response = client.post(f"/passkeys/{passkey_id}/rename", json={"label": "Tablet"})
    assert response.json["response"]["passkey"]["label"] == "Tablet"


@pytest.mark.parametrize("label", ["", "   ", "x" * 65, None, 7])
def test_a_passkey_name_must_be_given_and_short(make_app, label):
    app, client, _ = passkey_user(make_app)
    passkey_id = stored_passkeys(app)[0].id
    response = client.post(f"/passkeys/{passkey_id}/rename", json={"label": label})
    assert response.status_code == 400
    assert "at most 64 characters" in response.json["response"]["errors"]["label"][0]
    assert stored_passkeys(app)[0].label == "Passkey"


def test_a_passkey_is_deleted_by_form(make_app):
    app, client, _ = passkey_user(make_app)
    passkey_id = stored_passkeys(app)[0].id
    response = client.post(f"/passkeys/{passkey_id}/delete")
    assert response.status_code == 302
    assert stored_passkeys(app) == []
    assert "was deleted" in client.get("/passkeys").get_data(as_text=True)


def test_another_users_passkey_cannot_be_renamed_or_deleted(make_app):
    app, _, _ = passkey_user(make_app)
    passkey_id = stored_passkeys(app)[0].id
    add_user(app, "joe@lp.com")
    joe = app.test_client()
    login(joe, "joe@lp.com")
    renamed = joe.post(f"/passkeys/{passkey_id}/rename", json={"label": "mine"})
    deleted = joe.post(f"/passkeys/{passkey_id}/delete", json={})
    assert renamed.status_code == deleted.status_code == 404
    assert joe.post("/passkeys/nonsense/delete", json={}).status_code == 404
    assert stored_passkeys(app)[0].label == "Passkey"


def test_the_last_passkey_of_a_user_without_a_password_stays(make_app):
    app, _, device = passkey_user(make_app)
    with app.test_request_context():
        user = app.datastore.find_user(email="matt@lp.com")
        user.password = None
        app.datastore.put(user)
        app.datastore.commit()
    client = app.test_client()
    assert sign_in_with_passkey(client, device).status_code == 200
    passkey_id = stored_passkeys(app)[0].id
    response = client.post(f"/passkeys/{passkey_id}/delete", json={})
    assert response.status_code == 400
    assert "only way into your account" in response.json["response"]["error"]
    add_passkey(client, device)
    assert client.post(f"/passkeys/{passkey_id}/delete", json={}).status_code == 200
    assert len(stored_passkeys(app)) == 1


def test_the_menu_links_the_passkeys_page(make_app):
    app, client, _ = passkey_user(make_app, **TWO_FACTOR)
    assert 'href="/passkeys"' in client.get("/tf-setup").get_data(as_text=True)
    here = '<span aria-current="page">Passkeys</span>'
    assert here in client.get("/passkeys").get_data(as_text=True)


# =============================================================================
# 12. Passkeys: the login page, the script, and passkeys off
# =============================================================================


def test_the_login_page_offers_a_passkey_and_conditional_mediation(make_app):
    app = make_app(**PASSKEYS)
    page = app.test_client().get("/login").get_data(as_text=True)
    assert 'autocomplete="username webauthn"' in page
    assert "Sign in with a passkey" in page
    assert '<script src="/passkeys/passkeys.js" defer>' in page


def test_the_login_page_has_no_passkey_when_passkeys_are_off(app):
    page = app.test_client().get("/login").get_data(as_text=True)
    assert "webauthn" not in page and "passkey" not in page.lower()
    assert app.test_client().get("/passkeys").status_code == 404


def test_the_passkey_script_is_small_and_served_as_javascript(make_app):
    app = make_app(**PASSKEYS)
    response = app.test_client().get("/passkeys/passkeys.js")
    assert response.mimetype == "text/javascript"
    script = response.get_data(as_text=True)
    assert len(script.splitlines()) <= 100
    assert "parseCreationOptionsFromJSON" in script and "X-CSRFToken" in script


def test_passkeys_off_import_nothing_and_query_nothing():
    code = textwrap.dedent(
        """
        import re, sys
        from flask import Flask
        from sqlalchemy import event
        import flask_security_lite as fsl
        from test_flask_security_lite import PASSWORD, _add_test_views
        from test_flask_security_lite import _sqlalchemy_store
        app = Flask(__name__)
        app.config.update(SECRET_KEY="k", TESTING=True, WTF_CSRF_ENABLED=False)
        datastore, _ = _sqlalchemy_store(app, "sqlite://")
        fsl.Security(app, datastore)
        _add_test_views(app)
        with app.app_context():
            datastore.create_user(email="matt@lp.com", password=PASSWORD)
            datastore.commit()
            statements = []
            event.listen(datastore.db.engine, "before_cursor_execute",
                         lambda *a: statements.append(a[2]))
        client = app.test_client()
        client.get("/login")
        client.post("/login", data={"email": "matt@lp.com", "password": PASSWORD})
        assert client.get("/profile").status_code == 200 and statements
        touched = any(re.search(r"\\bpasskey\\b", s) for s in statements)
        print("webauthn" in sys.modules, touched)
        """
    )
    output = subprocess.run(
        [sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True
    )
    assert output.stdout.strip() == "False False", output.stderr


# =============================================================================
# 13. The blueprint: what the attack review found
# =============================================================================


@pytest.mark.parametrize("site", list(FUZZ_SITES))
@pytest.mark.parametrize("logged_in", [False, True])
def test_fuzzed_bodies_never_cause_a_server_error_or_a_partial_row(
    make_app, site, logged_in
):
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    app, endpoints = _fuzz_site(make_app, **FUZZ_SITES[site])
    client = app.test_client()
    json_bodies, form_bodies = _fuzz_strategies()
    registered = []
    fsl.user_registered.connect(
        lambda sender, user, **kw: registered.append(user.email), app, weak=False
    )

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        endpoint=st.sampled_from(endpoints),
        body=json_bodies | form_bodies | st.sampled_from([_nested(1000), "x" * 70000]),
    )
    @example(endpoint=("POST", "/login"), body=_nested(1000))
    @example(endpoint=("POST", "/token"), body=_nested(1000))
    @example(
        endpoint=("POST", "/register"),
        body={"email": "a@lp.com", "password": "p" * 5000},
    )
    def send(endpoint, body):
        if logged_in:
            login(client)
        response = _fuzz_request(client, *endpoint, body)
        assert response.status_code in FUZZ_STATUSES, (endpoint, response.status_code)
        rows = _user_rows(app)
        assert len(rows) == 2 + len(registered)
        assert all(email == fsl.normalize_email(email) for email, _ in rows)
        assert all(password and password.startswith("$") for _, password in rows)

    send()


#: The requests that email a link, each with the config that offers it.
LINK_MAILERS = {
    "forgot password": ("/reset", {"email": "matt@lp.com"}, RECOVER),
    "resend confirmation": ("/confirm", {"email": "new@lp.com"}, CONFIRM),
    "passwordless": ("/login", {"email": "matt@lp.com"}, PASSWORDLESS),
    "register": ("/register", {"email": "x@lp.com", "password": PASSWORD}, CONFIRM),
}


def _link_site(make_app, config, **extra):
    app = make_app(**config, **extra)
    add_user(app, confirmed_at=datetime.now())
    add_user(app, email="new@lp.com")
    return app


@pytest.mark.parametrize("mailer", list(LINK_MAILERS))
def test_no_link_is_mailed_to_a_host_the_app_did_not_declare(make_app, mailer):
    path, body, config = LINK_MAILERS[mailer]
    app = _link_site(make_app, config)
    with app.mail.record_messages() as outbox:
        response = app.test_client().post(
            path, json=body, headers={"Host": "evil.example"}
        )
    assert response.status_code == 400
    assert "SERVER_NAME" in response.json["response"]["error"]
    assert outbox == []
    with app.test_request_context():
        assert app.datastore.find_user(email="x@lp.com") is None


@pytest.mark.parametrize(
    "kind, make_token, config",
    [
        ("reset", fsl.generate_reset_password_token, RECOVER),
        ("confirm", fsl.generate_confirmation_token, CONFIRM),
        ("login", fsl.generate_login_token, PASSWORDLESS),
    ],
)
def test_an_expired_link_opened_on_another_host_mails_nothing(
    make_app, clock, kind, make_token, config
):
    app = _link_site(make_app, config)
    with app.test_request_context():
        token = make_token(app.datastore.find_user(email="new@lp.com"))
    clock.advance(days=6)
    path = {"reset": "/reset/", "confirm": "/confirm/", "login": "/login/"}[kind]
    with app.mail.record_messages() as outbox:
        response = app.test_client().get(path + token, headers={"Host": "evil.example"})
    assert response.status_code == 400 and outbox == []


@pytest.mark.parametrize(
    "declared, expected",
    [
        ({"SERVER_NAME": "example.com"}, "http://example.com/reset/"),
        (
            {"SECURITY_LINK_BASE_URL": "https://example.com"},
            "https://example.com/reset/",
        ),
    ],
)
def test_links_are_built_for_the_declared_host(make_app, declared, expected):
    app = _link_site(make_app, RECOVER, **declared)
    for host in ("evil.example", "example.com"):
        with app.mail.record_messages() as outbox:
            response = app.test_client().post(
                "/reset", json={"email": "matt@lp.com"}, headers={"Host": host}
            )
        assert response.status_code == 200
        assert expected in outbox[0].body and "evil" not in outbox[0].body


def test_a_password_change_from_an_undeclared_host_changes_and_mails_nothing(
    make_app,
):
    app = _link_site(make_app, {**CHANGE, **RECOVER})
    headers = {
        "Host": "evil.example",
        "Authentication-Token": auth_token(app.test_client()),
    }
    new = {"password": PASSWORD, "new_password": "new password"}
    new["new_password_confirm"] = "new password"
    with app.mail.record_messages() as outbox:
        response = app.test_client().post("/change", json=new, headers=headers)
    assert response.status_code == 400 and outbox == []
    assert json_login(app.test_client()).status_code == 200


def test_email_templates_build_external_urls_on_the_declared_host(make_app):
    app = _link_site(
        make_app, {**CHANGE, **RECOVER}, SECURITY_LINK_BASE_URL="https://example.com"
    )
    headers = {
        "Host": "evil.example",
        "Authentication-Token": auth_token(app.test_client()),
    }
    new = {"password": PASSWORD, "new_password": "new password"}
    new["new_password_confirm"] = "new password"
    with app.mail.record_messages() as outbox:
        response = app.test_client().post("/change", json=new, headers=headers)
    assert response.status_code == 200
    assert "https://example.com/reset" in outbox[0].body
    assert "evil" not in outbox[0].body + outbox[0].html


def test_trusted_hosts_refuse_other_hosts_and_build_links_for_their_own(make_app):
    app = _link_site(make_app, RECOVER, TRUSTED_HOSTS=["example.com"])
    client = app.test_client()
    with app.mail.record_messages() as outbox:
        refused = client.post(
            "/reset", json={"email": "matt@lp.com"}, headers={"Host": "evil.example"}
        )
        sent = client.post(
            "/reset", json={"email": "matt@lp.com"}, headers={"Host": "example.com"}
        )
    assert refused.status_code == 400 and sent.status_code == 200
    assert len(outbox) == 1 and "http://example.com/reset/" in outbox[0].body


@pytest.mark.parametrize(
    "base", ["example.com", "ftp://example.com", "https://example.com/app"]
)
def test_link_base_url_must_be_a_scheme_and_a_host(make_app, base):
    with pytest.raises(ValueError, match="SECURITY_LINK_BASE_URL"):
        make_app(**RECOVER, SECURITY_LINK_BASE_URL=base)


def test_init_app_warns_when_links_are_mailed_and_no_host_is_declared(make_app, caplog):
    with caplog.at_level(logging.WARNING, "flask_security_lite"):
        make_app(**RECOVER)
    assert "SERVER_NAME" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "flask_security_lite"):
        make_app(**RECOVER, SECURITY_LINK_BASE_URL="https://example.com")
    assert "SERVER_NAME" not in caplog.text


def _hold_token_readers(app, count):
    """Make the first ``count`` user reads (the link checks of ``count`` requests)
    all happen before any of those requests goes on."""
    everyone_read = threading.Barrier(count, timeout=5)
    readers = itertools.count()
    get_user_by_id = app.datastore.get_user_by_id

    def read_then_wait(user_id):
        user = get_user_by_id(user_id)
        if next(readers) < count:
            everyone_read.wait()
        return user

    app.datastore.get_user_by_id = read_then_wait


def _in_threads(call, count):
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(call())) for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_one_reset_link_posted_twice_at_once_resets_once(make_app):
    app = make_app("postgres", **RECOVER)
    add_user(app)
    link = _reset_link(app)
    _hold_token_readers(app, 2)
    new = {"password": "new password", "password_confirm": "new password"}
    statuses = _in_threads(
        lambda: app.test_client().post(link, json=new).status_code, 2
    )
    assert sorted(statuses) == [200, 400]


def test_one_confirmation_link_opened_four_times_at_once_logs_in_once(make_app):
    app = make_app("postgres", **CONFIRM)
    link = _register_and_capture_link(app)
    _hold_token_readers(app, 4)
    confirmed = []
    fsl.user_confirmed.connect(
        lambda sender, user: confirmed.append(user), app, weak=False
    )

    def open_link():
        client = app.test_client()
        client.get(link, headers={"Accept": "application/json"})
        return client.get("/profile").status_code

    assert sorted(_in_threads(open_link, 4)) == [200, 302, 302, 302]
    assert len(confirmed) == 1


def test_generic_responses_answer_alike_for_every_kind_of_account(make_app):
    app = make_app(
        **ALL_FLOWS, SECURITY_RETURN_GENERIC_RESPONSES=True, SECURITY_PASSWORDLESS=False
    )
    add_user(app, confirmed_at=datetime.now())
    add_user(app, email="nopassword@lp.com", password=None, confirmed_at=datetime.now())
    client = app.test_client()
    answers = {
        email: json_login(client, email=email, password="wrong password").json
        for email in ("nobody@lp.com", "matt@lp.com", "nopassword@lp.com")
    }
    assert len({str(answer) for answer in answers.values()}) == 1
    resend = [
        client.post("/confirm", json={"email": email}).json
        for email in ("nobody@lp.com", "matt@lp.com")
    ]
    assert resend[0] == resend[1]


def test_generic_passwordless_answers_alike_for_disabled_accounts(make_app):
    app = make_app(SECURITY_RETURN_GENERIC_RESPONSES=True, **PASSWORDLESS)
    add_user(app, active=False)
    disabled = app.test_client().post("/login", json={"email": "matt@lp.com"})
    unknown = app.test_client().post("/login", json={"email": "nobody@lp.com"})
    assert disabled.status_code == unknown.status_code == 200
    assert disabled.json == unknown.json


@pytest.mark.parametrize(
    "path, config",
    [("/reset", RECOVER), ("/login", PASSWORDLESS), ("/confirm", CONFIRM)],
)
def test_generic_responses_send_mail_only_after_the_answer(make_app, path, config):
    """Known and unknown addresses do the same work before the answer; the mail
    to a known one is rendered and sent once the answer has gone out."""
    app = make_app(SECURITY_RETURN_GENERIC_RESPONSES=True, **config)
    add_user(app, email="new@lp.com")
    rendered = []
    from flask import template_rendered

    template_rendered.connect(
        lambda sender, template, context: rendered.append(template.name),
        app,
        weak=False,
    )
    answers = []
    for email in ("new@lp.com", "nobody@lp.com"):
        with app.mail.record_messages() as outbox:
            response = app.test_client().post(path, json={"email": email})
            answers.append((response.status_code, response.json, list(rendered)))
            response.close()
            answers.append(len(outbox))
        rendered.clear()
    known, known_mail, unknown, unknown_mail = answers
    assert known == unknown and known[2] == []
    assert (known_mail, unknown_mail) == (1, 0)


def test_huge_form_body_is_an_html_413_for_browsers(app):
    big = {"email": "a" * 100_000, "password": "x"}
    response = app.test_client().post("/login", data=big)
    assert response.status_code == 413 and response.mimetype == "text/html"


def test_refusal_from_an_app_view_is_answered_by_the_one_handler(make_app):
    app = make_app(SECURITY_RECOVERABLE=True)
    add_user(app)

    @app.route("/send-reset", methods=["POST"])
    def send_reset():
        fsl.send_reset_password_instructions(get_user(app))
        return "sent"

    client = app.test_client()
    other_host = {"base_url": "http://example.com"}
    answer = client.post("/send-reset", json={}, **other_host)
    assert answer.status_code == 400
    assert "declares its host" in answer.json["response"]["error"]
    page = client.post("/send-reset", headers={"Accept": "text/html"}, **other_host)
    assert page.status_code == 400 and "declares its host" in page.text


def test_body_limit_holds_with_app_wide_csrf_protect(make_app):
    from flask_wtf.csrf import CSRFProtect

    app = make_app(WTF_CSRF_ENABLED=True)
    CSRFProtect(app)
    add_user(app)
    big = {
        "email": "matt@lp.com",
        "password": PASSWORD,
        "f": (io.BytesIO(b"x" * 2_000_000), "f"),
    }
    response = app.test_client().post(
        "/login", data=big, content_type="multipart/form-data"
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    "path, config, fields",
    [
        ("/register", REGISTER, {"email": "long@lp.com", "password_confirm": None}),
        ("RESET_LINK", RECOVER, {"password_confirm": None}),
        ("/change", CHANGE, {"password": PASSWORD, "new_password_confirm": None}),
    ],
)
def test_a_password_over_4096_bytes_is_a_form_error(make_app, path, config, fields):
    app = make_app(**config)
    add_user(app)
    client = app.test_client()
    if path == "/change":
        login(client)
    if path == "RESET_LINK":
        path = _reset_link(app)
    huge = "\u00e9" * 2100
    new_field = "new_password" if path == "/change" else "password"
    body = {name: value or huge for name, value in fields.items()}
    body[new_field] = huge
    response = client.post(path, json=body)
    assert response.status_code == 400
    assert "4096" in str(response.json["response"]["errors"])


@pytest.mark.parametrize("path", ["/login", "/register", "/reset", "/change", "/token"])
def test_json_nested_1000_deep_is_a_400(make_app, path):
    app = make_app(**ALL_FLOWS)
    add_user(app, confirmed_at=datetime.now())
    client = app.test_client()
    if path == "/change":
        login(client)
    body = "[" * 1000 + "]" * 1000
    response = client.post(path, data=body, content_type="application/json")
    # A token route reads no token from it: 401, as for any request without one.
    assert response.status_code == (401 if path == "/token" else 400)


@pytest.mark.parametrize(
    "credentials",
    ["m\u00e4tt@lp.com:p\u00e4ssword".encode(), b"matt\xff@lp.com:\xfe", b"a\x00b:c"],
)
def test_non_ascii_basic_credentials_are_a_401(app, credentials):
    add_user(app)
    header = "Basic " + base64.b64encode(credentials).decode()
    response = app.test_client().get("/basic", headers={"Authorization": header})
    assert response.status_code == 401


@pytest.mark.parametrize("path_kind", ["reset", "confirm", "login"])
def test_pages_carrying_a_token_send_no_referrer(make_app, path_kind):
    config = {"reset": RECOVER, "confirm": CONFIRM, "login": PASSWORDLESS}[path_kind]
    app = _link_site(make_app, config)
    with app.test_request_context():
        user = app.datastore.find_user(email="new@lp.com")
        token = {
            "reset": fsl.generate_reset_password_token,
            "confirm": fsl.generate_confirmation_token,
            "login": fsl.generate_login_token,
        }[path_kind](user)
    response = app.test_client().get(f"/{path_kind}/{token}")
    assert response.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize("path", ["/login", "/register", "/reset", "/confirm"])
def test_security_pages_cannot_be_framed(make_app, path):
    response = make_app(**ALL_FLOWS).test_client().get(path)
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


@pytest.mark.parametrize("path", ["/login", "/register", "/reset", "/confirm"])
def test_asvs_3_4_4_security_pages_are_not_content_sniffed(make_app, path):
    response = make_app(**ALL_FLOWS).test_client().get(path)
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("path", ["/login", "/register", "/reset", "/confirm"])
def test_asvs_3_4_3_security_pages_allow_no_plugins_and_no_base_url(make_app, path):
    policy = make_app(**ALL_FLOWS).test_client().get(path).headers
    directives = policy["Content-Security-Policy"].split("; ")
    assert "object-src 'none'" in directives and "base-uri 'none'" in directives


@pytest.mark.parametrize("path", ["/login", "/register", "/reset", "/confirm"])
def test_html_form_refused_for_its_csrf_token_answers_400(make_app, path):
    app = make_app(**ALL_FLOWS, WTF_CSRF_ENABLED=True)
    response = app.test_client().post(
        path, data={"email": "matt@lp.com", "password": PASSWORD}
    )
    assert response.status_code == 400
    assert b"<form" in response.data


def test_registration_with_confirmation_gives_no_token_and_no_session(make_app):
    app = make_app(**CONFIRM)
    client = app.test_client()
    response = _register(client, "new@lp.com")
    assert response.status_code == 200
    assert "authentication_token" not in response.json["response"].get("user", {})
    assert (
        client.get("/profile", headers={"Accept": "application/json"}).status_code
        == 401
    )


# =============================================================================
# 14. Command line
# =============================================================================


def _cli(app, *args):
    return app.test_cli_runner().invoke(args=list(args))


def test_cli_creates_and_manages_users_and_roles(store, make_app):
    app = make_app(store)
    assert (
        _cli(app, "users", "create", "cli@lp.com", "--password", PASSWORD).exit_code
        == 0
    )
    assert json_login(app.test_client(), "cli@lp.com").status_code == 200
    assert _cli(app, "roles", "create", "admin", "--description", "all").exit_code == 0
    assert _cli(app, "roles", "add", "cli@lp.com", "admin").exit_code == 0
    with app.test_request_context():
        assert app.datastore.find_user(email="cli@lp.com").has_role("admin")
    assert _cli(app, "roles", "remove", "cli@lp.com", "admin").exit_code == 0
    assert _cli(app, "users", "deactivate", "cli@lp.com").exit_code == 0
    assert json_login(app.test_client(), "cli@lp.com").status_code == 400
    assert _cli(app, "users", "activate", "cli@lp.com").exit_code == 0
    assert json_login(app.test_client(), "cli@lp.com").status_code == 200


def test_cli_creates_inactive_users(app):
    assert (
        _cli(
            app, "users", "create", "off@lp.com", "--password", PASSWORD, "--inactive"
        ).exit_code
        == 0
    )
    assert get_user(app, "off@lp.com").active is False


def test_cli_confirmed_user_of_a_confirmable_app_can_log_in(make_app):
    app = make_app(SECURITY_CONFIRMABLE=True)
    result = _cli(
        app, "users", "create", "new@lp.com", "--password", PASSWORD, "--confirmed"
    )
    assert result.exit_code == 0 and "must confirm" not in result.output
    assert json_login(app.test_client(), "new@lp.com").status_code == 200


def test_cli_says_an_unconfirmed_user_must_confirm_first(make_app):
    app = make_app(SECURITY_CONFIRMABLE=True)
    result = _cli(app, "users", "create", "new@lp.com", "--password", PASSWORD)
    assert "new@lp.com must confirm the address before logging in" in result.output
    assert json_login(app.test_client(), "new@lp.com").status_code == 400


def test_cli_prints_the_address_as_stored(app):
    result = _cli(app, "users", "create", "Matt@LP.com", "--password", PASSWORD)
    assert result.output == "created user matt@lp.com\n"


def test_cli_creates_a_role_on_a_model_without_description():
    app, datastore = _app_with_user_fields(ALWAYS_NEEDED)
    Security(app, datastore)
    with app.app_context():
        datastore.db.create_all()
    result = app.test_cli_runner().invoke(args=["roles", "create", "admin"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert datastore.find_role("admin") is not None


def test_cli_refuses_a_description_the_role_model_cannot_hold():
    app, datastore = _app_with_user_fields(ALWAYS_NEEDED)
    Security(app, datastore)
    with app.app_context():
        datastore.db.create_all()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["roles", "create", "admin", "--description", "x"])
    assert result.exit_code == 2
    assert "has no description field: add one, or leave out --description" in (
        result.output
    )


def _peewee_app_without_tables():
    """A secured app on peewee whose tables were never created."""
    import peewee

    app = Flask(__name__)
    app.config["SECRET_KEY"] = "test secret"
    db = peewee.SqliteDatabase(":memory:")

    class Role(peewee.Model, fsl.RoleMixin):
        name = peewee.CharField(unique=True)

        class Meta:
            database = db

    class User(peewee.Model, fsl.UserMixin):
        email = peewee.TextField(unique=True)
        password = peewee.TextField(null=True)
        active = peewee.BooleanField(default=True)

        class Meta:
            database = db

    class UserRoles(peewee.Model):
        user = peewee.ForeignKeyField(User, backref="roles")
        role = peewee.ForeignKeyField(Role, backref="users")

        class Meta:
            database = db

    Security(app, fsl.PeeweeUserDatastore(db, User, Role, UserRoles))
    return app


def _sqlalchemy_app_without_tables():
    app, datastore = _app_with_user_fields(ALWAYS_NEEDED)
    Security(app, datastore)
    return app


APPS_WITHOUT_TABLES = [_sqlalchemy_app_without_tables, _peewee_app_without_tables]


def test_only_a_missing_table_is_taken_for_one():
    import sqlite3

    import sqlalchemy.exc

    def error(text):
        return sqlalchemy.exc.OperationalError(
            "SELECT", {}, sqlite3.OperationalError(text)
        )

    assert "no such table: user" in fsl._missing_table_advice(
        error("no such table: user")
    )
    column = fsl._missing_table_advice(error("no such column: user.locked_until"))
    assert "lacks a column" in column and "db.create_all() adds no columns" in column
    assert fsl._missing_table_advice(error("database is locked")) is None
    assert fsl._missing_table_advice(ValueError("no such table: user")) is None


@pytest.mark.parametrize("make", APPS_WITHOUT_TABLES)
def test_cli_without_tables_says_so_in_one_line_and_fails(make):
    result = make().test_cli_runner().invoke(args=["users", "unlock", "a@lp.com"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert "db.create_all()" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("make", APPS_WITHOUT_TABLES)
def test_a_request_without_tables_logs_the_fix(make, caplog):
    app = make()
    app.config["WTF_CSRF_ENABLED"] = False
    response = json_login(app.test_client())
    assert response.status_code == 500
    (line,) = [r for r in caplog.records if "db.create_all()" in r.getMessage()]
    assert "'Tables not created'" in line.getMessage()


def test_cli_normalises_emails_like_the_views(app):
    email = "\u00c4rger@LP.com"
    assert _cli(app, "users", "create", email, "--password", PASSWORD).exit_code == 0
    assert json_login(app.test_client(), "\u00e4rger@lp.com").status_code == 200
    assert _cli(app, "users", "deactivate", "\u00e4RGER@lp.com").exit_code == 0
    again = _cli(app, "users", "create", "\u00e4rger@lp.com", "--password", PASSWORD)
    assert again.exit_code != 0 and "already belongs" in again.output


def test_cli_reports_the_stored_address_not_the_one_typed(app):
    add_user(app, roles=["admin"])
    assert _cli(app, "users", "deactivate", "MATT@LP.com").output == (
        "deactivated matt@lp.com\n"
    )
    assert _cli(app, "roles", "remove", "Matt@lp.com", "admin").output == (
        "took admin from matt@lp.com\n"
    )


def test_cli_create_of_a_known_address_is_an_error_not_a_usage_error(app):
    add_user(app)
    result = _cli(app, "users", "create", "matt@lp.com", "--password", PASSWORD)
    assert result.exit_code == 1 and "already belongs" in result.output


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("users", "create", "not-an-email", "--password", PASSWORD), "EMAIL"),
        (("users", "create", "a@lp.com", "--password", "short"), "too short"),
        (("users", "create", "matt@lp.com", "--password", PASSWORD), "already belongs"),
        (("users", "activate", "nobody@lp.com"), "no user"),
        (("roles", "add", "matt@lp.com", "ghost"), "no role"),
        (("roles", "create", "admin"), "exists already"),
    ],
)
def test_cli_bad_input_is_a_clear_error_and_nonzero_exit(app, args, fragment):
    add_user(app, roles=["admin"])
    result = _cli(app, *args)
    assert result.exit_code != 0
    assert fragment in result.output


def test_cli_tf_reset_turns_two_factor_off_for_support_staff(store, make_app):
    app = make_app(store, **TWO_FACTOR)
    add_user(app)
    give_key(app)
    result = _cli(app, "users", "tf-reset", "matt@lp.com")
    assert result.exit_code == 0, result.output
    assert "turned two-factor login off for matt@lp.com" in result.output
    assert get_user(app).tf_totp_secret is None
    assert login(app.test_client()).headers["Location"] == "/"


@pytest.mark.parametrize(
    "email, fragment",
    [("nobody@lp.com", "no user"), ("matt@lp.com", "has no two-factor login")],
)
def test_cli_tf_reset_bad_input_is_a_clear_error(make_app, email, fragment):
    app = make_app(**TWO_FACTOR)
    add_user(app)
    result = _cli(app, "users", "tf-reset", email)
    assert result.exit_code != 0
    assert fragment in result.output


def test_asvs_7_4_5_cli_logout_ends_every_session_and_token_of_a_user(store, make_app):
    app = make_app(store)
    add_user(app)
    add_user(app, email="joe@lp.com")
    client = app.test_client()
    login(client, remember="y")
    remembered = _copy_cookies(client, app, "remember_token")
    headers = {"Authentication-Token": auth_token(app.test_client())}
    joe = app.test_client()
    login(joe, email="joe@lp.com")
    result = _cli(app, "users", "logout", "Matt@LP.com")
    assert result.exit_code == 0 and "logged matt@lp.com out" in result.output
    assert client.get("/profile").status_code == 302
    assert remembered.get("/profile").status_code == 302
    assert app.test_client().get("/token", headers=headers).status_code == 401
    assert joe.get("/profile").status_code == 200


def test_asvs_7_4_5_cli_logout_of_an_unknown_user_is_a_clear_error(app):
    result = _cli(app, "users", "logout", "nobody@lp.com")
    assert result.exit_code == 1 and "no user has the email" in result.output


def test_cli_logout_without_a_security_stamp_field_says_what_to_add():
    app = app_without_security_stamp()
    add_user(app)
    result = _cli(app, "users", "logout", "matt@lp.com")
    assert result.exit_code == 1 and "no security_stamp field" in result.output


# =============================================================================
# 14. Command line: passkeys
# =============================================================================


def test_cli_lists_a_users_passkeys(make_app):
    app, client, device = passkey_user(make_app)
    add_passkey(client, device, label="Work laptop")
    result = _cli(app, "users", "passkeys", "matt@lp.com")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert [line.split("  ")[1] for line in lines] == ["Passkey", "Work laptop"]
    assert all("last used never" in line for line in lines)


def test_cli_says_when_a_user_has_no_passkeys(make_app):
    app = make_app(**PASSKEYS)
    add_user(app)
    result = _cli(app, "users", "passkeys", "matt@lp.com")
    assert result.output == "matt@lp.com has no passkeys\n"


def test_cli_removes_a_passkey(make_app):
    app, _, device = passkey_user(make_app)
    passkey_id = str(stored_passkeys(app)[0].id)
    result = _cli(app, "users", "passkeys", "matt@lp.com", "--remove", passkey_id)
    assert result.exit_code == 0, result.output
    assert "deleted the passkey Passkey of matt@lp.com" in result.output
    assert stored_passkeys(app) == []
    assert sign_in_with_passkey(app.test_client(), device).status_code == 400


def test_cli_refuses_a_passkey_the_user_does_not_have(make_app):
    app, _, _ = passkey_user(make_app)
    result = _cli(app, "users", "passkeys", "matt@lp.com", "--remove", "999")
    assert result.exit_code == 1
    assert "matt@lp.com has no passkey 999" in result.output


def test_cli_passkeys_says_when_passkeys_are_off(app):
    add_user(app)
    result = _cli(app, "users", "passkeys", "matt@lp.com")
    assert result.exit_code == 1 and "SECURITY_PASSKEYS = True" in result.output


# =============================================================================
# 15. Startup checks
# =============================================================================


def _app_with_user_fields(fields, roles_on_role_side=False, **config):
    """An app whose user model has only ``fields`` (and an id); not yet secured."""
    from flask_sqlalchemy import SQLAlchemy

    app = Flask(__name__)
    app.config.update(SECRET_KEY="k", SQLALCHEMY_DATABASE_URI="sqlite://", **config)
    db = SQLAlchemy(app)
    link = db.Table(
        "roles_users",
        db.Column("user_id", db.ForeignKey("user.id")),
        db.Column("role_id", db.ForeignKey("role.id")),
    )
    columns = {"id": db.Column(db.Integer, primary_key=True)}
    for name in fields:
        if name == "roles":
            if not roles_on_role_side:
                columns["roles"] = db.relationship("Role", secondary=link)
        else:
            columns[name] = db.Column(db.String(255))
    role_columns = {
        "id": db.Column(db.Integer, primary_key=True),
        "name": db.Column(db.String(80)),
    }
    if roles_on_role_side:
        role_columns["users"] = db.relationship("User", secondary=link, backref="roles")
    role = type("Role", (db.Model, fsl.RoleMixin), role_columns)
    user = type("User", (db.Model, fsl.UserMixin), columns)
    return app, fsl.SQLAlchemyUserDatastore(db, user, role)


ALWAYS_NEEDED = ["email", "password", "active", "roles"]


@pytest.mark.parametrize(
    "missing, config, needed_by",
    [
        ("active", {}, ""),
        ("roles", {}, ""),
        ("confirmed_at", {"SECURITY_CONFIRMABLE": True}, "SECURITY_CONFIRMABLE"),
        ("login_count", {"SECURITY_TRACKABLE": True}, "SECURITY_TRACKABLE"),
        ("current_login_ip", {"SECURITY_TRACKABLE": True}, "SECURITY_TRACKABLE"),
    ],
)
def test_user_model_missing_a_needed_field_is_refused_at_init_app(
    missing, config, needed_by
):
    fields = ALWAYS_NEEDED + list(fsl._USER_FIELDS["TRACKABLE"]) + ["confirmed_at"]
    fields.remove(missing)
    app, datastore = _app_with_user_fields(fields, **config)
    with pytest.raises(RuntimeError) as error:
        Security(app, datastore)
    message = str(error.value)
    assert f"the user model User has no {missing!r} field" in message
    assert needed_by in message and "add it" in message


def test_fields_of_features_that_are_off_are_not_needed():
    app, datastore = _app_with_user_fields(ALWAYS_NEEDED)
    Security(app, datastore)  # no confirmed_at, no trackable fields: both off


def test_roles_made_by_a_backref_on_the_role_model_count():
    app, datastore = _app_with_user_fields(ALWAYS_NEEDED, roles_on_role_side=True)
    Security(app, datastore)


def test_username_login_needs_a_username_field():
    app, datastore = _app_with_user_fields(
        ALWAYS_NEEDED, SECURITY_USER_IDENTITY_ATTRIBUTES="email, username"
    )
    with pytest.raises(RuntimeError, match="has no 'username' field"):
        Security(app, datastore)


@pytest.mark.parametrize("value", ["soon", "5 dayz", "five days", 5])
def test_unparsable_link_lifetime_is_refused_at_init_app(make_app, value):
    with pytest.raises(RuntimeError) as error:
        make_app(SECURITY_RESET_PASSWORD_WITHIN=value)
    assert "SECURITY_RESET_PASSWORD_WITHIN must look like '5 days'" in str(error.value)


@pytest.mark.parametrize(
    "key, real",
    [("SECURITY_REGISTRABLE", "SECURITY_REGISTERABLE")]
    + [
        (f"SECURITY_{switch}S", f"SECURITY_{switch}")
        for switch in fsl._FEATURE_SWITCHES
    ],
)
def test_misspelt_feature_switch_is_refused_with_the_right_key(make_app, key, real):
    with pytest.raises(RuntimeError) as error:
        make_app(**{key: True})
    assert f"{key} is not a setting: did you mean {real}?" in str(error.value)


def test_unknown_setting_warns_with_the_closest_key(make_app, caplog):
    make_app(SECURITY_POST_LOGIN_VEIW="/home", SECURITY_COLOUR_SCHEME="dark")
    assert (
        "SECURITY_POST_LOGIN_VEIW is not a flask-security-lite setting "
        "(did you mean SECURITY_POST_LOGIN_VIEW?)"
    ) in caplog.text
    assert "SECURITY_COLOUR_SCHEME is not a flask-security-lite setting\n" in (
        caplog.text + "\n"
    )


def test_known_settings_and_messages_do_not_warn(make_app, caplog):
    make_app(SECURITY_MSG_PASSWORD_IS_SAME=("Same.", "error"), **ALL_FLOWS)
    assert "not a flask-security-lite setting" not in caplog.text


def test_a_mail_feature_without_mail_is_logged_once_with_its_fix(make_app, caplog):
    app = make_app(**REGISTER)
    del app.extensions["mail"]
    client = app.test_client()
    client.get("/")
    client.get("/")
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "SECURITY_REGISTERABLE sends mail" in errors[0].getMessage()
    assert "Mail(app)" in errors[0].getMessage()
    assert "@security.send_mail_task" in errors[0].getMessage()


def test_without_mail_every_page_that_sends_none_keeps_working(make_app):
    app = make_app(**REGISTER, **RECOVER)
    del app.extensions["mail"]
    add_user(app)
    client = app.test_client()
    assert client.get("/").status_code == 200
    assert client.get("/register").status_code == 200
    assert json_login(client).status_code == 200
    assert client.get("/profile").status_code == 200
    assert client.get("/logout").status_code == 302


#: A post that would send mail, with the feature that makes it mail.
MAILING_POSTS = [
    pytest.param(REGISTER, "/register", {"email": "new@lp.com"}, id="register"),
    pytest.param(RECOVER, "/reset", {"email": "matt@lp.com"}, id="forgot"),
    pytest.param(PASSWORDLESS, "/login", {"email": "matt@lp.com"}, id="passwordless"),
    pytest.param(CONFIRM, "/confirm", {"email": "matt@lp.com"}, id="confirm"),
]


@pytest.mark.parametrize("feature, url, fields", MAILING_POSTS)
def test_without_mail_a_post_that_would_mail_is_refused_with_503(
    make_app, feature, url, fields
):
    app = make_app(**feature)
    del app.extensions["mail"]
    add_user(app)
    fields = {**fields, "password": PASSWORD, "password_confirm": PASSWORD}
    response = app.test_client().post(url, json=fields)
    assert response.status_code == 503
    expected = app.config["SECURITY_MSG_MAIL_NOT_SET_UP"][0]
    assert response.json["response"]["error"] == expected


def test_without_mail_an_expired_link_is_refused_with_503_not_resent(make_app, clock):
    app = make_app(SECURITY_CONFIRM_EMAIL_WITHIN="1 hours", **CONFIRM)
    link = _register_and_capture_link(app)
    del app.extensions["mail"]
    clock.advance(hours=2)
    response = app.test_client().get(link, headers={"Accept": "application/json"})
    assert response.status_code == 503


def test_without_mail_the_apps_own_signup_view_writes_nothing(make_app):
    app = make_app(**REGISTER)
    del app.extensions["mail"]

    @app.post("/signup")
    def signup():
        fsl.register_user(email="new@lp.com", password=PASSWORD)
        return "welcome"

    assert app.test_client().post("/signup").status_code == 503
    assert get_user(app, "new@lp.com") is None


def test_without_mail_a_blueprint_registered_under_another_name_refuses_too(
    make_app,
):
    app = make_app(**REGISTER, security_kwargs={"register_blueprint": False})
    del app.extensions["mail"]
    app.register_blueprint(fsl.create_blueprint(app), name="auth", url_prefix="/auth")
    fields = {"email": "new@lp.com", "password": PASSWORD}
    assert app.test_client().post("/auth/register", json=fields).status_code == 503
    assert get_user(app, "new@lp.com") is None


def test_without_mail_a_registration_writes_nothing(make_app):
    app = make_app(**REGISTER)
    del app.extensions["mail"]
    fields = {"email": "new@lp.com", "password": PASSWORD}
    assert app.test_client().post("/register", data=fields).status_code == 503
    assert get_user(app, "new@lp.com") is None


def test_without_mail_a_password_change_is_refused_before_it_is_made(make_app):
    app = make_app(**CHANGE)
    del app.extensions["mail"]
    client = logged_in_client(app)
    fields = {
        "password": PASSWORD,
        "new_password": "another long secret",
        "new_password_confirm": "another long secret",
    }
    assert client.post("/change", json=fields).status_code == 503
    assert json_login(app.test_client()).status_code == 200


def test_a_send_mail_task_registered_after_init_app_is_enough(make_app):
    app = make_app(**ALL_FLOWS)
    del app.extensions["mail"]
    app.security.send_mail_task(lambda message: None)
    assert app.test_client().get("/").status_code == 200


def test_mail_features_whose_mail_is_off_need_no_mail(make_app):
    app = make_app(
        SECURITY_REGISTERABLE=True,
        SECURITY_SEND_REGISTER_EMAIL=False,
        SECURITY_CHANGEABLE=True,
        SECURITY_SEND_PASSWORD_CHANGE_EMAIL=False,
    )
    del app.extensions["mail"]
    assert app.test_client().get("/").status_code == 200


def test_dead_passlib_beside_modern_bcrypt_is_named_with_its_fix(
    make_app, monkeypatch, caplog
):
    import passlib
    import passlib.handlers.bcrypt

    monkeypatch.setattr(passlib, "__version__", "1.7.4")
    make_app()  # bcrypt is among the schemes verified: a warning
    assert "passlib 1.7.4 is installed" in caplog.text
    assert "pip install --force-reinstall 'libpass>=1.9'" in caplog.text

    def broken_backend(*args, **kwargs):
        raise ValueError("password cannot be longer than 72 bytes")

    monkeypatch.setattr(passlib.handlers.bcrypt.bcrypt, "get_backend", broken_backend)
    with pytest.raises(RuntimeError, match="pip uninstall -y passlib"):
        make_app(SECURITY_PASSWORD_HASH="bcrypt")


@pytest.mark.parametrize(
    "scheme, package", [("argon2", "argon2-cffi"), ("bcrypt", "bcrypt")]
)
def test_missing_hashing_backend_names_the_package_and_the_extra(
    make_app, monkeypatch, scheme, package
):
    import passlib.hash

    def no_backend(*args, **kwargs):
        raise passlib.exc.MissingBackendError(f"{scheme}: no backends available")

    monkeypatch.setattr(getattr(passlib.hash, scheme), "get_backend", no_backend)
    with pytest.raises(RuntimeError) as error:
        make_app(SECURITY_PASSWORD_HASH=scheme)
    assert (
        f"pip install {package} (or pip install 'flask-security-lite[{scheme}]')"
        in (str(error.value))
    )


def test_no_secret_key_is_refused_at_init_app_with_the_fix(make_app):
    with pytest.raises(RuntimeError) as error:
        make_app(SECRET_KEY=None)
    assert "SECRET_KEY is not set" in str(error.value)
    assert "'No SECRET_KEY'" in str(error.value)


def test_a_user_model_without_usermixin_is_refused_at_init_app():
    class User(flask_login.UserMixin):  # Flask-Login's mixin, not ours
        pass

    app = Flask(__name__)
    app.config["SECRET_KEY"] = "test secret"
    with pytest.raises(RuntimeError) as error:
        Security(app, datastore=types.SimpleNamespace(user_model=User))
    assert "User lacks get_session_identity, get_auth_token, has_role" in str(
        error.value
    )
    assert "flask_security_lite.UserMixin" in str(error.value)


@pytest.mark.parametrize(
    "key, value, wanted",
    [
        ("SECURITY_TOKEN_MAX_AGE", "1 day", "a number (of seconds) or None"),
        ("SECURITY_PASSWORD_LENGTH_MIN", "8", "a whole number, 0 or more"),
        ("SECURITY_TWO_FACTOR_DRIFT_STEPS", -1, "a whole number, 0 or more"),
        (
            "SECURITY_PASSWORD_BREACHED_URL",
            "http://pwned.example/range/",
            "an https URL",
        ),
        ("SECURITY_LOCKOUT_ATTEMPTS", "5", "a number (of attempts) or None"),
        ("SECURITY_PASSWORD_SCHEMES", "bcrypt", "a list of strings"),
        ("SECURITY_USER_IDENTITY_ATTRIBUTES", [{"email": {}}], "a list of strings"),
        ("SECURITY_PASSWORD_LENGTH_MIN", float("inf"), "a whole number, 0 or more"),
        ("SECURITY_PASSWORD_SALT", 12345, "a string"),
        ("SECURITY_TWO_FACTOR_ALLOW_BASIC", "False", "True or False"),
        ("SECURITY_PASSWORD_HASH_OPTIONS", [], "a dict"),
    ],
)
def test_a_setting_of_the_wrong_type_is_refused_with_the_type_wanted(
    make_app, key, value, wanted
):
    with pytest.raises(RuntimeError) as error:
        make_app(**{key: value})
    assert f"{key} must be {wanted}, not {value!r}" in str(error.value)


def test_a_message_that_is_not_a_pair_is_refused(make_app):
    with pytest.raises(RuntimeError) as error:
        make_app(SECURITY_MSG_LOGIN="Please log in.")
    assert "SECURITY_MSG_LOGIN must be a (text, category) pair" in str(error.value)


def test_an_unreadable_common_password_list_is_refused_at_init_app(make_app, tmp_path):
    with pytest.raises(RuntimeError) as error:
        make_app(SECURITY_PASSWORD_COMMON_LIST=str(tmp_path / "missing.txt"))
    assert "cannot read the common-password list" in str(error.value)
    assert "SECURITY_PASSWORD_COMMON_LIST" in str(error.value)


def test_settings_of_the_right_types_start(make_app):
    make_app(
        SECURITY_TOKEN_MAX_AGE=3600.5,
        SECURITY_PASSWORD_LENGTH_MIN=10,
        SECURITY_USER_IDENTITY_ATTRIBUTES="email, username",
        SECURITY_LOGOUT_METHODS=("POST",),
        SECURITY_PASSWORD_BREACHED_TIMEOUT=0.5,
    )


def test_a_switch_given_as_a_string_is_on_as_in_17x_and_warned(make_app, caplog):
    app = make_app(**CONFIRM, SECURITY_LOGIN_WITHOUT_CONFIRMATION="False")
    assert (
        "SECURITY_LOGIN_WITHOUT_CONFIRMATION is the string 'False', which turns it "
        "on, as 1.7.x did: write True to keep it on, or False to turn it off"
    ) in caplog.text
    add_user(app)  # never confirmed
    assert json_login(app.test_client()).status_code == 200


def test_a_user_model_without_security_stamp_is_warned_about(caplog):
    app, datastore = _app_with_user_fields(ALWAYS_NEEDED)
    Security(app, datastore)
    assert "has no 'security_stamp' field: logout cannot end copies" in caplog.text
    assert "(README.md, 'Sessions')" in caplog.text


def test_a_user_model_with_security_stamp_is_not_warned_about(make_app, caplog):
    make_app()
    assert "security_stamp" not in caplog.text


def test_a_startup_error_about_a_field_names_the_section_with_every_field():
    app, datastore = _app_with_user_fields(ALWAYS_NEEDED, SECURITY_TRACKABLE=True)
    with pytest.raises(RuntimeError) as error:
        Security(app, datastore)
    assert "README.md, 'The fields each feature needs'" in str(error.value)


def test_every_page_a_startup_message_names_has_the_section_it_names():
    source = (HERE / "flask_security_lite.py").read_text()
    named = set(re.findall(r"\((README\.md|docs/[\w-]+\.md)(?:, '([^']+)')?", source))
    assert len(named) >= 9
    for page, heading in named:
        text = (HERE / page).read_text()
        assert not heading or re.search(rf"^#+ {re.escape(heading)}$", text, re.M), (
            page,
            heading,
        )


@pytest.mark.parametrize("store", [fsl.Datastore(None), types.SimpleNamespace()])
def test_a_datastore_the_checks_cannot_inspect_still_starts(store):
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "test secret"
    Security(app, datastore=store)
    assert app.test_client().get("/login").status_code == 200


# =============================================================================
# 15. Startup checks: passkeys
# =============================================================================


def test_a_missing_webauthn_package_is_named_at_init_app(make_app, monkeypatch):
    monkeypatch.setitem(sys.modules, "webauthn", None)
    with pytest.raises(RuntimeError) as error:
        make_app(**PASSKEYS)
    assert "pip install webauthn" in str(error.value)
    assert "flask-security-lite[passkeys]" in str(error.value)


def test_passkeys_without_a_passkey_model_are_refused_at_init_app(make_app):
    app = Flask(__name__)
    app.config.update(SECRET_KEY="k", SECURITY_PASSKEYS=True)
    datastore, teardown = _sqlalchemy_store(app, "sqlite://")
    datastore.passkey_model = None
    try:
        with pytest.raises(RuntimeError) as error:
            Security(app, datastore)
    finally:
        teardown()
    assert "pass it to the datastore as passkey_model=" in str(error.value)


def test_passkeys_without_a_user_handle_field_are_refused_at_init_app(make_app):
    app = Flask(__name__)
    app.config.update(SECRET_KEY="k", SECURITY_PASSKEYS=True)
    datastore, teardown = _sqlalchemy_store(app, "sqlite://")
    datastore.user_model = type("User", (fsl.UserMixin,), {"_meta": None})
    try:
        with pytest.raises(RuntimeError) as error:
            Security(app, datastore)
    finally:
        teardown()
    assert "has no 'passkey_handle' field" in str(error.value)


@pytest.mark.parametrize(
    "setting, value",
    [
        ("SECURITY_PASSKEYS_USER_VERIFICATION", "always"),
        ("SECURITY_PASSKEYS_ATTESTATION", "full"),
        ("SECURITY_PASSKEYS_RP_ID", "127.0.0.1"),
    ],
)
def test_a_passkey_setting_it_cannot_use_is_refused_at_init_app(
    make_app, setting, value
):
    with pytest.raises(RuntimeError) as error:
        make_app(**PASSKEYS, **{setting: value})
    assert setting in str(error.value)


def test_passkeys_without_a_declared_host_warn_at_init_app(make_app, caplog):
    make_app(**PASSKEYS)
    assert "SECURITY_PASSKEYS is on, but the app declares no host" in caplog.text
    caplog.clear()
    make_app(SERVER_NAME="localhost", **PASSKEYS)
    assert "declares no host" not in caplog.text


# =============================================================================
# 16. The Security extension
# =============================================================================


def test_one_security_serves_two_apps_with_different_config(make_app):
    shared = Security()
    first = make_app(security=shared, SECURITY_LOGIN_URL="/one")
    second = make_app(
        security=shared, SECURITY_LOGIN_URL="/two", SECURITY_REGISTERABLE=True
    )
    assert first.datastore is not second.datastore
    with first.test_request_context():
        assert shared.login_url == "/one"
        assert shared.datastore is first.datastore
        assert shared.registerable is False
    with second.test_request_context():
        assert shared.login_url == "/two"
        assert shared.datastore is second.datastore
        assert shared.registerable is True
    assert first.test_client().get("/one").status_code == 200
    assert second.test_client().get("/two").status_code == 200
    assert second.test_client().get("/one").status_code == 404
    assert second.test_client().get("/register").status_code == 200
    assert first.test_client().get("/register").status_code == 404


def test_security_object_answers_for_its_only_app_outside_a_context(make_app):
    app = make_app(SECURITY_CONFIRMABLE=True)
    security = app.security
    assert security.datastore is app.datastore
    assert security.login_manager is app.login_manager
    assert security.pwd_context is app.extensions["security"].pwd_context
    assert security.confirmable is True
    assert hasattr(security, "registerable") and not hasattr(security, "no_such")


def test_security_object_of_two_apps_has_no_unknown_attribute(make_app):
    security = Security()
    make_app(security=security), make_app(security=security)
    assert not hasattr(security, "no_such_thing")


def test_a_hash_setting_changed_after_init_still_stores_verifiable_hashes(app):
    app.config["SECURITY_PASSWORD_HASH"] = "bcrypt"
    long_password = "x" * 100
    add_user(app, password=long_password)
    assert json_login(app.test_client(), password=long_password).status_code == 200


def test_security_object_of_two_apps_needs_a_context(make_app):
    security = Security()
    first, second = make_app(security=security), make_app(security=security)
    with second.app_context():
        assert security.datastore is second.datastore
    with first.app_context():
        assert security.datastore is first.datastore
    with pytest.raises(RuntimeError, match="several apps"):
        assert security.login_manager is None


def test_state_settings_read_the_config_as_it_is_now(app):
    state = app.extensions["security"]
    assert state.login_url == "/login" and state.datastore is app.datastore
    app.config["SECURITY_LOGIN_URL"] = "/sign-in"
    assert state.login_url == "/sign-in"
    assert app.security.login_url == "/sign-in"


def test_each_app_gets_its_own_copy_of_every_mutable_default(make_app):
    first, second = make_app(), make_app()
    first.config["SECURITY_PASSWORD_SCHEMES"].append("md5_crypt")
    first.config["SECURITY_USER_IDENTITY_ATTRIBUTES"].append("username")
    assert "md5_crypt" not in second.config["SECURITY_PASSWORD_SCHEMES"]
    assert second.config["SECURITY_USER_IDENTITY_ATTRIBUTES"] == ["email"]
    assert "md5_crypt" not in fsl._default_config["PASSWORD_SCHEMES"]


def test_unknown_security_argument_is_refused():
    with pytest.raises(TypeError):
        Security(datastore=object(), login_from=object())


# =============================================================================
# 16. The Security extension: the security event log
# =============================================================================


@pytest.fixture
def events(caplog):
    """The records of ``flask_security_lite.events`` logged during the test."""
    caplog.set_level(logging.INFO, logger="flask_security_lite.events")

    def logged():
        return [r for r in caplog.records if r.name == "flask_security_lite.events"]

    return logged


def _event_names(records):
    return [record.event for record in records]


def _enrolled_client(app):
    """A client logged in as matt@lp.com, who has just set up two-factor login;
    with the key and the recovery codes."""
    client = logged_in_client(app)
    key = shown_key(setup_page(client)).replace(" ", "")
    page = client.post("/tf-setup", data={"code": next_code(key)}).get_data(True)
    return client, key, re.findall(r"<li><code>([a-z2-7-]{29})</code></li>", page)


def test_asvs_16_3_1_login_is_logged_with_user_and_address(app, events):
    user_id = add_user(app)
    login(app.test_client())
    (record,) = events()
    assert (record.event, record.user_id, record.remote_addr) == (
        "login",
        user_id,
        "127.0.0.1",
    )
    assert record.getMessage() == (
        f"security event: event=login user_id={user_id} remote_addr=127.0.0.1"
    )


@pytest.mark.parametrize("email", ["matt@lp.com", "nobody@lp.com"])
def test_asvs_16_3_1_failed_login_is_logged_with_its_reason(app, events, email):
    add_user(app)
    login(app.test_client(), email, password="not it at all")
    (record,) = events()
    assert record.event == "login_failed"
    assert record.reason == ("invalid_password" if "matt" in email else "unknown_user")


def test_asvs_16_3_1_lockout_is_logged_as_a_warning(make_app, events):
    app = make_app(**LOCKOUT)
    add_user(app)
    for _ in range(3):
        login(app.test_client(), password="not it at all")
    (locked,) = [record for record in events() if record.event == "account_locked"]
    assert locked.levelno == logging.WARNING
    assert _event_names(events()) == ["login_failed"] * 2 + [
        "account_locked",
        "login_failed",
    ]


def test_asvs_16_3_1_logout_is_logged(app, events):
    user_id = add_user(app)
    client = app.test_client()
    login(client)
    client.get("/logout")
    assert [(r.event, r.user_id) for r in events()][-1] == ("logout", user_id)


def test_asvs_16_3_1_accounts_changed_by_the_cli_are_logged(make_app, events):
    app = make_app(SECURITY_LOCKOUT_ATTEMPTS=3)
    user_id = add_user(app)
    for command in ("deactivate", "activate", "unlock"):
        assert _cli(app, "users", command, "matt@lp.com").exit_code == 0
    assert [(r.event, r.user_id) for r in events()][-3:] == [
        ("user_deactivated", user_id),
        ("user_activated", user_id),
        ("user_unlocked", user_id),
    ]


def test_asvs_16_3_1_an_event_value_cannot_forge_a_field(app, events, caplog):
    with app.test_request_context(environ_base={"REMOTE_ADDR": "6.6.6.6 user_id=1"}):
        fsl._log_event("login_failed", None)
    assert "remote_addr='6.6.6.6 user_id=1'" in caplog.text


def test_asvs_16_3_1_sessions_ended_by_the_cli_or_the_sessions_page_are_logged(
    app, events
):
    user_id = add_user(app)
    client = app.test_client()
    login(client)
    client.post("/sessions", data={"end": "others", "password": PASSWORD})
    _cli(app, "users", "logout", "matt@lp.com")
    assert [(r.event, r.user_id) for r in events()][-2:] == [
        ("other_sessions_ended", user_id),
        ("sessions_ended", user_id),
    ]


def test_asvs_16_3_1_password_change_is_logged_and_is_no_new_login(make_app, events):
    app = make_app(**CHANGE)
    client = logged_in_client(app)
    new = "plum tree in june"
    change = {"password": PASSWORD, "new_password": new, "new_password_confirm": new}
    client.post("/change", data=change)
    assert _event_names(events()) == ["login", "password_changed"]


def test_asvs_16_3_1_password_reset_is_logged(make_app, events):
    app = make_app(**RECOVER)
    add_user(app)
    link = _reset_link(app)
    new = "plum tree in june"
    app.test_client().post(link, data={"password": new, "password_confirm": new})
    assert _event_names(events()) == ["password_reset", "login"]


def test_asvs_16_3_1_two_factor_set_up_and_turned_off_are_logged(make_app, events):
    client, _, codes = _enrolled_client(make_app(**TWO_FACTOR))
    client.post("/tf-disable", data={"password": PASSWORD, "code": codes[0]})
    assert _event_names(events()) == [
        "login",
        "two_factor_enabled",
        "two_factor_disabled",
    ]


def test_asvs_16_3_1_new_recovery_codes_are_logged(make_app, events):
    client, _, _ = _enrolled_client(make_app(**TWO_FACTOR))
    client.post("/tf-recovery-codes", data={"password": PASSWORD})
    assert _event_names(events())[-1] == "recovery_codes_replaced"


def test_asvs_16_3_1_login_with_a_recovery_code_is_logged(make_app, events):
    app = make_app(**TWO_FACTOR)
    client, _, codes = _enrolled_client(app)
    client.get("/logout")
    login(client)
    client.post("/tf-rescue", data={"code": codes[0]})
    assert _event_names(events())[-2:] == ["login", "recovery_code_used"]


def test_asvs_16_3_1_events_carry_no_password_code_token_or_key(make_app, events):
    app = make_app(**TWO_FACTOR, **CHANGE)
    client, key, codes = _enrolled_client(app)
    client.get("/logout")
    login(client, password="a wrong guess")
    login(client)
    client.post("/tf-validate", data={"code": "000000"})
    client.post("/tf-rescue", data={"code": codes[1]})
    secrets_typed = [PASSWORD, "a wrong guess", key, codes[1], "000000"]
    for record in events():
        shown = record.getMessage() + repr(vars(record))
        assert not any(secret in shown for secret in secrets_typed), shown


# =============================================================================
# 17. Flask-Security 1.7.4 compatibility, and a 1.7.4 application
# =============================================================================


#: The public names of each Flask-Security 1.7.4 module, from its documentation and
#: API reference (Python 2 helpers and the Flask-Script commands aside).
NAMES_174 = {
    "core": """Security UserMixin RoleMixin AnonymousUser AnonymousUserMixin
        LoginManager current_user""",
    "datastore": """Datastore SQLAlchemyDatastore MongoEngineDatastore
        PeeweeDatastore UserDatastore SQLAlchemyUserDatastore
        MongoEngineUserDatastore PeeweeUserDatastore get_identity_attributes""",
    "decorators": """login_required roles_required roles_accepted
        http_auth_required auth_token_required auth_required
        anonymous_user_required BasicAuth""",
    "forms": """Form BaseForm ValidatorMixin Required Email EqualTo Length
        validators TextField PasswordField SubmitField HiddenField BooleanField
        Field ValidationError email_required email_validator password_required
        password_length get_form_field_label unique_user_email valid_user_email
        EmailFormMixin UserEmailFormMixin UniqueEmailFormMixin PasswordFormMixin
        NewPasswordFormMixin PasswordConfirmFormMixin NextFormMixin
        RegisterFormMixin SendConfirmationForm ForgotPasswordForm
        PasswordlessLoginForm LoginForm ConfirmRegisterForm RegisterForm
        ResetPasswordForm ChangePasswordForm""",
    "signals": """signals user_registered user_confirmed confirm_instructions_sent
        login_instructions_sent password_reset password_changed
        reset_password_instructions_sent""",
    "utils": """login_user logout_user get_hmac verify_password
        verify_and_update_password encrypt_password md5 do_flash get_url
        slash_url_suffix get_security_endpoint_name url_for_security
        get_post_action_redirect get_post_login_redirect
        get_post_register_redirect get_post_logout_redirect find_redirect
        get_config get_message config_value get_max_age get_within_delta
        send_mail get_token_status get_identity_attributes validate_redirect_url
        capture_registrations capture_reset_password_requests
        capture_passwordless_login_requests""",
    "views": """login logout register send_login token_login send_confirmation
        confirm_email forgot_password reset_password change_password
        create_blueprint""",
    "confirmable": """send_confirmation_instructions generate_confirmation_link
        generate_confirmation_token requires_confirmation
        confirm_email_token_status confirm_user""",
    "recoverable": """send_reset_password_instructions send_password_reset_notice
        generate_reset_password_token reset_password_token_status
        update_password""",
    "changeable": "send_password_changed_notice change_user_password",
    "registerable": "register_user",
    "passwordless": "send_login_instructions generate_login_token login_token_status",
}


#: 1.7.4 names that are other libraries' objects, or ours under another name.
OBJECTS_174 = {
    "AnonymousUserMixin": "flask_login.AnonymousUserMixin",
    "LoginManager": "flask_login.LoginManager",
    "BaseForm": "flask_wtf.FlaskForm",
    "TextField": "wtforms.StringField",
    "PasswordField": "wtforms.PasswordField",
    "SubmitField": "wtforms.SubmitField",
    "HiddenField": "wtforms.HiddenField",
    "BooleanField": "wtforms.BooleanField",
    "Field": "wtforms.Field",
    "ValidationError": "wtforms.ValidationError",
    "validators": "wtforms.validators",
    "login_required": "flask_login.login_required",
    "current_user": "flask_login.current_user",
}


def _object_174(name):
    """What a 1.7.4 name must be here: another library's object, or ours."""
    if name in OBJECTS_174:
        module, _, attribute = OBJECTS_174[name].rpartition(".")
        return getattr(importlib.import_module(module), attribute)
    return getattr(fsl, name)


@pytest.mark.parametrize("submodule", sorted(NAMES_174))
def test_every_174_name_imports_from_its_submodule(submodule):
    module = importlib.import_module(f"flask_security_lite.{submodule}")
    for name in NAMES_174[submodule].split():
        namespace = {}
        exec(f"from flask_security_lite.{submodule} import {name}", namespace)
        if name != "signals":
            assert namespace[name] is _object_174(name), f"{submodule}.{name}"
        assert getattr(module, name) is namespace[name]


#: What 1.7.4's ``flask_security`` package itself offered.
TOP_LEVEL_174 = """Security RoleMixin UserMixin AnonymousUser current_user
    SQLAlchemyUserDatastore MongoEngineUserDatastore PeeweeUserDatastore
    auth_token_required http_auth_required login_required roles_accepted
    roles_required ForgotPasswordForm LoginForm RegisterForm ResetPasswordForm
    PasswordlessLoginForm ConfirmRegisterForm confirm_instructions_sent
    password_reset reset_password_instructions_sent user_confirmed user_registered
    login_user logout_user url_for_security""".split()


def test_every_174_top_level_name_imports():
    namespace = {}
    exec(f"from flask_security_lite import {', '.join(TOP_LEVEL_174)}", namespace)
    for name in TOP_LEVEL_174:
        assert namespace[name] is _object_174(name), name


def test_signals_submodule_holds_the_namespace_of_every_signal():
    from flask_security_lite.signals import signals

    names_174 = {
        "user-registered": fsl.user_registered,
        "user-confirmed": fsl.user_confirmed,
        "confirm-instructions-sent": fsl.confirm_instructions_sent,
        "login-instructions-sent": fsl.login_instructions_sent,
        "password-reset": fsl.password_reset,
        "password-changed": fsl.password_changed,
        "password-reset-instructions-sent": fsl.reset_password_instructions_sent,
    }
    for name, sent in names_174.items():
        assert signals[name] is sent, name
    public = [getattr(fsl, name) for name in fsl.__all__]
    ours = [sent for sent in public if isinstance(sent, type(fsl.user_registered))]
    assert len(ours) > len(names_174)
    for sent in ours:
        assert signals[sent.name] is sent, sent.name


def test_import_of_a_submodule_binds_it_as_an_attribute():
    namespace = {}
    exec("import flask_security_lite.utils", namespace)
    utils = namespace["flask_security_lite"].utils
    assert utils is sys.modules["flask_security_lite.utils"]
    assert utils.encrypt_password is fsl.encrypt_password


@pytest.fixture
def forget_modules(monkeypatch):
    """Hide every ``flask_security`` module for one test; what the test imports
    under that name, or under a name it adds to the returned set, goes after."""
    for name in list(sys.modules):
        if name == "flask_security" or name.startswith("flask_security."):
            monkeypatch.delitem(sys.modules, name)
    prefixes = {"flask_security"}
    yield prefixes
    for name in list(sys.modules):
        if name.split(".")[0] in prefixes:
            del sys.modules[name]


def _module_copy(tmp_path, monkeypatch, name):
    """A copy of the module file importable as ``name`` (a vendored copy)."""
    shutil.copy(HERE / "flask_security_lite.py", tmp_path / f"{name}.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module(name)


def test_vendored_as_flask_security_its_submodules_import(
    tmp_path, monkeypatch, forget_modules
):
    vendored = _module_copy(tmp_path, monkeypatch, "flask_security")
    namespace = {}
    exec(
        "import flask_security.utils\n"
        "from flask_security.forms import Required\n"
        "from flask_security.datastore import SQLAlchemyUserDatastore",
        namespace,
    )
    assert namespace["flask_security"] is vendored
    assert namespace["flask_security"].utils.encrypt_password is (
        vendored.encrypt_password
    )
    assert namespace["Required"] is vendored.Required
    assert namespace["SQLAlchemyUserDatastore"] is vendored.SQLAlchemyUserDatastore


def test_reload_refills_the_submodules_with_the_new_objects(
    tmp_path, monkeypatch, forget_modules
):
    name = f"fsl_reloaded_{uuid.uuid4().hex}"
    forget_modules.add(name)
    module = _module_copy(tmp_path, monkeypatch, name)
    utils, old = module.utils, module.encrypt_password
    importlib.reload(module)
    assert module.encrypt_password is not old
    assert module.utils is utils is sys.modules[f"{name}.utils"]
    assert utils.encrypt_password is module.encrypt_password


def test_install_as_flask_security_serves_every_174_import(forget_modules):
    fsl.install_as_flask_security()
    namespace = {}
    exec(
        "import flask_security\n"
        "import flask_security.core\n"
        "from flask_security.utils import encrypt_password\n"
        "from flask_security.forms import RegisterForm, Required\n"
        "from flask_security.registerable import register_user\n"
        "from flask_security.decorators import auth_required",
        namespace,
    )
    assert namespace["flask_security"] is fsl
    assert namespace["flask_security"].core is fsl.core
    assert namespace["encrypt_password"] is fsl.encrypt_password
    assert namespace["RegisterForm"] is fsl.RegisterForm
    assert namespace["register_user"] is fsl.register_user


def test_install_as_flask_security_twice_is_harmless(forget_modules):
    fsl.install_as_flask_security()
    fsl.install_as_flask_security()
    assert sys.modules["flask_security.utils"] is fsl.utils


def test_install_as_flask_security_refuses_when_another_is_imported(
    monkeypatch, forget_modules
):
    real = types.ModuleType("flask_security")
    real.__file__ = "/site-packages/flask_security/__init__.py"
    monkeypatch.setitem(sys.modules, "flask_security", real)
    with pytest.raises(RuntimeError, match="flask_security is imported already"):
        fsl.install_as_flask_security()
    assert sys.modules["flask_security"] is real


#: A Flask-Security 1.7.4 application (a book catalogue), ported only as any move to
#: today's stack needs (Python 3, ``flask_x`` imports, Flask-SQLAlchemy 3) and with
#: the one added line. Its own templates follow 1.7.4's.
APP_174 = '''
import json
from functools import wraps

import flask_security_lite

flask_security_lite.install_as_flask_security()

from flask import Flask, Response, render_template
from flask_principal import Permission, RoleNeed
from flask_sqlalchemy import SQLAlchemy
from flask_security import RoleMixin, Security, UserMixin, login_required
from flask_security.core import current_user
from flask_security.datastore import SQLAlchemyUserDatastore
from flask_security.decorators import auth_token_required, http_auth_required
from flask_security.forms import RegisterForm, Required, TextField
from flask_security.signals import password_changed, user_registered
from flask_security.utils import encrypt_password, verify_password

app = Flask(__name__)
app.config.update(
    SECRET_KEY="catalogue secret",
    TESTING=True,
    WTF_CSRF_ENABLED=False,
    SQLALCHEMY_DATABASE_URI="sqlite://",
    SECURITY_PASSWORD_SCHEMES=["bcrypt", "plaintext"],
    SECURITY_REGISTERABLE=True,
    SECURITY_CHANGEABLE=True,
    SECURITY_SEND_REGISTER_EMAIL=False,
    SECURITY_SEND_PASSWORD_CHANGE_EMAIL=False,
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
    first_name = db.Column(db.String(255))
    active = db.Column(db.Boolean())
    confirmed_at = db.Column(db.DateTime())
    roles = db.relationship(
        "Role", secondary=roles_users, backref=db.backref("users", lazy="dynamic")
    )


class ExtendedRegisterForm(RegisterForm):
    first_name = TextField("First name", [Required()])


class CatalogueDatastore(SQLAlchemyUserDatastore):
    """Every new account starts as a reader."""

    def create_user(self, **kwargs):
        kwargs.setdefault("roles", ["reader"])
        return super().create_user(**kwargs)


user_datastore = CatalogueDatastore(db, User, Role)
security = Security(app, user_datastore, register_form=ExtendedRegisterForm)

with app.app_context():
    db.create_all()
    user_datastore.find_or_create_role("reader")
    user_datastore.find_or_create_role("admin")
    user_datastore.create_user(
        email="admin@catalogue.org",
        password=encrypt_password("admin password"),
        first_name="Ada",
        roles=["admin"],
    )
    db.session.commit()

events = []


@user_registered.connect_via(app)
def on_user_registered(app, user, confirm_token):
    events.append(("registered", user.email, confirm_token))


@password_changed.connect_via(app)
def on_password_changed(app, user):
    events.append(("password changed", user.email))


admin_permission = Permission(RoleNeed("admin"))


def restful(method):
    """What Flask-RESTful's Resource does with what a decorated method returns."""

    @wraps(method)
    def dispatch(*args, **kwargs):
        result = method(*args, **kwargs)
        if isinstance(result, Response):
            return result
        data, code = result if isinstance(result, tuple) else (result, 200)
        return Response(json.dumps(data), code, mimetype="application/json")

    return dispatch


@app.route("/")
def index():
    return render_template("index.html")


@app.route("/admin")
@login_required
@admin_permission.require(http_exception=403)
def admin():
    return "catalogue admin"


@app.route("/api/books")
@restful
@auth_token_required
def books():
    return {"reader": current_user.email, "books": []}


@app.route("/api/admin")
@http_auth_required
@admin_permission.require(http_exception=403)
def api_admin():
    return "api admin"


@app.route("/api/admin-by-token")
@auth_token_required
@admin_permission.require(http_exception=403)
def api_admin_by_token():
    return "api admin by token"


@app.route("/check-password/<password>")
@login_required
def check_password(password):
    return str(verify_password(password, current_user.password))
'''


#: The catalogue's templates, written the way 1.7.4 applications copied theirs.
TEMPLATES_174 = {
    "index.html": """
{% include "security/_messages.html" %}
<h1>The catalogue</h1>
{% if current_user.is_authenticated %}<p>Hello {{ current_user.first_name }}</p>
{% else %}<a href="{{ url_for_security('login') }}">Sign in</a>{% endif %}
{% if security.registerable %}
<a href="{{ url_for_security('register') }}">Join the catalogue</a>
{% endif %}
{% include "security/_menu.html" %}
""",
    "security/login_user.html": """
{% from "security/_macros.html" import render_field_with_errors, render_field %}
{% include "security/_messages.html" %}
<h1>Sign in to the catalogue</h1>
<form action="{{ url_for_security('login') }}" method="POST" name="login_user_form">
  {{ login_user_form.hidden_tag() }}
  {{ render_field_with_errors(login_user_form.email) }}
  {{ render_field_with_errors(login_user_form.password) }}
  {{ render_field_with_errors(login_user_form.remember) }}
  {{ render_field(login_user_form.next) }}
  {{ render_field(login_user_form.submit) }}
</form>
{% if security.registerable %}
<a href="{{ url_for_security('register') }}">No account yet?</a>
{% endif %}
{% include "security/_menu.html" %}
""",
    "security/register_user.html": """
{% from "security/_macros.html" import render_field_with_errors, render_field %}
{% include "security/_messages.html" %}
<h1>Join the catalogue</h1>
<form action="{{ url_for_security('register') }}" method="POST"
      name="register_user_form">
  {{ register_user_form.hidden_tag() }}
  {{ render_field_with_errors(register_user_form.first_name) }}
  {{ render_field_with_errors(register_user_form.email) }}
  {{ render_field_with_errors(register_user_form.password) }}
  {{ render_field_with_errors(register_user_form.password_confirm) }}
  {{ render_field(register_user_form.submit) }}
</form>
{% include "security/_menu.html" %}
""",
}


@pytest.fixture
def app_174(tmp_path, monkeypatch, forget_modules):
    """The 1.7.4 catalogue, imported as its users run it."""
    name = f"catalogue_{uuid.uuid4().hex}"
    forget_modules.add(name)
    (tmp_path / f"{name}.py").write_text(APP_174)
    for path, text in TEMPLATES_174.items():
        (tmp_path / "templates" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "templates" / path).write_text(text)
    # Fast hashing for the test run only: the catalogue keeps the default scheme.
    monkeypatch.setitem(fsl._default_config, "PASSWORD_HASH_OPTIONS", FAST_HASHING)
    monkeypatch.syspath_prepend(str(tmp_path))
    catalogue = importlib.import_module(name)
    yield catalogue
    with catalogue.app.app_context():
        catalogue.db.session.remove()
        catalogue.db.engine.dispose()


def _login_174(client, email="admin@catalogue.org", password="admin password"):
    return client.post("/login", data={"email": email, "password": password})


def test_174_app_starts_with_its_imports_and_password_schemes(app_174):
    assert app_174.security.datastore is app_174.user_datastore
    with app_174.app.app_context():
        admin = app_174.user_datastore.find_user(email="admin@catalogue.org")
        assert app_174.verify_password("admin password", admin.password)


def test_174_app_login_page_is_its_own_template_with_macros_and_menu(app_174):
    page = app_174.app.test_client().get("/login").get_data(as_text=True)
    assert "<h1>Sign in to the catalogue</h1>" in page
    assert 'action="/login"' in page and 'name="email"' in page
    assert 'href="/register"' in page
    assert 'class="security-menu"' in page


def test_174_app_own_pages_see_url_for_security_and_security(app_174):
    page = app_174.app.test_client().get("/").get_data(as_text=True)
    assert '<a href="/login">Sign in</a>' in page
    assert '<a href="/register">Join the catalogue</a>' in page


def test_174_app_logs_in_through_its_template(app_174):
    client = app_174.app.test_client()
    assert _login_174(client).status_code == 302
    assert "Hello Ada" in client.get("/").get_data(as_text=True)


def test_174_app_registers_with_its_extended_form_and_signal(app_174):
    client = app_174.app.test_client()
    form = {"email": "reader@catalogue.org", "password": "shelves of novels"}
    form["password_confirm"] = form["password"]
    refused = client.post("/register", data=form)
    assert "This field is required." in refused.get_data(as_text=True)
    response = client.post("/register", data={**form, "first_name": "Rea"})
    assert response.status_code == 302
    assert app_174.events == [("registered", "reader@catalogue.org", None)]
    with app_174.app.app_context():
        user = app_174.user_datastore.find_user(email="reader@catalogue.org")
        assert user.first_name == "Rea" and user.has_role("reader")


def test_174_app_password_change_reaches_a_two_argument_receiver(app_174):
    client = app_174.app.test_client()
    _login_174(client)
    change = {
        "password": "admin password",
        "new_password": "a fresh shelf key",
        "new_password_confirm": "a fresh shelf key",
    }
    assert client.post("/change", data=change).status_code == 302
    assert app_174.events == [("password changed", "admin@catalogue.org")]


def test_174_app_restful_consumer_gets_a_response_on_refusal(app_174):
    client = app_174.app.test_client()
    refused = client.get("/api/books", headers={"Accept": "application/json"})
    assert refused.status_code == 401
    assert refused.json["meta"]["code"] == 401
    token = client.post(
        "/login", json={"email": "admin@catalogue.org", "password": "admin password"}
    ).json["response"]["user"]["authentication_token"]
    answer = client.get("/api/books", headers={"Authentication-Token": token})
    assert answer.json == {"reader": "admin@catalogue.org", "books": []}


def test_174_app_principal_permission_admits_a_session_admin(app_174):
    client = app_174.app.test_client()
    _login_174(client)
    assert client.get("/admin").get_data(as_text=True) == "catalogue admin"


def test_174_app_principal_permission_refuses_a_reader(app_174):
    with app_174.app.app_context():
        app_174.user_datastore.create_user(
            email="reader@catalogue.org", password="reader password"
        )
        app_174.db.session.commit()
    client = app_174.app.test_client()
    _login_174(client, "reader@catalogue.org", "reader password")
    assert client.get("/admin").status_code == 403


def test_174_app_principal_identity_is_cleared_on_logout(app_174):
    client = app_174.app.test_client()
    _login_174(client)
    assert client.get("/admin").get_data(as_text=True) == "catalogue admin"
    with client:
        client.get("/logout")
        assert flask.g.identity.id is None and not flask.g.identity.provides
    with client:
        refused = client.get("/admin")
        assert refused.status_code == 302
        assert refused.headers["Location"] == "/login?next=/admin"
        assert flask.g.identity.id is None and not flask.g.identity.provides


def test_174_app_principal_permission_admits_token_and_basic_users(app_174):
    client = app_174.app.test_client()
    token = client.post(
        "/login", json={"email": "admin@catalogue.org", "password": "admin password"}
    ).json["response"]["user"]["authentication_token"]
    client.get("/logout")
    by_token = client.get(
        "/api/admin-by-token", headers={"Authentication-Token": token}
    )
    assert by_token.get_data(as_text=True) == "api admin by token"
    basic = base64.b64encode(b"admin@catalogue.org:admin password").decode()
    by_basic = client.get("/api/admin", headers={"Authorization": f"Basic {basic}"})
    assert by_basic.get_data(as_text=True) == "api admin"


def test_principal_identity_follows_login_and_logout(app):
    from flask_principal import RoleNeed, UserNeed

    add_user(app, roles=["admin"])
    with app.test_request_context():
        user = app.datastore.find_user(email="matt@lp.com")
        fsl.login_user(user)
        assert {UserNeed(user.id), RoleNeed("admin")} <= flask.g.identity.provides
        fsl.logout_user()
        assert flask.g.identity.id is None and not flask.g.identity.provides


def test_principal_reads_roles_only_when_a_permission_looks(app):
    from flask_principal import Permission, RoleNeed

    @app.route("/editors")
    @login_required
    def editors():
        with Permission(RoleNeed("editor")).require(http_exception=403):
            return "editors"

    client = logged_in_client(app, roles=["editor"])
    (profile,) = _statements_of(app, client, "/profile")
    assert "role" not in profile.lower()
    user, roles = _statements_of(app, client, "/editors")
    assert "role" not in user.lower() and "role" in roles.lower()
    assert client.get("/editors").data == b"editors"


def test_principal_provides_answers_every_set_question_with_the_roles(app):
    from flask_principal import RoleNeed, UserNeed

    user_id = add_user(app, roles=["admin"])
    client = app.test_client()
    login(client)
    with client:
        client.get("/profile")
        provides = flask.g.identity.provides
        expected = {UserNeed(int(user_id)), RoleNeed("admin")}
        assert RoleNeed("admin") in provides and len(provides) == 2
        assert provides == expected and expected == provides
        assert set(provides) == expected and provides.union() == expected
        assert provides | {RoleNeed("x")} == expected | {RoleNeed("x")}
        provides.add(RoleNeed("x"))
        provides.discard(RoleNeed("admin"))
        assert provides.issuperset({RoleNeed("x"), UserNeed(int(user_id))})
        assert RoleNeed("admin") not in provides


def test_principal_keeps_needs_an_app_receiver_adds(app):
    from flask_principal import ItemNeed, Permission, identity_loaded

    @identity_loaded.connect_via(app)
    def add_item_need(sender, identity):
        identity.provides.add(ItemNeed("edit", 1, "post"))

    @app.route("/post")
    @login_required
    def post():
        with Permission(ItemNeed("edit", 1, "post")).require(http_exception=403):
            return "post"

    client = logged_in_client(app)
    assert client.get("/post").data == b"post"


def test_principal_role_needs_that_failed_to_load_are_read_again(app):
    from flask_principal import RoleNeed, UserNeed

    class FlakyUser:
        reads = 0

        @property
        def roles(self):
            self.reads += 1
            if self.reads == 1:
                raise RuntimeError("the database session needs a rollback")
            return [types.SimpleNamespace(name="banned")]

    with app.test_request_context():
        provides = fsl._NeedsWithRoles({UserNeed(1)}, FlakyUser())
        with pytest.raises(RuntimeError):
            len(provides)
        assert RoleNeed("banned") in provides


def test_principal_provides_copies_and_pickles_as_a_plain_set(app):
    import copy
    import pickle

    from flask_principal import RoleNeed

    @app.route("/copies")
    @login_required
    def copies():
        provides = flask.g.identity.provides
        mine = copy.copy(provides)
        mine.add(RoleNeed("superuser"))
        unpickled = pickle.loads(pickle.dumps(provides))
        kinds = {type(copy.deepcopy(provides)), type(unpickled)}
        same = unpickled == provides
        return f"{RoleNeed('superuser') in provides} {kinds == {set}} {same}"

    client = logged_in_client(app, roles=["admin"])
    assert client.get("/copies").data == b"False True True"


def test_roles_and_permissions_are_readable_in_a_streamed_response(app):
    from flask_principal import Permission, RoleNeed

    @app.route("/streamed")
    @login_required
    def streamed():
        return flask.stream_template_string(
            "{{ current_user.has_role('admin') }} {{ permission.can() }}",
            permission=Permission(RoleNeed("admin")),
        )

    client = logged_in_client(app, roles=["admin"])
    assert client.get("/streamed").data == b"True True"


def test_files_sent_to_a_logged_in_user_read_no_roles(app):
    @app.route("/download")
    def download():
        return flask.send_file(io.BytesIO(b"data"), mimetype="text/plain")

    client = logged_in_client(app, roles=["admin"])
    (statement,) = _statements_of(app, client, "/download")
    assert "role" not in statement.lower()


def test_reading_roles_ahead_leaves_the_apps_pending_changes_to_the_app(app):
    from sqlalchemy.exc import IntegrityError

    db, role_model = app.datastore.db, app.datastore.role_model

    def commit_or_conflict(response):
        try:
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
            return flask.Response("conflict", status=409)
        return response

    # Runs after the library's own after_request functions.
    app.after_request_funcs[None].insert(0, commit_or_conflict)

    @app.route("/export")
    @login_required
    def export():
        db.session.add(role_model(name="admin"))
        return flask.Response(iter([b"a,b\n"]), mimetype="text/csv")

    client = logged_in_client(app, roles=["admin"])
    assert client.get("/export").status_code == 409


def test_reading_roles_ahead_for_a_kept_context_never_changes_the_answer(app):
    from sqlalchemy.exc import IntegrityError

    db, role_model = app.datastore.db, app.datastore.role_model

    @app.route("/failed-write")
    @login_required
    def failed_write():
        try:
            db.session.add(role_model(name="admin"))
            db.session.flush()
        except IntegrityError:
            return "taken"  # the session is left for the app to roll back
        return "created"

    client = logged_in_client(app, roles=["admin"])
    with client:
        assert client.get("/failed-write").data == b"taken"


def test_principal_switched_off_is_never_set_up(make_app):
    app = make_app(SECURITY_FLASK_PRINCIPAL=False)
    assert app.extensions["security"].principal is None
    with app.test_request_context():
        app.preprocess_request()
        assert "identity" not in flask.g


def test_principal_absent_leaves_roles_working(make_app, monkeypatch):
    monkeypatch.setitem(sys.modules, "flask_principal", None)
    app = make_app()
    assert app.extensions["security"].principal is None
    client = logged_in_client(app, roles=["admin"])
    assert client.get("/admin").data == b"admin"


# =============================================================================
# Packaging and the example app
# =============================================================================


def _documents():
    """The documents, as paths from the checkout: README, each page of docs/ and
    the benchmarks' README."""
    pages = sorted(path.name for path in (HERE / "docs").glob("*.md"))
    return ["README.md", *(f"docs/{name}" for name in pages), "bench/README.md"]


def _doc_blocks():
    """Every fenced block of every document as (file, heading, number under that
    heading, language, text)."""
    blocks = []
    fence = re.compile(r"^( *)```(\w*)\n(.*?)^\1```\n", re.S | re.M)
    for name in _documents():
        heading, counts, position = None, {}, 0
        document = (HERE / name).read_text()
        for match in fence.finditer(document):
            for line in document[position : match.start()].splitlines():
                if line.startswith("#"):
                    heading = line.lstrip("#").strip()
            position = match.end()
            counts[heading] = counts.get(heading, 0) + 1
            text = textwrap.dedent(match.group(3))  # a block in a list is indented
            blocks.append((name, heading, counts[heading], match.group(2), text))
    return blocks


def _section(name, heading):
    """The text of a document under ``heading``, up to the next heading of its
    level or above."""
    document = (HERE / name).read_text()
    match = re.search(rf"^(#+) {re.escape(heading)}\n", document, re.M)
    assert match, f"{name} has no heading {heading!r}"
    level = len(match.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.M).search(document, match.end())
    return document[match.end() : end.start() if end else len(document)]


def _setup_requirements():
    """install_requires and extras_require of setup.py, read without running it."""
    import ast

    call = next(
        node
        for node in ast.walk(ast.parse((HERE / "setup.py").read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup"
    )
    keywords = {k.arg: k.value for k in call.keywords}
    return (
        ast.literal_eval(keywords["install_requires"]),
        ast.literal_eval(keywords["extras_require"]),
    )


def _pip_arguments(block):
    """The requirement arguments of each ``pip install`` line of a shell block."""
    import shlex

    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words[:2] == ["pip", "install"]:
            yield from (word for word in words[2:] if not word.startswith("-"))


def _run_quick_start(program, tmp_path, monkeypatch, mongomock_line=None):
    """Run a quick start as written and log in as the user it creates."""
    import mongoengine
    import mongomock

    monkeypatch.chdir(tmp_path)
    if mongomock_line is None:  # the server the program names is a mongomock one
        connect = mongoengine.connect
        monkeypatch.setattr(
            mongoengine,
            "connect",
            lambda *args, **kwargs: connect(
                *args, mongo_client_class=mongomock.MongoClient, **kwargs
            ),
        )
    else:  # the README's own line replaces the program's connect call
        program = re.sub(
            r"mongoengine\.connect\(.*?\n\)\n", mongomock_line, program, flags=re.S
        )
        assert mongomock_line in program
    namespace = {"__name__": "readme_quick_start"}
    try:
        exec(compile(program, "README quick start", "exec"), namespace)
        app = namespace["app"]
        app.config["WTF_CSRF_ENABLED"] = False
        client = app.test_client()
        assert client.get("/").status_code == 302
        credentials = {"email": "matt@nobien.net", "password": "password"}
        assert client.post("/login", data=credentials).status_code == 302
        assert client.get("/").data == b"Hello matt@nobien.net"
    finally:
        mongoengine.disconnect()


def test_two_factor_doc_program_runs(wait_a_step):
    program = _doc_program("docs/two-factor.md", "Two-factor login")
    namespace = {"__name__": "doc_two_factor"}
    exec(compile(program, "docs/two-factor.md", "exec"), namespace)
    app = namespace["app"]
    app.config["WTF_CSRF_ENABLED"] = False
    app.extensions["mail"].suppress = True
    client = app.test_client()
    credentials = {"email": "matt@nobien.net", "password": "password"}
    client.post("/login", data=credentials)
    page = client.post(
        "/tf-setup", data={"password": "password"}, follow_redirects=True
    ).get_data(True)
    assert "<svg" in page
    key = shown_key(page).replace(" ", "")
    client.post("/tf-setup", data={"code": next_code(key)})
    client.get("/logout")
    assert client.post("/login", data=credentials).headers["Location"] == "/tf-validate"
    wait_a_step()
    client.post("/tf-validate", data={"code": next_code(key)})
    assert client.get("/").data == b"Hello matt@nobien.net"


def test_passkeys_doc_program_runs():
    program = _doc_program("docs/passkeys.md", "The models")
    namespace = {"__name__": "doc_passkeys"}
    exec(compile(program, "docs/passkeys.md", "exec"), namespace)
    app = namespace["app"]
    app.config["WTF_CSRF_ENABLED"] = False
    client, device = app.test_client(), SoftAuthenticator()
    client.post("/login", data={"email": "matt@nobien.net", "password": "password"})
    assert add_passkey(client, device, password="password").status_code == 200
    client.get("/logout")
    assert sign_in_with_passkey(client, device).status_code == 200
    assert client.get("/").data == b"Hello matt@nobien.net"


def _doc_program(name, heading, number=1):
    """The text of the ``number``-th block under ``heading`` of document ``name``."""
    (text,) = [b[4] for b in _doc_blocks() if b[:3] == (name, heading, number)]
    return text


def _run_mongomock_variant(block, tmp_path, monkeypatch):
    program = _doc_program("docs/datastores.md", "MongoEngine")
    _run_quick_start(program, tmp_path, monkeypatch, mongomock_line=block)


def _run_mail_program(block, tmp_path, monkeypatch):
    """Run a mail program against a real SMTP server and ask for a reset link."""
    from aiosmtpd.controller import Controller

    class Inbox:
        messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append((envelope.rcpt_tos, envelope.content.decode()))
            return "250 OK"

    port = _free_port()
    controller = Controller(Inbox(), hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAIL_SERVER", "127.0.0.1")
    monkeypatch.setenv("MAIL_PORT", str(port))
    try:
        namespace = {"__name__": "readme_mail"}
        exec(compile(block, "README mail", "exec"), namespace)
        app = namespace["app"]
        app.config["WTF_CSRF_ENABLED"] = False
        with app.app_context():
            datastore = app.extensions["security"].datastore
            datastore.create_user(email="reader@example.com", password=PASSWORD)
            datastore.commit()
        response = app.test_client().post(
            "/reset", data={"email": "reader@example.com"}
        )
        assert response.status_code == 200
        if "executor" in namespace:
            namespace["executor"].shutdown(wait=True)
    finally:
        controller.stop()
    ((recipients, content),) = controller.handler.messages
    assert recipients == ["reader@example.com"]
    assert "http://localhost:5000/reset/" in content.replace("=\n", "")


def _run_cli_block(block, tmp_path, monkeypatch):
    """The commands, as written, on README's quick start saved as app.py."""
    (tmp_path / "app.py").write_text(_doc_program("README.md", "Quick start"))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", "-e", "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    import sqlite3

    database = sqlite3.connect(tmp_path / "instance" / "app.db")
    rows = database.execute(
        "select user.email, user.confirmed_at is not null, role.name from user "
        "join roles_users on roles_users.user_id = user.id "
        "join role on role.id = roles_users.role_id"
    ).fetchall()
    assert rows == [("admin@example.com", 1, "admin")]


def _run_vendored_layout(block, tmp_path, monkeypatch):
    """Lay the project out as drawn, with the quick start as app.py and an override
    of the login page, and run it from there in a fresh interpreter."""
    shutil.copy(HERE / "flask_security_lite.py", tmp_path)
    shutil.copytree(HERE / "templates", tmp_path / "flask_security_lite_templates")
    names = {line.strip().split()[0] for line in block.splitlines()[1:]}
    assert {"flask_security_lite.py", "flask_security_lite_templates/"} <= names
    (tmp_path / "app.py").write_text(_doc_program("README.md", "Quick start"))
    (tmp_path / "templates" / "security").mkdir(parents=True)
    (tmp_path / "templates" / "security" / "login_user.html").write_text("our login")
    script = (
        "import app, flask_security_lite as fsl\n"
        "print(fsl.__file__)\n"
        "print(app.create_app().test_client().get('/login').get_data(as_text=True))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.stdout.splitlines() == [
        str(tmp_path / "flask_security_lite.py"),
        "our login",
    ], result.stderr


def _check_vendoring_requirements(block, tmp_path, monkeypatch):
    """The vendoring list is setup.py's, requirement for requirement."""
    install_requires, _ = _setup_requirements()
    assert sorted(_pip_arguments(block)) == sorted(install_requires)


def _check_pip_requirements(block, tmp_path, monkeypatch):
    """Each requirement parses, names this distribution and only its extras (the
    installs themselves are run by the wheel and sdist tests)."""
    from packaging.requirements import Requirement

    _, extras = _setup_requirements()
    arguments = list(_pip_arguments(block))
    assert arguments
    for argument in arguments:
        requirement = Requirement(re.sub(r"^\S*?(?=\[|$| @)", "x", argument))
        assert requirement.extras <= set(extras), argument
        if " @ " in argument:
            assert argument.startswith("flask-security-lite[")


def _check_ci_runs_it(block, tmp_path, monkeypatch):
    """The test commands are the ones .ci/run runs."""
    ci = (HERE / ".ci" / "run").read_text()
    for command in block.strip().split(" && "):
        assert command in ci


def _run_install_as_flask_security(block, tmp_path, monkeypatch):
    result = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def _run_proxy_fix(block, tmp_path, monkeypatch):
    from werkzeug.middleware.proxy_fix import ProxyFix

    namespace = {"app": Flask(__name__)}
    exec(block, namespace)
    assert isinstance(namespace["app"].wsgi_app, ProxyFix)


def _run_logout_form(block, tmp_path, monkeypatch):
    """The logout form of docs/security.md logs out an app that allows POST only."""
    app, datastore = _app_with_user_fields(
        [*ALWAYS_NEEDED, "security_stamp"],
        TESTING=True,
        SECURITY_LOGOUT_METHODS=["POST"],
        SECURITY_PASSWORD_HASH_OPTIONS=FAST_HASHING,
    )
    Security(app, datastore)
    app.datastore = datastore
    _add_test_views(app)
    app.add_url_rule("/page", "page", lambda: flask.render_template_string(block))
    with app.app_context():
        datastore.db.create_all()
    add_user(app)
    client = app.test_client()
    csrf_login(client)
    page = client.get("/page").get_data(as_text=True)
    form, token = _Tags(page, "form").found[0], _Tags(page, "input").found[0]
    response = client.post(form["action"], data={token["name"]: token["value"]})
    assert response.status_code == 302
    assert client.get("/profile").status_code == 302


def _run_sql_on_sqlite(block, tmp_path, monkeypatch):
    import sqlite3

    database = sqlite3.connect(":memory:")
    database.execute('create table "user" (id integer primary key, email text)')
    (statement,) = [line for line in block.splitlines() if "SQLite" in line]
    database.execute(statement.split(";")[0])
    plan = database.execute(
        "explain query plan select * from user where lower(email) = 'a@b.c'"
    ).fetchall()
    assert "ix_user_email_lower" in str(plan)


def _run_auth_required_over_roles(block, tmp_path, monkeypatch):
    """README's role-protected view admits an admin's token and session, and
    refuses a token of a user without the role."""
    app = Flask(__name__)
    app.config.update(SECRET_KEY="readme", WTF_CSRF_ENABLED=False, TESTING=True)
    app.config["SECURITY_PASSWORD_HASH_OPTIONS"] = FAST_HASHING
    datastore, teardown = _sqlalchemy_store(app, "sqlite://")
    try:
        Security(app, datastore)
        namespace = {"app": app, **vars(fsl)}
        exec(block, namespace)
        app.datastore = datastore
        add_user(app, roles=["admin"])
        add_user(app, email="reader@lp.com")
        admin = {"Authentication-Token": auth_token(app.test_client())}
        reader_token = auth_token(app.test_client(), "reader@lp.com")
        reader = {"Authentication-Token": reader_token}
        assert app.test_client().get("/reports", headers=admin).data == b"reports"
        assert app.test_client().get("/reports", headers=reader).status_code == 403
        session = app.test_client()
        login(session)
        assert session.get("/reports").data == b"reports"
    finally:
        teardown()


def _run_factory_quick_start(block, tmp_path, monkeypatch):
    """The app-factory quick start, as written: anonymous visitors are sent to log
    in, the admin reaches every page, a user without the role gets 403, and the
    API answers an auth token."""
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme_quick_start"}
    exec(compile(block, "README quick start", "exec"), namespace)
    app = namespace["create_app"]()
    app.config.update(
        WTF_CSRF_ENABLED=False, SECURITY_PASSWORD_HASH_OPTIONS=FAST_HASHING
    )
    with app.app_context():
        datastore = app.extensions["security"].datastore
        admin = datastore.create_user(email="admin@example.com", password=PASSWORD)
        datastore.add_role_to_user(admin, datastore.create_role(name="admin"))
        datastore.create_user(email="reader@example.com", password=PASSWORD)
        datastore.commit()
    assert (tmp_path / "instance" / "app.db").exists()
    client = app.test_client()
    assert client.get("/").headers["Location"].startswith("/login")
    credentials = {"email": "admin@example.com", "password": PASSWORD}
    assert client.post("/login", data=credentials).status_code == 302
    assert client.get("/").data == b"Hello admin@example.com"
    assert client.get("/admin").status_code == 200
    reader = app.test_client()
    reader.post("/login", data={"email": "reader@example.com", "password": PASSWORD})
    assert reader.get("/admin").status_code == 403
    token = auth_token(app.test_client(), "admin@example.com")
    me = app.test_client().get("/api/me", headers={"Authentication-Token": token})
    assert me.json == {"email": "admin@example.com", "roles": ["admin"]}


def _run_curl_walk(block, tmp_path, monkeypatch):
    """README's curl commands, as written, against its quick start served on
    loopback, with the users README's commands make; the last command must print
    what the block's last line shows."""
    import shlex

    from werkzeug.serving import make_server

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme_quick_start"}
    exec(compile(_doc_program("README.md", "Quick start"), "README", "exec"), namespace)
    app = namespace["create_app"]()
    cli = app.test_cli_runner()
    for line in _doc_program("README.md", "Quick start", 2).splitlines():
        words = shlex.split(line)
        assert words[:3] == ["flask", "--app", "app"], line
        result = cli.invoke(args=words[3:])
        assert result.exit_code == 0, result.output
    server = make_server("127.0.0.1", _free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    assert "127.0.0.1:5000" in block
    commands = block.replace("127.0.0.1:5000", f"127.0.0.1:{server.server_port}")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    try:
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", commands],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert result.returncode == 0, result.stdout + result.stderr
    shown = block.strip().splitlines()[-1].removeprefix("# ")
    assert result.stdout.strip() == shown, result.stdout + result.stderr


def _check_bench_install(block, tmp_path, monkeypatch):
    """The benchmarks' install lines: the extra is setup.py's, and the system
    packages are ones CI installs too."""
    _, extras = _setup_requirements()
    assert list(_pip_arguments(block)) == [".[bench]"] and "bench" in extras
    ci = (HERE / ".ci" / "run").read_text()
    for line in block.splitlines():
        if line.startswith("apt-get install "):
            for package in line.split()[2:]:
                assert re.search(rf"apt-get install .*\b{package}\b", ci), package


#: How each block of the documents is run, by (file, heading, number under that
#: heading): a function, or the name of the test that runs it.
DOC_BLOCK_RUNNERS = {
    (
        "README.md",
        "flask-security-lite",
        1,
    ): "test_example_app_demo_user_flow_with_curl_like_requests",
    ("README.md", "flask-security-lite", 2): _check_ci_runs_it,
    ("README.md", "Install", 1): _check_pip_requirements,
    ("README.md", "Quick start", 1): _run_factory_quick_start,
    ("README.md", "Quick start", 2): _run_cli_block,
    ("README.md", "Protecting views", 1): _run_auth_required_over_roles,
    ("README.md", "A JSON client, with curl", 1): _run_curl_walk,
    ("docs/install.md", "Install", 1): _check_pip_requirements,
    ("docs/install.md", "Install", 2): _check_pip_requirements,
    ("docs/install.md", "Install", 3): _run_vendored_layout,
    ("docs/install.md", "Install", 4): _check_vendoring_requirements,
    ("docs/datastores.md", "MongoEngine", 1): _run_quick_start,
    ("docs/datastores.md", "MongoEngine", 2): _run_mongomock_variant,
    ("docs/datastores.md", "Peewee", 1): _run_quick_start,
    ("docs/mail.md", "Mail", 1): _run_mail_program,
    ("docs/mail.md", "Mail", 2): _run_mail_program,
    ("docs/two-factor.md", "Two-factor login", 1): "test_two_factor_doc_program_runs",
    ("docs/passkeys.md", "Passkeys", 1): _check_pip_requirements,
    ("docs/passkeys.md", "The models", 1): "test_passkeys_doc_program_runs",
    (
        "docs/migrating.md",
        "Migrating a 1.7.4 application",
        1,
    ): _run_install_as_flask_security,
    (
        "docs/security.md",
        "Per-address limits with Flask-Limiter",
        1,
    ): "test_per_ip_limit_with_flask_limiter_recipe_works",
    (
        "docs/security.md",
        "Running on many workers and hosts",
        1,
    ): "test_example_app_under_gunicorn_and_postgresql_keeps_its_promises",
    ("docs/security.md", "Running on many workers and hosts", 2): _run_proxy_fix,
    ("docs/security.md", "Running on many workers and hosts", 3): _run_sql_on_sqlite,
    ("docs/security.md", "Sessions", 1): _run_logout_form,
    ("bench/README.md", "Benchmarks", 1): _check_bench_install,
}


def test_module_docstring_names_the_dependencies_of_a_vendored_copy():
    install_line = fsl.__doc__.split("install its dependencies::", 1)[1]
    block = install_line.split("\n\n", 2)[1].replace("\\\n", " ")
    install_requires, _ = _setup_requirements()
    assert sorted(_pip_arguments(block)) == sorted(install_requires)


def test_every_documented_code_block_has_a_runner():
    blocks = {block[:3] for block in _doc_blocks()}
    assert blocks == set(DOC_BLOCK_RUNNERS), "add or remove a runner for a block"
    for runner in DOC_BLOCK_RUNNERS.values():
        assert callable(runner) or callable(globals().get(runner)), runner


#: Runners that start processes or servers.
_SLOW_DOC_RUNNERS = (
    _run_cli_block,
    _run_vendored_layout,
    _run_install_as_flask_security,
    _run_mail_program,
    _run_curl_walk,
)


@pytest.mark.parametrize(
    "name, heading, number, language, text",
    [
        pytest.param(
            *block,
            id=f"{block[0]} {block[1]} {block[2]}",
            marks=[pytest.mark.slow]
            if DOC_BLOCK_RUNNERS.get(block[:3]) in _SLOW_DOC_RUNNERS
            else [],
        )
        for block in _doc_blocks()
    ],
)
def test_every_documented_code_block_runs(
    name, heading, number, language, text, tmp_path, monkeypatch
):
    runner = DOC_BLOCK_RUNNERS.get((name, heading, number))
    if runner is None or isinstance(runner, str):
        pytest.skip(f"run by {runner}" if runner else "no runner: see the test above")
    runner(text, tmp_path, monkeypatch)


#: The reference pages README sends its reader on to.
REFERENCE_PAGES = (
    "docs/install.md",
    "docs/datastores.md",
    "docs/mail.md",
    "docs/views.md",
    "docs/two-factor.md",
    "docs/passkeys.md",
    "docs/configuration.md",
    "docs/migrating.md",
    "docs/security.md",
    "bench/README.md",
)


def test_readme_is_at_most_350_lines():
    assert len((HERE / "README.md").read_text().splitlines()) <= 350


@pytest.mark.parametrize("page", REFERENCE_PAGES)
def test_readme_links_to_each_reference_page(page):
    assert (HERE / page).is_file()
    assert f"]({page})" in (HERE / "README.md").read_text()


def test_every_page_in_docs_is_a_reference_page():
    assert set(_documents()) - {"README.md"} == set(REFERENCE_PAGES)


@pytest.mark.parametrize(
    "subsection",
    [
        "No SECRET_KEY",
        "A user model without UserMixin",
        "A setting of the wrong type",
        "Tables not created",
        "No mail",
    ],
)
def test_readme_troubleshooting_has_the_section_startup_errors_name(subsection):
    assert f"\n### {subsection}\n" in _section("README.md", "Troubleshooting")


def test_readme_field_table_names_every_field_the_startup_checks_ask_for():
    section = _section("README.md", "The fields each feature needs")
    assert section.count("\n|---") == 1, "one table"
    for feature, fields in fsl._USER_FIELDS.items():
        if feature is not None:
            assert f"`SECURITY_{feature}`" in section, feature
        for field in fields:
            assert f"`{field}`" in section, field
    assert "`SECURITY_USER_IDENTITY_ATTRIBUTES`" in section


def test_readme_states_the_minimum_python_of_setup_py():
    minimum = re.search(
        r'python_requires=">=([\d.]+)"', (HERE / "setup.py").read_text()
    )
    assert f"Python {minimum.group(1)} or later" in _section("README.md", "Install")


@pytest.mark.parametrize("name", _documents())
def test_pip_install_build_comes_before_python_m_build(name):
    text = (HERE / name).read_text()
    if "python -m build" in text:
        assert 0 <= text.find("pip install build") < text.index("python -m build")


def test_migrating_page_keeps_the_differences_and_the_migration():
    assert _section("docs/migrating.md", "Differences from Flask-Security 1.7.4")
    assert _section("docs/migrating.md", "Migrating a 1.7.4 application")


def _anchor(heading):
    """The anchor GitHub gives a heading: lowercase, punctuation dropped, spaces
    as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


@pytest.mark.parametrize("name", _documents())
def test_links_between_documents_lead_to_a_file_and_heading_that_exist(name):
    for target in re.findall(r"\]\(([^):]+)\)", (HERE / name).read_text()):
        path, _, anchor = target.partition("#")
        document = (HERE / name).parent / path if path else HERE / name
        assert document.is_file(), target
        if anchor:
            headings = re.findall(r"^#+ (.*)$", document.read_text(), re.M)
            assert anchor in {_anchor(h) for h in headings}, target


@pytest.fixture(scope="session")
def built_distributions(tmp_path_factory):
    """``python -m build`` of this checkout: the wheel, the sdist and what it said."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", out, HERE],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("flask_security_lite-*.whl")
    (sdist,) = out.glob("flask_security_lite-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist, "output": result.stdout + result.stderr}


@pytest.fixture(scope="session", params=["wheel", "sdist"])
def installed_distribution(request, built_distributions, tmp_path_factory):
    """Install the wheel or the sdist into a fresh virtual environment that sees the
    running environment's packages (Flask and the rest) but not this checkout."""
    import site
    import sysconfig

    venv = tmp_path_factory.mktemp(request.param) / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = venv / "bin" / "python"
    inner = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Plain path lines: the outer site-packages' own .pth files (an editable install
    # of this checkout among them) are not run, so only the wheel provides the module.
    outer = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    Path(inner, "outer-environment.pth").write_text("\n".join(sorted(outer)) + "\n")
    install = [python, "-m", "pip", "install", "--no-deps", "--no-index"]
    subprocess.run(
        [*install, "--no-build-isolation", built_distributions[request.param]],
        check=True,
        capture_output=True,
    )
    return python


@pytest.mark.slow
def test_build_gives_no_legacy_or_deprecation_warning(built_distributions):
    output = built_distributions["output"].lower()
    assert "deprecat" not in output and "legacy" not in output, output


@pytest.mark.slow
def test_sdist_carries_tests_example_and_documents(built_distributions):
    with tarfile.open(built_distributions["sdist"]) as sdist:
        names = {name.split("/", 1)[-1] for name in sdist.getnames()}
    expected = {
        "flask_security_lite.py",
        "test_flask_security_lite.py",
        "example_app.py",
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "pyproject.toml",
        "setup.py",
        "templates/security/login_user.html",
        "templates/security/email/welcome.txt",
        "templates/common_passwords.txt",
        *_documents(),
        "example/templates/security/base.html",
        "example/static/demo.css",
    }
    assert expected <= names, expected - names


@pytest.mark.slow
def test_installed_distribution_renders_login_page_and_email_outside_checkout(
    installed_distribution, tmp_path
):
    script = tmp_path / "check.py"
    script.write_text(
        """
import flask_security_lite as fsl
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_mail import Mail

assert "site-packages" in fsl.__file__, fsl.__file__
app = Flask(__name__)
app.config.update(SECRET_KEY="k", SQLALCHEMY_DATABASE_URI="sqlite://", TESTING=True)
db = SQLAlchemy(app)

class Role(db.Model, fsl.RoleMixin):
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(80))

class User(db.Model, fsl.UserMixin):
    id = db.Column(db.Integer, primary_key=True)
    email = db.Column(db.String(255))
    password = db.Column(db.String(255))
    active = db.Column(db.Boolean)
    roles = db.relationship(Role, secondary=db.Table(
        "ru",
        db.Column("u", db.ForeignKey("user.id")),
        db.Column("r", db.ForeignKey("role.id")),
    ))

fsl.Security(app, fsl.SQLAlchemyUserDatastore(db, User, Role))
mail = Mail(app)
page = app.test_client().get("/login").get_data(as_text=True)
assert 'name="csrf_token"' in page and "<form" in page
with app.test_request_context(), mail.record_messages() as outbox:
    user = User(email="a@b.c")
    fsl.send_mail("s", "a@b.c", "welcome", user=user, confirmation_link="L")
assert "a@b.c" in outbox[0].body and "<p>" in outbox[0].html
with app.app_context():
    assert fsl._is_common("iloveyou") and not fsl._is_common("plum tree in june")
print("ok")
"""
    )
    result = subprocess.run(
        [installed_distribution, script], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.stdout.strip() == "ok", result.stderr


#: The documented ways to start the demo, each given the port to listen on.
EXAMPLE_COMMANDS = {
    "python example_app.py": lambda port: [sys.executable, HERE / "example_app.py"],
    "flask --app example_app run": lambda port: [
        *(sys.executable, "-m", "flask", "--app", HERE / "example_app.py"),
        *("run", "--port", str(port)),
    ],
}


def _start_example(tmp_path, command="python example_app.py", **extra_env):
    port = _free_port()
    env = dict(
        os.environ,
        **extra_env,
        PORT=str(port),
        DATABASE_URL=f"sqlite:///{tmp_path / 'example.db'}",
        PYTHONUNBUFFERED="1",
    )
    process = subprocess.Popen(
        EXAMPLE_COMMANDS[command](port),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, f"http://127.0.0.1:{port}", lines
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("example app did not start:\n" + "".join(lines))


def _last_link(lines, path, after=0):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = re.findall(rf"(http://\S+{path}/\S+)", "".join(lines[after:]))
        if found:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no {path} link in:\n" + "".join(lines))


@pytest.fixture
def example_site(tmp_path):
    process, url, lines = _start_example(tmp_path)
    yield url, lines
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(params=list(EXAMPLE_COMMANDS))
def example_site_started_each_way(tmp_path, request):
    process, url, lines = _start_example(tmp_path, request.param)
    yield url, lines
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def passwordless_example_site(tmp_path):
    process, url, lines = _start_example(tmp_path, PASSWORDLESS="1")
    yield url, lines
    process.terminate()
    process.wait(timeout=10)


def _navigate_by(page, selector):
    """Click what loads another page, and wait for that page (a busy machine can
    otherwise read the old one, or nothing)."""
    with page.expect_navigation():
        page.click(selector)


@pytest.fixture
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("Debian's chromium is not installed")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--headless"],
        )
        yield browser
        browser.close()


@pytest.mark.slow
def test_example_app_demo_user_flow_with_curl_like_requests(
    example_site_started_each_way,
):
    import http.cookiejar
    import json
    import urllib.error
    import urllib.request

    url, lines = example_site_started_each_way
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    page = opener.open(url + "/login").read().decode()
    csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    credentials = {"email": "demo@example.com", "password": "demo-password"}
    login_request = urllib.request.Request(
        url + "/login",
        data=json.dumps(credentials).encode(),
        headers={"Content-Type": "application/json", "X-CSRFToken": csrf},
    )
    body = json.load(opener.open(login_request))
    token = body["response"]["user"]["authentication_token"]
    home = opener.open(url + "/").read().decode()
    assert 'href="/admin"' not in re.search(r"<header.*</header>", home, re.S)[0]
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(url + "/admin")
    assert refused.value.code == 403
    assert "This page needs the admin role" in refused.value.read().decode()
    api = urllib.request.Request(
        url + "/api/whoami", headers={"Authentication-Token": token}
    )
    assert json.load(urllib.request.urlopen(api))["email"] == "demo@example.com"


def _whoami(url, token):
    """What /api/whoami answers to ``token``."""
    import json
    import urllib.request

    request = urllib.request.Request(
        url + "/api/whoami", headers={"Authentication-Token": token}
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)


class _Walker:
    """A visitor of the demo in a browser page that runs axe on every page it
    shows, starting each step from the home page's checklist."""

    def __init__(self, url, lines, page):
        self.url, self.lines, self.page = url, lines, page
        self.found, self.followed, self.checked = [], set(), set()

    def check(self):
        """axe on the page shown, unless it showed the same before; what it finds
        is kept for the end."""
        shown = (self.page.url, self.page.inner_text("body"))
        if shown not in self.checked:
            self.checked.add(shown)
            self.found += self.page.check()

    def follow(self, name):
        """Open the home page and the checklist's link ``name``."""
        self.page.goto(self.url + "/")
        self.check()
        checklist = self.page.locator(".checklist")
        link = checklist.get_by_role("link", name=name, exact=True)
        self.followed.add(link.get_attribute("href"))
        if link.get_attribute("href").startswith("#"):
            link.click()
            return
        with self.page.expect_navigation():
            link.click()
        self.check()

    def submit(self, **fields):
        """Fill the page's form and send it; axe the answer."""
        for name, value in fields.items():
            self.page.fill(f"main input[name={name}]", value)
        _navigate_by(self.page, "main input[type=submit]")
        self.check()

    def open(self, url):
        """Open ``url`` (a mailed link); axe the page."""
        self.page.goto(url)
        self.check()

    def click(self, selector):
        """Click what opens another page; axe the page."""
        _navigate_by(self.page, selector)
        self.check()

    def log_in(self, email, password):
        """The checklist's login, as ``email``."""
        self.follow("Log in")
        self.submit(email=email, password=password)

    def log_out(self):
        """The menu's logout."""
        self.click("header a[href='/logout']")

    def text(self):
        """What the page says."""
        return self.page.inner_text("body")


@pytest.mark.slow
def test_example_app_walk_through_every_link_of_its_checklist(
    example_site_started_each_way, axe_page
):
    import urllib.error

    url, lines = example_site_started_each_way
    walker, page = _Walker(url, lines, axe_page), axe_page
    page.goto(url + "/")
    hrefs = "links => links.map(link => link.getAttribute('href'))"
    checklist = set(page.locator(".checklist a").evaluate_all(hrefs))

    # register, confirm from the printed mail, log out
    walker.follow("Register an account")
    walker.submit(email="walker@example.com", password="brisk morning stroll")
    assert "We sent confirmation instructions to walker@example.com" in walker.text()
    walker.open(_last_link(lines, "/confirm"))
    assert "your email address is confirmed" in walker.text()
    assert "Logged in as walker@example.com" in walker.text()
    walker.log_out()

    # log in, enrol two-factor with a code from the shown key, log out
    walker.log_in("walker@example.com", "brisk morning stroll")
    walker.follow("Set up two-factor login")
    walker.submit(password="brisk morning stroll")
    assert page.locator("figure.tf-qr svg").count() == 1
    key = page.inner_text("#tf-key").replace(" ", "")
    walker.submit(code=code_a_step_late(key))
    recovery_codes = page.locator("ul.tf-recovery-codes code").all_inner_texts()
    assert len(recovery_codes) == 10
    walker.click("text=I saved them: continue")
    assert "Two-factor login is on" in walker.text()
    walker.follow("See your profile")
    assert "Make new recovery codes" in walker.text()
    walker.log_out()

    # log in with a code, log out; log in with a recovery code, once
    walker.log_in("walker@example.com", "brisk morning stroll")
    assert page.url == url + "/tf-validate"
    walker.submit(code=next_code(key))
    assert "Logged in as walker@example.com" in walker.text()
    walker.log_out()
    walker.log_in("walker@example.com", "brisk morning stroll")
    walker.click("text=Use a recovery code")
    walker.submit(code=recovery_codes[0])
    assert "You logged in with a recovery code; 9 are left." in walker.text()

    # read the token and call /api/whoami with it
    walker.follow("Call the API with your auth token")
    token = page.inner_text("#auth-token")
    assert _whoami(url, token)["email"] == "walker@example.com"

    # the admin page is not for this account, nor is its menu item
    walker.follow("Open the admin page")
    assert "This page needs the admin role" in walker.text()
    assert page.locator("header a[href='/admin']").count() == 0

    # change the password: the token stops working
    walker.follow("Change your password")
    walker.submit(
        password="brisk morning stroll",
        new_password="brisk evening stroll",
        new_password_confirm="brisk evening stroll",
    )
    assert "Your password has been changed." in walker.text()
    with pytest.raises(urllib.error.HTTPError):
        _whoami(url, token)
    walker.log_out()

    # trip the lockout; get back in by a reset link
    walker.follow("Lock an account")
    for _ in range(5):
        walker.submit(email="demo@example.com", password="not the password")
    walker.submit(email="demo@example.com", password="demo-password")
    assert "this account is locked for 15 minutes" in walker.text()
    assert "reset the password by “Forgot password”" in walker.text()
    assert "flask --app example_app users unlock EMAIL" in walker.text()
    mark = len(lines)
    walker.follow("Reset a forgotten password")
    walker.submit(email="demo@example.com")
    walker.open(_last_link(lines, "/reset", after=mark))
    walker.submit(
        password="fresh start at noon", password_confirm="fresh start at noon"
    )
    assert "Your password has been reset and you are logged in." in walker.text()
    walker.log_out()
    walker.log_in("demo@example.com", "fresh start at noon")
    assert "Logged in as demo@example.com" in walker.text()
    walker.log_out()

    # the admin sees the menu item and reaches the page
    walker.log_in("admin@example.com", "admin-password")
    walker.click("header a[href='/admin']")
    assert "Only admins see this page." in walker.text()
    assert "walker@example.com" in walker.text()  # among the accounts listed

    assert walker.followed == checklist
    assert walker.found == []


def _virtual_authenticator(page):
    """Chromium's DevTools authenticator on ``page``: a platform passkey provider
    (CTAP2, internal, resident keys) that verifies its user at once."""
    session = page.context.new_cdp_session(page)
    session.send("WebAuthn.enable")
    options = {
        "protocol": "ctap2",
        "transport": "internal",
        "hasResidentKey": True,
        "hasUserVerification": True,
        "isUserVerified": True,
        "automaticPresenceSimulation": True,
    }
    session.send("WebAuthn.addVirtualAuthenticator", {"options": options})
    return session


@pytest.mark.slow
def test_example_app_passkey_added_in_a_browser_signs_in(example_site, axe_page):
    # An RP id must be a domain: localhost, never 127.0.0.1.
    url, page = example_site[0].replace("127.0.0.1", "localhost"), axe_page
    _virtual_authenticator(page)
    found = []
    page.goto(url + "/login")
    page.fill("input[name=email]", "demo@example.com")
    page.fill("input[name=password]", "demo-password")
    _navigate_by(page, "form[name=login_user_form] input[type=submit]")
    page.goto(url + "/profile")
    _navigate_by(page, "text=Manage passkeys")
    found += page.check()
    page.fill("#passkey-label", "Demo laptop")
    page.fill("#passkey-password", "demo-password")
    _navigate_by(page, "#passkey-add input[type=submit]")
    assert "The passkey Demo laptop was added." in page.content()
    assert "never used" in page.content()
    found += page.check()
    page.goto(url + "/logout")
    # The browser offers the passkey in the address field (conditional
    # mediation), and the virtual authenticator takes the offer at once.
    page.goto(url + "/login")
    page.wait_for_url(url + "/")
    page.goto(url + "/profile")
    assert "Logged in as <strong>demo@example.com</strong>" in page.content()
    assert "last used <time" in page.goto(url + "/passkeys").text()
    # Without conditional mediation, the button.
    page.goto(url + "/logout")
    page.add_init_script("delete PublicKeyCredential.isConditionalMediationAvailable")
    page.goto(url + "/login?next=/profile")
    found += page.check()
    _navigate_by(page, "text=Sign in with a passkey")
    assert "Logged in as <strong>demo@example.com</strong>" in page.content()
    assert page.url == url + "/profile"
    assert found == []


@pytest.mark.slow
def test_example_app_passkey_errors_are_shown_on_the_page(example_site, axe_page):
    page = axe_page
    page.goto(example_site[0] + "/login")  # 127.0.0.1: no passkey can work here
    _virtual_authenticator(page)
    page.click("text=Sign in with a passkey")
    error = page.locator("#passkey-error")
    error.filter(has_text="Passkeys need a domain name").wait_for()
    assert error.get_attribute("role") == "alert"
    assert page.check() == []


@pytest.mark.slow
def test_example_app_passwordless_login_in_a_browser(
    passwordless_example_site, browser
):
    url, lines = passwordless_example_site
    page = browser.new_page()
    page.goto(url + "/login")
    page.fill("input[name=email]", "demo@example.com")
    mark = len(lines)
    _navigate_by(page, "input[type=submit]")
    assert "We sent a login link to demo@example.com" in page.content()
    page.goto(_last_link(lines, "/login", after=mark))
    assert "Logged in as <strong>demo@example.com</strong>" in page.content()


@pytest.mark.slow
def test_example_app_checklist_offers_no_lockout_without_a_password_form(
    passwordless_example_site,
):
    import urllib.request

    url, _ = passwordless_example_site
    home = urllib.request.urlopen(url + "/").read().decode()
    assert "Log in by email" in home
    assert "Lock an account" not in home


@pytest.mark.slow
def test_example_app_pages_and_security_pages_share_its_stylesheet(
    example_site, browser
):
    url, _ = example_site
    page = browser.new_page()  # the pages' own CSP applies
    refused = []
    page.on("console", lambda message: refused.append(message.text))
    header_colours = {}
    for path in ("/", "/login"):
        response = page.goto(url + path)
        header_colours[path] = page.eval_on_selector(
            "header.site", "header => getComputedStyle(header).backgroundColor"
        )
    assert response.header_value("Content-Security-Policy")  # a security page's
    assert header_colours == {"/": "rgb(29, 35, 48)", "/login": "rgb(29, 35, 48)"}
    assert [text for text in refused if "Content Security Policy" in text] == []


def _home_page_as(url, email, password):
    """The demo's home page after a browser-like login as ``email``."""
    import http.cookiejar
    import urllib.parse
    import urllib.request

    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    page = opener.open(url + "/login").read().decode()
    csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)[1]
    form = {"email": email, "password": password, "csrf_token": csrf}
    data = urllib.parse.urlencode(form).encode()
    return opener.open(url + "/login", data).read().decode()


@pytest.mark.slow
def test_example_app_home_page_curl_lines_work_when_pasted(example_site, tmp_path):
    import html
    import json

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    url, _ = example_site
    home = _home_page_as(url, "demo@example.com", "demo-password")
    answers = {}
    for name in ("curl-whoami", "curl-login"):
        line = re.search(rf'<pre class="command" id="{name}">(.*?)</pre>', home, re.S)
        result = subprocess.run(
            ["bash", "-c", html.unescape(line[1])],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        answers[name] = json.loads(result.stdout)
    assert answers["curl-whoami"] == {"email": "demo@example.com", "roles": []}
    token = answers["curl-login"]["response"]["user"]["authentication_token"]
    assert _whoami(url, token)["email"] == "demo@example.com"


@pytest.mark.slow
def test_example_app_unlock_command_it_names_opens_a_locked_account(
    example_site, tmp_path
):
    url, _ = example_site
    for _ in range(5):
        _home_page_as(url, "demo@example.com", "not the password")
    locked = _home_page_as(url, "demo@example.com", "demo-password")
    command = re.search(r"run (flask --app example_app users unlock) EMAIL", locked)
    env = dict(
        os.environ,
        DATABASE_URL=f"sqlite:///{tmp_path / 'example.db'}",
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    )
    result = subprocess.run(
        [*command[1].split(), "demo@example.com"],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    home = _home_page_as(url, "demo@example.com", "demo-password")
    assert "Logged in as <strong>demo@example.com</strong>" in home


#: The tables of the demo before its two-factor and lockout fields.
OLD_DEMO_SCHEMA = """
CREATE TABLE role (id INTEGER PRIMARY KEY, name VARCHAR(80) UNIQUE,
                   description VARCHAR(255));
CREATE TABLE user (id INTEGER PRIMARY KEY, email VARCHAR(255) UNIQUE,
                   password VARCHAR(255), active BOOLEAN, confirmed_at DATETIME,
                   last_login_at DATETIME, current_login_at DATETIME,
                   last_login_ip VARCHAR(100), current_login_ip VARCHAR(100),
                   login_count INTEGER);
CREATE TABLE roles_users (user_id INTEGER REFERENCES user(id),
                          role_id INTEGER REFERENCES role(id));
INSERT INTO user (email, active) VALUES ('earlier@example.com', 1);
"""


@pytest.mark.slow
def test_example_app_adds_the_columns_an_older_database_lacks(tmp_path):
    import sqlite3

    from passlib.hash import pbkdf2_sha512

    database = sqlite3.connect(tmp_path / "example.db")
    database.executescript(OLD_DEMO_SCHEMA)
    demo_hash = pbkdf2_sha512.using(rounds=1000).hash("demo-password")
    database.execute(
        "INSERT INTO user (email, password, active, confirmed_at) "
        "VALUES ('demo@example.com', ?, 1, '2025-01-01 00:00:00')",
        (demo_hash,),
    )
    database.commit()
    database.close()
    process, url, lines = _start_example(tmp_path)
    try:
        home = _home_page_as(url, "demo@example.com", "demo-password")
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert "Logged in as <strong>demo@example.com</strong>" in home
    log = "".join(lines)
    assert "had no user.tf_totp_secret column: added" in log
    assert "Traceback" not in log
    database = sqlite3.connect(tmp_path / "example.db")
    rows = database.execute("SELECT email, tf_totp_secret FROM user").fetchall()
    assert ("earlier@example.com", None) in rows


def test_example_app_refuses_a_database_it_did_not_make(tmp_path):
    import sqlite3

    database = sqlite3.connect(tmp_path / "example.db")
    database.executescript(OLD_DEMO_SCHEMA)  # an app's users, no demo account
    database.close()
    result = subprocess.run(
        [sys.executable, "-c", "import example_app"],
        cwd=HERE,
        env=dict(os.environ, DATABASE_URL=f"sqlite:///{tmp_path / 'example.db'}"),
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "accounts the demo did not make" in result.stderr
    database = sqlite3.connect(tmp_path / "example.db")
    rows = database.execute("SELECT email FROM user").fetchall()
    assert rows == [("earlier@example.com",)]


#: axe-core's browser bundle: .ci/run installs it from npm.
AXE_JS = Path(
    os.environ.get("AXE_CORE_JS", HERE / ".ci/node/node_modules/axe-core/axe.min.js")
)


@pytest.fixture
def axe_page(browser):
    """A browser page whose ``check()`` runs axe-core on what it shows and returns
    the serious and critical violations (the page's own CSP cannot block axe)."""
    if not AXE_JS.exists():
        pytest.skip(f"axe-core is not installed at {AXE_JS} (.ci/run installs it)")
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()

    def check():
        page.add_script_tag(path=str(AXE_JS))
        violations = page.evaluate(
            "async () => (await axe.run(document, {resultTypes: ['violations']}))"
            ".violations"
        )
        return [
            f"{page.url} {v['id']} ({v['impact']}): "
            + ", ".join(str(node["target"]) for node in v["nodes"])
            for v in violations
            if v["impact"] in ("serious", "critical")
        ]

    page.check = check
    yield page
    context.close()


def _submit_unchecked(page):
    """Submit the page's form as it is, past the browser's own checks."""
    page.eval_on_selector("main form", "form => { form.noValidate = true }")
    _navigate_by(page, "main form input[type=submit]")


@pytest.mark.slow
def test_every_default_page_passes_axe(
    example_site, passwordless_example_site, axe_page
):
    url, lines = example_site
    page, found = axe_page, []
    for path in ("/", "/login", "/register", "/reset", "/confirm"):
        page.goto(url + path)
        found += page.check()
        if path != "/":  # the page again, showing the errors of an empty form
            _submit_unchecked(page)
            found += page.check()
    mark = len(lines)
    page.goto(url + "/reset")
    page.fill("input[name=email]", "demo@example.com")
    _navigate_by(page, "input[type=submit]")
    page.goto(_last_link(lines, "/reset", after=mark))
    found += page.check()
    page.goto(url + "/login")
    page.fill("input[name=email]", "demo@example.com")
    page.fill("input[name=password]", "demo-password")
    _navigate_by(page, "input[type=submit]")
    for path in ("/", "/profile", "/admin", "/sessions", "/change"):
        page.goto(url + path)
        found += page.check()
    _submit_unchecked(page)
    found += page.check()
    page.goto(passwordless_example_site[0] + "/login")
    found += page.check()
    assert found == []


# =============================================================================
# Under load: the example app on gunicorn (4 workers) and PostgreSQL
# =============================================================================


#: Users registered by the load test; a few register twice at once, in two cases.
LOAD_USERS = 24


#: Wrong passwords that lock an account in the load test.
LOAD_LOCKOUT_ATTEMPTS = 5


def _fresh_database(postgres_url):
    """A new, empty database on the test server; returns its SQLAlchemy URL."""
    import psycopg2

    name = f"load_{uuid.uuid4().hex[:12]}"
    connection = psycopg2.connect(postgres_url.replace("+psycopg2", ""))
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    connection.close()
    return postgres_url.rsplit("/", 1)[0] + "/" + name


def _query(database_url, sql):
    import psycopg2

    with psycopg2.connect(database_url.replace("+psycopg2", "")) as connection:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()


class _Visitor:
    """One browser on the load-tested site: its own cookies and CSRF token."""

    def __init__(self, base, statuses):
        import http.cookiejar
        import urllib.request

        self.base, self.statuses, self.csrf = base, statuses, None
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar)
        )

    def send(self, method, path, body=None, **headers):
        """Send one request (JSON unless told); return (status, parsed body)."""
        import json
        import urllib.error
        import urllib.request

        headers = {"Accept": "application/json", **headers}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.csrf:
            headers["X-CSRFToken"] = self.csrf
        url = path if path.startswith("http") else self.base + path
        request = urllib.request.Request(url, data, headers, method=method)
        try:
            with self.opener.open(request, timeout=30) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        self.statuses.append((status, method, path))
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode("utf-8", "replace")

    def take_csrf(self, path):
        """Open a form page as a browser does and keep its CSRF token."""
        self.csrf = None
        _, page = self.send("GET", path, Accept="text/html")
        field = re.search(r'<input[^>]*name="csrf_token"[^>]*>', page).group(0)
        self.csrf = re.search(r'value="([^"]+)"', field).group(1)
        return self


def _mailed_links(log_path, email, path):
    """Every ``path`` link mailed to ``email`` so far, oldest first."""
    text = Path(log_path).read_text()
    links = []
    for block in re.split(r"(?=Mail to \[)", text):
        if block.startswith(f"Mail to ['{email}']"):
            links += re.findall(rf"http://\S+?({path}/[\w.-]+)", block)
    return links


def _wait_for_link(log_path, email, path, after=0):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        links = _mailed_links(log_path, email, path)
        if len(links) > after:
            return links[-1]
        time.sleep(0.05)
    raise AssertionError(f"no {path} link for {email}:\n{Path(log_path).read_text()}")


@pytest.fixture
def gunicorn_site(postgres_url, tmp_path):
    """The example app under gunicorn, 4 workers, on a fresh PostgreSQL database."""
    database = _fresh_database(postgres_url)
    env = dict(
        os.environ,
        DATABASE_URL=database,
        SECRET_KEY="load test secret",
        FLASK_SECURITY_PASSWORD_HASH_OPTIONS='{"pbkdf2_sha512": {"rounds": 1000}}',
        FLASK_SECURITY_LOCKOUT_ATTEMPTS=str(LOAD_LOCKOUT_ATTEMPTS),
        FLASK_SECURITY_LOCKOUT_WITHIN='"15 minutes"',
        FLASK_SECURITY_TWO_FACTOR="true",
    )
    # No set-up run first: the four workers race to make the tables and demo users.
    port = _free_port()
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", "4", "--timeout", "60"]
            + ["--bind", f"127.0.0.1:{port}", "example_app:app"],
            cwd=HERE,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log_path.read_text()
                assert server.poll() is None, log_path.read_text()
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", log_path, database
    finally:
        server.send_signal(signal.SIGINT)  # gunicorn's quick shutdown
        server.wait(timeout=30)


def _at_once(calls, workers=16):
    """Run the zero-argument ``calls`` concurrently; return their results in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda call: call(), calls))


@pytest.mark.slow
def test_example_app_under_gunicorn_and_postgresql_keeps_its_promises(gunicorn_site):
    base, log_path, database = gunicorn_site
    statuses = []

    def visitor():
        return _Visitor(base, statuses)

    password = "steady traffic"
    emails = [f"user{i}@load.example" for i in range(LOAD_USERS)]

    # Register everyone at once; four addresses also arrive a second time, upper case.
    def register(email):
        body = {"email": email, "password": password}
        return email, visitor().take_csrf("/register").send("POST", "/register", body)

    doubles = [email.upper() for email in emails[:4]]
    registered = _at_once([lambda e=e: register(e) for e in emails + doubles])
    for email in emails:
        wins = [
            answer
            for typed, answer in registered
            if typed.lower() == email and answer[0] == 200
        ]
        assert len(wins) == 1, email
        assert "authentication_token" not in str(wins[0][1]), "token before confirming"

    # Each confirmation link opened twice at once: one of the two logs in.
    links = {email: _wait_for_link(log_path, email, "/confirm") for email in emails}
    opened = _at_once(
        [lambda link=link: visitor().send("GET", link) for link in links.values()] * 2
    )
    assert sum(status == 200 for status, _ in opened) == len(emails)

    # Everyone logs in and calls the API with their token.
    def login_and_call(email, secret=password):
        status, body = (
            visitor()
            .take_csrf("/login")
            .send("POST", "/login", {"email": email, "password": secret})
        )
        assert status == 200, (email, body)
        token = body["response"]["user"]["authentication_token"]
        for _ in range(3):
            whoami = visitor().send(
                "GET", "/api/whoami", **{"Authentication-Token": token}
            )
            assert whoami[1]["email"] == email
        return token

    tokens = dict(
        zip(
            emails,
            _at_once([lambda e=e: login_and_call(e) for e in emails]),
            strict=True,
        )
    )

    # Half of them change their password by token; the old token stops working.
    changers = emails[: LOAD_USERS // 2]

    def change(email):
        body = {
            "password": password,
            "new_password": "changed password",
            "new_password_confirm": "changed password",
        }
        headers = {"Authentication-Token": tokens[email]}
        return visitor().send("POST", "/change", body, **headers)[0]

    assert _at_once([lambda e=e: change(e) for e in changers]) == [200] * len(changers)
    for email in changers:
        old = visitor().send(
            "GET", "/api/whoami", **{"Authentication-Token": tokens[email]}
        )
        assert old[0] == 401
    _at_once([lambda e=e: login_and_call(e, "changed password") for e in changers])

    # Wrong passwords at once, through every worker, lock the account.
    victim = emails[-1]

    def wrong_login():
        body = {"email": victim, "password": "wrong password"}
        return visitor().take_csrf("/login").send("POST", "/login", body)[0]

    # A burst far past the limit: each attempt is counted before it is checked, so
    # exactly the limit is checked and the rest are refused as locked.
    failures = _at_once([wrong_login] * 32)
    assert failures == [400] * 32
    (count,) = _query(
        database, f"SELECT failed_login_count FROM \"user\" WHERE email = '{victim}'"
    )[0]
    assert count == LOAD_LOCKOUT_ATTEMPTS
    status, body = (
        visitor()
        .take_csrf("/login")
        .send("POST", "/login", {"email": victim, "password": password})
    )
    assert status == 400 and "locked" in str(body).lower()

    # Wrong codes at once, through every worker, after a right password: the codes
    # get exactly the limit of checks.
    coder, key = emails[-2], "JBSWY3DPEHPK3PXP"
    _query(
        database,
        f"UPDATE \"user\" SET tf_totp_secret = '{key}' WHERE email = '{coder}' "
        "RETURNING id",
    )
    pending = visitor().take_csrf("/login")
    status, body = pending.send(
        "POST", "/login", {"email": coder, "password": password}
    )
    assert status == 200 and body["response"]["tf_required"], body
    cookie = "; ".join(f"{c.name}={c.value}" for c in pending.jar)
    csrf = body["response"]["csrf_token"]
    wrong_code = f"{int(fsl.totp_code(key)) ^ 1:06d}"

    def guess():
        headers = {"Cookie": cookie, "X-CSRFToken": csrf}
        return visitor().send("POST", "/tf-validate", {"code": wrong_code}, **headers)[
            0
        ]

    assert _at_once([guess] * 32) == [400] * 32
    (count,) = _query(
        database, f"SELECT failed_login_count FROM \"user\" WHERE email = '{coder}'"
    )[0]
    assert count == LOAD_LOCKOUT_ATTEMPTS

    # Each reset link posted twice at once: one of the two resets the password.
    resetters = emails[LOAD_USERS // 2 : LOAD_USERS // 2 + 6]
    for email in resetters:
        body = {"email": email}
        assert visitor().take_csrf("/reset").send("POST", "/reset", body)[0] == 200
    reset_links = [_wait_for_link(log_path, email, "/reset") for email in resetters]
    new = {"password": "reset password", "password_confirm": "reset password"}
    pairs = [
        (visitor().take_csrf(link), visitor().take_csrf(link)) for link in reset_links
    ]
    posted = _at_once(
        [
            lambda v=v, link=link: v.send("POST", link, new)[0]
            for (a, b), link in zip(pairs, reset_links, strict=True)
            for v in (a, b)
        ]
    )
    assert sorted(posted) == sorted([200, 400] * len(resetters))

    # No server error anywhere; every address is stored exactly once.
    assert [s for s in statuses if s[0] >= 500] == []
    assert "Traceback" not in Path(log_path).read_text()
    stored = _query(database, 'SELECT email, count(*) FROM "user" GROUP BY email')
    counts = dict(stored)
    assert all(counts.get(email) == 1 for email in emails), counts
    assert max(counts.values()) == 1
    assert len(statuses) > 300
