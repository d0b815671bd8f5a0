"""The two worlds, enforced from the code itself (an AST walk, no imports executed).

busi_classifier/serving is everything the Lambda image ships: it imports only the standard
library, NumPy, Pillow and ai_edge_litert, and nothing of busi_classifier outside itself.
The training world imports serving, never the reverse.
"""

import ast
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "busi_classifier"
SERVING = PACKAGE / "serving"
ALLOWED_THIRD_PARTY = {"numpy", "PIL", "ai_edge_litert"}
STDLIB = set(sys.stdlib_module_names)


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """(absolute module name, line) for every import in ``path``, relative ones resolved."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # from . import x
                    found += [(f"{module}.{alias.name}", node.lineno) for alias in node.names]
                    continue
            else:
                module = node.module
            found.append((module, node.lineno))
    return found


def serving_files() -> list[Path]:
    return sorted(SERVING.rglob("*.py"))


def test_the_serving_subpackage_exists_and_is_not_empty():
    names = {p.stem for p in serving_files()}
    assert {"decode", "predictor", "api", "events"} <= names, names


@pytest.mark.parametrize("path", serving_files(), ids=lambda p: p.name)
def test_serving_imports_only_stdlib_numpy_pillow_litert_and_itself(path):
    bad = []
    for module, line in imports_of(path):
        top = module.split(".")[0]
        if module == "busi_classifier" or module.startswith("busi_classifier.serving"):
            continue
        if top == "busi_classifier":
            bad.append(f"{path.name}:{line} imports {module} (the training world)")
        elif top not in STDLIB and top not in ALLOWED_THIRD_PARTY and top != "__future__":
            bad.append(f"{path.name}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_the_boundary_check_sees_a_violation(tmp_path):
    """The walk itself is not blind: a planted import of the training world is found."""
    planted = tmp_path / "busi_classifier" / "serving" / "planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("from ..training import model\nimport tensorflow\nfrom . import decode\n")
    found = {m for m, _ in imports_of(planted, root=tmp_path)}
    assert {"busi_classifier.training", "tensorflow", "busi_classifier.serving.decode"} <= found


def test_lambda_function_imports_only_the_serving_world():
    for module, line in imports_of(ROOT / "lambda_function.py"):
        top = module.split(".")[0]
        assert top in STDLIB or module.startswith("busi_classifier.serving") or module == "busi_classifier", \
            f"lambda_function.py:{line} imports {module}"


def test_the_package_init_imports_nothing():
    """busi_classifier/__init__.py is copied into the image: it must not pull in anything."""
    assert imports_of(PACKAGE / "__init__.py") == []
