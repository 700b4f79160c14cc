# Copyright (c) 2026 The flask-security-lite authors
#
# Permission is hereby granted, free of charge, to any person obtaining a copy of this
# software and associated documentation files (the "Software"), to deal in the Software
# without restriction, including without limitation the rights to use, copy, modify,
# merge, publish, distribute, sublicense, and/or sell copies of the Software, and to
# permit persons to whom the Software is furnished to do so, subject to the following
# conditions:
#
# The above copyright notice and this permission notice shall be included in all copies
# or substantial portions of the Software.
#
# THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED,
# INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A
# PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT
# HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF
# CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE
# OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""flask-security-lite: the features of Flask-Security 1.7.4 for Flask 3, in one file.

Session login and logout, roles, password hashing, HTTP Basic and token authentication,
registration, email confirmation, password reset, change password, passwordless login
and login tracking, each in HTML and JSON, with safe defaults; and, off by default,
two-factor login with an authenticator app and recovery codes, and passkeys.

Quick start::

    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy
    import flask_security_lite as security

    app = Flask(__name__)
    app.config["SECRET_KEY"] = "change-me"
    db = SQLAlchemy(app)
    # define User(db.Model, security.UserMixin), Role(db.Model, security.RoleMixin)
    datastore = security.SQLAlchemyUserDatastore(db, User, Role)
    security.Security(app, datastore)

    @app.route("/")
    @security.login_required
    def home():
        return f"Hello {security.current_user.email}"

Vendoring this file: put the distribution's ``templates/`` folder beside it, renamed
``flask_security_lite_templates/`` (your app's own ``templates/security/<page>.html``
then overrides ours), and install its dependencies::

    pip install "Flask>=3.1" "Flask-Login>=0.6.3" "Flask-WTF>=1.2" "WTForms>=3.0" \
        "email-validator>=2.0" "Flask-Mail>=0.10" "itsdangerous>=2.2" \
        "libpass>=1.9" "blinker>=1.6"

