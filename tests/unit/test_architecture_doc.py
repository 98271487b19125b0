"""docs/architecture.md stays true to the code: its two stage lists are the pipelines' stages, in request order,
read from the modules that build them; it names every module of both pipelines; the README points at it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "sdk" / "meshlet"
DOC = (REPO / "docs" / "architecture.md").read_text()


def _stage_classes(package: str) -> dict[str, str]:
    """Every class the pipeline's __init__ imports from its own stage modules: class name -> module file."""
    tree = ast.parse((PACKAGE / package / "__init__.py").read_text())
    return {
        alias.asname or alias.name: f"{node.module.rpartition('.')[2]}.py"
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(f"meshlet.{package}.")
        for alias in node.names
        if alias.name[0].isupper()
    }


def _function(package: str, name: str) -> ast.FunctionDef:
    tree = ast.parse((PACKAGE / package / "__init__.py").read_text())
    (function,) = (node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name)
    return function


def _outbound_order() -> list[str]:
    """The stage classes of `build_outbound` in request order: each compose() list in order, names and starred
    lists followed to what they were assigned, each compose() terminal after its list (features all on)."""
    classes = _stage_classes("outbound")
    function = _function("outbound", "build_outbound")
    assigned: dict[str, ast.expr] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            assigned[node.targets[0].id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            assigned[node.target.id] = node.value

    def order(expr: ast.expr) -> list[str]:
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name):
            if expr.func.id == "compose":
                terminal = [k.value for k in expr.keywords if k.arg == "terminal"]
                return [*order(expr.args[0]), *(name for t in terminal for name in order(t))]
            return [expr.func.id] if expr.func.id in classes else []
        if isinstance(expr, ast.List):
            return [name for element in expr.elts for name in order(element)]
        if isinstance(expr, ast.Starred):
            return order(expr.value)
        if isinstance(expr, ast.IfExp):
            return order(expr.body)
        if isinstance(expr, ast.Name) and expr.id in assigned:
            return order(assigned[expr.id])
        return []

    (returned,) = (node for node in ast.walk(function) if isinstance(node, ast.Return))
    assert returned.value is not None
    return order(returned.value)


def _inbound_order() -> list[str]:
    """The stage classes `inbound_stages` appends, in the order it appends them (features all on)."""
    classes = _stage_classes("inbound")
    appended = [
        node.args[0]
        for node in ast.walk(_function("inbound", "inbound_stages"))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "append"
        and isinstance(node.args[0], ast.Call)
        and isinstance(node.args[0].func, ast.Name)
        and node.args[0].func.id in classes
    ]
    return [call.func.id for call in sorted(appended, key=lambda call: call.lineno) if isinstance(call.func, ast.Name)]


def _section(heading: str) -> str:
    start = DOC.index(heading)
    end = DOC.find("\n#", start + len(heading))
    return DOC[start : end if end != -1 else len(DOC)]


def _assert_listed_in_order(section: str, stages: list[str], classes: dict[str, str]) -> None:
    assert stages, "no stages found in the code: has the builder changed shape?"
    position = 0
    for number, stage in enumerate(stages, 1):
        entry = f"{number}. `{stage}` (`{classes[stage]}`)"
        found = section.find(entry, position)
        assert found != -1, f"docs/architecture.md should list {entry!r} after the stages before it"
        position = found


def test_the_outbound_stages_are_listed_in_request_order() -> None:
    classes = _stage_classes("outbound")
    order = _outbound_order()
    assert order[0] == "CallSpan"
    assert order[-1] == "SendOnChannel"
    assert order.index("RetryWithinBudget") < order.index("PickEndpoint")
    _assert_listed_in_order(_section("### Outbound"), order, classes)


def test_the_inbound_stages_are_listed_in_request_order() -> None:
    classes = _stage_classes("inbound")
    order = _inbound_order()
    assert order[-1] == "ExposeDeadline"
    _assert_listed_in_order(_section("### Inbound"), order, classes)


def test_every_module_of_both_pipelines_is_named() -> None:
    for package in ("outbound", "inbound"):
        section = _section(f"### {package.capitalize()}")
        for module in sorted((PACKAGE / package).glob("*.py")):
            if module.name != "__init__.py":
                assert f"`{module.name}`" in section, f"docs/architecture.md does not name {package}/{module.name}"


def test_the_readme_layout_points_at_the_architecture_page_and_nowhere_outside() -> None:
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("## Layout") :].split("\n## ", 1)[0]
    assert "docs/architecture.md" in layout
    assert "../" not in layout, "the layout points outside the repository"
