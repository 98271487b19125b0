"""The dev agent's ``?filter=`` parser (bexpr), the one parser there that reads a caller's text: any text
compiles or raises FilterError (never a crash the agent answers 500 to); an expression printed from a random
tree evaluates as a plain reference evaluator of that tree does."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from meshlet.devagent.filtering import FilterError, compile_filter
from tests.properties.outcome import attempt

WORDS = ["Service", "Port", "Tags", "Meta", "env", "and", "or", "not", "in", "is", "empty", "contains", "matches"]
expression_like = st.lists(
    st.one_of(st.sampled_from([*WORDS, "==", "!=", "(", ")", ".", "[", "]", '"', "`", " ", "\\", "1", "-"]),
              st.text(max_size=3)),
    max_size=14,
).map(" ".join)  # fmt: skip


@given(st.one_of(expression_like, st.text(max_size=40)))
@example("(" * 5000)  # one Python frame per parenthesis: RecursionError, answered 500
@example("not " * 5000 + "Service")
@example('"\\x')
@example("Port == 99999999999999999999999999999999999999999999")
@example('Service == "x" or ' * 3000 + "Port == 80")  # or-chains nested closures: RecursionError when evaluated
@example('Service == "x" and ' * 3000 + "Port == 80")
@example("Port == 0x" + "f" * 5000)  # past Python's 4300 digits int() raises; the filter reads it as no number
def test_any_text_compiles_or_raises_filter_error(text: str) -> None:
    outcome = attempt(lambda: compile_filter(text), FilterError)
    if outcome.refused:
        assert str(outcome.error)[0].isdigit()  # "line:column (offset): ..."
    else:
        assert outcome.value is not None
        outcome.value({"Service": "web", "Port": 80, "Tags": ["a"], "Meta": {"env": "x"}})


# ----------------------------------------------------------------------------------------- reference model


@dataclass(frozen=True)
class Match:
    selector: str  # "Service", "Port", "Meta.env"...
    operator: str  # "==", "!=", "in", "not in", "is empty", "is not empty"
    value: str

    def text(self) -> str:
        if self.operator in ("in", "not in"):
            return f"{json.dumps(self.value)} {self.operator} {self.selector}"
        if self.operator.startswith("is"):
            return f"{self.selector} {self.operator}"
        return f"{self.selector} {self.operator} {json.dumps(self.value)}"

    def holds(self, element: dict[str, Any]) -> bool:
        found: Any = element
        for step in self.selector.split("."):
            found = found.get(step) if isinstance(found, dict) else None
        if self.operator in ("is empty", "is not empty"):
            empty = found is None or found in ("", [], {})
            return empty if self.operator == "is empty" else not empty
        if self.operator in ("in", "not in"):
            inside = isinstance(found, str | dict | list) and self.value in found
            return inside if self.operator == "in" else not inside
        equal = found == self.value or (isinstance(found, int) and str(found) == self.value)
        return equal if self.operator == "==" else not equal


@dataclass(frozen=True)
class Node:
    operator: str  # "and", "or", "not"
    children: tuple[Any, ...]

    def text(self) -> str:
        if self.operator == "not":
            return f"not ({self.children[0].text()})"
        return f" {self.operator} ".join(f"({child.text()})" for child in self.children)

    def holds(self, element: dict[str, Any]) -> bool:
        if self.operator == "not":
            return not self.children[0].holds(element)
        results = [child.holds(element) for child in self.children]
        return all(results) if self.operator == "and" else any(results)


values = st.sampled_from(["web", "api", "a", "b", "prod", "", "80", "8080", "x y", 'q"uote', "ü"])
matches = st.one_of(
    st.builds(Match, st.sampled_from(["Service", "Meta.env", "Meta.zone", "Port"]), st.sampled_from(["==", "!="]),
              values),
    st.builds(Match, st.sampled_from(["Tags", "Meta", "Service"]), st.sampled_from(["in", "not in"]), values),
    st.builds(Match, st.sampled_from(["Tags", "Meta", "Service", "Meta.env"]),
              st.sampled_from(["is empty", "is not empty"]), st.just("")),
)  # fmt: skip
trees = st.recursive(
    matches,
    lambda children: st.one_of(
        st.builds(Node, st.just("not"), st.tuples(children)),
        st.builds(Node, st.sampled_from(["and", "or"]), st.tuples(children, children)),
    ),
    max_leaves=6,
)
elements = st.fixed_dictionaries(
    {
        "Service": values,
        "Port": st.sampled_from([80, 8080, 443]),
        "Tags": st.lists(values, max_size=3),
        "Meta": st.dictionaries(st.sampled_from(["env", "zone"]), values, max_size=2),
    }
)


@given(trees, elements)
def test_a_printed_expression_evaluates_as_the_reference_model(tree: Match | Node, element: dict[str, Any]) -> None:
    assert compile_filter(tree.text())(element) == tree.holds(element)
