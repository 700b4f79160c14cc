"""Packaging for flask-security-lite: one module plus its templates folder."""

import re
from pathlib import Path

from setuptools import setup

here = Path(__file__).parent
version = re.search(
    r'^__version__ = "([^"]+)"', (here / "flask_security_lite.py").read_text(), re.M
).group(1)

setup(
    name="flask-security-lite",
    version=version,
    description="Flask-Security 1.7.4's features for Flask 3, in one file.",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author="The flask-security-lite authors",
    license="MIT",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    py_modules=["flask_security_lite"],
    # The templates ship as their own package so a wheel installs them beside the
    # module; the module looks for them there when no templates/ folder is beside it.
    # The list of common passwords refused as new ones travels with them.
    packages=["flask_security_lite_templates"],
    package_dir={"flask_security_lite_templates": "templates"},
    package_data={
        "flask_security_lite_templates": [
            "security/*.html",
            "security/*.js",
            "security/email/*",
            "common_passwords.txt",
        ]
    },
    install_requires=[
        "Flask>=3.1",
        "Flask-Login>=0.6.3",
        "Flask-WTF>=1.2",
        "WTForms>=3.0",
        "email-validator>=2.0",
        "Flask-Mail>=0.10",
        "itsdangerous>=2.2",
        "libpass>=1.9",
        "blinker>=1.6",
    ],
    extras_require={
        "sqlalchemy": ["Flask-SQLAlchemy>=3.1"],
        "mongoengine": ["mongoengine>=0.27"],
        "peewee": ["peewee>=3.17"],
        "argon2": ["argon2-cffi>=23.1"],
        "bcrypt": ["bcrypt>=4.1"],
        "passkeys": ["webauthn>=2.6"],
        "bench": [
            "Flask-SQLAlchemy>=3.1",
            "Flask-Security-Too>=5.5",
            "psycopg2-binary>=2.9",
            "argon2-cffi>=23.1",
            "bcrypt>=4.1",
            "gunicorn>=22",
        ],
        "test": [
            "pytest>=8",
            "Flask-SQLAlchemy>=3.1",
            "psycopg2-binary>=2.9",
            "mongoengine>=0.27",
            "mongomock>=4.1",
            "peewee>=3.17",
            "argon2-cffi>=23.1",
            "bcrypt>=4.1",
            "aiosmtpd>=1.4",
            "playwright>=1.45",
            "hypothesis>=6.100",
            "gunicorn>=22",
            "Flask-Limiter>=3.5",
            "Flask-Principal>=0.4",
            "segno>=1.6",
            "webauthn>=2.6",
            "cbor2>=5.6",
            "cryptography>=44",
            "setuptools>=77",
            "build>=1.0",
            "wheel>=0.40",
            "ruff>=0.17,<0.18",
        ],
    },
    classifiers=[
        "Framework :: Flask",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: WWW/HTTP :: Dynamic Content",
    ],
)
