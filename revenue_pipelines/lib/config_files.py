"""YAML configuration files read into pydantic models, with errors that say where.

A mistake in a hand-written file should read like a compiler's: the file, the line, the field and
what was expected. PyYAML's node tree keeps each value's line; pydantic's errors name the path to
the field; `load_items` joins the two. Each item of a file's top-level list is validated on its own,
so one wrong item is reported without hiding the others.

A string value may name settings of the environment, `${NAME}` or `${NAME:-default}` (an address
that differs between the sandbox and production, say). Never a secret: the values end up in the UI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class ConfigProblem:
    file: Path
    line: int
    """1-based."""
    field: str
    """The path to the field, e.g. `routes[2].destination.url`."""
    expected: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.expected}"


class ConfigError(ValueError):
    """Every problem of one file, one per line."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def load_items[M: BaseModel](
    path: Path, list_key: str, model: type[M], variables: Mapping[str, str] | None = None
) -> tuple[list[tuple[M, int]], list[ConfigProblem]]:
    """The valid items of the list under `list_key` in the file at `path`, each with its line, and
    the problems of the others (or of the whole file: unreadable, not YAML, no such list), each at
    its line. `${NAME}` in a string takes its value from `variables`."""
    try:
        text = path.read_text()
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        document = yaml.safe_load(text)
    except OSError as error:
        return [], [ConfigProblem(path, 1, list_key, f"cannot be read: {error.strerror}")]
    except yaml.MarkedYAMLError as error:
        line = error.problem_mark.line + 1 if error.problem_mark else 1
        return [], [ConfigProblem(path, line, list_key, f"not valid YAML: {error.problem}")]
    items_node = _child(root, list_key) if root is not None else None
    items = document.get(list_key) if isinstance(document, dict) else None
    if not isinstance(items, list) or not isinstance(items_node, yaml.SequenceNode):
        return [], [ConfigProblem(path, 1, list_key, f"the file must be a mapping with a list under {list_key}:")]
    valid: list[tuple[M, int]] = []
    problems: list[ConfigProblem] = []
    for index, (item, node) in enumerate(zip(items, items_node.value, strict=True)):
        unset: list[ConfigProblem] = []
        item = _substituted(item, node, variables or {}, path, f"{list_key}[{index}]", unset)
        if unset:
            problems += unset
            continue
        try:
            valid.append((model.model_validate(item), node.start_mark.line + 1))
        except ValidationError as error:
            for detail in error.errors(include_url=False):
                line, field = _locate(node, f"{list_key}[{index}]", list(detail["loc"]))
                problems.append(ConfigProblem(path, line, field, _expected(detail)))
    return valid, problems


def _substituted(
    value: Any, node: yaml.Node | None, variables: Mapping[str, str], path: Path, field: str, unset: list[ConfigProblem]
) -> Any:
    """`value` with `${NAME}` in its strings replaced; a name neither set nor defaulted is a problem."""
    if isinstance(value, str):

        def replace(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in variables and variables[name] != "":
                return variables[name]
            if default is not None:
                return default
            line = node.start_mark.line + 1 if node is not None else 1
            unset.append(ConfigProblem(path, line, field, f"${{{name}}} is not set in the environment"))
            return match.group(0)

        return VARIABLE.sub(replace, value)
    if isinstance(value, dict):
        return {
            key: _substituted(item, _child(node, key) if node else None, variables, path, f"{field}.{key}", unset)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            _substituted(item, _child(node, i) if node else None, variables, path, f"{field}[{i}]", unset)
            for i, item in enumerate(value)
        ]
    return value


def _child(node: yaml.Node, key: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == key:
                return value_node
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        return node.value[key]
    return None


def _locate(node: yaml.Node, prefix: str, location: list[str | int]) -> tuple[int, str]:
    """The line of the deepest node on pydantic's `location` that is in the file (a missing field:
    its parent's), and the field's path as the file spells it. Pydantic puts a tagged union's tag in
    the location (`destination.webhook.url`); the file has no such level, so it is skipped."""
    path = prefix
    for position, key in enumerate(location):
        child = _child(node, key)
        if child is None:
            last = position == len(location) - 1
            if not last and isinstance(key, str):
                continue  # a union's tag
            path += f"[{key}]" if isinstance(key, int) else f".{key}"
            key_nodes = [k for k, _ in node.value] if isinstance(node, yaml.MappingNode) else []
            for key_node in key_nodes:
                if key_node.value == key:  # a field that is not allowed here: point at its name
                    return key_node.start_mark.line + 1, path
            return node.start_mark.line + 1, path
        path += f"[{key}]" if isinstance(key, int) else f".{key}"
        node = child
    return node.start_mark.line + 1, path


def _expected(detail: dict[str, Any]) -> str:
    message = detail["msg"].removeprefix("Value error, ")
    if detail["type"] == "extra_forbidden":
        return "is not a field here (a typo?)"
    if detail["type"] == "missing":
        return "is required"
    if detail["type"] in ("union_tag_invalid", "union_tag_not_found") and (tags := detail.get("ctx", {})):
        return f"kind must be one of {tags.get('expected_tags', '?')}"
    return message
