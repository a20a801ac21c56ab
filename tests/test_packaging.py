"""The wheel a user installs: it builds, installs into a fresh virtual environment, and runs the
quickstart from there (outside the checkout, with the checkout nowhere on ``sys.path``).

The fresh environment reuses this one's packages (torch, numpy, scikit-learn ...) through a plain
path entry, so nothing large is downloaded; a path entry runs no ``.pth`` file of this environment,
so an editable install of the checkout here is not seen there.
"""

import os
import pathlib
import shutil
import site
import subprocess
import sys
import venv
import zipfile

import pytest

import torchcb

ROOT = pathlib.Path(__file__).resolve().parent.parent

PROBE = """
import pathlib, runpy, sys
import torchcb
print("torchcb", torchcb.__version__, torchcb.__file__)
assert pathlib.Path(torchcb.__file__).resolve().is_relative_to(pathlib.Path(sys.prefix).resolve()), torchcb.__file__
assert (pathlib.Path(torchcb.__file__).parent / "py.typed").is_file()
runpy.run_path("quickstart.py", run_name="__main__")
"""


def _build_wheel(out: pathlib.Path) -> pathlib.Path:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = out.glob("torchcb-*.whl")
    return wheel


@pytest.mark.slow
def test_the_wheel_installs_in_a_fresh_venv_and_runs_the_quickstart(tmp_path):
    pytest.importorskip("sklearn")
    wheel = _build_wheel(tmp_path / "dist")
    assert wheel.name == f"torchcb-{torchcb.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "torchcb/py.typed" in names
    assert not any(name.startswith(("tests/", "docs/", "examples/")) for name in names)

    # the checkout must be nowhere on the path (it may hold a torchcb.egg-info that pip would take as installed)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    own_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.strip()
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    # then this environment's packages, as a plain path entry after the fresh environment's own (added
    # after the install, or pip would take the torchcb installed here for the one it was asked for)
    pathlib.Path(own_site, "_shared_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    work = tmp_path / "user"
    work.mkdir()
    shutil.copy(ROOT / "examples" / "quickstart.py", work / "quickstart.py")
    done = subprocess.run([python, "-c", PROBE], cwd=work, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    first = done.stdout.splitlines()[0]
    assert first.startswith(f"torchcb {torchcb.__version__} {env_dir}")
    assert "test accuracy of the best checkpoint" in done.stdout
    assert (work / "runs" / "best.pt").is_file()