with Flask-SQLAlchemy, mongoengine or peewee for your datastore, and bcrypt or
argon2-cffi for those hashes (``libpass`` is passlib's maintained fork).

Contents (``grep -n '^# [0-9]' flask_security_lite.py``), in the order a request
travels; each section depends only on those above it, but for the login view and
the account flows, which hand a user who has a second factor to section 11:

     1. Settings and messages      the defaults, and each app's state
     2. Signals
     3. Passwords and tokens       hashing, and the signed tokens of every kind
     4. Users, roles and datastores
     5. Answers                    JSON or HTML, forms, redirects, every refusal
     6. Authentication             who may log in, token, Basic, the decorators
     7. Forms
     8. Session login and logout   with the login and logout views
     9. Mail and emailed links
    10. Account flows              each with its views
    11. Two-factor login           codes, forms and views
    12. Passkeys                   challenges, ceremonies and views
    13. The blueprint
    14. Command line
    15. Startup checks
    16. The Security extension
    17. Flask-Security 1.7.4 compatibility
"""

import abc
import base64
import copy
import difflib
import hashlib
import hmac
import importlib
import importlib.metadata
import importlib.util
import logging
import math
import os
import re
import secrets
import struct
import sys
import threading
import time
import types
import unicodedata
from collections import defaultdict
from collections.abc import Callable, MutableSet
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from datetime import datetime, timedelta, timezone
from functools import cache, cached_property, partial, wraps
from typing import Any, NamedTuple
from urllib.parse import quote, unquote, urlencode, urlsplit

# email_validator, flask_mail and passlib.context are imported by the functions that
# use them, and each ORM by its adapter: `import flask_security_lite` stays light for
# processes that never send mail or check an address (bench/bench_import.py).
import click
import flask_login
from blinker import Namespace
from flask import (
    Blueprint,
    Flask,
    after_this_request,
    copy_current_request_context,
    current_app,
    flash,
    g,
    got_request_exception,
    has_app_context,
    has_request_context,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.cli import AppGroup
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from flask_wtf.csrf import generate_csrf, validate_csrf
from itsdangerous import (
    BadSignature,
    SignatureExpired,
    URLSafeTimedSerializer,
    want_bytes,
)
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge, default_exceptions
from werkzeug.local import LocalProxy
from werkzeug.routing import BuildError
from werkzeug.sansio.utils import host_is_trusted
from wtforms import (
    BooleanField,
    Field,
    HiddenField,
    PasswordField,
    StringField,
    SubmitField,
    ValidationError,
    validators,
)
from wtforms.validators import StopValidation

__version__ = "0.1.0"

#: Today's documented API. Flask-Security 1.7.4's other names (its aliases, its
#: submodules' helpers and persistence classes) stay importable from this module and
#: from its 1.7.4 submodule paths: see the last section.
__all__ = (
    # the extension, users and roles
    "Security",
    "UserMixin",
    "RoleMixin",
    "AnonymousUser",
    "current_user",
    # datastores
    "UserDatastore",
    "SQLAlchemyUserDatastore",
    "MongoEngineUserDatastore",
    "PeeweeUserDatastore",
    "DatastoreConflictError",
    "normalize_email",
    # protecting views
    "login_required",
    "roles_required",
    "roles_accepted",
    "http_auth_required",
    "auth_token_required",
    "auth_required",
    "anonymous_user_required",
    # utilities
    "login_user",
    "logout_user",
    "hash_password",
    "verify_password",
    "verify_and_update_password",
    "url_for_security",
    "validate_redirect_url",
    "get_within_delta",
    "config_value",
    "get_message",
    "send_mail",
    # forms
    "Form",
    "LoginForm",
    "RegisterForm",
    "ConfirmRegisterForm",
    "ForgotPasswordForm",
    "ResetPasswordForm",
    "ChangePasswordForm",
    "SendConfirmationForm",
    "PasswordlessLoginForm",
    "TwoFactorCodeForm",
    "TwoFactorRescueForm",
    "TwoFactorPasswordForm",
    "TwoFactorDisableForm",
    "SessionsForm",
    # signals
    "user_registered",
    "user_confirmed",
    "confirm_instructions_sent",
    "login_instructions_sent",
    "password_reset",
    "password_changed",
    "reset_password_instructions_sent",
    "login_failed",
    "tf_enrolled",
    "tf_disabled",
    "tf_code_confirmed",
    "passkey_registered",
    "passkey_deleted",
    # account flows
    "register_user",
    "send_confirmation_instructions",
    "confirm_user",
    "send_reset_password_instructions",
    "update_password",
    "change_user_password",
    "send_login_instructions",
    # two-factor login
    "totp_code",
    "disable_two_factor",
    "reset_recovery_codes",
    "send_two_factor_notice",
    # running a 1.7.4 application unchanged
    "install_as_flask_security",
)

_log = logging.getLogger("flask_security_lite")

#: Where security events are logged, one record each: logins, failed logins,
#: lockouts, changes of the second factor, password resets and changes, logouts.
_event_log = logging.getLogger("flask_security_lite.events")


# =============================================================================
# 1. Settings and messages
# =============================================================================
# Every key is read from ``app.config`` with the ``SECURITY_`` prefix; ``init_app``
# sets each one with ``setdefault``, so the application's own values win. Each message
# is ``(text, flash category)`` and can be replaced by ``SECURITY_MSG_<KEY>``.


_default_config = {
    #: Name of the blueprint holding the security views.
    "BLUEPRINT_NAME": "security",
    #: URL prefix of the blueprint (``None``: mounted at the root).
    "URL_PREFIX": None,
    #: Subdomain of the blueprint.
    "SUBDOMAIN": None,
    #: Whether the views flash their messages.
    "FLASH_MESSAGES": True,
    #: Scheme for new password hashes.
    "PASSWORD_HASH": "pbkdf2_sha512",
    #: Optional pepper: passwords are HMAC-SHA512'd with it before hashing.
    "PASSWORD_SALT": None,
    #: Schemes the passlib context recognises when verifying stored hashes.
    "PASSWORD_SCHEMES": [
        "pbkdf2_sha512",
        "bcrypt",
        "argon2",
        "sha512_crypt",
        "sha256_crypt",
        "pbkdf2_sha256",
        "des_crypt",
        "plaintext",
    ],
    #: Schemes rehashed on the next successful login (``auto``: all but the default).
    "DEPRECATED_PASSWORD_SCHEMES": ["auto"],
    #: Per-scheme passlib settings; ``rounds`` is both the cost of new hashes and the
    #: minimum below which a stored hash is rehashed at login. pbkdf2_sha512 and
    #: bcrypt follow OWASP's Password Storage Cheat Sheet (210,000 iterations; a cost
    #: of at least 10), argon2id RFC 9106's second recommended option (t=3, 64 MiB,
    #: p=4).
    "PASSWORD_HASH_OPTIONS": {
        "pbkdf2_sha512": {"rounds": 210_000},
        "bcrypt": {"rounds": 12},
        "argon2": {"rounds": 3, "memory_cost": 65_536, "parallelism": 4},
    },
    #: Shortest password accepted by the register, reset and change forms.
    "PASSWORD_LENGTH_MIN": 8,
    #: Refuse a new password found on the list of common passwords, ignoring case.
    "PASSWORD_CHECK_COMMON": True,
    #: File of that list: UTF-8, one password a line, ``#`` starting a comment line
    #: (``None``: the list of some 14,000 shipped with the module). Read once, on
    #: first use.
    "PASSWORD_COMMON_LIST": None,
    #: Refuse a new password holding its owner's email address, the part before
    #: the ``@``, a word of that part, or a label of the domain but the last,
    #: ignoring case; parts shorter than four characters are not looked for.
    "PASSWORD_CHECK_ADDRESS": True,
    #: Refuse a new password that the breached-password range API lists. Only the
    #: first five hex digits of the password's SHA-1 are sent. When the API does not
    #: answer in time, the password is accepted and a warning logged.
    "PASSWORD_CHECK_BREACHED": False,
    #: The range API: the five hex digits are appended to this URL.
    "PASSWORD_BREACHED_URL": "https://api.pwnedpasswords.com/range/",
    #: Seconds the range API is given to connect, and again to answer each read.
    "PASSWORD_BREACHED_TIMEOUT": 2,
    #: Sender of every security email.
    "EMAIL_SENDER": "no-reply@localhost",
    #: Query-string (and JSON body) key carrying an auth token.
    "TOKEN_AUTHENTICATION_KEY": "auth_token",
    #: HTTP header carrying an auth token.
    "TOKEN_AUTHENTICATION_HEADER": "Authentication-Token",
    #: Seconds an auth token stays valid; ``None``: until the password changes or
    #: the user logs out.
    "TOKEN_MAX_AGE": None,
    #: Accept the auth token in the query string (``?auth_token=...``), as 1.7.4
    #: did. URLs end up in server logs and browser history: turn it off in
    #: production, and send the header instead.
    "TOKEN_IN_QUERY_STRING": True,
    #: Realm announced by ``http_auth_required`` without an argument.
    "DEFAULT_HTTP_AUTH_REALM": "Login Required",
    #: Attributes of the user model a login identifier is matched against.
    "USER_IDENTITY_ATTRIBUTES": ["email"],
    #: One message for "no such user" and "wrong password", and no error from the
    #: forgot-password and passwordless forms for unknown addresses.
    "RETURN_GENERIC_RESPONSES": False,
    #: URL of the login view.
    "LOGIN_URL": "/login",
    #: URL of the logout view.
    "LOGOUT_URL": "/logout",
    #: HTTP methods the logout view answers.
    "LOGOUT_METHODS": ["GET", "POST"],
    #: URL of the registration view.
    "REGISTER_URL": "/register",
    #: URL of the forgot-password view; the reset view is ``<RESET_URL>/<token>``.
    "RESET_URL": "/reset",
    #: URL of the change-password view.
    "CHANGE_URL": "/change",
    #: URL of the resend-confirmation view; confirming is ``<CONFIRM_URL>/<token>``.
    "CONFIRM_URL": "/confirm",
    #: Where to go after login (URL or endpoint).
    "POST_LOGIN_VIEW": "/",
    #: Where to go after logout (URL or endpoint).
    "POST_LOGOUT_VIEW": "/",
    #: Where to go when a confirmation link fails (``None``: the resend view).
    "CONFIRM_ERROR_VIEW": None,
    #: Where to go after registering (``None``: ``POST_LOGIN_VIEW``).
    "POST_REGISTER_VIEW": None,
    #: Where to go after confirming (``None``: ``POST_LOGIN_VIEW``).
    "POST_CONFIRM_VIEW": None,
    #: Where to go after a password reset (``None``: ``POST_LOGIN_VIEW``).
    "POST_RESET_VIEW": None,
    #: Where to go after a password change (``None``: ``POST_LOGIN_VIEW``).
    "POST_CHANGE_VIEW": None,
    #: Where to send a user who lacks a role (``None``: a 403 response).
    "UNAUTHORIZED_VIEW": None,
    #: Template of the forgot-password page.
    "FORGOT_PASSWORD_TEMPLATE": "security/forgot_password.html",
    #: Template of the login page.
    "LOGIN_USER_TEMPLATE": "security/login_user.html",
    #: Template of the registration page.
    "REGISTER_USER_TEMPLATE": "security/register_user.html",
    #: Template of the reset-password page.
    "RESET_PASSWORD_TEMPLATE": "security/reset_password.html",
    #: Template of the change-password page.
    "CHANGE_PASSWORD_TEMPLATE": "security/change_password.html",
    #: Template of the resend-confirmation page.
    "SEND_CONFIRMATION_TEMPLATE": "security/send_confirmation.html",
    #: Template of the passwordless login page.
    "SEND_LOGIN_TEMPLATE": "security/send_login.html",
    #: Users must confirm their email address.
    "CONFIRMABLE": False,
    #: Offer the registration view.
    "REGISTERABLE": False,
    #: Offer the forgot/reset password views.
    "RECOVERABLE": False,
    #: Record login times, addresses and counts on the user.
    "TRACKABLE": False,
    #: Log in by an emailed link instead of a password.
    "PASSWORDLESS": False,
    #: Offer the change-password view.
    "CHANGEABLE": False,
    #: Ask users who set up an authenticator app for a code after their password.
    "TWO_FACTOR": False,
    #: Every user must set up two-factor login at their next login.
    "TWO_FACTOR_REQUIRED": False,
    #: Let two-factor users authenticate by HTTP Basic, which checks the password only.
    "TWO_FACTOR_ALLOW_BASIC": False,
    #: Name authenticator apps show beside the account (``None``: the site's host).
    "TWO_FACTOR_ISSUER": None,
    #: Time allowed between the password and the code.
    "TWO_FACTOR_LOGIN_WITHIN": "5 minutes",
    #: How many 30-second steps late an authenticator code is still accepted (a
    #: slow typist, a phone clock a little behind); a code of a later step never
    #: is. 0: the current step's code only, which lives 30 seconds at most.
    "TWO_FACTOR_DRIFT_STEPS": 1,
    #: itsdangerous salt of the "password verified, code due" marker.
    "TWO_FACTOR_SALT": "tf-salt",
    #: URL of the two-factor set-up view.
    "TWO_FACTOR_SETUP_URL": "/tf-setup",
    #: URL of the code step of a login.
    "TWO_FACTOR_VALIDATE_URL": "/tf-validate",
    #: URL of the recovery-code step of a login.
    "TWO_FACTOR_RESCUE_URL": "/tf-rescue",
    #: URL of the view turning two-factor login off.
    "TWO_FACTOR_DISABLE_URL": "/tf-disable",
    #: URL of the view replacing the recovery codes.
    "TWO_FACTOR_RECOVERY_CODES_URL": "/tf-recovery-codes",
    #: Template of the two-factor set-up page.
    "TWO_FACTOR_SETUP_TEMPLATE": "security/tf_setup.html",
    #: Template of the code step of a login.
    "TWO_FACTOR_VALIDATE_TEMPLATE": "security/tf_validate.html",
    #: Template of the recovery-code step of a login.
    "TWO_FACTOR_RESCUE_TEMPLATE": "security/tf_rescue.html",
    #: Template of the page turning two-factor login off.
    "TWO_FACTOR_DISABLE_TEMPLATE": "security/tf_disable.html",
    #: Template of the page showing (and replacing) recovery codes.
    "TWO_FACTOR_RECOVERY_CODES_TEMPLATE": "security/tf_recovery_codes.html",
    #: Email a notice when two-factor login is turned on or off, or a recovery code
    #: is used.
    "SEND_TWO_FACTOR_NOTICE_EMAIL": True,
    #: Subject of the two-factor notice.
    "EMAIL_SUBJECT_TWO_FACTOR_NOTICE": "Two-factor login on your account",
    #: Sign in with a passkey, and manage passkeys at ``PASSKEYS_URL`` (needs the
    #: ``webauthn`` package, a passkey model and a declared host: docs/passkeys.md).
    "PASSKEYS": False,
    #: The relying party's id, the domain passkeys are bound to (``None``: the host
    #: of the declared origin). A parent domain lets its subdomains share passkeys.
    "PASSKEYS_RP_ID": None,
    #: The site's name, as the browser shows it when a passkey is made (``None``:
    #: the relying party's id).
    "PASSKEYS_RP_NAME": None,
    #: Whether the device must check who holds it (PIN, fingerprint, face):
    #: ``required``, ``preferred`` or ``discouraged``. A verified passkey counts as
    #: two factors; an unverified one is followed by the two-factor code.
    "PASSKEYS_USER_VERIFICATION": "required",
    #: Attestation asked of new passkeys: ``none`` (nothing to check or store about
    #: the device), ``indirect``, ``direct`` or ``enterprise``.
    "PASSKEYS_ATTESTATION": "none",
    #: Time to answer a passkey challenge; also the browser's timeout.
    "PASSKEYS_CHALLENGE_WITHIN": "5 minutes",
    #: URL of the passkeys page; the other passkey views are below it.
    "PASSKEYS_URL": "/passkeys",
    #: Template of the passkeys page.
    "PASSKEYS_TEMPLATE": "security/passkeys.html",
    #: Email a notice when a passkey is added to or deleted from an account.
    "SEND_PASSKEY_NOTICE_EMAIL": True,
    #: Subject of the passkey notice.
    "EMAIL_SUBJECT_PASSKEY_NOTICE": "Passkeys on your account",
    #: Subject of the welcome email.
    "EMAIL_SUBJECT_REGISTER": "Welcome",
    #: Subject of the passwordless login email.
    "EMAIL_SUBJECT_PASSWORDLESS": "Login instructions",
    #: Subject of the password-reset notice.
    "EMAIL_SUBJECT_PASSWORD_NOTICE": "Your password has been reset",
    #: Subject of the password-reset instructions.
    "EMAIL_SUBJECT_PASSWORD_RESET": "Password reset instructions",
    #: Subject of the password-change notice.
    "EMAIL_SUBJECT_PASSWORD_CHANGE_NOTICE": "Your password has been changed",
    #: Subject of the confirmation instructions.
    "EMAIL_SUBJECT_CONFIRM": "Please confirm your email",
    #: Send the welcome email on registration.
    "SEND_REGISTER_EMAIL": True,
    #: Send a notice after a password change.
    "SEND_PASSWORD_CHANGE_EMAIL": True,
    #: Send a notice after a password reset.
    "SEND_PASSWORD_RESET_NOTICE_EMAIL": True,
    #: Lifetime of a confirmation link ("<amount> <unit>").
    "CONFIRM_EMAIL_WITHIN": "5 days",
    #: Lifetime of a password-reset link.
    "RESET_PASSWORD_WITHIN": "5 days",
    #: Lifetime of a passwordless login link (1.7.4: a day).
    "LOGIN_WITHIN": "10 minutes",
    #: Let unconfirmed users log in when ``CONFIRMABLE`` is on.
    "LOGIN_WITHOUT_CONFIRMATION": False,
    #: itsdangerous salt of confirmation tokens.
    "CONFIRM_SALT": "confirm-salt",
    #: itsdangerous salt of reset tokens.
    "RESET_SALT": "reset-salt",
    #: itsdangerous salt of passwordless login tokens.
    "LOGIN_SALT": "login-salt",
    #: itsdangerous salt of auth tokens.
    "REMEMBER_SALT": "remember-salt",
    #: Remember-me value when a login does not say.
    "DEFAULT_REMEMBER_ME": False,
    #: A session ends after this long without a request ("<amount> <unit>"); a
    #: remember cookie then starts a new one.
    "SESSION_IDLE_WITHIN": "60 minutes",
    #: A session ends this long after it started, however busy; a remember cookie
    #: then starts a new one.
    "SESSION_ABSOLUTE_WITHIN": "24 hours",
    #: A remember cookie logs its user back in for this long after the login that
    #: set it; checked on the server, and the cookie's own expiry
    #: (``REMEMBER_COOKIE_DURATION``) follows it unless the app sets that.
    "REMEMBER_WITHIN": "30 days",
    #: URL of the page showing this session and ending the user's sessions; it
    #: exists when the user model has a ``security_stamp`` field.
    "SESSIONS_URL": "/sessions",
    #: Template of the sessions page.
    "SESSIONS_TEMPLATE": "security/sessions.html",
    #: Scheme and host (no path) of the links in emails: ``"https://www.example.com"``.
    #: ``None``: Flask's ``SERVER_NAME``, else the request's host when
    #: ``TRUSTED_HOSTS`` lists it; with none of the three, links are mailed only
    #: for requests to localhost, never to a host a request merely claims.
    "LINK_BASE_URL": None,
    #: Consecutive wrong passwords or two-factor codes that lock an account, each
    #: counted before it is checked (``None``: no lockout). The user model then
    #: needs ``failed_login_count`` and ``locked_until`` fields.
    "LOCKOUT_ATTEMPTS": None,
    #: How long a locked account stays locked ("<amount> <unit>").
    "LOCKOUT_WITHIN": "15 minutes",
    #: Load Flask-Principal identities (a ``UserNeed``, a ``RoleNeed``
    #: per role) when flask_principal is installed; False: never touch it.
    "FLASK_PRINCIPAL": True,
}

#: Largest request body the security views read; larger ones get 413.
_MAX_BODY_BYTES = 64 * 1024

#: Longest new password, in UTF-8 bytes: passlib refuses to hash longer ones.
_MAX_PASSWORD_BYTES = 4096

_default_messages = {
    #: A user lacks a role the view requires.
    "UNAUTHORIZED": ("You are not allowed to see this page.", "error"),
    #: Registration done; confirmation instructions are on their way.
    "CONFIRM_REGISTRATION": (
        "Thanks for registering. We sent confirmation instructions to %(email)s.",
        "success",
    ),
    #: A confirmation link worked.
    "EMAIL_CONFIRMED": ("Thank you: your email address is confirmed.", "success"),
    #: The address was confirmed before.
    "ALREADY_CONFIRMED": ("This email address is already confirmed.", "info"),
    #: The confirmation link is not valid.
    "INVALID_CONFIRMATION_TOKEN": ("This confirmation link is not valid.", "error"),
    #: Registration with an address already in use.
    "EMAIL_ALREADY_ASSOCIATED": ("%(email)s already belongs to an account.", "error"),
    #: Wrong current password.
    "PASSWORD_MISMATCH": ("The password is wrong.", "error"),
    #: The two new passwords differ.
    "RETYPE_PASSWORD_MISMATCH": ("The two passwords are not the same.", "error"),
    #: A ``next`` pointing off this site.
    "INVALID_REDIRECT": ("Redirects to other sites are not allowed.", "error"),
    #: Reset instructions were sent.
    "PASSWORD_RESET_REQUEST": (
        "We sent instructions to reset your password to %(email)s.",
        "info",
    ),
    #: A reset link expired; a new one was sent.
    "PASSWORD_RESET_EXPIRED": (
        "Reset links are valid for %(within)s and this one expired. "
        "We sent a new one to %(email)s.",
        "error",
    ),
    #: The reset link is not valid (or was already used).
    "INVALID_RESET_PASSWORD_TOKEN": ("This password reset link is not valid.", "error"),
    #: Login refused until the address is confirmed.
    "CONFIRMATION_REQUIRED": ("Please confirm your email address first.", "error"),
    #: Confirmation instructions were sent again.
    "CONFIRMATION_REQUEST": ("We sent confirmation instructions to %(email)s.", "info"),
    #: A confirmation link expired; a new one was sent.
    "CONFIRMATION_EXPIRED": (
        "Confirmation links are valid for %(within)s and this one expired. "
        "We sent a new one to %(email)s.",
        "error",
    ),
    #: A passwordless login link expired; a new one was sent.
    "LOGIN_EXPIRED": (
        "Login links are valid for %(within)s and this one expired. "
        "We sent a new one to %(email)s.",
        "error",
    ),
    #: A passwordless login link was sent.
    "LOGIN_EMAIL_SENT": ("We sent a login link to %(email)s.", "success"),
    #: The passwordless login link is not valid.
    "INVALID_LOGIN_TOKEN": ("This login link is not valid.", "error"),
    #: The account is deactivated.
    "DISABLED_ACCOUNT": ("This account is disabled.", "error"),
    #: The email field is empty.
    "EMAIL_NOT_PROVIDED": ("Please enter your email address.", "error"),
    #: The email field is not an address.
    "INVALID_EMAIL_ADDRESS": ("This is not a valid email address.", "error"),
    #: The password field is empty.
    "PASSWORD_NOT_PROVIDED": ("Please enter your password.", "error"),
    #: The account has no password (it was made for passwordless login).
    "PASSWORD_NOT_SET": ("This account has no password set.", "error"),
    #: A new password is too short.
    "PASSWORD_INVALID_LENGTH": ("This password is too short.", "error"),
    #: No account has this identifier.
    "USER_DOES_NOT_EXIST": ("No account matches this email address.", "error"),
    #: The password does not match the account.
    "INVALID_PASSWORD": ("The password is wrong.", "error"),
    #: Generic login failure, used when ``RETURN_GENERIC_RESPONSES`` is on.
    "GENERIC_AUTHN_FAILED": ("The email address or password is wrong.", "error"),
    #: A passwordless login worked.
    "PASSWORDLESS_LOGIN_SUCCESSFUL": ("You are logged in.", "success"),
    #: A password reset worked.
    "PASSWORD_RESET": (
        "Your password has been reset and you are logged in.",
        "success",
    ),
    #: A new password equals the current one.
    "PASSWORD_IS_THE_SAME": (
        "Your new password must differ from the current one.",
        "error",
    ),
    #: A password change worked.
    "PASSWORD_CHANGE": ("Your password has been changed.", "success"),
    #: The password was right; the authenticator code is due.
    "TF_REQUIRED": ("Enter the code from your authenticator app.", "info"),
    #: The password was right; two-factor login must be set up first.
    "TF_SETUP_REQUIRED": ("Set up two-factor login to continue.", "info"),
    #: The code field is empty.
    "TF_CODE_NOT_PROVIDED": ("Please enter the code.", "error"),
    #: A wrong, used or expired code.
    "TF_INVALID_CODE": ("This code is not valid.", "error"),
    #: The code step came too late, or without a password first.
    "TF_LOGIN_EXPIRED": ("Please log in again.", "error"),
    #: Two-factor login was set up.
    "TF_ENABLED": ("Two-factor login is on.", "success"),
    #: Two-factor login was turned off.
    "TF_DISABLED": ("Two-factor login is off.", "success"),
    #: A recovery code was used.
    "TF_RECOVERY_CODES_LEFT": (
        "You logged in with a recovery code; %(count)s are left.",
        "info",
    ),
    #: The user ended every other session of theirs.
    "OTHER_SESSIONS_ENDED": ("You are logged out on every other device.", "success"),
    #: The user ended every session of theirs, this one too.
    "ALL_SESSIONS_ENDED": ("You are logged out on every device.", "success"),
    #: A passkey's answer did not verify, or names no passkey of this site.
    "PASSKEY_INVALID": ("This passkey could not be verified.", "error"),
    #: The passkey's challenge is missing, used or expired.
    "PASSKEY_CHALLENGE_EXPIRED": (
        "The passkey request expired: please try again.",
        "error",
    ),
    #: The passkey is registered already (to this account or another).
    "PASSKEY_ALREADY_REGISTERED": ("This passkey is registered already.", "error"),
    #: Passkeys cannot work on an IP address.
    "PASSKEY_NEEDS_DOMAIN": (
        "Passkeys need a domain name, not %(host)s: open this site as "
        "http://localhost (or by its name) instead.",
        "error",
    ),
    #: A passkey label is empty or too long.
    "PASSKEY_LABEL_INVALID": (
        "Give the passkey a name of at most %(length)s characters.",
        "error",
    ),
    #: No passkey of this account has this id.
    "PASSKEY_NOT_FOUND": ("This passkey does not exist.", "error"),
    #: The last passkey of an account without a password cannot go.
    "PASSKEY_LAST_ONE": (
        "This passkey is the only way into your account: it cannot be deleted.",
        "error",
    ),
    #: A passkey was added.
    "PASSKEY_ADDED": ("The passkey %(label)s was added.", "success"),
    #: A passkey was renamed.
    "PASSKEY_RENAMED": ("The passkey is now called %(label)s.", "success"),
    #: A passkey was deleted.
    "PASSKEY_DELETED": ("The passkey %(label)s was deleted.", "success"),
    #: A view needs a logged-in user.
    "LOGIN": ("Please log in to see this page.", "info"),
    #: A view needs a fresh login.
    "REFRESH": ("Please log in again to see this page.", "info"),
    #: Login refused: too many wrong passwords; the lock ends by itself.
    "ACCOUNT_LOCKED": (
        "This account is locked after too many failed logins. Try again later.",
        "error",
    ),
    #: A new password is longer than can be hashed.
    "PASSWORD_TOO_LONG": ("Passwords can have at most %(length)s bytes.", "error"),
    #: A new password is on the list of common passwords.
    "PASSWORD_COMMON": (
        "This password is one of the most common ones: please choose another.",
        "error",
    ),
    #: A new password holds its owner's email address, or a part of it.
    "PASSWORD_HOLDS_ADDRESS": (
        "Your password must not contain your email address or a part of it.",
        "error",
    ),
    #: A new password appears in known data breaches.
    "PASSWORD_BREACHED": (
        "This password has appeared in a data breach: please choose another.",
        "error",
    ),
    #: A request body is larger than the security views read.
    "REQUEST_TOO_LARGE": ("The request body is too large.", "error"),
    #: An emailed link would leave the declared host (through a URL prefix).
    "LINK_OFF_SITE": (
        "This site cannot email a link to another site: check its URL prefix "
        "(SCRIPT_NAME, X-Forwarded-Prefix).",
        "error",
    ),
    #: No link can be emailed: the application has not declared its host.
    "LINK_HOST_NOT_DECLARED": (
        "This site cannot email links until it declares its host name: set "
        "SERVER_NAME, TRUSTED_HOSTS or SECURITY_LINK_BASE_URL.",
        "error",
    ),
    #: A request would send mail, and the application has no way to send it.
    "MAIL_NOT_SET_UP": (
        "This site cannot send email yet, so nothing was done. Please try again later.",
        "error",
    ),
}

#: Other names of a message: 1.7.4's changelog calls ``PASSWORD_IS_THE_SAME``
#: ``PASSWORD_IS_SAME``; either key works, and the alias wins when both are set.
_message_aliases = {"PASSWORD_IS_SAME": "PASSWORD_IS_THE_SAME"}


# -- reading them -------------------------------------------------------------


def _state() -> "_SecurityState":
    """The state ``Security.init_app`` made for the current application: the one
    way to reach its datastore, forms and password context."""
    return current_app.extensions["security"]


class _SecurityState:
    """What ``init_app`` set up for one application, reached through :func:`_state`.

    Templates see it as ``security``. A setting reads as an attribute named like its
    key, lower-case and without the prefix (``security.registerable``), from the
    app's config as it is now.
    """

    def __init__(self, app, security, datastore, forms, **parts):
        #: The application.
        self.app = app
        #: The :class:`Security` object that set this application up.
        self.security = security
        #: The :class:`UserDatastore` of the application.
        self.datastore = datastore
        #: The form class of each ``init_app`` keyword (``login_form``, ...); custom
        #: views read them as attributes too (``security.login_form``).
        self.forms = forms
        vars(self).update(forms)
        #: ``login_manager`` (Flask-Login's, with our loader and handlers),
        #: ``pwd_context`` (passlib's, hashing and verifying passwords) and
        #: ``principal`` (Flask-Principal's, or None: ``SECURITY_FLASK_PRINCIPAL``).
        vars(self).update(parts)

    def __getattr__(self, name):
        if name.islower() and name.upper() in _default_config:
            return self.app.config["SECURITY_" + name.upper()]
        raise AttributeError(name)

    @cached_property
    def dummy_hash(self):
        """A hash in the default scheme, verified when no real one exists."""
        return hash_password("a password nobody has")

    def render_template(self, *args: Any, **kwargs: Any) -> str:
        """Render a security view: ``Security.render_template``, unless this
        attribute is replaced for this app."""
        return self.security.render_template(*args, **kwargs)

    def send_mail_task(self, function: Callable) -> Callable:
        """:meth:`Security.send_mail_task`, offered on the state too."""
        return self.security.send_mail_task(function)

    def csrf_token(self) -> str:
        """The session's CSRF token, for a form of a template's own: a logout
        button when ``SECURITY_LOGOUT_METHODS`` is ``["POST"]``."""
        field = self.app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token")
        return generate_csrf(token_key=field)


def config_value(key: str, app: Flask | None = None, default: Any = None) -> Any:
    """Return ``SECURITY_<key>`` from the config of ``app`` (default: current app)."""
    app = app or current_app
    return app.config.get("SECURITY_" + key.upper(), default)


def get_message(key: str, **kwargs: Any) -> tuple[str, str]:
    """Return ``(text, category)`` of message ``key``, formatted with ``kwargs``."""
    text, category = config_value("MSG_" + key)
    return text % kwargs, category


def _text(key: str, **values: Any) -> str:
    """The text of message ``key``, formatted with ``values``."""
    return config_value("MSG_" + key)[0] % values


def do_flash(message: str, category: str | None = None) -> None:
    """Flash ``message`` when ``SECURITY_FLASH_MESSAGES`` is on."""
    if config_value("FLASH_MESSAGES"):
        flash(message, category)


def _flash_message(key, **kwargs):
    do_flash(*get_message(key, **kwargs))


def get_within_delta(key: str, app: Flask | None = None) -> timedelta:
    """Return ``SECURITY_<key>`` ("5 days", "10 minutes") as a ``timedelta``.

    :param key: the config key without its ``SECURITY_`` prefix.
    :param app: the application (default: the current one).
    """
    value = config_value(key, app=app)
    try:
        amount, unit = value.split()
        return timedelta(**{unit: int(amount)})
    except (AttributeError, TypeError, ValueError):
        raise ValueError(
            f"SECURITY_{key} must look like '5 days' or '10 minutes', not {value!r}"
        ) from None


def get_identity_attributes(app: Flask | None = None) -> list[str]:
    """Return ``SECURITY_USER_IDENTITY_ATTRIBUTES`` as a list; a comma-separated
    string (``"email, username"``) is accepted too."""
    attributes = config_value("USER_IDENTITY_ATTRIBUTES", app=app)
    if isinstance(attributes, str):
        return [name.strip() for name in attributes.split(",") if name.strip()]
    return list(attributes)


def _now():
    """The current UTC time, naive, as the user model's datetime fields hold it."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _timestamp():
    """The time of :func:`_now` in whole seconds since 1970: the clock of sessions."""
    return int((_now() - datetime(1970, 1, 1)).total_seconds())


def _require(module, package, extra=None):
    """Import an optional dependency, or say how to install it: the package by
    name (works for a vendored copy too), and the extra where there is one."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        also = f" (or pip install 'flask-security-lite[{extra}]')" if extra else ""
        raise ImportError(
            f"{module} is needed here: pip install {package}{also}"
        ) from error


# =============================================================================
# 2. Signals
# =============================================================================
# Each is sent with the application as sender.


_signals = Namespace()

#: A user registered; kwargs ``user`` and ``confirm_token`` (None unless confirmable).
user_registered = _signals.signal("user-registered")

#: A user confirmed their email; kwarg ``user``.
user_confirmed = _signals.signal("user-confirmed")

#: Confirmation instructions were sent; kwarg ``user``.
confirm_instructions_sent = _signals.signal("confirm-instructions-sent")

#: A passwordless login link was sent; kwargs ``user`` and ``login_token``.
login_instructions_sent = _signals.signal("login-instructions-sent")

#: A password reset completed; kwarg ``user``.
password_reset = _signals.signal("password-reset")

#: A password change completed; kwarg ``user``.
password_changed = _signals.signal("password-changed")

#: Two-factor login was set up; kwarg ``user``.
tf_enrolled = _signals.signal("tf-enrolled")

#: Two-factor login was turned off; kwarg ``user``.
tf_disabled = _signals.signal("tf-disabled")

#: A login passed its second step; kwargs ``user`` and ``method``
#: (``authenticator`` or ``recovery_code``).
tf_code_confirmed = _signals.signal("tf-code-confirmed")

#: Reset instructions were sent; kwargs ``user`` and ``token``.
reset_password_instructions_sent = _signals.signal("password-reset-instructions-sent")

#: A password login failed (form, JSON, Basic, or a wrong current password on
#: change); kwargs ``user`` (None when nobody matched), ``identifier`` (what was
#: typed), ``reason`` (``unknown_user``, ``no_password``, ``locked``,
#: ``invalid_password``, ``unconfirmed``, ``disabled``, or ``invalid_code`` for a
#: wrong two-factor code) and ``remote_addr``. It never carries the password.
login_failed = _signals.signal("login-failed")


def _send_signal(signal, **kwargs):
    signal.send(current_app._get_current_object(), **kwargs)


def _log_event(event, user, level=logging.INFO, **details):
    """Log the security event ``event`` of ``user`` (None: no account matched) to
    ``flask_security_lite.events``: a line of text, and the same as fields of the
    record for structured handlers (``event``, ``user_id``, ``remote_addr`` and
    ``details``). Callers never pass a password, code, token or key."""
    fields = {
        "event": event,
        "user_id": None if user is None else str(user.id),
        "remote_addr": request.remote_addr if has_request_context() else None,
        **details,
    }
    text = " ".join(f"{name}={_log_value(value)}" for name, value in fields.items())
    _event_log.log(level, "security event: %s", text, extra=fields)


def _log_value(value):
    """``value`` as the event's line shows it: quoted when it holds anything but
    plain characters, so no value (a forwarded address, say) can forge a field or
    a line."""
    text = str(value)
    return text if re.fullmatch(r"[\w.:@/+-]*", text) else repr(text)


@contextmanager
def _capture(signal):
    """Collect the keyword arguments of every ``signal`` sent inside the block."""
    captured = []

    def record(sender, **data):
        captured.append(data)

    signal.connect(record)
    try:
        yield captured
    finally:
        signal.disconnect(record)


#: What the capture helpers give: a block that collects each signal's arguments.
_Captured = AbstractContextManager[list[dict[str, Any]]]


def capture_registrations() -> _Captured:
    """For tests: ``with capture_registrations() as registrations: ...`` collects
    each registration's ``{"user", "confirm_token"}``."""
    return _capture(user_registered)


def capture_reset_password_requests() -> _Captured:
    """For tests: collect each reset request's ``{"user", "token"}``."""
    return _capture(reset_password_instructions_sent)


def capture_passwordless_login_requests() -> _Captured:
    """For tests: collect each passwordless request's ``{"user", "login_token"}``."""
    return _capture(login_instructions_sent)


# =============================================================================
# 3. Passwords and tokens
# =============================================================================


#: bcrypt reads at most this many bytes of a secret.
_BCRYPT_MAX_BYTES = 72


def get_hmac(password: str | bytes) -> bytes:
    """Return the base64 HMAC-SHA512 of ``password`` keyed by the password salt.

    This is the pre-hash 1.7.4 applied, kept so its databases still verify.
    """
    salt = config_value("PASSWORD_SALT")
    if salt is None:
        raise RuntimeError("get_hmac needs SECURITY_PASSWORD_SALT to be set")
    digest = hmac.new(want_bytes(salt), want_bytes(password), hashlib.sha512).digest()
    return base64.b64encode(digest)


def _secret_for(password, scheme):
    """The bytes handed to ``scheme`` for ``password``: peppered, and bcrypt-safe.

    With a salt, the 88-byte HMAC is cut to bcrypt's 72 bytes exactly as bcrypt did
    for 1.7.4. Without one, a raw password longer than 72 bytes is pre-hashed with
    SHA-256 for bcrypt instead of being cut silently.
    """
    if config_value("PASSWORD_SALT") is not None:
        secret = get_hmac(password)
        return secret[:_BCRYPT_MAX_BYTES] if scheme == "bcrypt" else secret
    secret = want_bytes(password)
    if scheme == "bcrypt" and len(secret) > _BCRYPT_MAX_BYTES:
        return base64.b64encode(hashlib.sha256(secret).digest())
    return secret


def hash_password(password: str | None) -> str | None:
    """Hash ``password`` with ``SECURITY_PASSWORD_HASH`` as the app started with it
    (the scheme of its password context), and the pepper, if set. None stays None:
    an account without a password."""
    scheme = _state().pwd_context.default_scheme()
    if scheme == "plaintext" or password is None:
        return password
    return _state().pwd_context.hash(_secret_for(password, scheme))


def _identify(password_hash):
    try:
        return _state().pwd_context.identify(password_hash)
    except (TypeError, ValueError):
        return None


def _is_password_hash(value):
    """True for a well-formed ``$scheme$...`` hash of a known scheme.

    Bare formats such as des_crypt's 13 letters are not trusted: a password can
    look like one, and must not be stored unhashed.
    """
    scheme = _identify(value)
    if not value.startswith("$") or scheme in (None, "plaintext"):
        return False
    try:
        _state().pwd_context.handler(scheme).from_string(value)
    except ValueError:
        return False
    return True


@cache
def _hash_shapes():
    """The shapes of stored hashes of any library, listed or not: modular crypt
    (``$1$``, ``$2b$``, ``$argon2id$``, ``$P$``), LDAP (``{SSHA}``), Werkzeug and
    Django (``pbkdf2:sha256:600000$salt$hash``, ``md5$salt$hash``), MySQL (``*`` and
    40 hex digits), des_crypt and BSDi, and bare digests in hex (MD5 to SHA-512) or
    base64 (MD5, SHA-1, SHA-256, SHA-512). Compiled on first use: compiling takes
    longer than the rest of the module's import."""
    return re.compile(
        r"""\$[\w.-]+\$.*
        | \{[\w.-]+\}.*
        | [a-z][\w.-]*(:[\w.-]+)*\$[^$]*\$.*
        | \*[0-9a-f]{40}
        | [./0-9a-z]{13} | _[./0-9a-z]{19}
        | [0-9a-f]{16} | [0-9a-f]{32} | [0-9a-f]{40} | [0-9a-f]{56}
        | [0-9a-f]{64} | [0-9a-f]{96} | [0-9a-f]{128}
        | [a-z0-9+/]{22}== | [a-z0-9+/]{27}= | [a-z0-9+/]{43}= | [a-z0-9+/]{86}==""",
        re.IGNORECASE | re.VERBOSE | re.DOTALL,
    )


def verify_password(password: str, password_hash: str | None) -> bool:
    """Return True if ``password`` matches the stored ``password_hash``.

    A stored value shaped like a hash is never compared as plaintext, so a
    plaintext row verifies only if it does not look like a hash.
    """
    scheme = _identify(password_hash)
    if scheme is None or not isinstance(password, str):
        return False
    if scheme == "plaintext":
        # A stored value shaped like a hash of any format is never compared as
        # plaintext: a leaked hash of an unlisted format would otherwise log in.
        if _hash_shapes().fullmatch(password_hash):
            return False
        return hmac.compare_digest(want_bytes(password), want_bytes(password_hash))
    try:
        return _state().pwd_context.verify(_secret_for(password, scheme), password_hash)
    except ValueError:  # a damaged hash: its prefix names a scheme, the rest is wrong
        return False


def verify_and_update_password(password: str, user: Any) -> bool:
    """Return True if ``password`` is the user's, rehashing it if the scheme changed.

    The rehash happens when the stored hash uses a deprecated scheme, fewer rounds
    than configured, or is plaintext, and is committed at once.
    """
    if not user.password:
        return False
    if not verify_password(password, user.password):
        return False
    # Never "upgrade" real hashes to plaintext when plaintext is configured.
    if config_value("PASSWORD_HASH") == "plaintext":
        return True
    if _state().pwd_context.needs_update(user.password):
        user.password = hash_password(password)
        _save(user)
    return True


#: The package each optional hashing scheme needs (its extra has the same name).
_SCHEME_PACKAGES = {"argon2": "argon2-cffi", "bcrypt": "bcrypt"}


def _build_password_context(config):
    """The passlib context of ``SECURITY_PASSWORD_*``. The hash in use and our
    default are always among the schemes verified: 1.7.4 apps list e.g.
    ``["bcrypt", "plaintext"]``, and may switch hash after users were made."""
    from passlib.context import CryptContext

    scheme = config["SECURITY_PASSWORD_HASH"]
    schemes = list(config["SECURITY_PASSWORD_SCHEMES"])
    # Every hash this module may have written stays verifiable: the one in use,
    # and our default, which users made before a switch of hash were given.
    for written in (_default_config["PASSWORD_HASH"], scheme):
        if written not in schemes:
            schemes.insert(0, written)
    settings = {}
    for name, options in config["SECURITY_PASSWORD_HASH_OPTIONS"].items():
        for option, value in options.items():
            if option == "rounds":
                settings[f"{name}__default_rounds"] = value
                settings[f"{name}__min_rounds"] = value
            else:
                settings[f"{name}__{option}"] = value
    try:
        context = CryptContext(
            schemes=schemes,
            default=scheme,
            deprecated=config["SECURITY_DEPRECATED_PASSWORD_SCHEMES"],
            **settings,
        )
    except KeyError as error:
        message = f"unknown password scheme in SECURITY_PASSWORD_*: {error}"
        raise ValueError(message) from None
    if scheme in _SCHEME_PACKAGES:
        try:
            context.handler(scheme).get_backend()
        except Exception as error:
            package = _SCHEME_PACKAGES[scheme]
            fix = (scheme == "bcrypt" and _dead_passlib()) or (
                f"{scheme} hashing needs {package}: pip install {package} "
                f"(or pip install 'flask-security-lite[{scheme}]')"
            )
            raise RuntimeError(fix) from error
    return context


def _dead_passlib():
    """The fix when passlib 1.7.4 (unmaintained, and unable to use bcrypt >= 4.1)
    was installed in place of libpass next to a modern bcrypt; else None."""
    import passlib

    def version(text):
        return tuple(int(part) for part in re.findall(r"\d+", text)[:2])

    try:
        bcrypt_version = importlib.metadata.version("bcrypt")
    except importlib.metadata.PackageNotFoundError:
        return None
    if version(passlib.__version__) >= (1, 9) or version(bcrypt_version) < (4, 1):
        return None
    return (
        f"passlib {passlib.__version__} is installed: it is unmaintained and cannot "
        f"use bcrypt {bcrypt_version}. Replace it with libpass, its maintained fork "
        "(same import name): pip uninstall -y passlib && pip install "
        "--force-reinstall 'libpass>=1.9'"
    )


# -- the security stamp -------------------------------------------------------
# A user model may have a ``security_stamp`` field: two random values, ``a:b``.
# Sessions, remember cookies, auth tokens and the "code due" marker of a login are
# bound to ``a``, passwordless login links to both: a new ``a`` ends the user's
# sessions and tokens on every device (logout), a new ``b`` voids the login links
# sent before (a link is used, or a newer one sent). Without the field, none of
# them can be ended before it expires or the password changes, as in 1.7.4.


#: Random bytes of each value of a security stamp.
_STAMP_BYTES = 12


def _stamp_of(user):
    """The user's security stamp ("" when unset or not a field of the model)."""
    return getattr(user, "security_stamp", None) or ""


def _stamp_with_new_sessions(stamp):
    """``stamp`` with a new first value: what was bound to the old one ends."""
    return f"{secrets.token_urlsafe(_STAMP_BYTES)}:{stamp.partition(':')[2]}"


def _stamp_with_new_links(stamp):
    """``stamp`` with a new second value: the login links sent before are void."""
    return f"{stamp.partition(':')[0]}:{secrets.token_urlsafe(_STAMP_BYTES)}"


# -- signed tokens ------------------------------------------------------------


#: Each kind of signed token, with the settings of its salt and its lifetime: the
#: ``auth`` token lives ``TOKEN_MAX_AGE`` seconds (None: until the password
#: changes), the "password verified, code due" marker of a two-factor login
#: ``TWO_FACTOR_LOGIN_WITHIN``, each emailed link its own time. (The session's
#: binding is an ``auth`` binding, and lives as long as the session.)
_TOKEN_KINDS = {
    "auth": ("REMEMBER_SALT", "TOKEN_MAX_AGE"),
    "confirm": ("CONFIRM_SALT", "CONFIRM_EMAIL_WITHIN"),
    "reset": ("RESET_SALT", "RESET_PASSWORD_WITHIN"),
    "login": ("LOGIN_SALT", "LOGIN_WITHIN"),
    "two_factor": ("TWO_FACTOR_SALT", "TWO_FACTOR_LOGIN_WITHIN"),
}


def _binding(kind, user):
    """A short keyed digest of the user state a token of ``kind`` is bound to: when
    that state moves on, older tokens of the kind stop working. A confirmation
    link is bound to the address and its confirmation; every other token to the
    password and the two-factor key (setting one up or turning it off ends the
    user's other sessions and tokens, as a new password does), and all but reset
    links to the security stamp too."""
    if kind == "confirm":
        bound = f"email:{user.email}:{user.confirmed_at is None}"
    else:
        key = (getattr(user, "tf_totp_secret", None) or "").partition(":")[0]
        bound = "password:" + (user.password or "") + (f"|tf:{key}" if key else "")
        stamp = _stamp_of(user)
        if kind == "login" and stamp:
            bound += f"|stamp:{stamp}"
        elif kind != "reset" and stamp.partition(":")[0]:
            bound += f"|sessions:{stamp.partition(':')[0]}"
    secret = current_app.secret_key
    if not secret:
        raise RuntimeError("flask-security-lite needs app.config['SECRET_KEY']")
    digest = hmac.digest(want_bytes(secret), bound.encode("utf-8"), "sha256")
    return base64.urlsafe_b64encode(digest[:12]).decode("ascii")


def _make_token(kind, user):
    salt = config_value(_TOKEN_KINDS[kind][0])
    serializer = URLSafeTimedSerializer(current_app.secret_key, salt=salt)
    # The kind is signed in too: equal salts must not make one kind pass as another.
    return serializer.dumps([str(user.id), _binding(kind, user), kind])


class _TokenCheck(NamedTuple):
    """What checking a token found: ``status`` is ``"ok"``, ``"expired"`` (signed by
    us but too old), ``"used"`` (the state it was bound to moved on: the password
    changed, the address was confirmed) or ``"invalid"``; ``user`` is None only
    when the token names nobody."""

    status: str
    user: object = None


def _read_token(token, kind, max_age=None):
    """Check a token of ``kind`` at most ``max_age`` seconds old (default: its
    kind's lifetime)."""
    salt_key, lifetime_key = _TOKEN_KINDS[kind]
    if max_age is None and lifetime_key.endswith("_WITHIN"):  # "<amount> <unit>"
        max_age = get_within_delta(lifetime_key).total_seconds()
    elif max_age is None:
        max_age = config_value(lifetime_key)
    salt = config_value(salt_key)
    serializer = URLSafeTimedSerializer(current_app.secret_key, salt=salt)
    status = "ok"
    try:
        data = serializer.loads(token, max_age=max_age)
    except SignatureExpired as error:
        # The signature was good, only old: keep the payload to resend the link.
        status, data = "expired", serializer.load_payload(error.payload)
    except (BadSignature, TypeError, ValueError):
        return _TokenCheck("invalid")
    if not (isinstance(data, list) and len(data) == 3 and data[2] == kind):
        return _TokenCheck("invalid")
    if not isinstance(data[1], str):
        return _TokenCheck("invalid")
    user = _state().datastore.get_user_by_id(data[0])
    if user is None:
        return _TokenCheck("invalid")
    if not hmac.compare_digest(_binding(kind, user), data[1]):
        return _TokenCheck("used", user)
    return _TokenCheck(status, user)


# =============================================================================
# 4. Users, roles and datastores
# =============================================================================


class UserMixin(flask_login.UserMixin):
    """Mixin for the user model: activity, roles and the auth token."""

    @property
    def is_active(self) -> bool:
        """True unless the account was deactivated."""
        return bool(self.active)

    def get_session_identity(self) -> str:
        """What the session and remember cookie hold: the id, bound to the password
        and the security stamp (a new password, or a logout, ends every other
        session and remember cookie), and the time of the login, which a remember
        cookie must be younger than ``SECURITY_REMEMBER_WITHIN``."""
        return f"{self.id}|{_binding('auth', self)}|{_timestamp()}"

    def get_auth_token(self) -> str:
        """Return a signed token for the auth-token header or query argument."""
        return _make_token("auth", self)

    def has_role(self, role: Any) -> bool:
        """True if the user has ``role``, given as a name or a Role object."""
        name = getattr(role, "name", role)
        return any(user_role.name == name for user_role in self.roles)


class RoleMixin:
    """Mixin for the role model: roles compare (and hash) by name."""

    def __eq__(self, other):
        return self.name == getattr(other, "name", other)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(self.name)


class AnonymousUser(flask_login.AnonymousUserMixin):
    """The user of a request nobody is logged in to."""

    def has_role(self, *args: Any) -> bool:
        """Anonymous users have no roles."""
        return False


class DatastoreConflictError(Exception):
    """A write broke a uniqueness rule, e.g. two registrations of one email at once.

    What an adapter raises is also its ORM's own error (SQLAlchemy's and peewee's
    ``IntegrityError``, mongoengine's ``NotUniqueError``), so code written for
    1.7.4 that catches those around ``create_user`` and ``commit`` still catches it.
    """


@cache
def _conflict_type(orm_error: type) -> type:
    """The :class:`DatastoreConflictError` that is also ``orm_error``; its text is
    the database's own message (never the statement and its values)."""

    def database_message(self):
        return str(getattr(self, "orig", None) or Exception.__str__(self))

    namespace = {"__module__": __name__, "__str__": database_message}
    return type(
        "DatastoreConflictError", (DatastoreConflictError, orm_error), namespace
    )


def _missing_table_advice(error: BaseException) -> str | None:
    """What to do when ``error`` is the database saying a table or a column does
    not exist (SQLite's "no such table" / "no such column", PostgreSQL's SQLSTATE
    42P01 / 42703, through SQLAlchemy or peewee); None for any other error."""
    if type(error).__name__ not in ("OperationalError", "ProgrammingError"):
        return None
    cause = getattr(error, "orig", None) or error
    code = getattr(cause, "pgcode", None) or getattr(cause, "sqlstate", None)
    text = str(cause).strip()
    if code == "42703" or (code is None and "no such column" in text):
        return (
            f"the database lacks a column of the models ({text}): add it with your "
            "migrations or ALTER TABLE; db.create_all() adds no columns "
            "(README.md, 'The fields each feature needs')"
        )
    if code != "42P01" and not (code is None and "no such table" in text):
        return None
    return (
        f"the database has no such table ({text}): create the tables "
        "with db.create_all() (Flask-SQLAlchemy), db.create_tables([...]) (peewee) "
        "or your migrations; flask-security-lite never creates tables "
        "(README.md, 'Tables not created')"
    )


def normalize_email(address: str) -> str:
    """Return the one form of ``address`` that is stored and looked up.

    email-validator's normal form (Unicode NFC, the domain checked by IDNA and
    written in Unicode, so ``xn--bcher-kva.de`` is ``bücher.de``), then lowercased
    with ``str.lower`` (``Ä`` is ``ä``; ``ß`` stays ``ß``). Something that is not
    an address is only stripped, NFC-normalised and lowercased, so a lookup by it
    still behaves the same on every store.
    """
    from email_validator import EmailNotValidError, validate_email

    address = address.strip()
    try:
        address = validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        pass
    return unicodedata.normalize("NFC", address.lower())


def _email_pattern(address):
    """A LIKE pattern every stored form of the normalised, non-ASCII ``address``
    matches whatever its case, for SQLite, whose lower() folds ASCII only: ASCII
    letters, digits and ``.@+-`` stay (LIKE folds their case), each run of anything
    else is a ``%``. None unless the domain is ASCII: a pattern such as ``%@%``
    would read the whole table. It matches more than it should; the caller
    compares the candidates normalised."""
    local, _, domain = address.rpartition("@")
    if not local or not domain.isascii() or set(domain) & set("%_\\"):
        return None
    return re.sub(r"[^A-Za-z0-9.+-]+", "%", local) + "@" + domain


#: At most this many rows are compared by :func:`_email_pattern`'s lookup.
_MAX_UNNORMALISED_CANDIDATES = 20


def _storable(*values):
    """False if one of ``values`` is a string no database can hold (a NUL, or a lone
    surrogate such as JSON's "\\ud800"): it is never stored, and matches nothing
    when looked up (PostgreSQL would raise on it)."""
    for value in values:
        if not isinstance(value, str):
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        if "\x00" in value:
            return False
    return True


def _save(user):
    """Write ``user`` and make it durable: the flows that change a user commit."""
    datastore = _state().datastore
    datastore.put(user)
    datastore.commit()


#: Serialises the default ``UserDatastore.compare_and_set`` within this process.
_DEFAULT_COMPARE_AND_SET_LOCK = threading.Lock()


class UserDatastore:
    """The user and role operations every adapter shares.

    An adapter maps ``put``, ``delete``, ``commit``, ``find_user``, ``find_role``,
    ``get_user_by_id`` and the role links onto its ORM. A store written for 1.7.4
    (``put``, ``delete``, ``find_user(**fields)`` and ``find_role(name)``, perhaps
    ``commit``) works as it is.

    Who commits: these methods only write (``put``); whoever calls them makes the
    writes durable with ``commit``. The library's own flows (``register_user``,
    ``confirm_user``, ``update_password``, ``change_user_password``, ``login_user``
    with tracking, a rehash at login) and the CLI commit what they changed; your code
    that calls ``create_user`` or ``add_role_to_user`` calls ``commit`` itself.
    Every adapter reports a broken uniqueness rule at ``put``, as
    :class:`DatastoreConflictError`.

    :param user_model: the user model class.
    :param role_model: the role model class.
    """

    def __init__(self, user_model: type, role_model: type) -> None:
        self.user_model = user_model
        self.role_model = role_model

    # -- what an adapter provides ------------------------------------------------

    def put(self, model: Any) -> Any:
        """Stage ``model`` for saving and return it."""
        raise NotImplementedError

    def delete(self, model: Any) -> None:
        """Delete ``model``."""
        raise NotImplementedError

    def commit(self) -> None:
        """Make staged writes durable (raise DatastoreConflictError on a
        duplicate); nothing to do for a store that writes at ``put``."""

    def _find_user(self, fields):
        """Return the user whose columns equal every value of ``fields``, or None."""
        raise NotImplementedError

    def _find_user_unnormalised(self, fields):
        """The users matching ``fields`` whose stored email may be
        ``fields["email"]`` written otherwise (rows from before emails were
        normalised: Flask-SQLAlchemy on 1.7.4 stored them as typed); a superset, as
        :func:`_email_pattern` finds them, that :meth:`find_user` narrows."""
        raise NotImplementedError

    def compare_and_set(
        self, user: Any, expected: dict[str, Any], changes: dict[str, Any]
    ) -> bool:
        """Write ``changes`` to ``user``'s row only if it still holds ``expected``.

        One atomic write (``UPDATE ... WHERE``, or an update with a filter), durable
        when it returns: of two requests consuming the same emailed link at once,
        exactly one succeeds. ``user`` is brought up to date either way.

        :param expected: ``{field: value}`` the row must hold (``None``: empty).
        :param changes: ``{field: value}`` to write.
        :returns: True if this call made the change.

        The adapters write in one statement. This default, for stores written for
        1.7.4, compares and writes in two steps under a lock of this process: it
        cannot keep two processes (workers, hosts) from both passing, nor see a
        write another process made if ``get_user_by_id`` answers from a cache. A
        store that runs on more than one process must override it.
        """
        with _DEFAULT_COMPARE_AND_SET_LOCK:
            current = self.get_user_by_id(user.id) or user
            if any(getattr(current, key) != value for key, value in expected.items()):
                return False
            for name, value in changes.items():
                setattr(user, name, value)
            self.put(user)
            self.commit()
        return True

    def find_role(self, *args: Any, **kwargs: Any) -> Any:
        """Return the role named ``role``, or None."""
        raise NotImplementedError

    def get_user_by_id(self, user_id: Any) -> Any:
        """Return the user with primary key ``user_id`` (any type), or None.

        The adapters look the key up; this default asks ``find_user(id=...)``, as
        1.7.4 did, for stores written then.
        """
        return self.find_user(id=user_id)

    def _read_roles_ahead(self, user):
        """Load ``user.roles`` now, writing nothing: the response will read them
        after the store's session has ended."""
        list(user.roles)

    def _link_role(self, user, role):
        user.roles.append(role)
        self.put(user)

    def _unlink_role(self, user, role):
        user.roles.remove(role)
        self.put(user)

    # -- shared logic --------------------------------------------------------------

    def find_user(self, *args: Any, **kwargs: Any) -> Any:
        """Return the user matching every keyword, or None.

        ``email`` is compared by :func:`normalize_email` with an equality on the
        column (an index serves it); when that finds nobody, rows stored before
        emails were normalised are matched case-insensitively.
        """
        if args:  # 1.7.4's signature; only a store's own find_user reads them
            raise NotImplementedError("find_user here takes field=value keywords")
        if not _storable(*kwargs.values()):
            return None
        email = kwargs.get("email")
        if email is None:
            return self._find_user(kwargs)
        if not isinstance(email, str):
            return None
        wanted = normalize_email(email)
        found = self._find_user({**kwargs, "email": wanted})
        if found is not None:
            return found
        # Compared normalised, not by the database's lower(): SQLite's folds ASCII
        # only, and "ÄRGER@..." must be found (and taken) when "ärger@..." is typed.
        candidates = self._find_user_unnormalised({**kwargs, "email": wanted})
        return next((u for u in candidates if normalize_email(u.email) == wanted), None)

    def get_user(self, id_or_email: Any) -> Any:
        """Return the user with this id, or whose identity attribute has this value."""
        return self.get_user_by_id(id_or_email) or self.find_user_by_identity(
            id_or_email
        )

    def find_user_by_identity(self, identifier: Any) -> Any:
        """Return the user one of ``SECURITY_USER_IDENTITY_ATTRIBUTES`` matches."""
        if not isinstance(identifier, str) or not identifier.strip():
            return None
        attributes = config_value("USER_IDENTITY_ATTRIBUTES")
        if isinstance(attributes, str):  # "email, username"
            attributes = get_identity_attributes()
        for attribute in attributes:
            user = self.find_user(**{attribute: identifier.strip()})
            if user is not None:
                return user
        return None

    def _as_role(self, role):
        return self.find_role(role) if isinstance(role, str) else role

    def _as_user(self, user):
        return self.find_user(email=user) if isinstance(user, str) else user

    def _prepare_user_fields(self, fields):
        """Normalise the email, fill defaults, hash a plaintext password and turn
        role names into roles."""
        if isinstance(fields.get("email"), str):
            fields["email"] = normalize_email(fields["email"])
        if hasattr(self.user_model, "active"):
            fields.setdefault("active", True)
        password = fields.get("password")
        if password and not _is_password_hash(password):
            fields["password"] = hash_password(password)
        roles = [self._as_role(role) for role in fields.pop("roles", [])]
        if None in roles:
            raise ValueError("create_user was given a role that does not exist")
        return fields, roles

    def create_user(self, **kwargs: Any) -> Any:
        """Create and return a user; a plaintext ``password`` is hashed, and
        ``roles`` may hold role names or Role objects."""
        with self._app_context():
            fields, roles = self._prepare_user_fields(kwargs)
        user = self.put(self.user_model(**fields))
        for role in roles:
            self.add_role_to_user(user, role)
        return user

    def _bind(self, app):
        """Remember that ``app`` uses this store (``init_app`` says so)."""
        known = [other for other in getattr(self, "_apps", []) if other is not app]
        self._apps = [*known, app]

    def _app_context(self):
        """Outside any app context, the context of the one app this store serves:
        hashing reads that app's settings, so a script may call ``create_user``
        without a context, as under 1.7.4. (Flask-SQLAlchemy 3 itself still needs
        one.)"""
        apps = getattr(self, "_apps", [])
        if has_app_context() or len(apps) != 1:
            return nullcontext()
        return apps[0].app_context()

    def delete_user(self, user: Any) -> None:
        """Delete ``user``."""
        self.delete(user)

    def create_role(self, **kwargs: Any) -> Any:
        """Create and return a role."""
        return self.put(self.role_model(**kwargs))

    def find_or_create_role(self, name: str, **kwargs: Any) -> Any:
        """Return the role ``name``, creating it with ``kwargs`` if missing."""
        return self.find_role(name) or self.create_role(name=name, **kwargs)

    def add_role_to_user(self, user: Any, role: Any) -> bool:
        """Give ``role`` (name or object) to ``user``; True if it was new."""
        user, role = self._as_user(user), self._as_role(role)
        if user is None or role is None or user.has_role(role):
            return False
        self._link_role(user, role)
        return True

    def remove_role_from_user(self, user: Any, role: Any) -> bool:
        """Take ``role`` (name or object) from ``user``; True if it was there."""
        user, role = self._as_user(user), self._as_role(role)
        if user is None or role is None or not user.has_role(role):
            return False
        self._unlink_role(user, role)
        return True

    def toggle_active(self, user: Any) -> bool:
        """Flip ``user.active``. Always returns True. As in 1.7.4 only the user
        object changes; the ORM adapters also save it.

        With a ``security_stamp`` it is renewed too, so that the sessions and
        tokens of a deactivated user do not come back with the account.
        """
        user.active = not user.active
        if hasattr(user, "security_stamp"):
            user.security_stamp = _stamp_with_new_sessions(_stamp_of(user))
        return True

    def deactivate_user(self, user: Any) -> bool:
        """Deactivate ``user``; True if it was active."""
        if not user.active:
            return False
        return self.toggle_active(user)

    def activate_user(self, user: Any) -> bool:
        """Activate ``user``; True if it was inactive."""
        if user.active:
            return False
        return self.toggle_active(user)


class _AdapterDatastore(UserDatastore):
    """What the three ORM adapters add to the shared logic: an activity change is
    saved at once, and a user's passkeys go with the user."""

    def delete_user(self, user: Any) -> None:
        """Delete ``user``, their passkeys first (their rows name the user)."""
        if self.passkey_model is not None:
            for passkey in self._find_passkeys(user=user):
                self.delete(passkey)
        super().delete_user(user)

    def toggle_active(self, user: Any) -> bool:
        super().toggle_active(user)
        self.put(user)
        return True


class SQLAlchemyUserDatastore(_AdapterDatastore):
    """The datastore on Flask-SQLAlchemy; writes are staged in its session until
    ``commit``.

    :param db: the ``flask_sqlalchemy.SQLAlchemy`` object.
    :param passkey_model: the passkey model, for ``SECURITY_PASSKEYS``.
    """

    def __init__(
        self,
        db: Any,
        user_model: type,
        role_model: type,
        passkey_model: type | None = None,
    ) -> None:
        self._sa = _require("sqlalchemy", "Flask-SQLAlchemy", "sqlalchemy")
        self.db = db
        super().__init__(user_model, role_model)
        self.passkey_model = passkey_model

    def put(self, model: Any) -> Any:
        """Add ``model`` to the session and flush, so a conflict shows here as on
        the other stores; ``commit`` makes it durable."""
        self.db.session.add(model)
        try:
            self.db.session.flush()
        except self._sa.exc.IntegrityError as error:
            self.db.session.rollback()
            raise self._conflict(error) from error
        return model

    def _conflict(self, error):
        conflict = _conflict_type(self._sa.exc.IntegrityError)
        return conflict(error.statement, error.params, error.orig)

    def delete(self, model: Any) -> None:
        self.db.session.delete(model)

    def commit(self) -> None:
        try:
            self.db.session.commit()
        except self._sa.exc.IntegrityError as error:
            self.db.session.rollback()
            raise self._conflict(error) from error

    def _find_user(self, fields, *conditions):
        query = self._sa.select(self.user_model).filter_by(**fields).where(*conditions)
        roles_join = self._user_queries.roles_join
        if roles_join is not None and _roles_wanted():
            query = query.options(roles_join)
        return self.db.session.scalars(query.limit(1)).unique().first()

    def _find_user_unnormalised(self, fields):
        email, column = fields.pop("email"), self.user_model.email
        sqlite = self.db.session.get_bind(self.user_model).dialect.name == "sqlite"
        if email.isascii() or not sqlite:  # README's index on lower(email) serves
            matching = self._sa.func.lower(column) == email
        elif (pattern := _email_pattern(email)) is not None:
            matching = column.ilike(pattern)
        else:
            return []
        query = self._sa.select(self.user_model).filter_by(**fields).where(matching)
        query = query.limit(_MAX_UNNORMALISED_CANDIDATES)
        return self.db.session.scalars(query).all()

    def compare_and_set(
        self, user: Any, expected: dict[str, Any], changes: dict[str, Any]
    ) -> bool:
        key = self._sa.inspect(self.user_model).primary_key[0].name
        statement = (
            self._sa.update(self.user_model)
            .where(getattr(self.user_model, key) == getattr(user, key))
            .filter_by(**expected)
            .values(**changes)
            .execution_options(synchronize_session=False)
        )
        changed = self.db.session.execute(statement).rowcount == 1
        self.commit()
        self.db.session.refresh(user)
        return changed

    def _find_passkeys(self, **fields):
        model = self.passkey_model
        query = self._sa.select(model).filter_by(**fields).order_by(model.created_at)
        return self.db.session.scalars(query).all()

    def _update_passkey(self, passkey, expected, changes):
        model = self.passkey_model
        key = self._sa.inspect(model).primary_key[0].name
        statement = (
            self._sa.update(model)
            .where(getattr(model, key) == getattr(passkey, key))
            .filter_by(**expected)
            .values(**changes)
            .execution_options(synchronize_session=False)
        )
        changed = self.db.session.execute(statement).rowcount == 1
        self.commit()
        self.db.session.refresh(passkey)
        return changed

    def _read_roles_ahead(self, user):
        # Without autoflush: the app's pending changes are its own to flush.
        with self.db.session.no_autoflush:
            list(user.roles)

    def find_role(self, role: str) -> Any:
        query = self._sa.select(self.role_model).filter_by(name=role).limit(1)
        return self.db.session.scalars(query).first()

    def get_user_by_id(self, user_id: Any) -> Any:
        # Convert first: PostgreSQL raises, and spoils the transaction, on "abc" = 1.
        queries, key = self._user_queries, user_id
        try:
            if not isinstance(user_id, queries.key_type):
                key = queries.key_type(user_id)
        except (TypeError, ValueError, AttributeError):  # key_type None among them
            return None
        query = queries.by_id_with_roles if _roles_wanted() else queries.by_id
        return self.db.session.scalars(query, {"key": key}).unique().first()

    @cached_property
    def _user_queries(self):
        """How users are looked up, prepared once: the primary key's Python type
        (None when its column type has none), the query by primary key (every
        protected request runs it), the same query joining the roles for requests
        that check them (a join costs every other request for nothing), and that
        join, or None when ``roles`` is a query of its own (dynamic, write-only) or
        missing."""
        mapper = self._sa.inspect(self.user_model)
        key = mapper.primary_key[0]
        try:
            key_type = key.type.python_type
        except NotImplementedError:
            key_type = None
        query = self._sa.select(self.user_model).where(key == self._sa.bindparam("key"))
        roles = mapper.relationships.get("roles")
        join = None
        if roles is not None and roles.lazy not in ("dynamic", "write_only"):
            join = self._sa.orm.joinedload(roles.class_attribute)
        with_roles = query if join is None else query.options(join)
        return types.SimpleNamespace(
            key_type=key_type, by_id=query, by_id_with_roles=with_roles, roles_join=join
        )


class MongoEngineUserDatastore(_AdapterDatastore):
    """The datastore on MongoEngine; writes are durable at ``put``, so ``commit``
    has nothing to do.

    :param db: the ``mongoengine`` module or a Flask-MongoEngine object.
    :param passkey_model: the passkey model, for ``SECURITY_PASSKEYS``.
    """

    def __init__(
        self,
        db: Any,
        user_model: type,
        role_model: type,
        passkey_model: type | None = None,
    ) -> None:
        self._mongoengine = _require("mongoengine", "mongoengine", "mongoengine")
        self.db = db
        super().__init__(user_model, role_model)
        self.passkey_model = passkey_model

    def put(self, model: Any) -> Any:
        try:
            model.save()
        except self._mongoengine.NotUniqueError as error:
            raise _conflict_type(type(error))(*error.args) from error
        return model

    def delete(self, model: Any) -> None:
        model.delete()

    def _query(self, model, **kwargs):
        try:
            return model.objects(**kwargs).first()
        except (self._mongoengine.ValidationError, ValueError, TypeError):
            return None

    def _find_user(self, fields):
        return self._query(self.user_model, **fields)

    def _find_user_unnormalised(self, fields):
        fields["email__iexact"] = fields.pop("email")
        found = self._query(self.user_model, **fields)
        return [] if found is None else [found]

    def compare_and_set(
        self, user: Any, expected: dict[str, Any], changes: dict[str, Any]
    ) -> bool:
        query = self.user_model.objects(pk=user.pk, **expected)
        update = {f"set__{name}": value for name, value in changes.items()}
        changed = query.update_one(**update) == 1
        user.reload()
        return changed

    def find_role(self, role: str) -> Any:
        return self._query(self.role_model, name=role)

    def _find_passkeys(self, **fields):
        return list(self.passkey_model.objects(**fields).order_by("created_at"))

    def _update_passkey(self, passkey, expected, changes):
        query = self.passkey_model.objects(pk=passkey.pk, **expected)
        update = {f"set__{name}": value for name, value in changes.items()}
        changed = query.update_one(**update) == 1
        passkey.reload()
        return changed

    def get_user_by_id(self, user_id: Any) -> Any:
        return self._query(self.user_model, pk=str(user_id))


class PeeweeUserDatastore(_AdapterDatastore):
    """The datastore on peewee 3; writes outside a transaction are committed at
    ``put``, so ``commit`` has nothing to do.

    :param db: a ``peewee.Database`` or an object with a ``.database``.
    :param role_link: the model linking users to roles (fields ``user``, ``role``).
    :param passkey_model: the passkey model, for ``SECURITY_PASSKEYS``.
    """

    def __init__(
        self,
        db: Any,
        user_model: type,
        role_model: type,
        role_link: type,
        passkey_model: type | None = None,
    ) -> None:
        self._peewee = _require("peewee", "peewee", "peewee")
        # A peewee.Database has a .database too: its name, so test the type first.
        self.db = db if isinstance(db, self._peewee.Database) else db.database
        super().__init__(user_model, role_model)
        self.role_link = role_link
        self.passkey_model = passkey_model

    def put(self, model: Any) -> Any:
        """Save ``model``: a stored row writes only the fields set since it was
        read, so a stale copy (read before a slow password check) cannot undo what
        another request wrote meanwhile (a logout, a deactivation)."""
        try:
            if model._pk is None:
                model.save()
            elif model.dirty_fields:
                model.save(only=model.dirty_fields)
        except self._peewee.IntegrityError as error:
            # peewee keeps the driver's error apart from args: pass it on as orig
            raise _conflict_type(type(error))(error.orig, *error.args) from error
        return model

    def delete(self, model: Any) -> None:
        model.delete_instance(recursive=True)

    def _equal(self, fields):
        return [getattr(self.user_model, name) == v for name, v in fields.items()]

    def _find_user(self, fields):
        return self.user_model.select().where(*self._equal(fields)).first()

    def _find_user_unnormalised(self, fields):
        email, column = fields.pop("email"), self.user_model.email
        sqlite = isinstance(self.db, self._peewee.SqliteDatabase)
        if email.isascii() or not sqlite:  # README's index on lower(email) serves
            matching = self._peewee.fn.LOWER(column) == email
        elif (pattern := _email_pattern(email)) is not None:
            matching = column**pattern  # LIKE, which folds ASCII case on SQLite
        else:
            return []
        query = self.user_model.select().where(*self._equal(fields), matching)
        return list(query.limit(_MAX_UNNORMALISED_CANDIDATES))

    def compare_and_set(
        self, user: Any, expected: dict[str, Any], changes: dict[str, Any]
    ) -> bool:
        model = self.user_model
        key = model._meta.primary_key
        user_id = getattr(user, key.name)
        query = model.update(**changes).where(key == user_id, *self._equal(expected))
        changed = query.execute() == 1
        user.__data__.update(model.get_by_id(user_id).__data__)
        user._dirty.clear()
        return changed

    def find_role(self, role: str) -> Any:
        return self.role_model.get_or_none(self.role_model.name == role)

    def get_user_by_id(self, user_id: Any) -> Any:
        key = self.user_model._meta.primary_key
        try:
            return self.user_model.get_or_none(key == key.adapt(user_id))
        except (self._peewee.DataError, TypeError, ValueError):
            return None

    def create_user(self, **kwargs: Any) -> Any:
        with self.db.atomic():
            return super().create_user(**kwargs)

    def _find_passkeys(self, **fields):
        model = self.passkey_model
        query = model.select().order_by(model.created_at)
        for name, value in fields.items():
            query = query.where(getattr(model, name) == value)
        return list(query)

    def _update_passkey(self, passkey, expected, changes):
        model = self.passkey_model
        key = model._meta.primary_key
        matching = [getattr(model, name) == value for name, value in expected.items()]
        query = model.update(**changes).where(key == passkey.get_id(), *matching)
        changed = query.execute() == 1
        passkey.__data__.update(model.get_by_id(passkey.get_id()).__data__)
        passkey._dirty.clear()
        return changed

    def _link_role(self, user, role):
        self.role_link.create(user=user, role=role)

    def _unlink_role(self, user, role):
        link = self.role_link
        link.delete().where((link.user == user) & (link.role == role)).execute()


# =============================================================================
# 5. Answers: JSON or HTML, forms, redirects, and every refusal
# =============================================================================


def _wants_json():
    """How this request wants its answer, decided in one place: JSON for a JSON body
    or a client that prefers JSON to HTML, HTML otherwise."""
    if request.is_json:
        return True
    best = request.accept_mimetypes.best_match(("text/html", "application/json"))
    return best == "application/json"


def _json_answer(code, response):
    """The JSON envelope ``{"meta": {"code": ...}, "response": {...}}``, a Response."""
    answer = jsonify(meta={"code": code}, response=response)
    answer.status_code = code
    return answer


class _Refused(Exception):
    """Every refusal of the module, raised by a view or returned by a decorator:
    the status, the message (a ``SECURITY_MSG_*`` key and its values), and how
    browsers are told. :func:`_refusal_answer` gives the one answer to it.

    :param errors: ``{field: [text, ...]}`` for JSON clients (default: ``field``
        with the message, or no field errors at all).
    :param go_to: the page browsers are sent to, with the message flashed.
    :param realm: ask for HTTP Basic credentials of this realm.
    """

    def __init__(
        self,
        status,
        key=None,
        *,
        errors=None,
        field=None,
        go_to=None,
        realm=None,
        **values,
    ):
        self.text, self.category = get_message(key, **values) if key else ("", "")
        super().__init__(self.text)
        self.status, self.go_to, self.realm = status, go_to, realm
        self.errors = {field: [self.text]} if field else errors


def _refusal_answer(refusal):
    """The answer to a refusal, by the one rule of :func:`_wants_json`: JSON clients
    get the envelope with the field errors or the message; browsers the message
    and a redirect when the refusal names a page, else the app's own error page for
    the status (Werkzeug's, with the message, when the app has none)."""
    if _wants_json():
        body = {"errors": refusal.errors} if refusal.errors else {"error": refusal.text}
        answer = _json_answer(refusal.status, body)
    elif refusal.go_to:
        do_flash(refusal.text, refusal.category)
        answer = redirect(refusal.go_to)
    else:
        error = default_exceptions[refusal.status](refusal.text or None)
        app = current_app._get_current_object()
        answer = app.make_response(app.handle_user_exception(error))
    if refusal.realm is not None:
        quoted = refusal.realm.replace("\\", "\\\\").replace('"', '\\"')
        answer.headers["WWW-Authenticate"] = f'Basic realm="{quoted}"'
    return answer


def _login_refusal(key="LOGIN"):
    """401 for a view that needs a logged-in user (``"REFRESH"``: a fresh login);
    browsers go to the login page with a relative ``next`` back here."""
    here = request.full_path if request.query_string else request.path
    token_key = config_value("TOKEN_AUTHENTICATION_KEY")
    if token_key in request.args:  # a token must not travel on in the login URL
        kept = [(k, v) for k, v in request.args.items(multi=True) if k != token_key]
        here = request.path + (f"?{urlencode(kept)}" if kept else "")
    try:
        login_url = url_for_security("login", next=request.script_root + here)
    except BuildError:  # the app registered no security views
        login_url = None
    return _Refused(401, key, go_to=login_url)


def _refuse_login(key="LOGIN"):
    """Flask-Login's handler of an anonymous (or not fresh) request, as ours."""
    return _refusal_answer(_login_refusal(key))


# -- redirects that stay on this site -----------------------------------------


def get_url(endpoint_or_url: str, **values: Any) -> str:
    """Return the URL of an endpoint name, or the argument itself if it is a URL."""
    try:
        return url_for(endpoint_or_url, **values)
    except BuildError:
        return endpoint_or_url


def url_for_security(endpoint: str, **values: Any) -> str:
    """Return the URL of a security view, e.g. ``url_for_security('login')``.

    :param endpoint: the view's name (``login``, ``reset_password``, ...).
    :param values: URL arguments, and ``_external``, ``_anchor``, ``_method``.
    """
    return url_for(f"{config_value('BLUEPRINT_NAME')}.{endpoint}", **values)


def slash_url_suffix(url: str, suffix: str) -> str:
    """Join ``url`` and ``suffix`` with exactly one slash between them."""
    return f"{url}{suffix}" if url.endswith("/") else f"{url}/{suffix}"


def _is_plain_local_url(url):
    """True if ``url`` is a relative URL or an http(s) URL to this host, and holds
    nothing a browser would read differently from this parser."""
    if "\\" in url or any(ch.isspace() or not ch.isprintable() for ch in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[" and other broken hosts
        return False
    if parts.scheme or parts.netloc or url.startswith("//"):
        return (
            parts.scheme in ("", "http", "https")
            and parts.netloc.lower() == request.host.lower()
        )
    return True


def validate_redirect_url(target: str | None) -> bool:
    """Return True if ``target`` stays on this host: a relative path or a URL to it.

    The URL that is emitted is the one judged here, so nothing is cleaned first:
    backslashes, whitespace, control characters and user-info are refused, and so
    is a target whose percent-decoded forms would not pass.
    """
    if not isinstance(target, str) or not target:
        return False
    candidate = target
    for _ in range(3):
        if not _is_plain_local_url(candidate):
            return False
        decoded = unquote(candidate)
        if decoded == candidate:
            return True
        candidate = decoded
    return False


def _redirect_target(next_url, *view_keys):
    """A safe ``next_url``, else the first configured view of ``view_keys``.

    An unsafe ``next_url`` is dropped with the ``INVALID_REDIRECT`` message.
    """
    if next_url:
        if validate_redirect_url(next_url):
            return next_url
        _flash_message("INVALID_REDIRECT")
    for key in view_keys:
        view = config_value(key)
        if view:
            return get_url(view)
    return "/"


def _next_or_view(declared, *view_keys):
    """Where to go after an action: a safe ``next`` (``declared``, else the
    request's), else the first configured view of ``view_keys``."""
    declared = declared or request.args.get("next") or request.form.get("next")
    return _redirect_target(declared, *view_keys)


# -- reading the body into a form ---------------------------------------------


def _json_body():
    """The request's JSON body; None when it is not valid JSON, or is nested deeper
    than Python's parser can go (a 1,000-deep array is, and must not be a 500)."""
    try:
        return request.get_json(silent=True)
    except RecursionError:
        return None


def _json_formdata(payload):
    """Turn a JSON object into form data; booleans become what a checkbox sends."""
    if not isinstance(payload, dict):
        raise _Refused(400, errors={"json": ["The body must be a JSON object."]})
    formdata, errors = MultiDict(), {}
    for name, value in payload.items():
        if isinstance(value, bool):
            formdata[name] = "y" if value else ""
        elif isinstance(value, (str, int, float)) and _storable(str(value)):
            formdata[name] = str(value)
        elif value is not None:
            errors[name] = ["Expected a string, a number or a boolean."]
    if errors:
        raise _Refused(400, errors=errors)
    return formdata


def _build_form(name, csrf=True):
    """The form ``name`` of this app, filled from the JSON or form body.

    :param csrf: False for a request authenticated by its token alone, which
        carries no ambient credential a forged request could use.
    """
    form_class = _state().forms[name]
    options = {} if csrf else {"meta": {"csrf": False}}
    if request.is_json and request.method == "POST":
        formdata = _json_formdata(_json_body())
        field = current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token")
        headers = current_app.config.get("WTF_CSRF_HEADERS", _CSRF_HEADERS)
        header_token = next(filter(None, map(request.headers.get, headers)), None)
        if header_token and field not in formdata:
            formdata[field] = header_token
        return form_class(formdata=formdata, **options)
    return form_class(**options)


#: Where JSON clients send the CSRF token, when ``WTF_CSRF_HEADERS`` is not set
#: (Flask-WTF's own default).
_CSRF_HEADERS = ["X-CSRFToken", "X-CSRF-Token"]


# -- the shape of a form view -------------------------------------------------


#: Each form view's template setting, and the name its template knows the form by.
_FORM_VIEWS = {
    "login": ("LOGIN_USER_TEMPLATE", "login_user_form"),
    "register": ("REGISTER_USER_TEMPLATE", "register_user_form"),
    "forgot_password": ("FORGOT_PASSWORD_TEMPLATE", "forgot_password_form"),
    "reset_password": ("RESET_PASSWORD_TEMPLATE", "reset_password_form"),
    "change_password": ("CHANGE_PASSWORD_TEMPLATE", "change_password_form"),
    "send_confirmation": ("SEND_CONFIRMATION_TEMPLATE", "send_confirmation_form"),
    "send_login": ("SEND_LOGIN_TEMPLATE", "send_login_form"),
    "tf_setup": ("TWO_FACTOR_SETUP_TEMPLATE", "tf_password_form"),
    "tf_validate": ("TWO_FACTOR_VALIDATE_TEMPLATE", "tf_code_form"),
    "tf_rescue": ("TWO_FACTOR_RESCUE_TEMPLATE", "tf_rescue_form"),
    "tf_disable": ("TWO_FACTOR_DISABLE_TEMPLATE", "tf_disable_form"),
    "tf_recovery_codes": ("TWO_FACTOR_RECOVERY_CODES_TEMPLATE", "tf_password_form"),
    "sessions": ("SESSIONS_TEMPLATE", "sessions_form"),
}


def _template_values(view):
    """The values the context processors give the templates of ``view`` (``mail``:
    the emails): those registered for every template, then the view's own."""
    values = {}
    processors = _state().security._context_processors
    for processor in processors["all"] + processors[view]:
        values.update(processor())
    return values


def _render(view, **context):
    """Render a view's template with the values of its context processors (those
    of the docs), ``context`` winning, through ``security.render_template`` (an app
    may replace it)."""
    values = {"security": _state(), **_template_values(view)}
    template = config_value(_FORM_VIEWS[view][0])
    return _state().render_template(template, **{**values, **context})


class _Done(NamedTuple):
    """What a form view did with a valid submit: whom its JSON answer names (with an
    auth token when ``token``), the ``(text, category)`` flashed to browsers, where
    browsers go next (None: the form is shown again), and more of the JSON answer
    (``{"tf_required": True}``)."""

    user: object = None
    token: bool = False
    message: tuple | None = None
    next_url: str | None = None
    json: dict | None = None


def _form_view(view, form_name, act, csrf=True, **context):
    """Every form view: on a valid submit ``act(form)`` does the view's own work and
    returns a :class:`_Done` (None after adding a form error); then JSON clients get
    the JSON envelope, browsers a flash and a redirect, or the form again."""
    form = _build_form(form_name, csrf)
    done = act(form) if form.validate_on_submit() else None
    if _wants_json():
        return _form_json(form, done)
    if done is not None:
        if done.message:
            do_flash(*done.message)
        if done.next_url:
            return redirect(done.next_url)
    page = _render(view, **{_FORM_VIEWS[view][1]: form}, **context)
    # A form refused for its CSRF token is a 400, as for JSON.
    csrf_refused = form.meta.csrf and form.meta.csrf_field_name in form.errors
    return page, 400 if csrf_refused else 200


def _form_json(form, done):
    """400 with field errors; after a valid submit the user's id (and token) and
    the CSRF token of the next form; else, for a client about to fill the form, the
    CSRF token it needs."""
    if form.errors:
        raise _Refused(400, errors=form.errors)
    response = {}
    if done is None and form.meta.csrf:
        response["csrf_token"] = form[form.meta.csrf_field_name].current_token
    elif done is not None and done.user is not None:
        response["user"] = {"id": str(done.user.id)}
        if done.token:
            response["user"]["authentication_token"] = done.user.get_auth_token()
    if done is not None and form.meta.csrf:
        # The token for the client's next form: login renews the session.
        response["csrf_token"] = generate_csrf(token_key=form.meta.csrf_field_name)
    if done is not None and done.json:
        response.update(done.json)
    return _json_answer(200, response)


# -- every answer of a security view ------------------------------------------


def _limit_body(endpoint, values):
    """Cap the body of a security request before anything reads it: URL value
    preprocessors run before every ``before_request`` function of the app, so an
    app-wide ``CSRFProtect`` cannot parse a huge body first."""
    request.max_content_length = min(
        request.max_content_length or _MAX_BODY_BYTES, _MAX_BODY_BYTES
    )


#: The policy of the security pages, unless the app sets its own: not framed
#: (clickjacking), no plugins, and no ``<base>`` an injection could point the
#: forms' relative URLs elsewhere with.
_CONTENT_SECURITY_POLICY = "frame-ancestors 'none'; object-src 'none'; base-uri 'none'"


def _security_headers(response):
    """Security pages are not cached, not framed, not read as another content type
    than the one sent, and not named in the ``Referer`` of what they link to: their
    URLs may carry a token."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Content-Security-Policy", _CONTENT_SECURITY_POLICY)
    return response


def _refuse_too_large(error):
    """Werkzeug's 413 for a body past the cap: JSON clients get our envelope,
    browsers Werkzeug's page (this handler is the blueprint's own 413 page)."""
    if _wants_json():
        return _refusal_answer(_Refused(413, "REQUEST_TOO_LARGE"))
    return error


# =============================================================================
# 6. Authentication and decorators
# =============================================================================


# -- who may log in -----------------------------------------------------------


def requires_confirmation(user: Any) -> bool:
    """True if ``user`` may not log in before confirming their address."""
    return (
        config_value("CONFIRMABLE")
        and not config_value("LOGIN_WITHOUT_CONFIRMATION")
        and getattr(user, "confirmed_at", None) is None
    )


#: How many times a lockout count is retried when other requests wrote first.
_COUNT_RETRIES = 50


def _reserve_attempt(user):
    """Count an attempt at ``user``'s password or code before it is checked; False
    when it may not be checked, the account being locked.

    One compare-and-set on the count, retried when another request counted first,
    so that of any number of requests at once, on any worker, at most
    ``SECURITY_LOCKOUT_ATTEMPTS`` are checked before the lock: the attempt that
    reaches the limit starts it. A lapsed lock starts the count again; a right
    password clears it (or, for a user with a second factor, gives the attempt
    back), and so does a right code.
    """
    limit = config_value("LOCKOUT_ATTEMPTS")
    for _ in range(_COUNT_RETRIES):
        now, count, until = _now(), user.failed_login_count or 0, user.locked_until
        if until is not None and until > now:
            return False
        if until is not None:
            count = 0
        if count >= limit:  # the limit was lowered: lock now
            count = limit - 1
        changes = {"failed_login_count": count + 1, "locked_until": None}
        if count + 1 >= limit:
            changes["locked_until"] = now + get_within_delta("LOCKOUT_WITHIN")
        seen = {"failed_login_count": user.failed_login_count}
        if _state().datastore.compare_and_set(user, seen, changes):
            if changes["locked_until"] is not None:
                until = changes["locked_until"].isoformat()
                _log_event("account_locked", user, logging.WARNING, until=until)
            return True
    return False


def _release_attempt(user):
    """Give back an attempt :func:`_reserve_attempt` counted, once its password
    proved right; the lock it may have started ends if fewer attempts remain than
    the limit. A compare-and-set on the count, retried like the reservation."""
    limit = config_value("LOCKOUT_ATTEMPTS")
    for _ in range(_COUNT_RETRIES):
        count = max((user.failed_login_count or 0) - 1, 0)
        changes = {"failed_login_count": count}
        if count < limit:
            changes["locked_until"] = None
        seen = {"failed_login_count": user.failed_login_count}
        if _state().datastore.compare_and_set(user, seen, changes):
            return


def _clear_wrong_passwords(user):
    """Forget the wrong passwords of ``user``: after a login (when lockout is on),
    or by ``flask users unlock``."""
    if user.failed_login_count or user.locked_until is not None:
        cleared = {"failed_login_count": 0, "locked_until": None}
        _state().datastore.compare_and_set(user, {}, cleared)


def _has_second_factor(user):
    """True if ``user`` has a key (set up by enrolment, or given in the datastore)."""
    return bool(getattr(user, "tf_totp_secret", None))


def _needs_second_factor(user):
    """True if a password (or an emailed link) alone may not log ``user`` in."""
    return bool(config_value("TWO_FACTOR")) and bool(
        config_value("TWO_FACTOR_REQUIRED") or getattr(user, "tf_totp_secret", None)
    )


def _verify_login(identifier, password, user=None):
    """Check a password login; return ``(user, reason)``, reason None if it passed.

    Every outcome costs one password check (a dummy one when there is no hash to
    check), so the time taken does not tell whether the account exists or is
    locked. With lockout on, the attempt is counted before the check (see
    :func:`_reserve_attempt`); every failure sends ``login_failed``.

    :param user: the user to check (default: the one ``identifier`` names).
    """
    if user is None:
        user = _state().datastore.find_user_by_identity(identifier)
    reason, lockout = None, config_value("LOCKOUT_ATTEMPTS")
    if user is None or not user.password:
        # As long as a real check, so unknown users are not told apart by time.
        verify_password("not the password", _state().dummy_hash)
        reason = "unknown_user" if user is None else "no_password"
    elif lockout and not _reserve_attempt(user):
        verify_password(password, user.password)  # as long as a real check
        reason = "locked"
    elif not verify_and_update_password(password, user):
        reason = "invalid_password"
    else:
        # The password was right. A user with a second factor gets the attempt
        # back but keeps the count: only a right code clears it, so knowing the
        # password buys no more code guesses (and Basic or a password asked again
        # cannot lock its owner out).
        if lockout and _needs_second_factor(user):
            _release_attempt(user)
        elif lockout:
            _clear_wrong_passwords(user)
        if requires_confirmation(user):
            reason = "unconfirmed"
        elif not user.is_active:
            reason = "disabled"
    if reason is None:
        return user, None
    _login_failed(user, identifier, reason)
    return user, reason


def _login_failed(user, identifier, reason):
    """Report a failed login by ``login_failed`` (the lockout counted the attempt
    before it was checked)."""
    _send_signal(
        login_failed,
        user=user,
        identifier=identifier,
        reason=reason,
        remote_addr=request.remote_addr,
    )


#: The field and message of each reason a password login fails.
_LOGIN_REFUSALS = {
    "unknown_user": ("email", "USER_DOES_NOT_EXIST"),
    "no_password": ("password", "PASSWORD_NOT_SET"),
    "locked": ("email", "ACCOUNT_LOCKED"),
    "invalid_password": ("password", "INVALID_PASSWORD"),
    "unconfirmed": ("email", "CONFIRMATION_REQUIRED"),
    "disabled": ("email", "DISABLED_ACCOUNT"),
}

#: The reasons generic responses answer alike: each would tell something about an
#: account to someone who has not shown its password.
_HIDDEN_BY_GENERIC = ("unknown_user", "no_password", "locked", "invalid_password")


# -- how a request authenticates ----------------------------------------------


def _auth_method():
    """How this request's user was authenticated: ``"session"``, ``"token"``,
    ``"basic"``, or None. Written only by the checks of :data:`_AUTH_CHECKS` and
    :func:`login_user`; views read it (a token request needs no CSRF token)."""
    return g.get("flask_security_auth_method")


def _set_request_user(user, method):
    """Make ``user`` the current user of this request only (nothing in the session)."""
    # Flask-Login's own setter of the request's user, as its request loaders use.
    current_app.login_manager._update_request_context_with_user(user)
    g.flask_security_auth_method = method
    flask_login.user_loaded_from_request.send(
        current_app._get_current_object(), user=user
    )
    _announce_identity(user)


#: Session keys of a session's clock, in seconds of :func:`_timestamp`: when it
#: started (a login, or a remember cookie starting it again), and its last request.
_SESSION_STARTED_KEY = "_security_started"
_SESSION_SEEN_KEY = "_security_seen"

#: Seconds between writes of a session's last request: most answers then carry no
#: new session cookie, and the idle limit holds to within this much.
_SESSION_SEEN_STEP = 60


def _user_of_identity(identity):
    """The user a session identity names, and the time of its login, while it
    holds: the user is active (and confirmed, if that is required), and their
    password and security stamp are still those it was bound to; else
    ``(None, 0)``."""
    parts = identity.rsplit("|", 2) if isinstance(identity, str) else []
    if len(parts) != 3 or not (parts[2].isascii() and parts[2].isdigit()):
        return None, 0
    user_id, binding, issued = parts
    user = _state().datastore.get_user_by_id(user_id)
    if user is None or not user.is_active or requires_confirmation(user):
        return None, 0
    if not hmac.compare_digest(binding, _binding("auth", user)):
        return None, 0
    return user, int(issued)


def _lifetime(key):
    """Setting ``key`` ("<amount> <unit>") in seconds."""
    return get_within_delta(key).total_seconds()


def _start_session_clock():
    """Start the clock of this session: its lifetimes count from now."""
    session[_SESSION_STARTED_KEY] = session[_SESSION_SEEN_KEY] = _timestamp()


def _session_lapsed(now):
    """True once this session has been idle, or open, longer than its settings
    allow."""
    idle = now - session.get(_SESSION_SEEN_KEY, 0)
    age = now - session[_SESSION_STARTED_KEY]
    too_idle = idle > _lifetime("SESSION_IDLE_WITHIN")
    return too_idle or age > _lifetime("SESSION_ABSOLUTE_WITHIN")


def _forget_session_user():
    """Drop the user and the clock of this session (the rest of it stays)."""
    for key in ("_user_id", "_fresh", _SESSION_STARTED_KEY, _SESSION_SEEN_KEY):
        session.pop(key, None)


def _load_user_from_session(identity):
    """Flask-Login's user loader, for the session and the remember cookie alike:
    the identity must still hold (:func:`_user_of_identity`) and the session be
    within its lifetimes, all checked here, whatever the cookies' own expiry.

    A session refused forgets its user, so that a remember cookie, when the client
    has one, starts a new session: Flask-Login tries it next, writing its identity
    into the session, without a clock, before calling this loader again.
    """
    user, issued = _user_of_identity(identity)
    now = _timestamp()
    if _SESSION_STARTED_KEY not in session:  # restored by the remember cookie
        if user is not None and now - issued <= _lifetime("REMEMBER_WITHIN"):
            _start_session_clock()
            return user
    elif user is not None and not _session_lapsed(now):
        if now - session.get(_SESSION_SEEN_KEY, 0) >= _SESSION_SEEN_STEP:
            session[_SESSION_SEEN_KEY] = now
        return user
    _forget_session_user()
    return None


def _authenticate_by_token():
    """Authenticate the request by its auth token (header, query argument or JSON
    body): one HMAC and one lookup."""
    token = request.headers.get(config_value("TOKEN_AUTHENTICATION_HEADER"))
    key = config_value("TOKEN_AUTHENTICATION_KEY")
    if not token and config_value("TOKEN_IN_QUERY_STRING"):
        token = request.args.get(key)
    if not token and request.is_json:
        body = _json_body()
        token = body.get(key) if isinstance(body, dict) else None
    if not token or not isinstance(token, str):
        return False
    check = _read_token(token, "auth")
    if (
        check.status != "ok"
        or not check.user.is_active
        or requires_confirmation(check.user)
    ):
        return False
    _set_request_user(check.user, "token")
    return True


def _authenticate_by_basic():
    """Authenticate the request by HTTP Basic credentials."""
    try:
        credentials = request.authorization
    except ValueError:  # a header Werkzeug cannot decode (not ASCII): no credentials
        return False
    if credentials is None or credentials.type != "basic":
        return False
    user, reason = _verify_login(credentials.username, credentials.password or "")
    if reason is not None:
        return False
    if _needs_second_factor(user) and not config_value("TWO_FACTOR_ALLOW_BASIC"):
        return False
    _set_request_user(user, "basic")
    return True


def _authenticate_by_session():
    if current_user.is_authenticated:
        g.flask_security_auth_method = "session"
        return True
    return False


#: The ways a request can authenticate, by the names ``auth_required`` takes.
_AUTH_CHECKS = {
    "token": _authenticate_by_token,
    "basic": _authenticate_by_basic,
    "session": _authenticate_by_session,
}


# -- decorators ---------------------------------------------------------------


def _protect(view, methods, realm=None):
    """``view`` behind the checks of ``methods``, tried in order. A refusal
    challenges for Basic when it is listed, else sends browsers to the login page
    when ``session`` is listed."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        for method in methods:
            if _AUTH_CHECKS[method]():
                return current_app.ensure_sync(view)(*args, **kwargs)
        if "basic" in methods:
            realm_name = realm or config_value("DEFAULT_HTTP_AUTH_REALM")
            refusal = _Refused(401, "LOGIN", realm=realm_name)
        elif "session" in methods:
            refusal = _login_refusal()
        else:
            refusal = _Refused(401, "LOGIN")
        return _refusal_answer(refusal)

    return wrapper


def http_auth_required(realm: str | Callable) -> Callable:
    """Protect a view with HTTP Basic auth; usable bare or as ``(realm)``.

    :param realm: the realm announced in ``WWW-Authenticate`` (default:
        ``SECURITY_DEFAULT_HTTP_AUTH_REALM``).
    """
    if callable(realm):
        return _protect(realm, ("basic",))
    return lambda view: _protect(view, ("basic",), realm)


def auth_token_required(view: Callable) -> Callable:
    """Protect a view with token authentication (header, query arg or JSON body)."""
    return _protect(view, ("token",))


def auth_required(*methods: str) -> Callable[[Callable], Callable]:
    """Protect a view with any of ``'token'``, ``'basic'``, ``'session'``, tried in
    the order given. A refusal challenges for Basic when it is listed, else sends
    browsers to the login page when ``session`` is listed."""
    unknown = set(methods) - set(_AUTH_CHECKS)
    if unknown or not methods:
        raise ValueError(f"auth_required takes token, basic, session; not {unknown}")
    return lambda view: _protect(view, methods)


def _roles_decorator(roles, allowed):
    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            user = current_user._get_current_object()
            if not user.is_authenticated:
                return _refuse_login()
            if not allowed(user.has_role(role) for role in roles):
                elsewhere = config_value("UNAUTHORIZED_VIEW")
                go_to = get_url(elsewhere) if elsewhere else None
                return _refusal_answer(_Refused(403, "UNAUTHORIZED", go_to=go_to))
            return current_app.ensure_sync(view)(*args, **kwargs)

        return _reads_roles(wrapper)

    return decorator


def roles_required(*roles: Any) -> Callable[[Callable], Callable]:
    """Allow only users who have every one of ``roles`` (names or Role objects)."""
    return _roles_decorator(roles, all)


def roles_accepted(*roles: Any) -> Callable[[Callable], Callable]:
    """Allow only users who have at least one of ``roles``."""
    return _roles_decorator(roles, any)


def anonymous_user_required(view: Callable) -> Callable:
    """Send a logged-in user to ``SECURITY_POST_LOGIN_VIEW`` instead of the view."""
    return _unless_logged_in(view, lambda: current_user.is_authenticated)


def _unless_logged_in(view, logged_in):
    """``view``, unless ``logged_in()``: then ``SECURITY_POST_LOGIN_VIEW``."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        if logged_in():
            return redirect(get_url(config_value("POST_LOGIN_VIEW")))
        return current_app.ensure_sync(view)(*args, **kwargs)

    return wrapper


def _unless_freshly_logged_in(view):
    """The login page, also for a user asked to log in again: one whose session a
    remember cookie restored is not fresh, and pages that need a fresh login
    (``/passkeys``, ``/sessions``) send them here."""
    fresh = lambda: current_user.is_authenticated and flask_login.login_fresh()  # noqa: E731
    return _unless_logged_in(view, fresh)


# -- Flask-Principal, when the app has it -------------------------------------


def _setup_principal(app):
    """Flask-Principal, when it is installed and
    ``SECURITY_FLASK_PRINCIPAL`` is on; otherwise None, and no code of it runs.

    Each request's identity then carries a ``UserNeed`` and one ``RoleNeed`` per
    role, so ``Permission(RoleNeed("admin")).require()`` works.
    """
    if not app.config["SECURITY_FLASK_PRINCIPAL"]:
        return None
    try:
        principal = importlib.import_module("flask_principal")
    except ImportError:
        return None
    manager = principal.Principal(app, use_sessions=False, skip_static=True)
    manager.identity_loader(_session_identity)
    principal.identity_loaded.connect(_add_needs, app)
    return manager


def _session_identity():
    """Flask-Principal's identity loader: the session's user, if any."""
    from flask_principal import Identity

    user = current_user._get_current_object()
    return Identity(user.id) if user.is_authenticated else None


def _add_needs(app, identity):
    """Give ``identity`` the needs of the current user: a ``UserNeed``
    and a ``RoleNeed`` per role, the roles read when a permission first looks."""
    from flask_principal import UserNeed

    user = current_user._get_current_object()
    if not user.is_authenticated:
        return
    identity.user = user
    given = {*identity.provides, UserNeed(user.id)}
    identity.provides = _NeedsWithRoles(given, user)


class _NeedsWithRoles(MutableSet):
    r"""An identity's ``provides`` set whose ``RoleNeed``\ s are read from ``user``
    when something first reads the set: most pages check no permission, and then
    need neither the roles nor their query. Every other method of ``set`` works on
    the complete set."""

    def __init__(self, needs, user):
        self._needs, self._user = set(needs), user

    def _complete(self):
        if self._user is not None:
            from flask_principal import RoleNeed

            self._needs.update(RoleNeed(role.name) for role in self._user.roles)
            # Only once read: a read that failed is tried again by the next one.
            self._user = None
        return self._needs

    @classmethod
    def _from_iterable(cls, needs):
        return set(needs)

    def __contains__(self, need):
        return need in self._complete()

    def __iter__(self):
        return iter(self._complete())

    def __len__(self):
        return len(self._complete())

    def __repr__(self):
        return repr(self._complete())

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._complete(), name)

    def add(self, need):
        self._needs.add(need)

    def discard(self, need):
        self._complete().discard(need)

    def __copy__(self):
        return set(self._complete())

    def __deepcopy__(self, memo):
        return set(self._complete())

    def __reduce__(self):
        return set, (list(self._complete()),)


def _announce_identity(user):
    """Tell Flask-Principal, when it is set up, who this request's user now is
    (None: nobody)."""
    if _state().principal is None:
        return
    from flask_principal import AnonymousIdentity, Identity, identity_changed

    identity = AnonymousIdentity() if user is None else Identity(user.id)
    identity_changed.send(current_app._get_current_object(), identity=identity)


# -- roles read ahead ---------------------------------------------------------


def _roles_wanted():
    """True when this request will read the user's roles, so that the datastore
    loads them with the user in one query: outside a request (a script, the CLI),
    and for views marked by :func:`_reads_roles`. Other requests skip the join."""
    if not has_request_context():
        return True
    view = current_app.view_functions.get(request.endpoint)
    return getattr(view, "security_reads_roles", False)


def _reads_roles(view):
    """Mark ``view`` as reading its user's roles (see :func:`_roles_wanted`). The mark
    is an attribute, so it reaches the view through every decorator that uses
    ``functools.wraps``."""
    view.security_reads_roles = True
    return view


def _keep_roles_readable(response):
    """Read the user's roles before the database session closes when they may be
    read after it: in a streamed body (a file sent as is reads none), or by a test
    that keeps the request's context (``with client:``). 1.7.4 read them on every
    request, so both worked; other responses need not pay for it, and a request
    that loaded no user loads none here."""
    streamed = response.is_streamed and not response.direct_passthrough
    kept = "werkzeug.debug.preserve_context" in request.environ
    # Flask-Login's user of this request, if it loaded one.
    user = g.get("_login_user")
    if not (streamed or kept) or user is None:
        return response
    # Reading ahead must not change the answer (the view may have left the
    # database session failed): a later read raises where it is made.
    with suppress(Exception):
        if user.is_authenticated:
            _state().datastore._read_roles_ahead(user)
        provides = getattr(g.get("identity"), "provides", None)
        if isinstance(provides, _NeedsWithRoles):
            len(provides)
    return response


# =============================================================================
# 7. Forms
# =============================================================================
# Validators read their messages when they run, so SECURITY_MSG_* set after import
# still apply.


#: The label of each form field, by key.
_default_field_labels = {
    "email": "Email address",
    "password": "Password",
    "current_password": "Current password",
    "register": "Register",
    "send_confirmation": "Resend confirmation instructions",
    "recover_password": "Recover password",
    "send_login_link": "Send login link",
    "remember_me": "Remember me",
    "login": "Log in",
    "reset_password": "Reset password",
    "new_password": "New password",
    "change_password": "Change password",
    "retype_password": "Retype password",
    "retype_new_password": "Retype new password",
    "tf_code": "Authentication code",
    "tf_verify": "Verify",
    "tf_recovery_code": "Recovery code",
    "tf_rescue": "Use recovery code",
    "tf_continue": "Continue",
}


def get_form_field_label(key: str) -> str:
    """Return the label of the form field ``key`` (``email``, ``password``, ...)."""
    return _default_field_labels[key]


class _Required:
    """Stop validation with message ``key`` when the field is empty."""

    field_flags = {"required": True}

    def __init__(self, key):
        self.key = key

    def __call__(self, form, field):
        if not isinstance(field.data, str) or not field.data.strip():
            field.errors[:] = []
            raise StopValidation(_text(self.key))


def email_validator(form: FlaskForm, field: Field) -> None:
    """Validator: the field must hold an email address (syntax only, no DNS)."""
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(field.data, check_deliverability=False)
    except EmailNotValidError:
        raise ValidationError(_text("INVALID_EMAIL_ADDRESS")) from None


def password_length(form: FlaskForm, field: Field) -> None:
    """Validator: a new password needs ``SECURITY_PASSWORD_LENGTH_MIN`` characters,
    and at most 4096 bytes (passlib hashes no longer secret)."""
    minimum = config_value("PASSWORD_LENGTH_MIN")
    if len(field.data) < minimum:
        raise ValidationError(_text("PASSWORD_INVALID_LENGTH", length=minimum))
    if len(want_bytes(field.data)) > _MAX_PASSWORD_BYTES:
        raise ValidationError(_text("PASSWORD_TOO_LONG", length=_MAX_PASSWORD_BYTES))


# -- passwords too easy to guess ----------------------------------------------


#: The common-password list shipped with the module, in its templates folder.
_COMMON_PASSWORDS_FILE = "common_passwords.txt"

#: Parts of an address shorter than this are not looked for in passwords: too many
#: hold "bob" or "mail" by chance.
_ADDRESS_PART_MIN = 4

#: Most of an answer of the range API read: a real one is some 40 KB.
_RANGE_ANSWER_MAX_BYTES = 1024 * 1024


def _fold(text):
    """``text`` as the password checks compare it: NFKC-normalised, case folded,
    without spaces or invisible format characters (``"pass\u200bword 1"`` is
    ``"password1"``)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(
        c for c in folded if not c.isspace() and unicodedata.category(c) != "Cf"
    )


@cache
def _password_list(path):
    """The folded passwords of the list in the file ``path``, read once per
    process."""
    try:
        with open(path, encoding="utf-8") as lines:
            passwords = [line.rstrip("\r\n") for line in lines]
    except (OSError, UnicodeDecodeError) as error:
        raise RuntimeError(
            f"flask-security-lite cannot read the common-password list {path} "
            f"({error}): set SECURITY_PASSWORD_COMMON_LIST to a readable UTF-8 file, "
            "or copy the distribution's templates folder as the module's docstring "
            "says"
        ) from None
    return frozenset(_fold(p) for p in passwords if p and not p.startswith("#"))


def _common_list_path(config):
    """The file of the common-password list: the setting's, or the one we ship."""
    return config["SECURITY_PASSWORD_COMMON_LIST"] or os.path.join(
        _templates_folder(), _COMMON_PASSWORDS_FILE
    )


def _is_common(password):
    """True if ``password`` is on the common-password list, ignoring case."""
    return _fold(password) in _password_list(_common_list_path(current_app.config))


def _address_parts(address):
    """What a password must not hold of ``address``: all of it, the part before
    the ``@`` and each of its words, and each label of the domain but the last
    (``com`` says nothing of its owner); folded, and none too short."""
    folded = _fold(address)
    local, _, domain = folded.rpartition("@")
    parts = {folded, local, *re.split(r"[\W_]+", local), *domain.split(".")[:-1]}
    return {part for part in parts if len(part) >= _ADDRESS_PART_MIN}


def _holds_address(password, address):
    """True if ``password`` holds ``address`` or a part of it, ignoring case."""
    if not isinstance(address, str):
        return False
    folded = _fold(password)
    # As stored, too: a domain typed in punycode is stored in Unicode.
    parts = _address_parts(address) | _address_parts(normalize_email(address))
    return any(part in folded for part in parts)


def _is_breached(password):
    """True if the range API lists ``password`` in known breaches. Only the first
    five hex digits of its SHA-1 leave this server (k-anonymity), and the answer is
    padded so its size tells nothing. An API that fails or does not answer in
    time cannot stop a user choosing a password: it is accepted, and a warning
    logged."""
    import http.client
    import urllib.request

    # SHA-1 is the API's index here, not a protection of the password.
    sha1 = hashlib.sha1(password.encode("utf-8"), usedforsecurity=False)
    digest = sha1.hexdigest().upper()
    base_url = config_value("PASSWORD_BREACHED_URL")
    asking = urllib.request.Request(
        base_url + digest[:5],
        headers={"Add-Padding": "true", "User-Agent": "flask-security-lite"},
    )
    timeout = config_value("PASSWORD_BREACHED_TIMEOUT")

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        """A redirect is a failure of the API, never a new address to ask."""

        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirects)
    try:
        with opener.open(asking, timeout=timeout) as answer:
            listing = answer.read(_RANGE_ANSWER_MAX_BYTES).decode("ascii")
    except (OSError, ValueError, http.client.HTTPException) as error:
        _log.warning(
            "the breached-password check could not ask %s (%s): the password was "
            "accepted unchecked",
            base_url,
            error,
        )
        return False
    return _range_lists(listing, digest[5:])


def _range_lists(listing, suffix):
    """True if the range API's ``listing`` (``SUFFIX:COUNT`` lines) counts the
    SHA-1 ``suffix`` at least once; padding lines count 0."""
    for line in listing.splitlines():
        listed, _, count = line.partition(":")
        if listed.strip().upper() == suffix and count.strip() not in ("", "0"):
            return True
    return False


def _guessable(password, address):
    """The message key refusing ``password`` as a new password of the owner of
    ``address``, or None: a common password, one holding the address, or one
    known from breaches, each when its ``SECURITY_PASSWORD_CHECK_*`` is on (the
    network last)."""
    if config_value("PASSWORD_CHECK_COMMON") and _is_common(password):
        return "PASSWORD_COMMON"
    if config_value("PASSWORD_CHECK_ADDRESS") and _holds_address(password, address):
        return "PASSWORD_HOLDS_ADDRESS"
    if config_value("PASSWORD_CHECK_BREACHED") and _is_breached(password):
        return "PASSWORD_BREACHED"
    return None


def _owner_address(form):
    """The address of whoever chooses the password of ``form``: the one typed on a
    registration form, the logged-in user's (change password), or the address of
    the user the reset link of this request names; None when there is none."""
    if isinstance(getattr(form, "email", None), Field):
        return form.email.data
    if current_user.is_authenticated:
        return current_user.email
    token = (request.view_args or {}).get("token")
    user = _read_token(token, "reset").user if isinstance(token, str) else None
    return getattr(user, "email", None)


def _password_not_guessable(form: FlaskForm, field: Field) -> None:
    """Validator: a new password must not be common, hold its owner's address, or
    be known from breaches (``SECURITY_PASSWORD_CHECK_*``). Skipped for a password
    already refused, so a short one costs no request to the range API."""
    if field.errors:
        return
    refused = _guessable(field.data, _owner_address(form))
    if refused is not None:
        raise ValidationError(_text(refused))


def unique_user_email(form: FlaskForm, field: Field) -> None:
    """Validator: no account may use the address yet."""
    if _state().datastore.find_user(email=field.data.strip()) is not None:
        message = _text("EMAIL_ALREADY_ASSOCIATED", email=field.data)
        raise ValidationError(message)


def valid_user_email(form: FlaskForm, field: Field) -> None:
    """Validator: an account must match the identifier; it is kept as ``form.user``."""
    form.user = _state().datastore.find_user_by_identity(field.data)
    if form.user is None and not config_value("RETURN_GENERIC_RESPONSES"):
        raise ValidationError(_text("USER_DOES_NOT_EXIST"))


#: Validator: the email field must not be empty.
email_required = _Required("EMAIL_NOT_PROVIDED")

#: Validator: the password field must not be empty.
password_required = _Required("PASSWORD_NOT_PROVIDED")


class _EqualTo:
    """Fail with message ``key`` unless the field equals ``other``."""

    def __init__(self, other, key):
        self.other, self.key = other, key

    def __call__(self, form, field):
        if field.data != form[self.other].data:
            raise ValidationError(_text(self.key))


class Form(FlaskForm):
    """Base of every security form (CSRF-protected through Flask-WTF)."""


class EmailFormMixin:
    """An email field that must hold an address."""

    email = StringField(
        get_form_field_label("email"), [email_required, email_validator]
    )


class UserEmailFormMixin:
    """An email field naming an existing user, who is kept as ``form.user``."""

    user = None
    email = StringField(
        get_form_field_label("email"),
        [email_required, email_validator, valid_user_email],
    )


class UniqueEmailFormMixin:
    """An email field no account uses yet."""

    email = StringField(
        get_form_field_label("email"),
        [email_required, email_validator, unique_user_email],
    )


class PasswordFormMixin:
    """The current password."""

    password = PasswordField(
        get_form_field_label("current_password"), [password_required]
    )


class NewPasswordFormMixin:
    """A new password, long enough."""

    password = PasswordField(
        get_form_field_label("password"),
        [password_required, password_length, _password_not_guessable],
    )


class PasswordConfirmFormMixin:
    """The new password typed again."""

    password_confirm = PasswordField(
        get_form_field_label("retype_password"),
        [_EqualTo("password", "RETYPE_PASSWORD_MISMATCH")],
    )


class NextFormMixin:
    """A hidden ``next`` URL that must stay on this site."""

    next = HiddenField()

    def validate_next(self, field: Field) -> None:
        """Refuse a ``next`` that leaves this host."""
        if field.data and not validate_redirect_url(field.data):
            field.data = ""
            raise ValidationError(_text("INVALID_REDIRECT"))


class RegisterFormMixin:
    """The register button, and the fields to pass to ``create_user``."""

    submit = SubmitField(get_form_field_label("register"))

    def to_dict(self) -> dict[str, Any]:
        """The form's fields that are also attributes of the user model."""
        user_model = _state().datastore.user_model
        return {
            name: field.data
            for name, field in self._fields.items()
            if isinstance(field, Field) and hasattr(user_model, name)
        }


def _passes_as_unknown(form, key):
    """Whether a form about a known address that must not go on still passes: with
    generic responses it does, as an unknown address would (no error, nobody to send
    to); otherwise the address gets message ``key`` and the form fails."""
    if config_value("RETURN_GENERIC_RESPONSES"):
        form.user = None
        return True
    form.email.errors.append(_text(key))
    return False


class LoginForm(Form, NextFormMixin):
    """Log in with an identifier (email by default) and a password."""

    user = None
    email = StringField(get_form_field_label("email"), [email_required])
    password = PasswordField(get_form_field_label("password"), [password_required])
    remember = BooleanField(get_form_field_label("remember_me"))
    submit = SubmitField(get_form_field_label("login"))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.next.data:
            self.next.data = request.args.get("next", "")
        if not self.is_submitted():
            self.remember.data = config_value("DEFAULT_REMEMBER_ME")

    def validate(self, extra_validators: Any = None) -> bool:
        if not super().validate(extra_validators):
            return False
        self.user, reason = _verify_login(self.email.data, self.password.data)
        if reason is None:
            return True
        field, key = _LOGIN_REFUSALS[reason]
        if config_value("RETURN_GENERIC_RESPONSES") and reason in _HIDDEN_BY_GENERIC:
            field, key = "password", "GENERIC_AUTHN_FAILED"
        self[field].errors.append(_text(key))
        return False


class ConfirmRegisterForm(
    Form, RegisterFormMixin, UniqueEmailFormMixin, NewPasswordFormMixin
):
    """Register with an email and a password (used when confirmation is on)."""


class RegisterForm(ConfirmRegisterForm, PasswordConfirmFormMixin, NextFormMixin):
    """Register with an email, a password and the password again."""


class ResetPasswordForm(Form, NewPasswordFormMixin, PasswordConfirmFormMixin):
    """Choose a new password from a reset link."""

    submit = SubmitField(get_form_field_label("reset_password"))


def _password_again_refused(user, password):
    """Check ``user``'s password, asked again, as a login is checked (a wrong one
    counts toward the lockout and sends ``login_failed``, a locked account is
    refused): None when it is right, else the message key saying why not."""
    _, reason = _verify_login(user.email, password, user=user)
    if reason is None:
        return None
    return "ACCOUNT_LOCKED" if reason == "locked" else "INVALID_PASSWORD"


def _current_password_is_right(field):
    """Check the logged-in user's password in ``field``; the field says why not."""
    refused = _password_again_refused(current_user._get_current_object(), field.data)
    if refused is not None:
        field.errors.append(_text(refused))
    return refused is None


class ChangePasswordForm(Form, PasswordFormMixin):
    """Change the password of the logged-in user."""

    new_password = PasswordField(
        get_form_field_label("new_password"),
        [password_required, password_length, _password_not_guessable],
    )
    new_password_confirm = PasswordField(
        get_form_field_label("retype_new_password"),
        [_EqualTo("new_password", "RETYPE_PASSWORD_MISMATCH")],
    )
    submit = SubmitField(get_form_field_label("change_password"))

    def validate(self, extra_validators: Any = None) -> bool:
        if not super().validate(extra_validators):
            return False
        if not _current_password_is_right(self.password):
            return False
        if self.password.data == self.new_password.data:
            self.new_password.errors.append(_text("PASSWORD_IS_SAME"))
            return False
        return True


class SendConfirmationForm(Form, UserEmailFormMixin):
    """Ask for the confirmation email again."""

    submit = SubmitField(get_form_field_label("send_confirmation"))

    def validate(self, extra_validators: Any = None) -> bool:
        if not super().validate(extra_validators):
            return False
        if self.user is not None and self.user.confirmed_at is not None:
            return _passes_as_unknown(self, "ALREADY_CONFIRMED")
        return True


class ForgotPasswordForm(Form, UserEmailFormMixin):
    """Ask for password reset instructions; an account that must confirm its
    address first is told so, unless generic responses are on: then
    it is answered like an unknown address, and nothing is sent."""

    submit = SubmitField(get_form_field_label("recover_password"))

    def validate(self, extra_validators: Any = None) -> bool:
        if not super().validate(extra_validators):
            return False
        if self.user is None or not requires_confirmation(self.user):
            return True
        return _passes_as_unknown(self, "CONFIRMATION_REQUIRED")


class PasswordlessLoginForm(Form, UserEmailFormMixin):
    """Ask for a login link."""

    submit = SubmitField(get_form_field_label("send_login_link"))

    def validate(self, extra_validators: Any = None) -> bool:
        if not super().validate(extra_validators):
            return False
        if self.user is not None and not self.user.is_active:
            return _passes_as_unknown(self, "DISABLED_ACCOUNT")
        return True


# =============================================================================
# 8. Session login and logout
# =============================================================================


def _track_login(user):
    """Update the five trackable fields from this request (1.7.4's
    ``'untrackable'`` when the server gives no remote address)."""
    now, address = _now(), request.remote_addr or "untrackable"
    user.last_login_at = user.current_login_at or now
    user.current_login_at = now
    user.last_login_ip = user.current_login_ip or address
    user.current_login_ip = address
    user.login_count = (user.login_count or 0) + 1


def login_user(user: Any, remember: bool | None = None) -> bool:
    """Log ``user`` in: a fresh session (no fixation) whose lifetimes start now,
    tracking when enabled.

    :param remember: set the remember-me cookie (default:
        ``SECURITY_DEFAULT_REMEMBER_ME``).
    :returns: False if the user is inactive.
    """
    if remember is None:
        remember = config_value("DEFAULT_REMEMBER_ME")
    if not user.is_active:
        return False
    _new_session()
    flask_login.login_user(user, remember=remember)
    _start_session_clock()
    g.flask_security_auth_method = "session"
    _announce_identity(user)
    if config_value("TRACKABLE"):
        _track_login(user)
        _save(user)
    return True


def _new_session():
    """Start this client's session afresh (no fixation), with a new CSRF token: the
    one Flask-WTF keeps in ``g`` for this request was the old session's."""
    session.clear()
    g.pop(current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token"), None)


def logout_user() -> None:
    """Log the current user out: this session and remember cookie end and, when the
    user model has a ``security_stamp``, every other session, remember cookie and
    auth token of the user too, on every device: a copy of any of them would
    otherwise still work."""
    user = current_user._get_current_object()
    if user.is_authenticated:
        _end_sessions(user)
    _log_out_here()


def _log_out_here():
    """End this browser's session and remember cookie only (a login half done
    too); the user's other sessions and tokens stay."""
    current_user._get_current_object()  # who leaves, for user_logged_out
    _new_session()
    flask_login.logout_user()
    _announce_identity(None)


def _renew_stamp(user, renewed):
    """Write ``renewed(stamp)`` as ``user``'s security stamp: a compare-and-set,
    retried while other requests write it first (so that a login link sent at the
    same moment is not undone). False if the user model has no such field."""
    if not hasattr(user, "security_stamp"):
        return False
    for _ in range(_COUNT_RETRIES):
        seen = {"security_stamp": user.security_stamp}
        changes = {"security_stamp": renewed(_stamp_of(user))}
        if _state().datastore.compare_and_set(user, seen, changes):
            return True
    return False


def _end_sessions(user):
    """End every session, remember cookie, auth token and login link of ``user``,
    on every device; False if the user model has no ``security_stamp``."""
    return _renew_stamp(user, _stamp_with_new_sessions)


def _rebind_session(user):
    """Keep this session after the user's password or stamp changed (others stop
    working)."""
    if _auth_method() == "session":
        flask_login.login_user(user, remember=_has_remember_cookie())


def _has_remember_cookie():
    """The request carries a remember cookie."""
    name = current_app.config.get("REMEMBER_COOKIE_NAME", flask_login.COOKIE_NAME)
    return name in request.cookies


def _end_other_sessions(user):
    """End every session and token of ``user`` but this session."""
    _end_sessions(user)
    _rebind_session(user)


def _require_csrf():
    """Refuse a POST that carries no valid CSRF token (in the form or JSON body, or
    a header), for views that take no form; nothing when it has one, or CSRF is
    off."""
    config = current_app.config
    if not config.get("WTF_CSRF_ENABLED", True):
        return
    field = config.get("WTF_CSRF_FIELD_NAME", "csrf_token")
    headers = config.get("WTF_CSRF_HEADERS", _CSRF_HEADERS)
    body = _json_body() if request.is_json else request.form
    token = body.get(field) if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        token = next(filter(None, map(request.headers.get, headers)), None)
    try:
        validate_csrf(token, token_key=field)
    except ValidationError as error:
        raise _Refused(400, errors={field: [str(error)]}) from None


@_unless_freshly_logged_in
def login() -> ResponseReturnValue:
    """Log in with a password (HTML form or JSON)."""

    def act(form):
        if _needs_second_factor(form.user):
            return _second_factor_done(form.user, form.remember.data, form.next.data)
        login_user(form.user, remember=form.remember.data)
        next_url = _next_or_view(form.next.data, "POST_LOGIN_VIEW")
        return _Done(form.user, token=True, next_url=next_url)

    return _form_view("login", "login_form", act)


def _logout_asked_by_the_user():
    """True when only the user could have asked for this logout: an auth token in
    its header, a POST with the session's CSRF token (a 400 without it), a GET the
    browser says came from this site."""
    header = config_value("TOKEN_AUTHENTICATION_HEADER")
    if request.headers.get(header) and _authenticate_by_token():
        return True
    if request.method == "POST":
        if current_user.is_authenticated:
            _require_csrf()
        return current_user.is_authenticated
    return request.headers.get("Sec-Fetch-Site") in ("same-origin", "none")


def logout() -> ResponseReturnValue:
    """Log out and go to a safe ``next`` or ``POST_LOGOUT_VIEW``. A login half done
    (the password given, the code due) ends too.

    What ends everywhere (:func:`logout_user`) is what only the user can ask for:
    the user of an auth token sent in its header, a POST with the session's CSRF
    token, a GET the browser says came from this site (``Sec-Fetch-Site``). A GET
    from a link elsewhere (kept from 1.7.4, needing no token) ends only this
    browser's session, and a post that brought no session changes nothing: a page
    on another site must not end a user's every session and token."""
    if _logout_asked_by_the_user():
        logout_user()
    elif request.method == "GET" or session:  # a post without one leaves none
        _log_out_here()
    if _wants_json():
        return _json_answer(200, {})
    return redirect(_next_or_view(None, "POST_LOGOUT_VIEW"))


# -- the sessions page --------------------------------------------------------


#: What the sessions page can end: ``others`` keeps this session, ``all`` ends it.
_SESSION_ENDINGS = ("others", "all")


class SessionsForm(Form, PasswordFormMixin):
    """End the user's sessions, the password given again (a copied session must
    not shut its owner out): ``end`` is ``others`` (every other device) or ``all``
    (this one too)."""

    end = HiddenField()

    def validate_end(self, field: Field) -> None:
        """Refuse anything but the two choices."""
        if field.data not in _SESSION_ENDINGS:
            raise ValidationError('Expected "others" or "all".')

    def validate(self, extra_validators: Any = None) -> bool:
        if not super().validate(extra_validators):
            return False
        return _current_password_is_right(self.password)


def _this_session():
    """What the sessions page says of this session: when it started, when it ends
    at the latest, how long it may be idle, and whether a remember cookie will
    start another then."""
    started = session[_SESSION_STARTED_KEY]

    def utc(seconds):
        return datetime.fromtimestamp(seconds, timezone.utc).isoformat()

    return {
        "started_at": utc(started),
        "ends_at": utc(started + _lifetime("SESSION_ABSOLUTE_WITHIN")),
        "idle_within": config_value("SESSION_IDLE_WITHIN"),
        "remembered": _has_remember_cookie(),
    }


@auth_required("session")
@flask_login.fresh_login_required
def sessions() -> ResponseReturnValue:
    """Show this session, and end the user's other sessions or all of them: a
    login in this session (not one a remember cookie restored) and the CSRF token
    are needed. Other devices are not listed: their sessions are signed cookies
    the server keeps no list of, and they end together."""

    def act(form):
        user = current_user._get_current_object()
        if form.end.data == "all":
            logout_user()
            next_url = _redirect_target(None, "POST_LOGOUT_VIEW")
            return _Done(message=get_message("ALL_SESSIONS_ENDED"), next_url=next_url)
        _end_other_sessions(user)
        _log_event("other_sessions_ended", user)
        message = get_message("OTHER_SESSIONS_ENDED")
        return _Done(message=message, next_url=url_for_security("sessions"))

    if request.method == "GET" and _wants_json():
        response = {"session": _this_session()}
        if current_app.config.get("WTF_CSRF_ENABLED", True):
            response["csrf_token"] = _state().csrf_token()
        return _json_answer(200, response)
    return _form_view("sessions", "sessions_form", act, this_session=_this_session())


# =============================================================================
# 9. Mail and emailed links
# =============================================================================


#: Hosts that get links to themselves when the application declared none: the
#: developer's own machine (tests and debugging).
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def _request_host_declared():
    """True if a link built for this request goes where the application means."""
    config = current_app.config
    if config.get("SERVER_NAME"):
        return True  # Flask builds external URLs on it, whatever the request said
    if not has_request_context():
        return False
    try:
        parts = urlsplit("//" + request.host)
        hostname, port = parts.hostname, parts.port
    except ValueError:
        return False
    trusted = config.get("TRUSTED_HOSTS")
    if trusted:
        # Werkzeug's check ignores the port: a port the client chose is declared
        # only where TRUSTED_HOSTS names "host:port" itself (any port of the
        # developer's own machine will do).
        with_port = [name.lower() for name in trusted]
        chosen_port = port is not None and hostname not in _LOCAL_HOSTS
        if chosen_port and request.host.lower() not in with_port:
            return False
        return host_is_trusted(request.host, trusted)
    return hostname in _LOCAL_HOSTS


def _require_declared_host():
    """Refuse, with a 400 naming the settings, to email links for this request
    unless the application declared the host they point to."""
    if not config_value("LINK_BASE_URL") and not _request_host_declared():
        raise _Refused(400, "LINK_HOST_NOT_DECLARED")


def _link_url(view, **values):
    """The absolute URL of security view ``view`` for an email (see
    :func:`_mail_url_for`)."""
    endpoint = f"{config_value('BLUEPRINT_NAME')}.{view}"
    return _mail_url_for(endpoint, _external=True, **values)


def _mail_is_set_up(app=None):
    """Mail can go out: the app has Flask-Mail or a ``@security.send_mail_task``."""
    app = app or current_app
    security = app.extensions["security"].security
    return "mail" in app.extensions or security._send_mail_task is not None


def _require_mail():
    """Refuse (503), before anything is written, work that would send mail that
    cannot be sent."""
    if not _mail_is_set_up():
        raise _Refused(503, "MAIL_NOT_SET_UP")


def send_mail(subject: str, recipient: str, template: str, **context: Any) -> None:
    """Send ``security/email/<template>.txt`` and ``.html`` to ``recipient``.

    Delivered by ``@security.send_mail_task`` when one is registered, else by the
    Flask-Mail extension of the app.

    :param context: template values, merged over the mail context processors'.
    """
    from flask_mail import Message

    security = _state().security
    # As in 1.7.4, the processors of every template reach the emails too.
    values = {"url_for": _mail_url_for, "security": _state()}
    values.update(_template_values("mail"), **context)
    message = Message(
        subject, sender=config_value("EMAIL_SENDER"), recipients=[recipient]
    )
    message.body = render_template(f"security/email/{template}.txt", **values)
    message.html = render_template(f"security/email/{template}.html", **values)
    if security._send_mail_task is not None:
        security._send_mail_task(message)
        return
    mail = current_app.extensions.get("mail")
    if mail is None:
        raise RuntimeError(
            "flask-security-lite sends mail through Flask-Mail: call Mail(app), "
            "or register a function with @security.send_mail_task"
        )
    mail.send(message)


def _mail_user(user, subject_key, template, **context):
    """Send ``user`` the email ``template`` with the subject of ``subject_key``. A
    mail server that cannot be reached is logged, not raised: what the request did
    (an account made, a password changed) stands, and its answer says so."""
    subject = config_value(subject_key)
    try:
        send_mail(subject, user.email, template, user=user, **context)
    except OSError:  # a refused connection, or any of smtplib's errors
        _log.exception("the %s email to user %s could not be sent", template, user.id)


def _mail_url_for(endpoint, **values):
    """``url_for`` as emails (and their templates) see it: an external URL is built
    on the declared host (``SECURITY_LINK_BASE_URL``, ``SERVER_NAME``, a trusted
    host), never on the ``Host`` a request claimed."""
    if not values.pop("_external", False):
        return url_for(endpoint, **values)
    base = config_value("LINK_BASE_URL")
    if base:
        url = base.rstrip("/") + url_for(endpoint, **values)
    else:
        _require_declared_host()
        url = url_for(endpoint, _external=True, **values)
        server, subdomain = current_app.config.get("SERVER_NAME"), None
        if server and endpoint.startswith(config_value("BLUEPRINT_NAME") + "."):
            subdomain = config_value("SUBDOMAIN")
        host = f"{subdomain}.{server}" if subdomain else server or request.host
        base = "//" + host
    # The path comes from the request, a proxy's prefix (X-Forwarded-Prefix) among
    # it: the finished link must still be on the declared scheme, host and port.
    declared, built = urlsplit(base), urlsplit(url)
    if (
        built.netloc.lower() != declared.netloc.lower()
        or declared.scheme not in ("", built.scheme)
        or not built.path.startswith("/")
        or built.path.startswith("//")
    ):
        raise _Refused(400, "LINK_OFF_SITE")
    return url


def _send_after_response(send, user):
    """Run ``send(user)`` once this request's answer has gone out, in a copy of its
    context, so the answer takes the same time whether or not a mail is due."""
    user_id = user.id

    @copy_current_request_context
    def deliver():
        try:
            send(_state().datastore.get_user_by_id(user_id))
        except Exception:  # the answer is gone: nobody else can hear of it
            _log.exception("a security email could not be sent")

    @after_this_request
    def schedule(response):
        response.call_on_close(deliver)
        return response


# =============================================================================
# 10. Account flows
# =============================================================================
# Each flow with its views: registration, confirmation, recovery, change password,
# passwordless login.


# -- the shape of an emailed-link view ----------------------------------------


def _instructions_view(view, form_name, send, message_key, tell_id):
    """The three "email me a link" views: send to a known user, say so.

    :param tell_id: answer JSON with the user's id, unless generic
        responses must not reveal which addresses have accounts.
    """

    def act(form):
        _require_declared_host()
        generic = config_value("RETURN_GENERIC_RESPONSES")
        if form.user is not None and generic:
            _send_after_response(send, form.user)
        elif form.user is not None:
            send(form.user)
        named = form.user if tell_id and not generic else None
        return _Done(named, message=get_message(message_key, email=form.email.data))

    return _form_view(view, form_name, act)


class _EmailedLink(NamedTuple):
    """One kind of emailed link: its token kind, the messages for a link that is
    invalid (or used) and one that expired, how to send a fresh one, and where a
    refused visitor goes."""

    kind: str
    invalid: str
    expired: str
    resend: object
    retry_url: object


def _link_refusal(link, check, key=None, go_to=None):
    """The refusal of a link that did not pass (an expired one is sent again): a
    400 about its token, with message ``key`` (default: the invalid or the expired
    one), sending browsers to ``go_to`` or the link's retry page."""
    if check.status == "expired":
        _require_mail()
        link.resend(check.user)
    if key is None:
        key = link.expired if check.status == "expired" else link.invalid
    return _Refused(
        400,
        key,
        field="token",
        go_to=go_to or link.retry_url(),
        email=getattr(check.user, "email", ""),
        within=config_value(_TOKEN_KINDS[link.kind][1]),
    )


def _link_done(user, message_key, *view_keys):
    """A link did its work: JSON clients get the user's id, browsers the message
    and a safe ``next`` or the first configured view of ``view_keys``."""
    if _wants_json():
        return _json_answer(200, {"user": {"id": str(user.id)}})
    _flash_message(message_key)
    return redirect(_next_or_view(None, *view_keys))


# -- registration -------------------------------------------------------------


def register_user(**kwargs: Any) -> Any:
    """Create a user from registration fields, send the welcome email and signal.

    :returns: the new user.
    :raises DatastoreConflictError: the identifier was taken meanwhile.
    """
    if config_value("SEND_REGISTER_EMAIL"):
        _require_mail()
    if config_value("CONFIRMABLE"):
        _require_declared_host()
    kwargs["password"] = hash_password(kwargs["password"])
    user = _state().datastore.create_user(**kwargs)
    _state().datastore.commit()
    confirmation_link = token = None
    if config_value("CONFIRMABLE"):
        confirmation_link, token = generate_confirmation_link(user)
        _flash_message("CONFIRM_REGISTRATION", email=user.email)
    _send_signal(user_registered, user=user, confirm_token=token)
    if config_value("SEND_REGISTER_EMAIL"):
        link = confirmation_link
        _mail_user(user, "EMAIL_SUBJECT_REGISTER", "welcome", confirmation_link=link)
    return user


@anonymous_user_required
def register() -> ResponseReturnValue:
    """Create an account (HTML form or JSON)."""

    def act(form):
        fields = form.to_dict()
        try:
            user = register_user(**fields)
        except DatastoreConflictError:
            message = _text("EMAIL_ALREADY_ASSOCIATED", email=fields["email"])
            form.email.errors.append(message)
            return None
        next_field = getattr(form, "next", None)
        declared = getattr(next_field, "data", None)
        next_url = _next_or_view(declared, "POST_REGISTER_VIEW", "POST_LOGIN_VIEW")
        # Until the address is confirmed: no session, no second factor, no token.
        if requires_confirmation(user):
            return _Done(user, next_url=next_url)
        if _needs_second_factor(user):
            return _second_factor_done(user, False, declared)
        return _Done(user, token=login_user(user), next_url=next_url)

    # JSON clients, like confirmable apps, send the password once.
    confirming = config_value("CONFIRMABLE") or request.is_json
    form_name = "confirm_register_form" if confirming else "register_form"
    return _form_view("register", form_name, act)


# -- confirmation -------------------------------------------------------------


def generate_confirmation_token(user: Any) -> str:
    """Return a confirmation token, valid until the address is confirmed."""
    return _make_token("confirm", user)


def generate_confirmation_link(user: Any) -> tuple[str, str]:
    """Return ``(link, token)`` for confirming ``user``'s address."""
    token = generate_confirmation_token(user)
    return _link_url("confirm_email", token=token), token


def send_confirmation_instructions(user: Any) -> str:
    """Email ``user`` a confirmation link; return its token. The signal carries
    the user alone."""
    link, token = generate_confirmation_link(user)
    template = "confirmation_instructions"
    _mail_user(user, "EMAIL_SUBJECT_CONFIRM", template, confirmation_link=link)
    _send_signal(confirm_instructions_sent, user=user)
    return token


def confirm_user(user: Any) -> bool:
    """Mark ``user`` confirmed; False if they already were. A compare-and-set: of
    several requests confirming at once (one link opened twice), one succeeds."""
    if user.confirmed_at is not None:
        return False
    unconfirmed, confirmed = {"confirmed_at": None}, {"confirmed_at": _now()}
    if not _state().datastore.compare_and_set(user, unconfirmed, confirmed):
        return False
    _send_signal(user_confirmed, user=user)
    return True


def _confirm_retry_url():
    """A refused confirmation link goes to ``CONFIRM_ERROR_VIEW`` when set, else to
    the view that sends a new one."""
    error_view = config_value("CONFIRM_ERROR_VIEW")
    return get_url(error_view) if error_view else url_for_security("send_confirmation")


def send_confirmation() -> ResponseReturnValue:
    """Send the confirmation email again."""
    return _instructions_view(
        "send_confirmation",
        "send_confirmation_form",
        send_confirmation_instructions,
        "CONFIRMATION_REQUEST",
        tell_id=True,
    )


def confirm_email(token: str) -> ResponseReturnValue:
    """Confirm an address from an emailed link, and log its owner in."""
    check = _read_token(token, _CONFIRM_LINK.kind)
    already = check.status == "used" and check.user.confirmed_at is not None
    if check.status != "ok" and not already:
        raise _link_refusal(_CONFIRM_LINK, check)
    # Confirmed before, or just now by another request with the same link.
    if already or not confirm_user(check.user):
        done = _redirect_target(None, "POST_CONFIRM_VIEW", "POST_LOGIN_VIEW")
        raise _link_refusal(_CONFIRM_LINK, check, "ALREADY_CONFIRMED", done)
    if _needs_second_factor(check.user):
        return _second_factor_due(check.user, request.args.get("next"))
    login_user(check.user)
    return _link_done(
        check.user, "EMAIL_CONFIRMED", "POST_CONFIRM_VIEW", "POST_LOGIN_VIEW"
    )


# -- recovery -----------------------------------------------------------------


def generate_reset_password_token(user: Any) -> str:
    """Return a reset token, valid until the password changes."""
    return _make_token("reset", user)


def send_reset_password_instructions(user: Any) -> None:
    """Email ``user`` a password reset link."""
    token = generate_reset_password_token(user)
    link = _link_url("reset_password", token=token)
    _mail_user(
        user, "EMAIL_SUBJECT_PASSWORD_RESET", "reset_instructions", reset_link=link
    )
    _send_signal(reset_password_instructions_sent, user=user, token=token)


def send_password_reset_notice(user: Any) -> None:
    """Tell ``user`` their password was reset, if that email is on."""
    if config_value("SEND_PASSWORD_RESET_NOTICE_EMAIL"):
        _mail_user(user, "EMAIL_SUBJECT_PASSWORD_NOTICE", "reset_notice")


def update_password(user: Any, password: str) -> bool:
    """Set a new password from a reset link, notify and signal; a lockout ends (for
    a user without a second factor).

    A compare-and-set on the password the link was bound to: of two requests
    using one link at once, one succeeds.

    :returns: False if the password had changed since ``user`` was read.
    """
    changes = {"password": hash_password(password)}
    # The reset unlocks password login; a second factor's failed codes are not the
    # mailbox's to forgive: they run out by time or a right code.
    if config_value("LOCKOUT_ATTEMPTS") and not _has_second_factor(user):
        changes.update(failed_login_count=0, locked_until=None)
    if not _state().datastore.compare_and_set(
        user, {"password": user.password}, changes
    ):
        return False
    send_password_reset_notice(user)
    _send_signal(password_reset, user=user)
    return True


def forgot_password() -> ResponseReturnValue:
    """Send password reset instructions."""
    return _instructions_view(
        "forgot_password",
        "forgot_password_form",
        send_reset_password_instructions,
        "PASSWORD_RESET_REQUEST",
        tell_id=False,
    )


@anonymous_user_required
def reset_password(token: str) -> ResponseReturnValue:
    """Choose a new password from an emailed link; the link works once."""
    check = _read_token(token, _RESET_LINK.kind)
    if check.status != "ok":
        raise _link_refusal(_RESET_LINK, check)

    def act(form):
        if not update_password(check.user, form.password.data):
            # Another request used the link first.
            message = _text("INVALID_RESET_PASSWORD_TOKEN")
            form.password.errors.append(message)
            return None
        if _needs_second_factor(check.user):
            return _second_factor_done(check.user, False, None)
        login_user(check.user)
        next_url = _redirect_target(None, "POST_RESET_VIEW", "POST_LOGIN_VIEW")
        message = get_message("PASSWORD_RESET")
        return _Done(check.user, token=True, message=message, next_url=next_url)

    return _form_view(
        "reset_password", "reset_password_form", act, reset_password_token=token
    )


# -- change password ----------------------------------------------------------


def send_password_changed_notice(user: Any) -> None:
    """Tell ``user`` their password changed, if that email is on."""
    if config_value("SEND_PASSWORD_CHANGE_EMAIL"):
        _mail_user(user, "EMAIL_SUBJECT_PASSWORD_CHANGE_NOTICE", "change_notice")


def change_user_password(user: Any, password: str) -> None:
    """Set a new password, keep this session, notify and signal.

    Every other session, remember cookie and token of the user stops working.
    """
    if config_value("SEND_PASSWORD_CHANGE_EMAIL"):
        _require_declared_host()  # before the change: the notice may carry links
    user.password = hash_password(password)
    _save(user)
    _rebind_session(user)
    send_password_changed_notice(user)
    _send_signal(password_changed, user=user)


@auth_required("session", "token")
def change_password() -> ResponseReturnValue:
    """Change the password of the logged-in user."""

    def act(form):
        user = current_user._get_current_object()
        change_user_password(user, form.new_password.data)
        next_url = _redirect_target(None, "POST_CHANGE_VIEW", "POST_LOGIN_VIEW")
        message = get_message("PASSWORD_CHANGE")
        return _Done(user, token=True, message=message, next_url=next_url)

    csrf = _auth_method() != "token"
    return _form_view("change_password", "change_password_form", act, csrf)


# -- passwordless login -------------------------------------------------------


def generate_login_token(user: Any) -> str:
    """Return a passwordless login token: valid for ``SECURITY_LOGIN_WITHIN``, and,
    when the user model has a ``security_stamp``, once, and until a newer link is
    sent."""
    return _make_token("login", user)


def send_login_instructions(user: Any) -> None:
    """Email ``user`` a passwordless login link; the links sent before stop
    working."""
    _renew_stamp(user, _stamp_with_new_links)
    token = generate_login_token(user)
    link = _link_url("token_login", token=token)
    _mail_user(
        user, "EMAIL_SUBJECT_PASSWORDLESS", "login_instructions", login_link=link
    )
    _send_signal(login_instructions_sent, user=user, login_token=token)


def send_login() -> ResponseReturnValue:
    """Send a passwordless login link."""
    return _instructions_view(
        "send_login",
        "passwordless_login_form",
        send_login_instructions,
        "LOGIN_EMAIL_SENT",
        tell_id=True,
    )


def _use_login_link(user):
    """Use up the login link just checked for ``user`` (see
    :func:`generate_login_token`): a compare-and-set on the security stamp it was
    bound to, so that of two requests with one link, one logs in. True without the
    field: the link then works until it expires."""
    if not hasattr(user, "security_stamp"):
        return True
    stamp = user.security_stamp
    used = {"security_stamp": _stamp_with_new_links(_stamp_of(user))}
    return _state().datastore.compare_and_set(user, {"security_stamp": stamp}, used)


@anonymous_user_required
def token_login(token: str) -> ResponseReturnValue:
    """Log in from a passwordless login link, which works once."""
    check = _read_token(token, _LOGIN_LINK.kind)
    if check.user is not None and not check.user.is_active:
        check = _TokenCheck("invalid", check.user)
    if check.status == "ok" and not _use_login_link(check.user):
        check = _TokenCheck("used", check.user)
    if check.status != "ok":
        raise _link_refusal(_LOGIN_LINK, check)
    if _needs_second_factor(check.user):
        return _second_factor_due(check.user, None)
    login_user(check.user)
    return _link_done(check.user, "PASSWORDLESS_LOGIN_SUCCESSFUL", "POST_LOGIN_VIEW")


# -- the three kinds of emailed link ------------------------------------------


#: The three kinds of emailed link.
_CONFIRM_LINK = _EmailedLink(
    "confirm",
    "INVALID_CONFIRMATION_TOKEN",
    "CONFIRMATION_EXPIRED",
    send_confirmation_instructions,
    _confirm_retry_url,
)

_RESET_LINK = _EmailedLink(
    "reset",
    "INVALID_RESET_PASSWORD_TOKEN",
    "PASSWORD_RESET_EXPIRED",
    send_reset_password_instructions,
    partial(url_for_security, "forgot_password"),
)

_LOGIN_LINK = _EmailedLink(
    "login",
    "INVALID_LOGIN_TOKEN",
    "LOGIN_EXPIRED",
    send_login_instructions,
    partial(url_for_security, "login"),
)


# =============================================================================
# 11. Two-factor login
# =============================================================================
# A second factor after the password: a six-digit code from an authenticator app
# (TOTP, RFC 6238), or one of ten single-use recovery codes. Off unless
# SECURITY_TWO_FACTOR is set; when off, nothing below runs.


# -- codes --------------------------------------------------------------------


#: Seconds a code lasts (RFC 6238's time step).
_TOTP_PERIOD = 30

#: Digits of a code.
_TOTP_DIGITS = 6

#: Random bytes of a new key: 160 bits, as RFC 4226 recommends for HMAC-SHA-1.
_TOTP_KEY_BYTES = 20

#: How many recovery codes enrolment hands out.
_RECOVERY_CODE_COUNT = 10

#: Random bytes of a recovery code: 120 bits, past the 112 that ASVS 6.5.2 asks of
#: a code stored under a fast hash. Codes handed out before had 80 bits; they are
#: stored alike, and keep working until used or replaced.
_RECOVERY_CODE_BYTES = 15


def _hotp(key, counter, digits=_TOTP_DIGITS, digest=hashlib.sha1):
    """RFC 4226's one-time password for ``counter`` under the raw ``key``."""
    mac = hmac.new(key, struct.pack(">Q", counter), digest).digest()
    offset = mac[-1] & 0x0F
    number = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(number % 10**digits).zfill(digits)


def _new_totp_key():
    """A fresh key in base32, the form authenticator apps take."""
    return base64.b32encode(secrets.token_bytes(_TOTP_KEY_BYTES)).decode("ascii")


def _decode_totp_key(key):
    """The raw bytes of a base32 key, forgiving spaces, case and missing padding."""
    cleaned = "".join(key.split()).upper().rstrip("=")
    try:
        return base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except ValueError:
        raise ValueError("tf_totp_secret does not hold a base32 key") from None


def totp_code(key: str, at: float | None = None) -> str:
    """Return the six-digit code an authenticator app shows for ``key``.

    :param key: the base32 key (as enrolment shows it, or ``tf_totp_secret``).
    :param at: a Unix time (default: now); for tests and support tools.
    """
    step = int((time.time() if at is None else at) // _TOTP_PERIOD)
    return _hotp(_decode_totp_key(key.partition(":")[0]), step)


def _accept_totp(stored, code, at=None):
    """Check ``code`` against ``tf_totp_secret``; return the value to store back
    (the key and the step the code belongs to), or None if it is wrong or used.

    The column holds the base32 key, then ``:<step>`` once a code was accepted:
    keeping the step beside the key refuses a replayed code with no extra column.
    A code of up to ``SECURITY_TWO_FACTOR_DRIFT_STEPS`` earlier steps is accepted
    too (clock drift), but never one of a later step, nor one of a step at or
    before the last one accepted.
    """
    if not isinstance(code, str):
        return None
    code = "".join(code.split())
    if len(code) != _TOTP_DIGITS or not code.isascii() or not code.isdigit():
        return None
    key, _, last = stored.partition(":")
    last_step = int(last) if last.isdigit() else -1
    try:
        raw_key = _decode_totp_key(key)
    except ValueError:
        _log.error("a tf_totp_secret is not a base32 key: no code can match it")
        return None
    now = int((time.time() if at is None else at) // _TOTP_PERIOD)
    for step in range(now - config_value("TWO_FACTOR_DRIFT_STEPS"), now + 1):
        if step > last_step and hmac.compare_digest(_hotp(raw_key, step), code):
            return f"{key}:{step}"
    return None


def _totp_uri(key, account, issuer):
    """The ``otpauth://`` URI an authenticator app reads from a QR code."""
    label = quote(f"{issuer}:{account}", safe=":@")
    query = urlencode(
        {
            "secret": key,
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": _TOTP_DIGITS,
            "period": _TOTP_PERIOD,
        },
        quote_via=quote,
    )
    return f"otpauth://totp/{label}?{query}"


def _qr_svg(uri):
    """The URI as an inline SVG QR code, or None when segno is not installed."""
    try:
        import segno
    except ImportError:
        return None
    title = "QR code for your authenticator app"
    return segno.make(uri, error="m").svg_inline(scale=5, title=title)


def _key_in_groups(key):
    """The key in groups of four characters, easier to type in by hand."""
    return " ".join(key[start : start + 4] for start in range(0, len(key), 4))


def _new_recovery_codes():
    """Ten random codes of 120 bits, shown in six groups of four letters and digits
    (``abcd-efgh-ijkl-mnop-qrst-uvwx``)."""
    codes = []
    for _ in range(_RECOVERY_CODE_COUNT):
        raw = secrets.token_bytes(_RECOVERY_CODE_BYTES)
        text = base64.b32encode(raw).decode("ascii").lower()
        codes.append("-".join(text[start : start + 4] for start in range(0, 24, 4)))
    return codes


def _recovery_code_hash(code):
    """The stored form of a recovery code.

    A fast hash is enough: the codes are 120 random bits, too many to guess even
    offline, unlike passwords people choose. The 80-bit codes of earlier versions
    are hashed alike, so those already handed out still work.
    """
    normal = "".join(code.split()).replace("-", "").lower()
    digest = hashlib.sha256(normal.encode("utf-8")).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def _stored_recovery_codes(codes):
    """What ``tf_recovery_codes`` holds for ``codes``: their hashes, space-separated."""
    return " ".join(_recovery_code_hash(code) for code in codes)


def _use_recovery_code(stored, code):
    """Return ``tf_recovery_codes`` without ``code``, or None if it is not there."""
    if not isinstance(code, str) or not _storable(code) or not stored:
        return None
    wanted = _recovery_code_hash(code)
    hashes = stored.split()
    matches = [hmac.compare_digest(wanted, candidate) for candidate in hashes]
    if not any(matches):
        return None
    hashes.pop(matches.index(True))
    return " ".join(hashes)


# -- forms --------------------------------------------------------------------


class TwoFactorCodeForm(Form):
    """A six-digit code from an authenticator app."""

    code = StringField(
        get_form_field_label("tf_code"), [_Required("TF_CODE_NOT_PROVIDED")]
    )
    submit = SubmitField(get_form_field_label("tf_verify"))


class TwoFactorRescueForm(Form):
    """One of the recovery codes handed out at enrolment."""

    code = StringField(
        get_form_field_label("tf_recovery_code"), [_Required("TF_CODE_NOT_PROVIDED")]
    )
    submit = SubmitField(get_form_field_label("tf_rescue"))


class TwoFactorPasswordForm(Form, PasswordFormMixin):
    """The current password, asked again before two-factor settings change."""

    submit = SubmitField(get_form_field_label("tf_continue"))

    def validate(self, extra_validators: Any = None) -> bool:
        if not super().validate(extra_validators):
            return False
        return _current_password_is_right(self.password)


def _check_code(user, field, methods):
    """Check the code in ``field`` as the code step of a login does: counted toward
    the lockout before it is checked, and used up when right. The one of
    ``methods`` (keys of ``_CODE_CHECKS``) that took it, or None, the field then
    saying why."""
    lockout = config_value("LOCKOUT_ATTEMPTS")
    if lockout and not _reserve_attempt(user):
        field.errors.append(_text("ACCOUNT_LOCKED"))
        return None
    method = next((m for m in methods if _use_code(user, m, field.data)), None)
    if method is None:
        _login_failed(user, user.email, "invalid_code")
        field.errors.append(_text("TF_INVALID_CODE"))
    elif lockout:
        _clear_wrong_passwords(user)
    return method


def _current_code_is_right(field):
    """Check a code of the logged-in user's second factor as a login would: an
    authenticator code or a recovery code will do (the phone may be lost)."""
    user = current_user._get_current_object()
    return _check_code(user, field, _CODE_CHECKS) is not None


class TwoFactorDisableForm(TwoFactorPasswordForm):
    """The current password and a current code, asked before two-factor login is
    turned off: a stolen session, or a password alone, must not turn it off."""

    code = StringField(
        get_form_field_label("tf_code"), [_Required("TF_CODE_NOT_PROVIDED")]
    )

    def validate(self, extra_validators: Any = None) -> bool:
        if not super().validate(extra_validators):
            return False
        return _current_code_is_right(self.code)


# -- the second step of a login -----------------------------------------------


#: Session key of the marker "password verified for this user, code still due".
_TF_PENDING_KEY = "_security_tf_pending"

#: Session key of a key being set up, until a first code confirms it.
_TF_NEW_KEY = "_security_tf_new_key"


def _pending_user():
    """The active, confirmed user who passed the first step in this session lately,
    or None."""
    pending = session.get(_TF_PENDING_KEY)
    if not isinstance(pending, dict):
        return None
    check = _read_token(pending.get("token"), "two_factor")
    if check.status != "ok" or not check.user.is_active:
        return None
    return None if requires_confirmation(check.user) else check.user


def _complete_second_factor(user, method):
    """Log ``user`` in, with remember-me as asked at the first step; return the
    ``next`` given then.

    :param method: ``authenticator`` or ``recovery_code``, for the signal.
    """
    pending = session[_TF_PENDING_KEY]
    login_user(user, remember=pending["remember"])
    if method == "recovery_code":
        left = len(user.tf_recovery_codes.split())
        _flash_message("TF_RECOVERY_CODES_LEFT", count=left)
        send_two_factor_notice(user, "recovery_code_used")
    _send_signal(tf_code_confirmed, user=user, method=method)
    return pending["next"]


#: Each way through the code step: the user's field a code is used up from, and
#: the check giving that field's new value (None: the code is wrong or used).
_CODE_CHECKS = {
    "authenticator": ("tf_totp_secret", _accept_totp),
    "recovery_code": ("tf_recovery_codes", _use_recovery_code),
}


def _use_code(user, method, code):
    """Use ``code`` up, by ``method``; True if it was right. The field is written
    only if no other request changed it since it was read: of two requests with
    the same code, exactly one gets in."""
    field, check = _CODE_CHECKS[method]
    stored = getattr(user, field)
    new_value = check(stored, code)
    if new_value is None:
        return False
    datastore = _state().datastore
    return datastore.compare_and_set(user, {field: stored}, {field: new_value})


def send_two_factor_notice(user: Any, event: str) -> None:
    """Tell ``user`` that two-factor login changed on their account, if that email
    is on.

    :param event: ``enabled``, ``disabled`` or ``recovery_code_used``.
    """
    if config_value("SEND_TWO_FACTOR_NOTICE_EMAIL"):
        subject = "EMAIL_SUBJECT_TWO_FACTOR_NOTICE"
        _mail_user(user, subject, "two_factor_notice", event=event)


def _enrol(user, stored_secret):
    """Turn two-factor login on with a confirmed key; return new recovery codes."""
    codes = _new_recovery_codes()
    user.tf_totp_secret = stored_secret
    user.tf_recovery_codes = _stored_recovery_codes(codes)
    _save(user)
    _rebind_session(user)
    send_two_factor_notice(user, "enabled")
    _send_signal(tf_enrolled, user=user)
    return codes


def disable_two_factor(user: Any) -> None:
    """Turn two-factor login off for ``user``: key and recovery codes are deleted,
    and the user's other sessions and tokens end."""
    user.tf_totp_secret = None
    user.tf_recovery_codes = None
    _save(user)
    _rebind_session(user)
    send_two_factor_notice(user, "disabled")
    _send_signal(tf_disabled, user=user)


def reset_recovery_codes(user: Any) -> list[str]:
    """Replace ``user``'s recovery codes; return the new ones (shown once only).
    The user's other sessions and tokens end, as when the key changes (with a
    ``security_stamp`` on the user model)."""
    codes = _new_recovery_codes()
    user.tf_recovery_codes = _stored_recovery_codes(codes)
    _save(user)
    _log_event("recovery_codes_replaced", user)
    _end_other_sessions(user)
    return codes


# -- views --------------------------------------------------------------------


def _second_factor_done(user, remember, next_url):
    """A passed first step, as a form view's outcome: nobody is logged in yet, and
    the session notes who passed it (a signed marker bound to the password, so it
    expires after ``SECURITY_TWO_FACTOR_LOGIN_WITHIN`` and dies with a password
    change). Browsers go to the code page (or to set-up, for users without a key),
    JSON clients get ``tf_required`` and no token."""
    _new_session()
    session[_TF_PENDING_KEY] = {
        "token": _make_token("two_factor", user),
        "remember": bool(remember),
        "next": next_url or "",
    }
    has_key = _has_second_factor(user)
    return _Done(
        message=get_message("TF_REQUIRED" if has_key else "TF_SETUP_REQUIRED"),
        next_url=url_for_security("tf_validate" if has_key else "tf_setup"),
        json={"tf_required": True, "tf_setup_required": not has_key},
    )


def _second_factor_due(user, next_url):
    """The same for the emailed-link views, which log in without a form."""
    done = _second_factor_done(user, False, next_url)
    if _wants_json():
        return _json_answer(200, done.json)
    do_flash(*done.message)
    return redirect(done.next_url)


def _tf_code_view(view, form_name, method):
    """The code and the recovery-code steps of a login: a right code logs the
    user in, and the answer is the login's."""
    user = _pending_user()
    if user is None:
        # No password was verified lately in this session: back to the login page.
        login_page = url_for_security("login")
        raise _Refused(400, "TF_LOGIN_EXPIRED", field="code", go_to=login_page)
    if not _has_second_factor(user):
        return redirect(url_for_security("tf_setup"))

    def act(form):
        if _check_code(user, form.code, [method]) is None:
            return None
        next_url = _complete_second_factor(user, method)
        return _Done(
            user, token=True, next_url=_next_or_view(next_url, "POST_LOGIN_VIEW")
        )

    return _form_view(view, form_name, act)


def tf_validate() -> ResponseReturnValue:
    """The second step of a login: a code from the authenticator app."""
    return _tf_code_view("tf_validate", "tf_code_form", "authenticator")


def tf_rescue() -> ResponseReturnValue:
    """The second step of a login with a recovery code instead of the app."""
    return _tf_code_view("tf_rescue", "tf_rescue_form", "recovery_code")


def _issuer():
    """The name authenticator apps show beside the account."""
    return config_value("TWO_FACTOR_ISSUER") or urlsplit("//" + request.host).hostname


def _tf_show_key(user, key, form):
    """The set-up page with the key as a QR code and in groups of four."""
    uri = _totp_uri(key, user.email, _issuer())
    if _wants_json():
        if form.errors:
            raise _Refused(400, errors=form.errors)
        return _json_answer(200, {"tf_key": key, "tf_uri": uri})
    return _render(
        "tf_setup",
        tf_key=key,
        tf_key_groups=_key_in_groups(key),
        tf_qr_svg=_qr_svg(uri),
        tf_code_form=form,
    )


def _tf_show_codes(codes, continue_url, user=None):
    """New recovery codes, shown this once; a JSON login answer too for ``user``."""
    if _wants_json():
        response = {"recovery_codes": codes}
        if user is not None:
            token = user.get_auth_token()
            response["user"] = {"id": str(user.id), "authentication_token": token}
        return _json_answer(200, response)
    return _render("tf_recovery_codes", recovery_codes=codes, continue_url=continue_url)


def _tf_confirm_key(user, key, pending):
    """Check the first code of a key being set up; a right one turns it on (and
    completes the login of a user sent here by ``TWO_FACTOR_REQUIRED``)."""
    form = _build_form("tf_code_form")
    if not form.validate_on_submit():
        return _tf_show_key(user, key, form)
    stored = _accept_totp(key, form.code.data)
    if stored is None:
        form.code.errors.append(_text("TF_INVALID_CODE"))
        return _tf_show_key(user, key, form)
    codes = _enrol(user, stored)
    session.pop(_TF_NEW_KEY, None)
    logged_in, continue_url = None, url_for_security("tf_setup")
    if pending is not None:  # the login TWO_FACTOR_REQUIRED sent here ends now
        next_url = _complete_second_factor(user, "authenticator")
        logged_in, continue_url = user, _next_or_view(next_url, "POST_LOGIN_VIEW")
    _flash_message("TF_ENABLED")  # after the login, which starts a new session
    return _tf_show_codes(codes, continue_url, logged_in)


def _tf_new_key(form):
    """The password was right: choose a key, and show it (browsers by a redirect,
    so a reload does not post the password again)."""
    key = session[_TF_NEW_KEY] = _new_totp_key()
    uri = _totp_uri(key, current_user.email, _issuer())
    setup_url = url_for_security("tf_setup")
    return _Done(next_url=setup_url, json={"tf_key": key, "tf_uri": uri})


def tf_setup() -> ResponseReturnValue:
    """Set up two-factor login: the password again, then the key, then one code.

    A user sent here at login by ``SECURITY_TWO_FACTOR_REQUIRED`` gave the password
    a moment ago, and is logged in once the code is right.
    """
    logged_in = _authenticate_by_session()
    pending = None if logged_in else _pending_user()
    if pending is None and not logged_in:
        return _refuse_login()
    user = pending or current_user._get_current_object()
    if _has_second_factor(user):
        if pending is not None:
            return redirect(url_for_security("tf_validate"))
        if _wants_json():
            return _json_answer(200, {"tf_enabled": True})
        return _render("tf_setup", tf_enabled=True)
    key = session.get(_TF_NEW_KEY)
    if key is not None and request.method == "POST":
        return _tf_confirm_key(user, key, pending)
    if key is None and pending is not None:
        key = session[_TF_NEW_KEY] = _new_totp_key()
    if key is not None:
        return _tf_show_key(user, key, _state().forms["tf_code_form"](formdata=None))
    return _form_view("tf_setup", "tf_password_form", _tf_new_key)


@auth_required("session")
def tf_disable() -> ResponseReturnValue:
    """Turn two-factor login off, after the password and a code again."""
    if not _has_second_factor(current_user):
        return redirect(url_for_security("tf_setup"))

    def act(form):
        disable_two_factor(current_user._get_current_object())
        message = get_message("TF_DISABLED")
        return _Done(message=message, next_url=url_for_security("tf_setup"))

    return _form_view("tf_disable", "tf_disable_form", act)


@auth_required("session")
def tf_recovery_codes() -> ResponseReturnValue:
    """Replace the recovery codes, after the password again; show the new ones."""
    user = current_user._get_current_object()
    if not _has_second_factor(user):
        return redirect(url_for_security("tf_setup"))
    form = _build_form("tf_password_form")
    if form.validate_on_submit():
        codes = reset_recovery_codes(user)
        return _tf_show_codes(codes, url_for_security("tf_setup"))
    if _wants_json():
        return _form_json(form, None)
    return _render("tf_recovery_codes", tf_password_form=form)


# =============================================================================
# 12. Passkeys
# =============================================================================
# Sign in with a passkey (a WebAuthn discoverable credential: no address typed),
# and a page to add, rename and delete them. Off unless SECURITY_PASSKEYS is set;
# when off, nothing below runs and py_webauthn is never imported. py_webauthn checks
# each ceremony; this section keeps the challenges, the stored passkeys and the
# rules of a login. The passkey model is the app's, given to the datastore as
# ``passkey_model=``; the user model gains a random ``passkey_handle``.


#: Session key of the challenge under way: its purpose, its bytes and its time.
_PASSKEY_CHALLENGE_KEY = "_security_passkey_challenge"

#: Longest name of a passkey.
_PASSKEY_LABEL_LENGTH = 64

#: The transports a passkey may report, as WebAuthn names them.
_PASSKEY_TRANSPORTS = ("usb", "nfc", "ble", "internal", "hybrid", "cable", "smart-card")

#: The name offered for a new passkey, by the AAGUID of the passkey provider that
#: made it (the providers most people use); others are offered "Passkey".
_PASSKEY_PROVIDERS = {
    "fbfc3007-154e-4ecc-8c0b-6e020557d7bd": "iCloud Keychain",
    "ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4": "Google Password Manager",
    "adce0002-35bc-c60a-648b-0b25f1f05503": "Chrome on Mac",
    "08987058-cadc-4b81-b6e1-30de50dcbe96": "Windows Hello",
    "9ddd1817-af5a-4672-a2b9-3e3dd95000a9": "Windows Hello",
    "6028b017-b1d4-4c02-b4b3-afcdafc96bb2": "Windows Hello",
    "bada5566-a7aa-401f-bd96-45619a55120d": "1Password",
    "d548826e-79b4-db40-a3d8-11116f7e8349": "Bitwarden",
    "53414d53-554e-4700-0000-000000000000": "Samsung Pass",
}

#: A passkey was added; kwargs ``user`` and ``passkey``.
passkey_registered = _signals.signal("passkey-registered")

#: A passkey was deleted (on the passkeys page or by ``flask users passkeys``);
#: kwargs ``user`` and ``passkey``.
passkey_deleted = _signals.signal("passkey-deleted")


def _webauthn(module="webauthn"):
    """py_webauthn, or one of its modules, imported on first use."""
    return _require(module, "webauthn", "passkeys")


def _is_ip_address(host):
    """True for an IPv4 or IPv6 address: no domain name is only digits and dots."""
    return ":" in host or host.replace(".", "").isdigit()


# -- the relying party and its challenges -------------------------------------


def _passkey_origin():
    """The origin a ceremony must come from: the scheme and host emailed links are
    built on (``SECURITY_LINK_BASE_URL``, ``SERVER_NAME``, a trusted host), never
    the ``Host`` a request claimed; a 400 naming the settings when none is."""
    parts = urlsplit(_link_url("login"))
    return f"{parts.scheme}://{parts.netloc}"


def _passkey_rp_id(origin):
    """The relying party's id: ``SECURITY_PASSKEYS_RP_ID``, else the origin's host.
    Browsers take a domain name only (``localhost`` too), never an IP address."""
    rp_id = config_value("PASSKEYS_RP_ID") or urlsplit(origin).hostname
    if _is_ip_address(rp_id):
        raise _Refused(400, "PASSKEY_NEEDS_DOMAIN", host=rp_id)
    return rp_id


def _verification_required():
    return config_value("PASSKEYS_USER_VERIFICATION") == "required"


def _ceremony_milliseconds():
    return int(get_within_delta("PASSKEYS_CHALLENGE_WITHIN").total_seconds() * 1000)


def _new_challenge(purpose):
    """A random challenge for ``purpose`` (``register`` or ``login``), kept in this
    session with the time it was made. A session holds one: a new one replaces it."""
    challenge = secrets.token_bytes(32)
    kept = {"purpose": purpose, "challenge": challenge, "at": time.time()}
    session[_PASSKEY_CHALLENGE_KEY] = kept
    return challenge


def _take_challenge(purpose):
    """The session's challenge for ``purpose`` and the time it was made. It leaves
    the session, so it serves once, right or wrong; a 400 when it is missing, of
    another purpose, or older than ``SECURITY_PASSKEYS_CHALLENGE_WITHIN``."""
    kept = session.pop(_PASSKEY_CHALLENGE_KEY, None)
    within = get_within_delta("PASSKEYS_CHALLENGE_WITHIN").total_seconds()
    if (
        not isinstance(kept, dict)
        or kept.get("purpose") != purpose
        or not time.time() - kept["at"] <= within
    ):
        raise _Refused(400, "PASSKEY_CHALLENGE_EXPIRED", field="credential")
    issued = datetime.fromtimestamp(kept["at"], timezone.utc).replace(tzinfo=None)
    return kept["challenge"], issued


def _ceremony_failed(what, error, user=None):
    """Log why py_webauthn refused a ceremony (a wrong origin, a sign count going
    back), and answer with one message that tells an attacker nothing."""
    who = f"user {user.id}" if user is not None else "no known user"
    _log.warning("a passkey %s was refused (%s): %r", what, who, str(error))
    return _Refused(400, "PASSKEY_INVALID", field="credential")


#: What a malformed answer raises (bad base64 and UTF-8 among the ValueErrors).
_MALFORMED = (ValueError, TypeError, LookupError, AttributeError, OverflowError)


def _ceremony_errors():
    """What py_webauthn raises on an answer it refuses or cannot read."""
    return (_webauthn("webauthn.helpers.exceptions").WebAuthnException, *_MALFORMED)


# -- the stored passkeys ------------------------------------------------------


def _passkeys_of(user):
    """The passkeys of ``user``, oldest first."""
    return _state().datastore._find_passkeys(user=user)


def _passkey_by_credential(credential):
    """The stored passkey a browser's answer names by its ``rawId``, or None."""
    try:
        raw_id = _webauthn().base64url_to_bytes(credential["rawId"])
    except _MALFORMED:
        return None
    found = _state().datastore._find_passkeys(credential_id=raw_id)
    return found[0] if found else None


def _user_handle(user):
    """The user's passkey handle, made at their first passkey: random, so it tells
    nothing about them, and written only while empty, so requests racing agree."""
    if not user.passkey_handle:
        handle = {"passkey_handle": secrets.token_urlsafe(32)}
        _state().datastore.compare_and_set(user, {"passkey_handle": None}, handle)
    return user.passkey_handle


def _passkey_as_json(passkey):
    used = passkey.last_used_at
    return {
        "id": str(passkey.id),
        "label": passkey.label,
        "created_at": passkey.created_at.isoformat(),
        "last_used_at": used.isoformat() if used else None,
        "backed_up": bool(passkey.backed_up),
        "transports": passkey.transports.split(",") if passkey.transports else [],
    }


def _send_passkey_notice(user, event, passkey):
    """Tell ``user`` a passkey was ``added`` or ``deleted``, if that email is on."""
    if config_value("SEND_PASSKEY_NOTICE_EMAIL"):
        subject = "EMAIL_SUBJECT_PASSKEY_NOTICE"
        _mail_user(user, subject, "passkey_notice", event=event, passkey=passkey)


def _delete_passkey(user, passkey):
    """Delete ``passkey`` of ``user``, notify and signal."""
    datastore = _state().datastore
    datastore.delete(passkey)
    datastore.commit()
    _send_passkey_notice(user, "deleted", passkey)
    _send_signal(passkey_deleted, user=user, passkey=passkey)


# -- adding one ---------------------------------------------------------------


def _registration_options(user):
    """What ``navigator.credentials.create`` needs to make a discoverable passkey
    for ``user``, as JSON; the user's passkeys are excluded, so none is made twice."""
    webauthn, structs = _webauthn(), _webauthn("webauthn.helpers.structs")
    rp_id = _passkey_rp_id(_passkey_origin())
    options = webauthn.generate_registration_options(
        rp_id=rp_id,
        rp_name=config_value("PASSKEYS_RP_NAME") or rp_id,
        user_id=_user_handle(user).encode("ascii"),
        user_name=user.email,
        challenge=_new_challenge("register"),
        timeout=_ceremony_milliseconds(),
        attestation=structs.AttestationConveyancePreference(
            config_value("PASSKEYS_ATTESTATION")
        ),
        authenticator_selection=structs.AuthenticatorSelectionCriteria(
            resident_key=structs.ResidentKeyRequirement.REQUIRED,
            user_verification=structs.UserVerificationRequirement(
                config_value("PASSKEYS_USER_VERIFICATION")
            ),
        ),
        exclude_credentials=[
            structs.PublicKeyCredentialDescriptor(id=passkey.credential_id)
            for passkey in _passkeys_of(user)
        ],
    )
    return webauthn.helpers.options_to_json_dict(options)


def _clean_label(label):
    """A passkey's name as typed, trimmed; a 400 when it is empty or too long."""
    label = label.strip() if isinstance(label, str) else ""
    # No control or format characters: a name must not rewrite a terminal's line
    # (flask users passkeys) or an email's.
    hidden = any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in label)
    if (
        not label
        or len(label) > _PASSKEY_LABEL_LENGTH
        or hidden
        or not _storable(label)
    ):
        page = url_for_security("passkeys")
        length = _PASSKEY_LABEL_LENGTH
        raise _Refused(
            400, "PASSKEY_LABEL_INVALID", field="label", go_to=page, length=length
        )
    return label


def _transports(credential):
    """The transports the browser reported for a new passkey, as stored."""
    reported = credential.get("response", {}).get("transports")
    reported = reported if isinstance(reported, list) else []
    return ",".join(sorted(set(_PASSKEY_TRANSPORTS).intersection(map(str, reported))))


def _register_passkey(user, credential, label):
    """Verify a new passkey of ``user`` against this session's challenge and store
    it, named ``label`` (or as its provider names itself); notify and signal."""
    challenge, _ = _take_challenge("register")
    origin = _passkey_origin()
    webauthn = _webauthn()
    try:
        verified = webauthn.verify_registration_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=_passkey_rp_id(origin),
            expected_origin=origin,
            require_user_verification=_verification_required(),
        )
    except _ceremony_errors() as error:
        raise _ceremony_failed("registration", error, user) from None
    datastore = _state().datastore
    if datastore._find_passkeys(credential_id=verified.credential_id):
        raise _Refused(400, "PASSKEY_ALREADY_REGISTERED", field="credential")
    passkey = datastore.passkey_model(
        user=user,
        credential_id=verified.credential_id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        transports=_transports(credential),
        label=_clean_label(label or _PASSKEY_PROVIDERS.get(verified.aaguid, "Passkey")),
        created_at=_now(),
        backup_eligible=verified.credential_device_type == "multi_device",
        backed_up=verified.credential_backed_up,
    )
    try:
        datastore.put(passkey)
        datastore.commit()
    except DatastoreConflictError:  # the same passkey, added at once elsewhere
        raise _Refused(400, "PASSKEY_ALREADY_REGISTERED", field="credential") from None
    _send_passkey_notice(user, "added", passkey)
    _send_signal(passkey_registered, user=user, passkey=passkey)
    return passkey


# -- signing in with one ------------------------------------------------------


def _login_options():
    """What ``navigator.credentials.get`` needs, as JSON: no credential is listed
    (the passkey names its user), so the options are alike for every visitor."""
    webauthn, structs = _webauthn(), _webauthn("webauthn.helpers.structs")
    options = webauthn.generate_authentication_options(
        rp_id=_passkey_rp_id(_passkey_origin()),
        challenge=_new_challenge("login"),
        timeout=_ceremony_milliseconds(),
        user_verification=structs.UserVerificationRequirement(
            config_value("PASSKEYS_USER_VERIFICATION")
        ),
    )
    return webauthn.helpers.options_to_json_dict(options)


def _passkey_owner(passkey, credential):
    """The user the answer's ``userHandle`` names, if ``passkey`` is theirs."""
    try:
        handle = _webauthn().base64url_to_bytes(credential["response"]["userHandle"])
        handle = handle.decode("ascii")
    except _MALFORMED:
        return None
    user = _state().datastore.find_user(passkey_handle=handle)
    owner = passkey.user if user is not None else None
    return user if owner is not None and str(owner.id) == str(user.id) else None


def _is_locked(user):
    """True while too many wrong passwords or codes keep ``user`` locked."""
    until = getattr(user, "locked_until", None) or datetime.min
    return bool(config_value("LOCKOUT_ATTEMPTS")) and until > _now()


def _use_passkey(passkey, verified, issued):
    """Record a sign-in by ``passkey``: its new count and time, written only if no
    sign-in used it since the challenge was made, so an answer serves once, even
    replayed with an old session cookie or twice at once. True if written."""
    last_used = passkey.last_used_at
    if last_used is not None and last_used >= issued:
        return False
    changes = {
        "sign_count": verified.new_sign_count,
        "last_used_at": _now(),
        "backed_up": verified.credential_backed_up,
    }
    datastore = _state().datastore
    return datastore._update_passkey(passkey, {"last_used_at": last_used}, changes)


def _verify_passkey_login(credential):
    """Check a browser's answer to this session's login challenge; return the user
    and whether the device verified them. A refusal for every failure: an unknown
    passkey, a bad signature, a wrong origin or RP id, a sign count going back, a
    user who may not log in, a replay."""
    challenge, issued = _take_challenge("login")
    passkey = _passkey_by_credential(credential)
    user = None if passkey is None else _passkey_owner(passkey, credential)
    if user is None:
        _login_failed(None, "", "invalid_passkey")
        raise _ceremony_failed("sign-in", "no passkey of this site")
    origin = _passkey_origin()
    try:
        verified = _webauthn().verify_authentication_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=_passkey_rp_id(origin),
            expected_origin=origin,
            credential_public_key=passkey.public_key,
            credential_current_sign_count=passkey.sign_count,
            require_user_verification=_verification_required(),
        )
    except _ceremony_errors() as error:
        _login_failed(user, user.email, "invalid_passkey")
        raise _ceremony_failed("sign-in", error, user) from None
    # Used up first: an answer refused for the account's state stays spent.
    if not _use_passkey(passkey, verified, issued):
        raise _Refused(400, "PASSKEY_CHALLENGE_EXPIRED", field="credential")
    for reason, refused in (
        ("disabled", not user.is_active),
        ("unconfirmed", requires_confirmation(user)),
        ("locked", _is_locked(user)),
    ):
        if refused:
            _login_failed(user, user.email, reason)
            raise _Refused(400, _LOGIN_REFUSALS[reason][1], field="credential")
    return user, verified.user_verified


# -- views --------------------------------------------------------------------


def _posted():
    """The body of a post, JSON or form, as a dict."""
    if not request.is_json:
        return request.form.to_dict()
    body = _json_body()
    if not isinstance(body, dict):
        raise _Refused(400, errors={"json": ["The body must be a JSON object."]})
    return body


def _posted_credential():
    credential = _posted().get("credential")
    if not isinstance(credential, dict):
        raise _Refused(
            400, errors={"credential": ["Expected the browser's credential."]}
        )
    return credential


def _passkey_done(message, next_url, **response):
    """A passkey view did its work: browsers (and the script) see the message on
    the next page; the JSON answer names that page."""
    if message is not None:
        do_flash(*message)
    if _wants_json():
        return _json_answer(200, {"next": next_url, **response})
    return redirect(next_url)


@flask_login.fresh_login_required
def _passkeys():
    """The user's passkeys, with forms to add, rename and delete them."""
    passkeys = _passkeys_of(current_user._get_current_object())
    if _wants_json():
        return _json_answer(200, {"passkeys": [_passkey_as_json(p) for p in passkeys]})
    template = config_value("PASSKEYS_TEMPLATE")
    values = {"security": _state(), **_template_values("passkeys")}
    return _state().render_template(
        template, **values, passkeys=passkeys, passkeys_csrf_token=generate_csrf()
    )


@flask_login.fresh_login_required
def _passkeys_register_options():
    """The options to make a passkey, as JSON, once the user's password is given
    again (as setting up two-factor asks it): a session stolen or left open must not
    plant a passkey, which would outlive a new password."""
    _require_csrf()
    user = current_user._get_current_object()
    if user.password:  # an account with passkeys alone has none to ask
        password = _posted().get("password")
        if not isinstance(password, str) or not password:
            raise _Refused(400, "PASSWORD_NOT_PROVIDED", field="password")
        refused = _password_again_refused(user, password)
        if refused is not None:
            raise _Refused(400, refused, field="password")
    return _json_answer(200, {"options": _registration_options(user)})


@flask_login.fresh_login_required
def _passkeys_register():
    """Add the passkey the browser made, named as typed (or by its provider)."""
    _require_csrf()
    user = current_user._get_current_object()
    passkey = _register_passkey(user, _posted_credential(), _posted().get("label"))
    message = get_message("PASSKEY_ADDED", label=passkey.label)
    page = url_for_security("passkeys")
    return _passkey_done(message, page, passkey=_passkey_as_json(passkey))


def _own_passkey(passkey_id):
    """The passkey ``passkey_id`` of the current user; a 404 for any other."""
    for passkey in _passkeys_of(current_user._get_current_object()):
        if str(passkey.id) == passkey_id:
            return passkey
    raise _Refused(404, "PASSKEY_NOT_FOUND", go_to=url_for_security("passkeys"))


@flask_login.fresh_login_required
def _passkeys_rename(passkey_id):
    """Rename a passkey of the user (HTML form or JSON)."""
    _require_csrf()
    passkey = _own_passkey(passkey_id)
    passkey.label = _clean_label(_posted().get("label"))
    _save(passkey)
    message = get_message("PASSKEY_RENAMED", label=passkey.label)
    page = url_for_security("passkeys")
    return _passkey_done(message, page, passkey=_passkey_as_json(passkey))


@flask_login.fresh_login_required
def _passkeys_delete(passkey_id):
    """Delete a passkey of the user, unless it is the only way into the account."""
    _require_csrf()
    user = current_user._get_current_object()
    passkey = _own_passkey(passkey_id)
    if not user.password and len(_passkeys_of(user)) == 1:
        raise _Refused(400, "PASSKEY_LAST_ONE", go_to=url_for_security("passkeys"))
    _delete_passkey(user, passkey)
    message = get_message("PASSKEY_DELETED", label=passkey.label)
    return _passkey_done(message, url_for_security("passkeys"))


def _passkeys_login_options():
    """The options to sign in with a passkey, as JSON: the same for every visitor."""
    _require_csrf()
    return _json_answer(200, {"options": _login_options()})


def _passkeys_login():
    """Sign in with a passkey's answer: a verified device is two factors; without
    verification a user with two-factor login still gives the code."""
    _require_csrf()
    body = _posted()
    user, verified = _verify_passkey_login(_posted_credential())
    remember = body.get("remember")
    if not isinstance(remember, bool):
        remember = config_value("DEFAULT_REMEMBER_ME")
    declared = body.get("next") if isinstance(body.get("next"), str) else None
    if _needs_second_factor(user) and not verified:
        done = _second_factor_done(user, remember, declared)
        return _passkey_done(done.message, done.next_url, **done.json)
    login_user(user, remember=remember)
    if config_value("LOCKOUT_ATTEMPTS"):
        _clear_wrong_passwords(user)
    token = user.get_auth_token()
    return _passkey_done(
        None,
        _next_or_view(declared, "POST_LOGIN_VIEW"),
        user={"id": str(user.id), "authentication_token": token},
        csrf_token=generate_csrf(),
    )


def _passkeys_script():
    """The passkey pages' script, served from here so a policy that allows only
    this site's scripts runs it."""
    script = render_template("security/passkeys.js")
    return current_app.response_class(script, mimetype="text/javascript")


def _add_passkey_views(bp, app):
    """The passkey views under ``SECURITY_PASSKEYS_URL``, when passkeys are on."""
    if not config_value("PASSKEYS", app=app):
        return
    url = config_value("PASSKEYS_URL", app=app)
    for path, view, method in (
        ("", _passkeys, "GET"),
        ("register-options", _passkeys_register_options, "POST"),
        ("register", _passkeys_register, "POST"),
        ("<passkey_id>/rename", _passkeys_rename, "POST"),
        ("<passkey_id>/delete", _passkeys_delete, "POST"),
        ("login-options", _passkeys_login_options, "POST"),
        ("login", _passkeys_login, "POST"),
        ("passkeys.js", _passkeys_script, "GET"),
    ):
        rule = slash_url_suffix(url, path) if path else url
        bp.add_url_rule(rule, view.__name__[1:], view, methods=[method])


# =============================================================================
# 13. The blueprint
# =============================================================================


def create_blueprint(app: Flask, import_name: str = __name__) -> Blueprint:
    """Build the security blueprint for ``app``'s config: only enabled views exist."""

    def setting(key):
        return config_value(key, app=app)

    bp = Blueprint(
        setting("BLUEPRINT_NAME"),
        import_name,
        url_prefix=setting("URL_PREFIX"),
        subdomain=setting("SUBDOMAIN"),
        template_folder=_templates_folder(),
    )
    post = ["GET", "POST"]
    login_url = setting("LOGIN_URL")
    if setting("PASSWORDLESS"):
        bp.add_url_rule(login_url, "login", send_login, methods=post)
        token_url = slash_url_suffix(login_url, "<token>")
        bp.add_url_rule(token_url, "token_login", token_login)
    else:
        bp.add_url_rule(login_url, "login", login, methods=post)
    bp.add_url_rule(
        setting("LOGOUT_URL"), "logout", logout, methods=setting("LOGOUT_METHODS")
    )
    if setting("REGISTERABLE"):
        bp.add_url_rule(setting("REGISTER_URL"), "register", register, methods=post)
    if setting("RECOVERABLE"):
        reset_url = setting("RESET_URL")
        bp.add_url_rule(reset_url, "forgot_password", forgot_password, methods=post)
        bp.add_url_rule(
            slash_url_suffix(reset_url, "<token>"),
            "reset_password",
            reset_password,
            methods=post,
        )
    if setting("CHANGEABLE"):
        change_url = setting("CHANGE_URL")
        bp.add_url_rule(change_url, "change_password", change_password, methods=post)
    if setting("CONFIRMABLE"):
        confirm_url = setting("CONFIRM_URL")
        bp.add_url_rule(
            confirm_url, "send_confirmation", send_confirmation, methods=post
        )
        bp.add_url_rule(
            slash_url_suffix(confirm_url, "<token>"), "confirm_email", confirm_email
        )
    if _can_end_sessions(app):
        bp.add_url_rule(setting("SESSIONS_URL"), "sessions", sessions, methods=post)
    if setting("TWO_FACTOR"):
        for name, view in (
            ("setup", tf_setup),
            ("validate", tf_validate),
            ("rescue", tf_rescue),
            ("disable", tf_disable),
            ("recovery_codes", tf_recovery_codes),
        ):
            url = setting(f"TWO_FACTOR_{name.upper()}_URL")
            bp.add_url_rule(url, f"tf_{name}", view, methods=post)
    _add_passkey_views(bp, app)
    bp.url_value_preprocessor(_limit_body)
    bp.after_request(_security_headers)
    bp.register_error_handler(RequestEntityTooLarge, _refuse_too_large)
    return bp


def _can_end_sessions(app):
    """True if the user model of ``app`` has a ``security_stamp`` field, which
    the sessions page needs."""
    datastore = getattr(app.extensions.get("security"), "datastore", None)
    return hasattr(getattr(datastore, "user_model", None), "security_stamp")


def _templates_folder():
    """Our templates, from the first of: ``flask_security_lite_templates/`` beside
    this file (a vendored copy), ``templates/`` beside it (a checkout), the
    installed package. A folder counts only when it holds every default page, so
    an app's own ``templates/security/`` with a few overrides is not taken for ours
    (Flask looks in the app's folder first: that is how its pages override ours).
    """
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("flask_security_lite_templates", "templates"):
        if _holds_our_templates(os.path.join(here, name)):
            return os.path.join(here, name)
    spec = importlib.util.find_spec("flask_security_lite_templates")
    for folder in spec.submodule_search_locations if spec else []:
        if _holds_our_templates(folder):
            return folder
    raise RuntimeError(
        "flask-security-lite cannot find its templates: install it with pip, or "
        "copy the 'templates' folder of the distribution to "
        f"{os.path.join(here, 'flask_security_lite_templates')}"
    )


def _holds_our_templates(folder):
    pages = [v for k, v in _default_config.items() if k.endswith("_TEMPLATE")]
    names = [*pages, "security/base.html", "security/email/welcome.txt"]
    return all(os.path.isfile(os.path.join(folder, name)) for name in names)


# =============================================================================
# 14. Command line
# =============================================================================


class _SecurityCommands(AppGroup):
    """A ``flask`` command group whose commands end with one line, not a
    traceback, when a write conflicts or the database has no tables yet."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DatastoreConflictError as error:  # no statement, no values shown
            raise click.ClickException(f"nothing was saved: {error}") from None
        except Exception as error:
            advice = _missing_table_advice(error)
            if advice is None:
                raise
            raise click.ClickException(advice) from None


_users_cli = _SecurityCommands(
    "users",
    help="Create, activate, deactivate, unlock and log out users, and turn their "
    "two-factor login off.",
)

_roles_cli = _SecurityCommands("roles", help="Create roles and give them to users.")


def _cli_user(email):
    user = _state().datastore.find_user(email=email)
    if user is None:
        raise click.ClickException(f"no user has the email {email}")
    return user


def _cli_role(name):
    role = _state().datastore.find_role(name)
    if role is None:
        raise click.ClickException(f"no role is named {name}")
    return role


def _cli_validate(value, param_hint, *validators):
    """Run the forms' own ``validators`` on a command-line value; the first one
    that fails is the command's error."""
    field = types.SimpleNamespace(data=value)
    for validator in validators:
        try:
            validator(None, field)
        except ValidationError as error:
            raise click.BadParameter(str(error), param_hint=param_hint) from None


def _cli_commit(message):
    _state().datastore.commit()
    click.echo(message)


@_users_cli.command("create")
@click.argument("email")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--active/--inactive", default=True, help="Whether the user can log in.")
@click.option(
    "--confirmed",
    is_flag=True,
    help="Mark the email address confirmed, so the user of a CONFIRMABLE app can "
    "log in without the emailed link.",
)
def _users_create(email, password, active, confirmed):
    """Create a user with EMAIL."""
    _cli_validate(email, "EMAIL", email_validator)
    _cli_validate(password, "--password", password_length)
    refused = _guessable(password, email)
    if refused is not None:
        raise click.BadParameter(_text(refused), param_hint="--password")
    if _state().datastore.find_user(email=email) is not None:
        raise click.ClickException(_text("EMAIL_ALREADY_ASSOCIATED", email=email))
    fields = {"email": email, "password": password, "active": active}
    if confirmed:
        if not hasattr(_state().datastore.user_model, "confirmed_at"):
            raise click.UsageError("--confirmed needs a confirmed_at field on the user")
        fields["confirmed_at"] = _now()
    user = _state().datastore.create_user(**fields)
    if config_value("CONFIRMABLE") and not confirmed:
        click.echo(
            f"{user.email} must confirm the address before logging in (--confirmed)"
        )
    _cli_commit(f"created user {user.email}")


@_users_cli.command("activate")
@click.argument("email")
def _users_activate(email):
    """Let the user with EMAIL log in again."""
    user = _cli_user(email)
    changed = _state().datastore.activate_user(user)
    done = "activated {}" if changed else "{} was already active"
    _cli_commit(done.format(user.email))
    if changed:
        _log_event("user_activated", user)


@_users_cli.command("deactivate")
@click.argument("email")
def _users_deactivate(email):
    """Stop the user with EMAIL from logging in (sessions and tokens too)."""
    user = _cli_user(email)
    changed = _state().datastore.deactivate_user(user)
    done = "deactivated {}" if changed else "{} was already inactive"
    _cli_commit(done.format(user.email))
    if changed:
        _log_event("user_deactivated", user)


@_users_cli.command("logout")
@click.argument("email")
def _users_logout(email):
    """End every session, remember cookie and auth token of the user with EMAIL."""
    if not hasattr(_state().datastore.user_model, "security_stamp"):
        raise click.ClickException(
            "the user model has no security_stamp field, so sessions cannot be "
            "ended before they expire: add it (README.md, 'Sessions')"
        )
    user = _cli_user(email)
    _end_sessions(user)
    _log_event("sessions_ended", user)
    click.echo(f"logged {user.email} out everywhere")


@_users_cli.command("unlock")
@click.argument("email")
def _users_unlock(email):
    """End the lockout of the user with EMAIL after too many wrong passwords."""
    user = _cli_user(email)
    missing = [n for n in _USER_FIELDS["LOCKOUT_ATTEMPTS"] if not hasattr(user, n)]
    if missing:
        raise click.ClickException(
            f"the user model has no {', '.join(missing)}: the lockout "
            "(SECURITY_LOCKOUT_ATTEMPTS) needs them "
            "(README.md, 'The fields each feature needs')"
        )
    _clear_wrong_passwords(user)
    _log_event("user_unlocked", user)
    click.echo(f"unlocked {user.email}")


@_users_cli.command("tf-reset")
@click.argument("email")
def _users_tf_reset(email):
    """Turn two-factor login off for the user with EMAIL (lost phone and codes)."""
    if not hasattr(_state().datastore.user_model, "tf_totp_secret"):
        raise click.ClickException(
            "the user model has no two-factor fields: SECURITY_TWO_FACTOR needs "
            "them (README.md, 'The fields each feature needs')"
        )
    user = _cli_user(email)
    if not _has_second_factor(user):
        raise click.ClickException(f"{email} has no two-factor login to reset")
    disable_two_factor(user)
    click.echo(f"turned two-factor login off for {user.email}")


@_users_cli.command("passkeys")
@click.argument("email")
@click.option("--remove", metavar="ID", help="Delete the passkey with this ID.")
def _users_passkeys(email, remove):
    """List the passkeys of the user with EMAIL (ID, name, added, last used), or
    delete one (a lost device) with --remove ID."""
    if not config_value("PASSKEYS"):
        raise click.ClickException("passkeys are off: set SECURITY_PASSKEYS = True")
    user = _cli_user(email)
    passkeys = _passkeys_of(user)
    if remove is None:
        for passkey in passkeys:
            used = passkey.last_used_at
            click.echo(
                f"{passkey.id}  {passkey.label}  added {passkey.created_at:%Y-%m-%d}  "
                f"last used {f'{used:%Y-%m-%d}' if used else 'never'}"
            )
        if not passkeys:
            click.echo(f"{user.email} has no passkeys")
        return
    passkey = next((p for p in passkeys if str(p.id) == remove), None)
    if passkey is None:
        raise click.ClickException(f"{user.email} has no passkey {remove}")
    _delete_passkey(user, passkey)
    click.echo(f"deleted the passkey {passkey.label} of {user.email}")


@_roles_cli.command("create")
@click.argument("name")
@click.option("--description", default=None, help="What the role allows.")
def _roles_create(name, description):
    """Create the role NAME."""
    datastore = _state().datastore
    if datastore.find_role(name) is not None:
        raise click.ClickException(f"the role {name} exists already")
    fields = {"name": name}
    if description is not None:  # a role model may have no description
        if not hasattr(datastore.role_model, "description"):
            raise click.UsageError(
                f"the role model {datastore.role_model.__name__} has no "
                "description field: add one, or leave out --description "
                "(README.md, 'The fields each feature needs')"
            )
        fields["description"] = description
    datastore.create_role(**fields)
    _cli_commit(f"created role {name}")


@_roles_cli.command("add")
@click.argument("email")
@click.argument("role")
def _roles_add(email, role):
    """Give ROLE to the user with EMAIL."""
    user = _cli_user(email)
    changed = _state().datastore.add_role_to_user(user, _cli_role(role))
    done = "gave {1} to {0}" if changed else "{0} had {1} already"
    _cli_commit(done.format(user.email, role))


@_roles_cli.command("remove")
@click.argument("email")
@click.argument("role")
def _roles_remove(email, role):
    """Take ROLE from the user with EMAIL."""
    user = _cli_user(email)
    changed = _state().datastore.remove_role_from_user(user, _cli_role(role))
    done = "took {1} from {0}" if changed else "{0} lacked {1}"
    _cli_commit(done.format(user.email, role))


# =============================================================================
# 15. Startup checks
# =============================================================================


def _validate_link_base(app):
    """``SECURITY_LINK_BASE_URL`` must be a scheme and a host (links get their
    path from the view), and emailed links on with no host declared for them is
    worth a warning: they are then refused for requests not made to localhost."""
    config = app.config
    base = config["SECURITY_LINK_BASE_URL"]
    if base:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                "SECURITY_LINK_BASE_URL must look like 'https://www.example.com', "
                f"not {base!r} (docs/configuration.md)"
            )
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise ValueError(
                "SECURITY_LINK_BASE_URL is a scheme and a host only: the path of an "
                "app mounted under a prefix comes from its SCRIPT_NAME "
                "(docs/configuration.md)"
            )
    mails_links = any(
        config["SECURITY_" + feature]
        for feature in ("CONFIRMABLE", "RECOVERABLE", "PASSWORDLESS", "CHANGEABLE")
    )
    declared = config.get("SERVER_NAME") or config.get("TRUSTED_HOSTS")
    if mails_links and not (declared or config["SECURITY_LINK_BASE_URL"]):
        _log.warning(
            "flask-security-lite emails links, but the app declares no host for "
            "them: set SECURITY_LINK_BASE_URL, SERVER_NAME or TRUSTED_HOSTS. Until "
            "then links are only sent for requests to localhost (docs/security.md)."
        )


