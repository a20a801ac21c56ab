"""Sessions: tests, lint, examples, docs, package, compat. Run ``nox -s tests`` (torch's CPU build is installed first)."""

import glob
import os

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
    session.run("ruff", "check", "torchcb", "tests", "examples", "benchmarks", "noxfile.py", "conftest.py")
    session.run("ruff", "format", "--check", "torchcb", "tests", "examples", "benchmarks", "noxfile.py", "conftest.py")
    # types: pyright in basic mode, configured under [tool.pyright] in pyproject.toml
    session.install(TORCH)
    session.install("-e", ".[dev,keras]")  # keras: keras_interop imports it (lazily)
    session.run("pyright")


@nox.session
def examples(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[examples]")
    for script in ("quickstart.py", "loss_history.py", "json_lines.py", "ddp.py"):
        session.run("python", f"examples/{script}")
    session.install("-e", ".[test,notebook]")
    session.run("pytest", "-q", "tests/test_notebook.py")  # runs examples/quickstart.ipynb in a kernel, checks its bars


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site: ``mkdocs build --strict`` (a broken link or a missing reference fails it)."""
    session.install(TORCH)
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", os.path.join(session.create_tmp(), "site"))


@nox.session
def package(session: nox.Session) -> None:
    """Build the sdist and the wheel, ``twine check`` them, and run the quickstart from the installed wheel."""
    session.install(TORCH)
    session.install("-e", ".[test,examples,dev]")
    out = session.create_tmp()
    session.run("python", "-m", "build", "--outdir", os.path.join(out, "dist"), ".")
    session.run("twine", "check", "--strict", *sorted(glob.glob(os.path.join(out, "dist", "*"))))
    session.run("pytest", "-q", "-m", "slow", "tests/test_packaging.py")


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


# The supported range: the lowest torch the project claims (with numpy 1.x, which it needs) and the newest
# release on PyPI (with numpy 2.x). Each pin goes into a constraints file so that the test extra cannot move it;
# that file replaces any machine-wide pip constraints for this session.
COMPAT = [("2.3.1", "numpy<2"), ("2.15.0", "numpy>=2")]


@nox.session
@nox.parametrize("torch_version,numpy_spec", COMPAT, ids=[torch for torch, _ in COMPAT])
def compat(session: nox.Session, torch_version: str, numpy_spec: str) -> None:
    """The full test suite on the oldest and the newest supported torch (CPU use of PyPI's wheels)."""
    constraints = os.path.join(session.create_tmp(), "constraints.txt")
    with open(constraints, "w") as file:
        file.write(f"torch=={torch_version}\n{numpy_spec}\n")
    env = {"PIP_CONSTRAINT": constraints}
    session.install(f"torch=={torch_version}", numpy_spec, env=env)
    session.install("-e", ".[test,examples]", env=env)
    session.run("python", "-c", "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__)")
    session.run("pytest", "-q", "-x", "-p", "no:randomly", *session.posargs)
