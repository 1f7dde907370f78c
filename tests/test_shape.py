"""The code's shape, held: sizes a newcomer can read, a first line that says each file's role, no stale patches.

Limits (DEVELOPERS.md, issue 17): no product module over 500 lines, no class over 300, no function over 60;
every product file opens with a docstring; every workflow.patched id is in the versioning policy's table.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

MODULE_MAX, CLASS_MAX, FUNCTION_MAX = 500, 300, 60
# Tests and resources (bench, screenshots, mutation) are not product code; mutants/ is mutmut's copy.
NOT_PRODUCT = ("tests", "resources", "mutants")


def product_files() -> list[Path]:
    """The top-level scripts and modules, and every package beside them (tests, resources and the like aside)."""
    packages = [p for p in REPO.iterdir() if p.is_dir() and (p / "__init__.py").is_file() and p.name not in NOT_PRODUCT]
    return sorted([*REPO.glob("*.py"), *(f for package in packages for f in package.rglob("*.py"))])


def sizes(path: Path) -> list[tuple[str, int, int]]:
    """(kind, name, lines) of the module, each class and each function in path."""
    source = path.read_text()
    found = [("module", path.relative_to(REPO).as_posix(), source.count("\n"))]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            found.append((kind, f"{path.name}:{node.name}", (node.end_lineno or node.lineno) - node.lineno + 1))
    return found


def test_there_is_product_code_to_measure() -> None:
    names = {p.relative_to(REPO).as_posix() for p in product_files()}
    assert {"workflows.py", "release_management.py", "run_worker.py", "orchestrator/flow/deploys.py"} <= names


@pytest.mark.parametrize("path", product_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_module_class_or_function_is_over_its_size(path: Path) -> None:
    limits = {"module": MODULE_MAX, "class": CLASS_MAX, "function": FUNCTION_MAX}
    over = [f"{kind} {name}: {lines} lines" for kind, name, lines in sizes(path) if lines > limits[kind]]
    assert over == []


@pytest.mark.parametrize("path", product_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_each_file_opens_with_a_sentence_that_says_its_role(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    assert docstring, "no docstring"
    first = docstring.split("\n\n")[0]
    assert first.rstrip().endswith((".", ":")) and len(first) > 30, first


def test_every_patch_is_in_the_versioning_policys_table() -> None:
    """A workflow.patched id lives only as long as docs/design.md says (its table names when it goes)."""
    patched = {
        m.group(1)
        for p in product_files()
        for m in re.finditer(r"workflow\.(?:patched|deprecate_patch)\(\s*[\"']([^\"']+)", p.read_text())
    }
    design = (REPO / "docs" / "design.md").read_text()
    table = set(re.findall(r"^\| `([^`]+)` \|", design.split("### Patches", 1)[1], re.MULTILINE))
    assert patched == table
