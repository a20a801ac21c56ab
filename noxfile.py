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
    session.run("ruff", "check", "torchcb", "tests", "examples", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "torchcb", "tests", "examples", "benchmarks", "noxfile.py")


@nox.session
def examples(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[examples]")
    for script in ("quickstart.py", "loss_history.py", "json_lines.py", "ddp.py"):
        session.run("python", f"examples/{script}")


@nox.session
def crash(session: nox.Session) -> None:
    """The kill -9 tests with 50 kills at random moments (the default test run makes 5)."""
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "tests/test_crash.py", env={"TORCHCB_KILL_TRIALS": "50"})


@nox.session
def bench(session: nox.Session) -> None:
    """torchcb against a hand-written loop (benchmarks/bench.py); not part of the tests."""
    session.install(TORCH)
    session.install("-e", ".")
    session.run("python", "benchmarks/bench.py", *session.posargs)


@nox.session
def distributed(session: nox.Session) -> None:
    """The distributed tests (2 processes under torchrun: DDP and FSDP) and both torchrun examples."""
    session.install(TORCH)
    session.install("-e", ".[test,examples]")
    session.run("pytest", "-q", "tests/test_distributed.py", "tests/test_fsdp.py")
    for script in ("ddp.py", "fsdp.py"):
        session.run("torchrun", "--standalone", "--nproc_per_node=2", f"examples/{script}")


@nox.session
def keras(session: nox.Session) -> None:
    """Callbacks written for Keras: the keras package's own (Keras 3, torch backend) and packaged ones."""
    session.install(TORCH)
    session.install("-e", ".[test,examples,keras]")
    env = {"KERAS_BACKEND": "torch"}
    session.run("pytest", "-q", "tests/test_keras_callbacks.py", "tests/test_third_party_callbacks.py", env=env)
    session.run("python", "examples/keras_callbacks.py", env=env)
