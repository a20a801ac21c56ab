"""In Jupyter, ``verbose=1`` shows one progress bar per epoch, redrawn in place.

The notebooks run in a real IPython kernel (nbclient); their stream output is read back as
Jupyter shows it: a carriage return sends the text after it back over its line.
"""

import pathlib
import re

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
BAR = re.compile(r"^\s*\d+/\d+ \[[=>.]{30}\]")


def _as_displayed(text):
    """The lines Jupyter displays for a stream: each ``\\r`` rewrites its line from the start."""
    lines = []
    for raw in text.split("\n"):
        shown = ""
        for part in raw.split("\r"):
            shown = part + shown[len(part) :]
        lines.append(shown)
    return lines[:-1] if lines and lines[-1] == "" else lines


def _run(notebook, cwd):
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    return notebook


def _stdout(cell):
    return "".join(output["text"] for output in cell.outputs if output.get("name") == "stdout")


def test_quickstart_notebook_shows_one_bar_line_per_epoch(tmp_path):
    pytest.importorskip("sklearn")
    notebook = _run(nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4), tmp_path)
    fit_cell = next(cell for cell in notebook.cells if "trainer.fit(" in cell.source)
    lines = _as_displayed(_stdout(fit_cell))
    epochs = [line for line in lines if line.startswith("Epoch ")]
    assert epochs == [f"Epoch {epoch}/5" for epoch in range(1, 6)]
    assert len(lines) == 2 * len(epochs)  # each "Epoch k/5" followed by exactly one bar line
    for epoch_line, bar_line in zip(lines[0::2], lines[1::2]):
        assert epoch_line.startswith("Epoch ")
        assert bar_line.startswith("1200/1200 [==============================] - ") and "val_accuracy:" in bar_line
    assert (tmp_path / "runs" / "best.pt").is_file()
    assert "test accuracy:" in _stdout(notebook.cells[-1])


def test_the_bar_is_redrawn_in_place_without_backspaces(tmp_path):
    source = """
import torch
from torchcb import Trainer
from torchcb.callbacks.progbar import ProgbarLogger, in_notebook
ProgbarLogger.interval = 0.0  # redraw at every batch
print("in notebook:", in_notebook())
net = torch.nn.Linear(4, 2)
trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1), loss="sparse_categorical_crossentropy", device="cpu")
trainer.fit(torch.randn(64, 4), torch.randint(0, 2, (64,)), batch_size=8, epochs=3, verbose=1)
"""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    text = _stdout(_run(notebook, tmp_path).cells[0])
    assert "\b" not in text
    lines = _as_displayed(text)
    assert lines[0] == "in notebook: True"
    assert lines[1::2] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    assert all(BAR.match(line) and line.lstrip().startswith("64/64 ") for line in lines[2::2])
    assert len(lines) == 7
    # the running bar was drawn before each final one: 7 of the 8 batches redraw, then the final line
    per_epoch = text.split("Epoch ")[1:]
    assert [chunk.count("\r") for chunk in per_epoch] == [8, 8, 8]