#: The switches that turn a feature on: a misspelt one leaves the feature off.
_FEATURE_SWITCHES = (
    "CONFIRMABLE",
    "REGISTERABLE",
    "RECOVERABLE",
    "TRACKABLE",
    "PASSWORDLESS",
    "CHANGEABLE",
)

#: Fields of the user model, by the feature that reads them (``None``: always).
_USER_FIELDS = {
    None: ("email", "password", "active", "roles"),
    "CONFIRMABLE": ("confirmed_at",),
    "TRACKABLE": (
        "last_login_at",
        "current_login_at",
        "last_login_ip",
        "current_login_ip",
        "login_count",
    ),
    "TWO_FACTOR": ("tf_totp_secret", "tf_recovery_codes"),
    "LOCKOUT_ATTEMPTS": ("failed_login_count", "locked_until"),
    "PASSKEYS": ("passkey_handle",),
}

#: The views that send mail (by function, whatever the blueprint is called): each
#: with the feature that makes it mail and the setting that can turn that mail off
#: (None: it always mails).
_MAILING_VIEWS = {
    register: ("REGISTERABLE", "SEND_REGISTER_EMAIL"),
    send_confirmation: ("CONFIRMABLE", None),
    forgot_password: ("RECOVERABLE", None),
    reset_password: ("RECOVERABLE", "SEND_PASSWORD_RESET_NOTICE_EMAIL"),
    send_login: ("PASSWORDLESS", None),
    change_password: ("CHANGEABLE", "SEND_PASSWORD_CHANGE_EMAIL"),
    tf_setup: ("TWO_FACTOR", "SEND_TWO_FACTOR_NOTICE_EMAIL"),
    tf_disable: ("TWO_FACTOR", "SEND_TWO_FACTOR_NOTICE_EMAIL"),
    tf_rescue: ("TWO_FACTOR", "SEND_TWO_FACTOR_NOTICE_EMAIL"),
    # Refused at the options: a browser must not make a passkey the server won't keep.
    _passkeys_register_options: ("PASSKEYS", "SEND_PASSKEY_NOTICE_EMAIL"),
    _passkeys_register: ("PASSKEYS", "SEND_PASSKEY_NOTICE_EMAIL"),
    _passkeys_delete: ("PASSKEYS", "SEND_PASSKEY_NOTICE_EMAIL"),
}


