"""The package's shape: sub-packages by the method's stage, imports that run one way, no cycle, small modules.

Read from the modules' own import statements (every one, including those inside functions and ``TYPE_CHECKING``
blocks), so the picture cannot drift from the code.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest
from architecture import DOC, PACKAGE, ROOT, STAGES, doc_picture, picture
from architecture import graph as _graph
from architecture import stage as _stage

MAX_LINES = 600


def test_every_module_belongs_to_a_stage():
    loose = [m for m in _graph() if m != "bioimage_cte" and _stage(m) not in STAGES]
    assert loose == [], f"modules outside the stage packages {STAGES}: {loose}"


def test_imports_run_one_way_through_the_stages():
    backwards = []
    for module, deps in _graph().items():
        if module == "bioimage_cte":
            continue  # the public facade re-exports from the stages
        for dep in deps:
            if dep == "bioimage_cte":
                backwards.append(f"{module} -> the package root (import from the stage that defines the name)")
            elif STAGES.index(_stage(dep)) > STAGES.index(_stage(module)):
                backwards.append(f"{module} -> {dep}")
    assert backwards == []


def test_no_import_cycle():
    graph = _graph()
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


@pytest.mark.slow  # imports torch, onnx and bioimageio.core: seconds, though no model is loaded
def test_every_module_imports_in_a_fresh_interpreter_in_reverse_dependency_order():
    """Dependents first: each import then pulls in its dependencies itself, which is where a cycle would break."""
    # __main__ runs the command line when imported
    order = [m for m in list(TopologicalSorter(_graph()).static_order())[::-1] if not m.endswith(".__main__")]
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\nprint(len(sys.argv) - 1)"
    done = subprocess.run([sys.executable, "-c", code, *order], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) == len(order)


def test_no_module_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in [*PACKAGE.rglob("*.py"), *(ROOT / "flows").glob("*.py")]
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_a_predictor_is_built_by_the_factory_through_one_adapter_module():
    graph = _graph()
    adapters = {"bioimage_cte.predict.blackbox", "bioimage_cte.predict.torch_greybox",
                "bioimage_cte.predict.onnx_greybox"}
    # the adapters are reached only through the factory's table, never from each other or from the base
    for module in adapters | {"bioimage_cte.predict.predictor"}:
        assert graph[module] & adapters == set(), module
    # nothing the shared predictor imports imports it back
    assert all("bioimage_cte.predict.predictor" not in graph[dep] for dep in graph["bioimage_cte.predict.predictor"])
    # the factory is the one module that builds adapters; nothing else in the library reaches one
    assert graph["bioimage_cte.predict.factory"] >= adapters
    builders = {m for m, deps in graph.items() if deps & adapters and not m.startswith("bioimage_cte.studies")}
    assert builders == {"bioimage_cte.predict.factory"}


def test_the_library_never_imports_prefect():
    users = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
             if any(n.split(".")[0] == "prefect" for n in _raw_imports(p))]
    assert users == []


def _raw_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_stage_picture_in_the_docs_is_current():
    assert doc_picture(DOC.read_text()) == picture(), "run: python tests/architecture.py"


def test_the_public_api_is_reexported_from_the_root_without_loading_torch():
    code = ("import sys, bioimage_cte as b\n"
            "api = (b.rank, b.evaluate, b.RankOptions, b.ESTIMATORS, b.LABEL_FREE, b.make_estimator, b.__version__)\n"
            "assert b.rank.__module__ == 'bioimage_cte.run.pipeline' and 'tta' in b.LABEL_FREE\n"
            "assert b.RankOptions().make_estimator().name == b.RankOptions().estimator\n"
            "print(sorted(m for m in ('torch', 'bioimageio.core', 'prefect') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
