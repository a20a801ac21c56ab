"""Sessions: tests, lint, examples. Run ``nox -s tests`` (torch's CPU build is installed first)."""

import nox

nox.options.sessions = ["tests", "lint"]
TORCH = "torch==2.13.0"


@nox.session
def tests(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[test,examples]")
    session.run("pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "torchcb", "tests", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "torchcb", "tests", "examples", "noxfile.py")


@nox.session
def examples(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[examples]")
    for script in ("quickstart.py", "loss_history.py", "json_lines.py"):
        session.run("python", f"examples/{script}")


@nox.session
def crash(session: nox.Session) -> None:
    """The kill -9 tests with 50 kills at random moments (the default test run makes 5)."""
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "tests/test_crash.py", env={"TORCHCB_KILL_TRIALS": "50"})