def _validate_startup(app, datastore):
    """Refuse, at startup, a setup that would fail on a visitor's request: each
    problem is named with its fix. Unknown ``SECURITY_*`` keys only warn."""
    config = app.config
    _validate_link_base(app)
    user_model = getattr(datastore, "user_model", None)
    problems = [
        *_missing_secret_key(app),
        *_misspelt_settings(config),
        *_mistyped_settings(config),
    ]
    if not problems:  # the checks below read the settings: their types first
        problems = [
            *_unparsable_lifetimes(app),
            # A custom store (or a 1.7.4 test double) may not name its model.
            *_missing_user_methods(user_model),
            *_missing_user_fields(app, user_model),
            *_shared_salts(config),
            *_unreadable_password_list(config),
            *_passkey_problems(app, datastore),
        ]
    if problems:
        raise RuntimeError(
            "flask-security-lite cannot start:\n- " + "\n- ".join(problems)
        )
    if _declares_fields(user_model) and not _has_field(user_model, "security_stamp"):
        _log.warning(
            "the user model %s has no 'security_stamp' field: logout cannot end "
            "copies of a session, remember cookie or auth token, `flask users "
            "logout` and the sessions page are off, and a passwordless link works "
            "more than once until it expires; add security_stamp = "
            "db.Column(db.String(64)) (README.md, 'Sessions')",
            user_model.__name__,
        )
    if "bcrypt" in list(config["SECURITY_PASSWORD_SCHEMES"]) and _dead_passlib():
        _log.warning("%s; until then bcrypt hashes may fail", _dead_passlib())
    if config["SECURITY_PASSWORD_HASH"] == "plaintext" and not app.testing:
        _log.warning(
            "SECURITY_PASSWORD_HASH is 'plaintext': passwords are stored "
            "unhashed. Use it only for tests."
        )


