"""torchcb's modules import one another one way only: no import circles.

Every import counts, at the top of a module, inside a function, and under
``if TYPE_CHECKING:`` too: a circle of type-only imports still ties the modules together
(a lower module describes what it is handed with a ``typing.Protocol`` instead).
"""

import ast
import pathlib

import torchcb

PACKAGE = pathlib.Path(torchcb.__file__).parent


def _module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(tree, modules):
    """The torchcb modules a module's code imports (``from torchcb import backend`` is torchcb.backend)."""
    found = set()

    def visit(node):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module in modules:
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            named = [name for name in submodules if name in modules]
            found.update(named if named else [node.module])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph():
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: _imported(ast.parse(path.read_text()), paths) - {name} for name, path in paths.items()}


def _circles(graph):
    circles, state, stack = [], {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                circles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return circles


def test_the_graph_sees_the_imports_it_should():
    graph = _graph()
    assert "torchcb.facade" in graph["torchcb.trainer"]
    assert "torchcb.backend" in graph["torchcb.callbacks.lr"]  # from torchcb import backend as K
    assert "torchcb.checkpoint" in graph["torchcb.sharded"]  # under TYPE_CHECKING there: it counts


def test_lower_modules_never_import_the_trainer_the_facade_or_the_callbacks():
    graph = _graph()
    lower = ["torchcb.state", "torchcb.files", "torchcb.checkpoint", "torchcb.step", "torchcb.loops", "torchcb.tree"]
    higher = {"torchcb.trainer", "torchcb.facade", "torchcb.optimizer_facade"}
    for module in lower:
        reached = {target for target in graph[module] if target in higher or target.startswith("torchcb.callbacks")}
        assert reached == set(), module


def test_no_module_imports_one_that_imports_it_back():
    assert _circles(_graph()) == []


def test_a_circle_is_found_when_there_is_one():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
