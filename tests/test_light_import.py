"""``import core``, ``diffprune --help`` and the registries' catalog stay light (no torch).

The facade imports each public name's module on first use (PEP 562) and the CLI's parser is built
from ``core/catalog.json``, so the checks that nothing heavy is imported run in fresh interpreters;
the catalog itself must say exactly what the live registries say.
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "gradio")


def fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter at the repository root; it prints one JSON object."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


HEAVY_LOADED = f"sorted(m for m in {HEAVY!r} if m in sys.modules)"


def test_import_core_imports_no_submodule_and_no_torch():
    found = fresh(f"""
        import json, sys
        import core
        names = dir(core)
        print(json.dumps(dict(heavy={HEAVY_LOADED}, core=sorted(m for m in sys.modules if m.startswith("core")),
                              listed=all(name in names for name in core.__all__))))
    """)
    assert found == dict(heavy=[], core=["core"], listed=True)


def test_the_catalog_reader_is_light():
    found = fresh(f"""
        import json, sys
        from core.catalog import catalog
        registry = catalog()
        print(json.dumps(dict(heavy={HEAVY_LOADED}, criteria=list(registry["criteria"]))))
    """)
    assert found["heavy"] == [] and "magnitude" in found["criteria"]


@pytest.mark.parametrize("argv", [["--help"], ["prune", "--help"], ["sweep", "--help"], ["finetune", "--help"]])
def test_cli_help_does_not_import_torch(argv):
    found = fresh(f"""
        import contextlib, io, json, sys
        from core.cli import main
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                main({argv!r})
            code = None
        except SystemExit as stop:
            code = stop.code
        print(json.dumps(dict(code=code, heavy={HEAVY_LOADED}, usage="usage: diffprune" in out.getvalue())))
    """)
    assert found == dict(code=0, heavy=[], usage=True)


def test_python_m_core_cli_subcommand_help_does_not_import_torch():
    """``python -m core.cli prune --help``, run as ``-m`` runs it, then the modules left loaded."""
    found = fresh(f"""
        import contextlib, io, json, runpy, sys
        sys.argv = ["diffprune", "prune", "--help"]
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                runpy.run_module("core.cli", run_name="__main__", alter_sys=True)
            code = None
        except SystemExit as stop:
            code = stop.code
        text = out.getvalue()
        print(json.dumps(dict(code=code, heavy={HEAVY_LOADED}, choices="magnitude" in text and "--preset" in text)))
    """)
    assert found == dict(code=0, heavy=[], choices=True)


def test_a_usage_error_exits_2_without_importing_torch():
    found = fresh(f"""
        import contextlib, io, json, sys
        from core.cli import main
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                main(["prune", "--output", "x", "--criterion", "no-such-criterion"])
            code = None
        except SystemExit as stop:
            code = stop.code
        print(json.dumps(dict(code=code, heavy={HEAVY_LOADED}, error=err.getvalue())))
    """)
    assert found["code"] == 2 and found["heavy"] == []
    assert found["error"].startswith("diffprune: error:") and "no-such-criterion" in found["error"]


def test_the_shipped_catalog_equals_the_registries():
    """The page and the CLI's parser are built from core/catalog.json (no torch import before
    serving or for --help); it must say exactly what the registries say (regenerate:
    python -m core.catalog)."""
    from core.catalog import CATALOG_FILE, build_catalog

    shipped, live = json.loads(CATALOG_FILE.read_text()), build_catalog()
    assert shipped == live, "core/catalog.json is out of date: run python -m core.catalog"
    for field in ("criteria", "schedules", "granularities", "families"):  # registration order = menu order
        assert list(shipped[field]) == list(live[field]), field


def test_every_public_name_of_the_facade_is_its_module_s_object():
    import importlib

    import core

    for name in core.__all__:
        module = importlib.import_module(f"core.{core._SUBMODULES[name]}")
        assert getattr(core, name) is getattr(module, name), name
    with pytest.raises(AttributeError):
        core.no_such_name  # noqa: B018


def test_facade_functions_win_over_their_submodules_of_the_same_name():
    """``core.evaluate`` / ``core.finetune`` / ``core.sweep`` are modules and facade functions;
    the facade's name is the function whichever was imported first."""
    found = fresh("""
        import json, sys
        import core.evaluate, core.finetune, core.sweep  # the submodules first
        from core import evaluate, finetune, sweep
        import core
        print(json.dumps([callable(evaluate), callable(finetune), callable(sweep),
                          core.evaluate is evaluate, type(sys.modules["core.sweep"]).__name__]))
    """)
    assert found == [True, True, True, True, "module"]


def test_the_facade_registries_hold_every_registered_method():
    """``from core import CRITERIA`` gives the complete registry (obs and gradflow register from their own modules)."""
    found = fresh("""
        import json
        from core import CRITERIA, GRANULARITIES, SCHEDULES
        from core.catalog import CATALOG_FILE
        shipped = json.loads(CATALOG_FILE.read_text())
        print(json.dumps([list(CRITERIA) == list(shipped["criteria"]), list(GRANULARITIES) == list(shipped["granularities"]),
                          list(SCHEDULES) == list(shipped["schedules"])]))
    """)
    assert found == [True, True, True]


def test_the_app_and_core_never_import_ray():
    """Ray is the sweep's optional executor: only ``sweep(..., executor="ray")`` imports it (through
    ``core.sweep_ray``), not ``import core``, the CLI, the sweep module or the app with its engine."""
    found = fresh("""
        import json, sys
        import core, core.cli, core.sweep
        import app
        from diffprune_ui import handlers
        handlers.load_engine()
        print(json.dumps(dict(ray=sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")),
                              engine="core.engine" in sys.modules and "core.sweep" in sys.modules)))
    """)
    assert found == dict(ray=[], engine=True)