def _misspelt_settings(config):
    """Warn about each unknown ``SECURITY_*`` key with the closest real one; a
    misspelt feature switch is a problem, since its feature is silently off."""
    messages = [*_default_messages, *_message_aliases]
    known = [f"SECURITY_{key}" for key in _default_config]
    known += [f"SECURITY_MSG_{key}" for key in messages]
    for key in sorted(k for k in config if k.startswith("SECURITY_")):
        if key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if close and close[0].removeprefix("SECURITY_") in _FEATURE_SWITCHES:
            yield (
                f"{key} is not a setting: did you mean {close[0]}? "
                "(docs/configuration.md)"
            )
        else:
            hint = f" (did you mean {close[0]}?)" if close else ""
            _log.warning("%s is not a flask-security-lite setting%s", key, hint)


#: The fields of the passkey model.
_PASSKEY_FIELDS = (
    "user credential_id public_key sign_count transports label created_at "
    "last_used_at backup_eligible backed_up"
).split()


def _passkey_problems(app, datastore):
    """What ``SECURITY_PASSKEYS`` needs beside the user's ``passkey_handle``:
    py_webauthn, a passkey model given to an adapter, settings it knows, and an RP
    id that is a domain. No declared host only warns: localhost still works."""
    config = app.config
    if not config["SECURITY_PASSKEYS"]:
        return
    try:
        _webauthn()
    except ImportError as error:
        yield f"SECURITY_PASSKEYS: {error} (docs/passkeys.md)"
    model = getattr(datastore, "passkey_model", None)
    if model is None or not hasattr(datastore, "_find_passkeys"):
        yield (
            "SECURITY_PASSKEYS needs a passkey model: declare one and pass it to the "
            "datastore as passkey_model= (docs/passkeys.md)"
        )
    elif _declares_fields(model):
        for name in _PASSKEY_FIELDS:
            if not _has_field(model, name):
                yield (
                    f"the passkey model {model.__name__} has no {name!r} field: add "
                    "it (docs/passkeys.md)"
                )
    for key, known in (
        ("USER_VERIFICATION", ("required", "preferred", "discouraged")),
        ("ATTESTATION", ("none", "indirect", "direct", "enterprise")),
    ):
        if config[f"SECURITY_PASSKEYS_{key}"] not in known:
            yield f"SECURITY_PASSKEYS_{key} must be one of {', '.join(known)}"
    rp_id = config["SECURITY_PASSKEYS_RP_ID"]
    if rp_id and _is_ip_address(rp_id):
        yield f"SECURITY_PASSKEYS_RP_ID must be a domain name, not the address {rp_id}"
    base = urlsplit(config["SECURITY_LINK_BASE_URL"] or "").hostname
    for setting, host in (
        ("SECURITY_LINK_BASE_URL", base),
        ("SERVER_NAME", urlsplit("//" + (config.get("SERVER_NAME") or "")).hostname),
    ):
        if host and _is_ip_address(host) and not rp_id:
            yield (
                f"{setting} names the address {host}, and passkeys need a domain "
                "name: declare localhost (or the site's name) "
                "(docs/passkeys.md, 'The host')"
            )
    declared = config.get("SERVER_NAME") or config.get("TRUSTED_HOSTS")
    if not (declared or config["SECURITY_LINK_BASE_URL"]):
        _log.warning(
            "SECURITY_PASSKEYS is on, but the app declares no host for them: set "
            "SECURITY_LINK_BASE_URL, SERVER_NAME or TRUSTED_HOSTS. Until then "
            "passkeys work only for requests to localhost (docs/passkeys.md)."
        )


