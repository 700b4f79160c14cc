"""What ``import flask_security_lite`` adds to a process, against Flask-Security-Too.

Run by hand (from the repository root)::

    python bench/bench_import.py                 # 30 fresh processes per figure

Every figure is the median over fresh ``python`` processes, run interleaved, with
bytecode already compiled (one warm-up process each first; ``PYTHONDONTWRITEBYTECODE``
is dropped for the children). A process times its own imports by its CPU time
(``time.process_time``, which other work on a busy machine does not inflate): first
``import flask``, then ``flask_login``, then the library, so each figure is what that
import adds on top of the ones before.
The child also reports which optional modules the library's import pulled in.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

import common

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
started = time.process_time()
import flask
flask_done = time.process_time()
import flask_login
login_done = time.process_time()
{library_import}
library_done = time.process_time()
optional = ["email_validator", "flask_mail", "passlib.context", "flask_wtf",
            "wtforms", "sqlalchemy", "flask_sqlalchemy", "peewee", "mongoengine"]
print(json.dumps({{
    "flask": flask_done - started,
    "flask_login": login_done - flask_done,
    "library": library_done - login_done,
    "loaded": [name for name in optional if name in sys.modules],
}}))
"""

IMPORTS = {
    "lite": "import flask_security_lite",
    "fst": "import flask_security",
    "login": "pass",
}


def run_child(library):
    code = CHILD.format(root=str(common.ROOT), library_import=IMPORTS[library])
    # Warm bytecode: the children may write and read __pycache__.
    environment = {
        name: value
        for name, value in os.environ.items()
        if name != "PYTHONDONTWRITEBYTECODE"
    }
    output = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env=environment,
    ).stdout
    return json.loads(output)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=30)
    args = parser.parse_args()
    for library in IMPORTS:
        run_child(library)  # compile bytecode
    samples = {library: [] for library in IMPORTS}
    for _ in range(args.processes):
        for library in IMPORTS:
            samples[library].append(run_child(library))

    def median_ms(library, key):
        return statistics.median(sample[key] for sample in samples[library]) * 1e3

    flask_ms = median_ms("login", "flask")
    login_ms = median_ms("login", "flask_login")
    lite_ms, fst_ms = median_ms("lite", "library"), median_ms("fst", "library")
    common.table(
        f"import time in ms, median of {args.processes} fresh processes "
        "(each figure: what the import adds over the row before)",
        ["import", "lite", "Flask-Security-Too", "Flask-Login alone", "bare Flask"],
        [
            ["flask", "", "", "", f"{flask_ms:.1f}"],
            ["flask_login (after flask)", "", "", f"{login_ms:.1f}", ""],
            [
                "the library (after flask, flask_login)",
                f"{lite_ms:.1f}",
                f"{fst_ms:.1f}",
                "",
                "",
            ],
        ],
    )
    print(f"\nlite / Flask-Security-Too: {lite_ms / fst_ms:.2f}")
    for library in ("lite", "fst"):
        loaded = samples[library][-1]["loaded"]
        print(f"optional modules loaded by {common.TITLES[library]}: {loaded}")


if __name__ == "__main__":
    main()