def _missing_secret_key(app):
    """Sessions, CSRF tokens and every token of this module are signed with it."""
    if not app.secret_key:
        yield (
            "SECRET_KEY is not set: set app.config['SECRET_KEY'] to a long random "
            "value, e.g. from python -c 'import secrets; print(secrets.token_hex())' "
            "(README.md, 'No SECRET_KEY')"
        )


#: Settings whose default is None that take a number when set: seconds, attempts.
_NUMBER_SETTINGS = {"TOKEN_MAX_AGE": "seconds", "LOCKOUT_ATTEMPTS": "attempts"}

#: The switches 1.7.4 had: one given as a string is on, as 1.7.x took it.
_SWITCHES_OF_174 = (
    "FLASH_MESSAGES",
    "CONFIRMABLE",
    "REGISTERABLE",
    "RECOVERABLE",
    "TRACKABLE",
    "PASSWORDLESS",
    "CHANGEABLE",
    "SEND_REGISTER_EMAIL",
    "SEND_PASSWORD_CHANGE_EMAIL",
    "SEND_PASSWORD_RESET_NOTICE_EMAIL",
    "LOGIN_WITHOUT_CONFIRMATION",
    "DEFAULT_REMEMBER_ME",
)


def _mistyped_settings(config):
    """Each setting or message of the wrong type, named with the type wanted. A
    1.7.4 switch given as a string (``'False'``) is on, as 1.7.x took it: kept, and
    warned about with the boolean to write."""
    for key, default in _default_config.items():
        name, value = "SECURITY_" + key, config["SECURITY_" + key]
        if key in _SWITCHES_OF_174 and isinstance(value, str):
            _log.warning(
                "%s is the string %r, which turns it on, as 1.7.x did: write True "
                "to keep it on, or False to turn it off",
                name,
                value,
            )
            continue
        wanted = _wanted_type(key, default, value)
        if wanted:
            yield (
                f"{name} must be {wanted}, not {value!r} "
                "(README.md, 'A setting of the wrong type')"
            )
    for key in [*_default_messages, *_message_aliases]:
        value = config["SECURITY_MSG_" + key]
        if not (isinstance(value, tuple | list) and len(value) == 2):
            yield (
                f"SECURITY_MSG_{key} must be a (text, category) pair, such as "
                f"('...', 'error'), not {value!r}"
            )


def _wanted_type(key, default, value):
    """What ``value`` of setting ``key`` should have been, or None if it fits."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and not math.isfinite(value):
        number = False
    if isinstance(default, bool):
        return (
            None if isinstance(value, bool | int) or value is None else "True or False"
        )
    if key in _NUMBER_SETTINGS:
        fits = value is None or number
        return None if fits else f"a number (of {_NUMBER_SETTINGS[key]}) or None"
    if key == "PASSWORD_SALT":
        return None if isinstance(value, str | bytes) or value is None else "a string"
    if key == "PASSWORD_BREACHED_URL":  # a password's hash prefix travels there
        parts = urlsplit(value) if isinstance(value, str) else None
        local = parts is not None and parts.hostname in _LOCAL_HOSTS
        fits = parts is not None and (parts.scheme == "https" or local)
        return None if fits else "an https URL"
    if key.endswith("_TIMEOUT"):
        return None if number and value > 0 else "a number of seconds above 0"
    if isinstance(default, int):
        whole = number and int(value) == value and value >= 0
        return None if whole else "a whole number, 0 or more"
    if isinstance(default, list):
        items = [value] if isinstance(value, str) else value
        fits = isinstance(value, list | tuple | set | frozenset)
        if key == "USER_IDENTITY_ATTRIBUTES":
            fits = fits or isinstance(value, str)  # 1.7.4's "email, username"
        fits = fits and all(isinstance(item, str) for item in items)
        return None if fits else "a list of strings"
    if isinstance(default, dict):
        return None if isinstance(value, dict) else "a dict"
    return None


#: What the module asks of every user object, as :class:`UserMixin` gives it.
_USER_METHODS = (
    "is_active",
    "is_authenticated",
    "get_session_identity",
    "get_auth_token",
    "has_role",
)


def _missing_user_methods(user_model):
    """The user model must have :class:`UserMixin`'s methods (a model with only
    Flask-Login's mixin would fail at its first login)."""
    missing = [name for name in _USER_METHODS if not hasattr(user_model, name)]
    if user_model is not None and missing:
        yield (
            f"the user model {user_model.__name__} lacks {', '.join(missing)}: "
            "derive it from flask_security_lite.UserMixin "
            "(README.md, 'A user model without UserMixin')"
        )


def _shared_salts(config):
    """Each kind of token needs a salt of its own: tokens of two kinds made with one
    salt differ only by the kind signed into them."""
    keys_by_salt = {}
    for salt_key, _ in _TOKEN_KINDS.values():
        keys_by_salt.setdefault(config["SECURITY_" + salt_key], []).append(salt_key)
    for keys in keys_by_salt.values():
        if len(keys) > 1:
            named = " and ".join(f"SECURITY_{key}" for key in keys)
            yield (
                f"{named} are the same: give each its own value (docs/configuration.md)"
            )


def _unreadable_password_list(config):
    """The list of common passwords is read now, not at a visitor's first new
    password."""
    if config["SECURITY_PASSWORD_CHECK_COMMON"]:
        try:
            _password_list(_common_list_path(config))
        except RuntimeError as error:
            yield str(error)


def _unparsable_lifetimes(app):
    """Each ``*_WITHIN`` lifetime must parse, or its emailed links would all fail."""
    for key in _default_config:
        if key.endswith("_WITHIN"):
            try:
                get_within_delta(key, app)
            except ValueError as error:
                yield f"{error} (README.md, 'A setting of the wrong type')"


def _missing_user_fields(app, user_model):
    """The fields the enabled features read, missing from the user model."""
    if not _declares_fields(user_model):  # a custom store's plain objects
        return []
    wanted = dict.fromkeys([*_USER_FIELDS[None], *get_identity_attributes(app)])
    for feature, fields in _USER_FIELDS.items():
        if feature is not None and app.config["SECURITY_" + feature]:
            wanted.update((name, feature) for name in fields if name not in wanted)
    if getattr(user_model, "is_active", None) is not UserMixin.is_active:
        del wanted["active"]  # the model decides activity its own way
    return [
        f"the user model {user_model.__name__} has no {name!r} field"
        + (f" (needed by SECURITY_{feature})" if feature else "")
        + ": add it (README.md, 'The fields each feature needs')"
        for name, feature in wanted.items()
        if not _has_field(user_model, name)
    ]


def _declares_fields(model):
    """True for a SQLAlchemy, mongoengine or peewee model: their fields are class
    attributes, so a missing one is known before any object exists."""
    return any(hasattr(model, marker) for marker in ("__mapper__", "_fields", "_meta"))


def _has_field(model, name):
    """``model`` has the attribute ``name``; SQLAlchemy adds relationship backrefs
    only when its mappers are configured, so configure them before giving up."""
    if hasattr(model, name):
        return True
    if hasattr(model, "__mapper__"):
        from sqlalchemy.orm import configure_mappers

        try:
            configure_mappers()
        except Exception:  # another model is unfinished: the query will tell
            return True
    return hasattr(model, name)


def _refuse_mail_until_set_up(app):
    """Mail goes through ``Mail(app)`` or ``@security.send_mail_task``, which apps
    often set up after ``Security(app)``. So from the first request, until either
    is there: say so once at ERROR level, and refuse the posts to views that would
    send mail before they write anything. Every other page keeps working."""
    config = app.config
    mailing = {
        view: feature
        for view, (feature, switch) in _MAILING_VIEWS.items()
        if config["SECURITY_" + feature]
        and (switch is None or config["SECURITY_" + switch])
    }
    if not mailing:
        return
    said = False

    def refuse_until_mail_is_set_up():
        nonlocal said
        if _mail_is_set_up(app):  # for good: off the app's list this check goes
            hooks = app.before_request_funcs
            hooks[None] = [
                h for h in hooks[None] if h is not refuse_until_mail_is_set_up
            ]
            return
        if not said:
            said = True
            features = sorted({f"SECURITY_{name}" for name in mailing.values()})
            _log.error(
                "%s %s mail, but this app has no Flask-Mail and no "
                "@security.send_mail_task: add Mail(app) with your MAIL_* "
                "settings, or register a function with "
                "@security.send_mail_task. Until then the pages that send mail "
                "answer 503 (README.md, 'No mail').",
                ", ".join(features),
                "sends" if len(features) == 1 else "send",
            )
        view = app.view_functions.get(request.endpoint)
        if request.method not in ("GET", "HEAD", "OPTIONS") and view in mailing:
            raise _Refused(503, "MAIL_NOT_SET_UP")

    app.before_request(refuse_until_mail_is_set_up)


def _name_missing_tables(sender, exception, **extra):
    """A request that failed for want of tables logs one line naming the fix,
    beside Flask's traceback (connected to ``got_request_exception`` per app)."""
    advice = _missing_table_advice(exception)
    if advice is not None:
        _log.error("flask-security-lite: %s", advice)


def _refuse_unknown_forms(names):
    unknown = set(names) - set(_default_forms)
    if unknown:
        raise TypeError(f"Security got unknown form arguments: {sorted(unknown)}")


# =============================================================================
# 16. The Security extension
# =============================================================================


# -- the security event log ---------------------------------------------------


def _log_login(app, user):
    """Flask-Login's ``user_logged_in``: a login, but not a session of a user
    already logged in bound anew to a changed password or second factor, which
    Flask-Login announces alike."""
    if _auth_method() != "session":
        _log_event("login", user)


def _log_logout(app, user):
    """Flask-Login's ``user_logged_out``: a logout of the user it names."""
    if user is not None and user.is_authenticated:
        _log_event("logout", user)


def _log_login_failed(app, user, reason, **unlogged):
    """``login_failed``: what was typed as the identifier is left out, as it may
    be a password typed in the wrong field."""
    _log_event("login_failed", user, reason=reason)


def _log_recovery_code_used(app, user, method):
    """``tf_code_confirmed``: a login with a recovery code spends one."""
    if method == "recovery_code":
        _log_event("recovery_code_used", user)


def _log_two_factor_enabled(app, user):
    _log_event("two_factor_enabled", user)


def _log_two_factor_disabled(app, user):
    _log_event("two_factor_disabled", user)


def _log_password_reset(app, user):
    _log_event("password_reset", user)


def _log_password_changed(app, user):
    _log_event("password_changed", user)


#: Each signal whose events are logged, with its receiver. Lockouts and new
#: recovery codes, which send no signal, are logged where they happen.
_EVENT_RECEIVERS = (
    (flask_login.user_logged_in, _log_login),
    (flask_login.user_logged_out, _log_logout),
    (login_failed, _log_login_failed),
    (tf_code_confirmed, _log_recovery_code_used),
    (tf_enrolled, _log_two_factor_enabled),
    (tf_disabled, _log_two_factor_disabled),
    (password_reset, _log_password_reset),
    (password_changed, _log_password_changed),
)


def _log_security_events(app):
    """Log the security events of ``app`` to ``flask_security_lite.events`` (ASVS
    16.3.1), by receivers of its signals and Flask-Login's."""
    for signal, receiver in _EVENT_RECEIVERS:
        signal.connect(receiver, app)


#: The form each ``init_app`` keyword replaces.
_default_forms = {
    "login_form": LoginForm,
    "confirm_register_form": ConfirmRegisterForm,
    "register_form": RegisterForm,
    "forgot_password_form": ForgotPasswordForm,
    "reset_password_form": ResetPasswordForm,
    "change_password_form": ChangePasswordForm,
    "send_confirmation_form": SendConfirmationForm,
    "passwordless_login_form": PasswordlessLoginForm,
    "tf_code_form": TwoFactorCodeForm,
    "tf_rescue_form": TwoFactorRescueForm,
    "tf_password_form": TwoFactorPasswordForm,
    "tf_disable_form": TwoFactorDisableForm,
    "sessions_form": SessionsForm,
}


def _set_config_defaults(app):
    """Every ``SECURITY_*`` setting and message, where the app has not set it; each
    app gets its own copy of the lists and dicts among them. Cookie settings of
    Flask and Flask-Login get safer defaults too."""
    for key, value in _default_config.items():
        app.config.setdefault("SECURITY_" + key, copy.deepcopy(value))
    for key, value in _default_messages.items():
        app.config.setdefault("SECURITY_MSG_" + key, value)
    for alias, key in _message_aliases.items():
        app.config.setdefault(
            "SECURITY_MSG_" + alias, app.config["SECURITY_MSG_" + key]
        )
    # Remember cookies are not sent on cross-site requests unless the app says so.
    app.config.setdefault("REMEMBER_COOKIE_SAMESITE", "Lax")
    app.config.setdefault("REMEMBER_COOKIE_HTTPONLY", True)
    # Nor is the session cookie: Flask's default (None) is only a default, not a
    # value the app chose, so it is replaced; an app wanting None sets it after
    # init_app.
    if app.config.get("SESSION_COOKIE_SAMESITE") is None:
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    # The browser keeps a remember cookie as long as the server accepts it (an
    # unparsable setting is reported by the startup checks).
    with suppress(ValueError):
        remember = get_within_delta("REMEMBER_WITHIN", app)
        app.config.setdefault("REMEMBER_COOKIE_DURATION", remember)


def _make_login_manager(app):
    """Flask-Login for ``app``, loading users through their session identity."""
    manager = flask_login.LoginManager()
    manager.anonymous_user = AnonymousUser
    # Not get_id: ORMs such as peewee define their own get_id on models.
    manager.id_attribute = "get_session_identity"
    manager.login_view = f"{app.config['SECURITY_BLUEPRINT_NAME']}.login"
    manager.user_loader(_load_user_from_session)
    # Both send to the login page (fresh_login_required: with SECURITY_MSG_REFRESH).
    manager.unauthorized_handler(_refuse_login)
    manager.needs_refresh_handler(partial(_refuse_login, "REFRESH"))
    manager.init_app(app)
    return manager


def _add_views_and_commands(app, with_views):
    """The security views (or only our templates, for the emails) and the CLI."""
    if with_views:
        app.register_blueprint(create_blueprint(app))
    else:
        templates = Blueprint(
            "security_templates", __name__, template_folder=_templates_folder()
        )
        app.register_blueprint(templates)
    app.cli.add_command(_users_cli)
    app.cli.add_command(_roles_cli)


#: A function a context processor decorator takes: it returns template values.
_TemplateValues = Callable[[], dict[str, Any]]
#: A function that delivers a ``flask_mail.Message`` instead of Flask-Mail.
_MailTask = Callable[[Any], Any]


def _adds_template_values(view):
    """A decorator method of :class:`Security` that adds a function's values to the
    templates of ``view`` (``all``: every view; ``mail``: every email)."""

    def decorator(self, function: _TemplateValues) -> _TemplateValues:
        self._context_processors[view].append(function)
        return function

    decorator.__name__ = (
        "context_processor" if view == "all" else f"{view}_context_processor"
    )
    decorator.__doc__ = f"Add the values ``function`` returns to the {view} templates."
    return decorator


#: The attributes of an app's :class:`_SecurityState` that its Security object
#: answers too, besides each setting and form class.
_STATE_NAMES = ("app", "datastore", "forms", "login_manager", "pwd_context")


class Security:
    """The extension: ``Security(app, datastore)`` or ``init_app`` later.

    One object may serve several applications, each with its own config and
    datastore: inside an application context it answers for the current app;
    outside one, for the only app it was bound to. Any other
    attribute (``security.datastore``, ``security.registerable``,
    ``security.login_form``) is that app's :class:`_SecurityState`'s.

    :param app: the application.
    :param datastore: a :class:`UserDatastore`.
    :param kwargs: ``register_blueprint`` and the form overrides of ``init_app``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        datastore: UserDatastore | None = None,
        register_blueprint: bool = True,
        **forms: type[Form],
    ) -> None:
        _refuse_unknown_forms(forms)
        self._datastore = datastore
        self._register_blueprint = register_blueprint
        self._forms = forms
        self._states = []
        self._context_processors = defaultdict(list)
        self._send_mail_task = None
        if app is not None:
            self.init_app(app, datastore)

    def init_app(
        self,
        app: Flask,
        datastore: UserDatastore | None = None,
        register_blueprint: bool | None = None,
        **forms: type[Form],
    ) -> "_SecurityState":
        """Set up security on ``app``: settings, Flask-Login, the views and the
        ``flask users`` / ``flask roles`` commands.

        :param datastore: the datastore for this app (default: the constructor's).
        :param register_blueprint: add the security views (default True).
        :param forms: form classes replacing ours, by the keys of ``_default_forms``
            (``login_form``, ``register_form``, ...).
        """
        _refuse_unknown_forms(forms)
        datastore = datastore or self._datastore
        if datastore is None:
            raise ValueError(
                "Security needs a datastore, e.g. SQLAlchemyUserDatastore "
                "(README.md, 'Quick start')"
            )
        _set_config_defaults(app)
        _validate_startup(app, datastore)
        if isinstance(datastore, UserDatastore):
            datastore._bind(app)
        state = _SecurityState(
            app,
            self,
            datastore,
            forms={**_default_forms, **self._forms, **forms},
            login_manager=_make_login_manager(app),
            pwd_context=_build_password_context(app.config),
            principal=_setup_principal(app),
        )
        app.extensions["security"] = state
        self._states = [known for known in self._states if known.app is not app]
        self._states.append(state)
        if register_blueprint is None:
            register_blueprint = self._register_blueprint
        _add_views_and_commands(app, register_blueprint)
        app.register_error_handler(_Refused, _refusal_answer)
        # In every template of the app, its own pages included.
        app.add_template_global(url_for_security, "url_for_security")
        app.add_template_global(state, "security")
        app.after_request(_keep_roles_readable)
        _refuse_mail_until_set_up(app)
        got_request_exception.connect(_name_missing_tables, app)
        _log_security_events(app)
        return state

    def _state(self):
        """The state of the current app, or outside an app context the state of
        the only app this object was bound to."""
        if has_app_context():
            state = current_app.extensions.get("security")
            if state is not None and state.security is self:
                return state
        if len(self._states) == 1:
            return self._states[0]
        raise RuntimeError(
            "this Security object serves several apps: use it in an app context"
            if self._states
            else "this Security object is not bound to an app yet: call init_app"
        )

    def __getattr__(self, name):
        known = name in _STATE_NAMES or name in _default_forms
        if name.startswith("_") or not (known or name.upper() in _default_config):
            raise AttributeError(name)
        return getattr(self._state(), name)

    # -- customisation points of the docs ----------------------------------------

    context_processor = _adds_template_values("all")
    forgot_password_context_processor = _adds_template_values("forgot_password")
    login_context_processor = _adds_template_values("login")
    register_context_processor = _adds_template_values("register")
    reset_password_context_processor = _adds_template_values("reset_password")
    change_password_context_processor = _adds_template_values("change_password")
    send_confirmation_context_processor = _adds_template_values("send_confirmation")
    send_login_context_processor = _adds_template_values("send_login")
    tf_setup_context_processor = _adds_template_values("tf_setup")
    tf_validate_context_processor = _adds_template_values("tf_validate")
    tf_rescue_context_processor = _adds_template_values("tf_rescue")
    tf_disable_context_processor = _adds_template_values("tf_disable")
    tf_recovery_codes_context_processor = _adds_template_values("tf_recovery_codes")
    sessions_context_processor = _adds_template_values("sessions")
    mail_context_processor = _adds_template_values("mail")

    def send_mail_task(self, function: _MailTask) -> _MailTask:
        """Deliver security emails with ``function(message)`` instead of Flask-Mail,
        e.g. to queue them; ``message`` is a ``flask_mail.Message``."""
        self._send_mail_task = function
        return function

    #: Renders a security view's template: Flask's ``render_template``. Replace it
    #: (``security.render_template = f``, or in a subclass) to render the views
    #: your way, e.g. inside an admin layout.
    render_template = staticmethod(render_template)


# =============================================================================
# 17. Flask-Security 1.7.4 compatibility
# =============================================================================
# What a Flask-Security 1.7.4 application imports that today's API names otherwise
# or no longer needs: aliases, helpers, persistence classes and proxies. Nothing
# above uses them. 1.7.4 was a package whose applications import from its
# submodules (``from flask_security.utils import encrypt_password``): this module
# answers to each of those names under whatever name it is imported as,
# ``flask_security_lite``, or ``flask_security`` when vendored under that name.


class BasicAuth(NamedTuple):
    """HTTP Basic credentials, as 1.7.4's ``decorators`` module named them."""

    username: str | None
    password: str | None


# -- 1.7.4's other names ------------------------------------------------------


def md5(data: str | bytes) -> str:
    """Return the hex MD5 digest of ``data`` (kept for 1.7.4 code; not for secrets)."""
    return hashlib.md5(want_bytes(data), usedforsecurity=False).hexdigest()


#: The 1.7.4 name of :func:`hash_password`.
encrypt_password = hash_password


def get_config(app: Flask) -> dict[str, Any]:
    """Return the app's ``SECURITY_*`` settings, keys without the prefix."""
    prefix = "SECURITY_"
    return {
        key[len(prefix) :]: value
        for key, value in app.config.items()
        if key.startswith(prefix)
    }


def get_max_age(key: str, app: Flask | None = None) -> float:
    """Return the lifetime in seconds of ``SECURITY_<key>_WITHIN``."""
    return get_within_delta(key + "_WITHIN", app).total_seconds()


def get_security_endpoint_name(endpoint: str) -> str:
    """Return ``endpoint`` prefixed with the security blueprint's name."""
    return f"{config_value('BLUEPRINT_NAME')}.{endpoint}"


def get_post_action_redirect(config_key: str, declared: str | None = None) -> str:
    """Return where to go after an action: a safe ``next`` (``declared`` or from the
    request), else the view of ``config_key`` (e.g. ``SECURITY_POST_LOGIN_VIEW``)."""
    return _next_or_view(declared, config_key.removeprefix("SECURITY_"))


def find_redirect(key: str) -> str:
    """Return the URL of the view configured under ``key``, or ``/``."""
    return _redirect_target(None, key.removeprefix("SECURITY_"))


def get_post_login_redirect(declared: str | None = None) -> str:
    """Return where to go after login: a safe ``next``, else ``POST_LOGIN_VIEW``."""
    return _next_or_view(declared, "POST_LOGIN_VIEW")


def get_post_register_redirect(declared: str | None = None) -> str:
    """Return where to go after registering: a safe ``next``, else
    ``POST_REGISTER_VIEW`` or ``POST_LOGIN_VIEW``."""
    return _next_or_view(declared, "POST_REGISTER_VIEW", "POST_LOGIN_VIEW")


def get_post_logout_redirect(declared: str | None = None) -> str:
    """Return where to go after logout: a safe ``next``, else ``POST_LOGOUT_VIEW``."""
    return _next_or_view(declared, "POST_LOGOUT_VIEW")


def get_token_status(
    token: str, serializer: str, max_age: str | None = None
) -> tuple[bool, bool, Any]:
    """Check a token; return 1.7.4's triple ``(expired, invalid, user)``.

    :param token: the token from a link or request.
    :param serializer: the token kind: ``confirm``, ``login``, ``reset`` or
        ``remember``.
    :param max_age: the lifetime setting's prefix (``CONFIRM_EMAIL``, ``LOGIN``,
        ``RESET_PASSWORD``), or None for no expiry. A used token is invalid.
    """
    seconds = get_max_age(max_age) if max_age else math.inf
    kind = "auth" if serializer == "remember" else serializer  # 1.7.4's name
    check = _read_token(token, kind, seconds)
    return check.status == "expired", check.status in ("invalid", "used"), check.user


def confirm_email_token_status(token: str) -> tuple[bool, bool, Any]:
    """Return ``(expired, invalid, user)`` for a confirmation token."""
    return get_token_status(token, "confirm", "CONFIRM_EMAIL")


def reset_password_token_status(token: str) -> tuple[bool, bool, Any]:
    """Return ``(expired, invalid, user)`` for a reset token."""
    return get_token_status(token, "reset", "RESET_PASSWORD")


def login_token_status(token: str) -> tuple[bool, bool, Any]:
    """Return ``(expired, invalid, user)`` for a passwordless login token."""
    return get_token_status(token, "login", "LOGIN")


#: 1.7.4's name of WTForms' ``StringField``.
TextField = StringField

#: 1.7.4's name of Flask-WTF's form class, the base of :class:`Form`.
BaseForm = FlaskForm


class ValidatorMixin:
    """Lets a WTForms validator take a message key, as 1.7.4's did:
    ``Required(message="EMAIL_NOT_PROVIDED")`` shows that message's text, read
    when the validator runs, so ``SECURITY_MSG_*`` of the current app apply."""

    def __call__(self, form, field):
        try:
            return super().__call__(form, field)
        except (ValidationError, StopValidation) as error:
            key = error.args[0] if error.args else None
            if isinstance(key, str) and config_value("MSG_" + key) is not None:
                raise type(error)(_text(key)) from None
            raise


class Required(ValidatorMixin, validators.DataRequired):
    """The field must not be empty; ``message`` may be a message key."""


class Email(ValidatorMixin, validators.Email):
    """The field must hold an email address; ``message`` may be a message key."""


class EqualTo(ValidatorMixin, validators.EqualTo):
    """The field must equal ``fieldname``; ``message`` may be a message key."""


class Length(ValidatorMixin, validators.Length):
    """The field's length must lie in ``min``..``max``; ``message`` may be a
    message key."""


# -- 1.7.4's persistence classes ------------------------------------------------


class Datastore(abc.ABC):  # noqa: B024 (an ABC for register(): isinstance)
    """How models are saved: 1.7.4's base of every datastore, kept for stores
    written against it (``class MyStore(Datastore, UserDatastore)``). A store gives
    ``put`` and ``delete``; ``commit`` does nothing unless the store stages writes.
    Each of our adapters counts as an instance of its 1.7.4 class below.

    :param db: whatever the store saves through.
    """

    def __init__(self, db: Any) -> None:
        self.db = db

    def put(self, model: Any) -> Any:
        """Save (or stage) ``model`` and return it."""
        raise NotImplementedError

    def delete(self, model: Any) -> None:
        """Delete ``model``."""
        raise NotImplementedError

    def commit(self) -> None:  # noqa: B027 (a store that writes at put keeps it)
        """Make staged writes durable: nothing to do unless a store stages them."""


class SQLAlchemyDatastore(Datastore):
    """Saving through Flask-SQLAlchemy's session, as :class:`SQLAlchemyUserDatastore`
    saves.

    :param db: the ``flask_sqlalchemy.SQLAlchemy`` object.
    """

    def __init__(self, db: Any) -> None:
        self._sa = _require("sqlalchemy", "Flask-SQLAlchemy", "sqlalchemy")
        super().__init__(db)

    put = SQLAlchemyUserDatastore.put
    delete = SQLAlchemyUserDatastore.delete
    commit = SQLAlchemyUserDatastore.commit


class MongoEngineDatastore(Datastore):
    """Saving MongoEngine documents, as :class:`MongoEngineUserDatastore` saves.

    :param db: the ``mongoengine`` module or a Flask-MongoEngine object.
    """

    def __init__(self, db: Any) -> None:
        self._mongoengine = _require("mongoengine", "mongoengine", "mongoengine")
        super().__init__(db)

    put = MongoEngineUserDatastore.put
    delete = MongoEngineUserDatastore.delete


class PeeweeDatastore(Datastore):
    """Saving peewee models, as :class:`PeeweeUserDatastore` saves.

    :param db: a ``peewee.Database`` or an object with a ``.database``.
    """

    def __init__(self, db: Any) -> None:
        self._peewee = _require("peewee", "peewee", "peewee")
        super().__init__(db if isinstance(db, self._peewee.Database) else db.database)

    put = PeeweeUserDatastore.put
    delete = PeeweeUserDatastore.delete


SQLAlchemyDatastore.register(SQLAlchemyUserDatastore)
MongoEngineDatastore.register(MongoEngineUserDatastore)
PeeweeDatastore.register(PeeweeUserDatastore)

#: 1.7.4's proxies of the current app's state and datastore; the module itself
#: reads both through :func:`_state`.
_security = LocalProxy(_state)
_datastore = LocalProxy(lambda: _state().datastore)

#: The names each 1.7.4 submodule offered; all of them live in this one module.
_SUBMODULES = {
    "core": """Security UserMixin RoleMixin AnonymousUser AnonymousUserMixin
        LoginManager current_user _security _datastore""",
    "datastore": """Datastore SQLAlchemyDatastore MongoEngineDatastore
        PeeweeDatastore UserDatastore SQLAlchemyUserDatastore
        MongoEngineUserDatastore PeeweeUserDatastore DatastoreConflictError
        get_identity_attributes normalize_email""",
    "decorators": """login_required roles_required roles_accepted
        http_auth_required auth_token_required auth_required
        anonymous_user_required BasicAuth _security""",
    "forms": """Form BaseForm ValidatorMixin Required Email EqualTo Length
        email_required email_validator password_required password_length
        unique_user_email valid_user_email get_form_field_label EmailFormMixin
        UserEmailFormMixin UniqueEmailFormMixin PasswordFormMixin
        NewPasswordFormMixin PasswordConfirmFormMixin NextFormMixin
        RegisterFormMixin LoginForm ConfirmRegisterForm RegisterForm
        ForgotPasswordForm ResetPasswordForm ChangePasswordForm
        SendConfirmationForm PasswordlessLoginForm TextField PasswordField
        SubmitField HiddenField BooleanField Field ValidationError validators
        _datastore""",
    "signals": """signals user_registered user_confirmed confirm_instructions_sent
        login_instructions_sent password_reset password_changed
        reset_password_instructions_sent""",
    "utils": """login_user logout_user get_hmac verify_password
        verify_and_update_password encrypt_password hash_password md5 do_flash
        get_url slash_url_suffix get_security_endpoint_name url_for_security
        get_post_action_redirect get_post_login_redirect
        get_post_register_redirect get_post_logout_redirect find_redirect
        get_config get_message config_value get_max_age get_within_delta
        send_mail get_token_status get_identity_attributes validate_redirect_url
        normalize_email
        capture_registrations capture_reset_password_requests
        capture_passwordless_login_requests _security _datastore""",
    "views": """login logout register send_login token_login send_confirmation
        confirm_email forgot_password reset_password change_password
        create_blueprint _security _datastore""",
    "confirmable": """send_confirmation_instructions generate_confirmation_link
        generate_confirmation_token requires_confirmation
        confirm_email_token_status confirm_user _security _datastore""",
    "recoverable": """send_reset_password_instructions send_password_reset_notice
        generate_reset_password_token reset_password_token_status update_password
        _security _datastore""",
    "changeable": """send_password_changed_notice change_user_password _security
        _datastore""",
    "registerable": "register_user _security _datastore",
    "passwordless": """send_login_instructions generate_login_token
        login_token_status _security _datastore""",
}

#: 1.7.4 names whose object is known here by another name.
_RENAMED = {
    "AnonymousUserMixin": flask_login.AnonymousUserMixin,
    "LoginManager": flask_login.LoginManager,
    "signals": _signals,
}


def _fill_submodule(module, names):
    """Give ``module`` exactly ``names``, bound to this module's current objects."""
    for name in [name for name in vars(module) if not name.startswith("__")]:
        delattr(module, name)
    for name in names:
        setattr(module, name, _RENAMED[name] if name in _RENAMED else globals()[name])
    module.__all__ = [name for name in names if not name.startswith("_")]


def _export_submodules():
    """Make ``<this module>.utils`` and the other 1.7.4 submodules importable.

    Each is registered in ``sys.modules`` and set as an attribute of this module.
    On ``importlib.reload`` the same submodule objects are refilled, so code that
    holds one sees the reloaded functions.
    """
    for short, names in _SUBMODULES.items():
        name = f"{__name__}.{short}"
        module = sys.modules.get(name)
        if getattr(module, "__flask_security_lite__", None) is None:
            module = types.ModuleType(name)
        module.__doc__ = f"Flask-Security 1.7.4's ``{short}`` names, served by {name}."
        module.__flask_security_lite__ = __name__
        _fill_submodule(module, names.split())
        sys.modules[name] = module
        globals()[short] = module


def install_as_flask_security() -> None:
    """Make ``import flask_security`` and its 1.7.4 submodules
    (``flask_security.utils``, ...) give this module, so a 1.7.4 application runs
    without editing its imports. Call it once, before the app imports them::

        import flask_security_lite
        flask_security_lite.install_as_flask_security()

    :raises RuntimeError: another ``flask_security`` (the real Flask-Security,
        or Flask-Security-Too) is imported already: two would fight over the app.
    """
    this = sys.modules[__name__]
    taken = [
        name
        for name, module in list(sys.modules.items())
        if (name == "flask_security" or name.startswith("flask_security."))
        and module is not None
        and module is not this
        and getattr(module, "__flask_security_lite__", None) != __name__
    ]
    if taken:
        first = min(taken)
        raise RuntimeError(
            "install_as_flask_security() must run before anything imports "
            f"flask_security, but {first} is imported already (from "
            f"{getattr(sys.modules[first], '__file__', None)}). Call it first, e.g. "
            "at the top of your app's main module, or uninstall Flask-Security."
        )
    sys.modules["flask_security"] = this
    for short in _SUBMODULES:
        sys.modules[f"flask_security.{short}"] = sys.modules[f"{__name__}.{short}"]


_export_submodules()
