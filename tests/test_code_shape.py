"""The shape of the code, read with ``ast``: handlers stay short and no function takes a long list
of loose parameters (settings travel as one frozen, validated object: a ``PruneSpec`` or a
``*Settings`` dataclass; the page's many widget values are collected into one namespace at the
boundary, ``diffprune_ui.handlers.collect_controls``)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = ROOT / "diffprune_ui" / "handlers.py"
MAX_PARAMETERS = 8
MAX_HANDLER_LINES = 60

# Functions allowed more than MAX_PARAMETERS loose parameters, each with its reason. Keyed by name,
# so that moving one between modules does not matter.
PARAMETER_EXCEPTIONS = {
    # Public keyword APIs of the engine, used by the CLI, the benchmarks and the tests with keywords
    # and defaults; their arguments are independent knobs of one instrument, not a run's settings.
    "evaluate": "core.evaluate's public keyword API: every option of the measurement has a default",
    "finetune": "core.finetune's public keyword API (Diff-Pruning / NiCI options), all keyword with defaults",
    "sample_images": "the sampler's keyword options (noise, class, prompt, scheduler, batch), all with defaults",
    "paired_step_latency": "the timing instrument's knobs (rounds, warm-up, budget), all keyword with defaults",
    "measure_latency_pair": "the benchmarks' latency instrument, keyword options with defaults",
    "compare_grid": "a keyword convenience of the public facade (dense vs pruned grid)",
}


def _is_settings(argument: ast.arg) -> bool:
    """A spec or settings object: named so, or annotated with a PruneSpec or a *Settings class."""
    annotation = ast.unparse(argument.annotation) if argument.annotation is not None else ""
    return argument.arg in ("spec", "settings") or "PruneSpec" in annotation or "Settings" in annotation


def _functions(paths):
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def _loose_parameters(node) -> list[str]:
    args = node.args
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    every += [a for a in (args.vararg, args.kwarg) if a is not None]
    return [a.arg for a in every if a.arg not in ("self", "cls") and not _is_settings(a)]


def test_no_function_takes_more_than_eight_loose_parameters():
    paths = [HANDLERS, *sorted((ROOT / "core").rglob("*.py"))]
    offenders = []
    for path, node in _functions(paths):
        loose = _loose_parameters(node)
        if len(loose) > MAX_PARAMETERS and node.name not in PARAMETER_EXCEPTIONS:
            offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}({', '.join(loose)})")
    assert not offenders, "collect these into a spec or a settings object:\n" + "\n".join(offenders)


def test_every_exception_is_still_needed():
    """An exception that no longer applies is removed, so the list says what is true now."""
    paths = [HANDLERS, *sorted((ROOT / "core").rglob("*.py"))]
    needed = {node.name for _, node in _functions(paths) if len(_loose_parameters(node)) > MAX_PARAMETERS}
    assert set(PARAMETER_EXCEPTIONS) <= needed, sorted(set(PARAMETER_EXCEPTIONS) - needed)


def test_no_handler_is_longer_than_sixty_lines():
    long = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines" for _, node in _functions([HANDLERS])
            if node.end_lineno - node.lineno + 1 > MAX_HANDLER_LINES]
    assert not long, long


def test_the_run_workflow_lives_in_core_and_the_handlers_call_it():
    """One workflow (core.run), one export writer (core.export), one frontier (core.frontier): the
    app, the CLI and the frontier benchmarks call them instead of keeping copies."""
    handlers = HANDLERS.read_text()
    assert "from core.run import" in handlers and "from core.frontier import" in handlers
    for copy in ("finetune(", "paired_step_latency(", "save_pretrained", "write_shape_config", ".to_csv("):
        assert copy not in handlers, copy
    cli = (ROOT / "core" / "cli.py").read_text()
    assert "from .run import" in cli
    for benchmark in ("dense_frontier.py", "bench_frontier.py"):
        assert "from core.frontier import" in (ROOT / "benchmarks" / benchmark).read_text(), benchmark
    assert "from core.run import" in (ROOT / "benchmarks" / "bench_frontier.py").read_text()
    # The sweep and the benchmarks' prune -> recover -> evaluate chains go through core.run too.
    sweep = (ROOT / "core" / "sweep.py").read_text()
    assert "from .run import" in sweep and "finetune(" not in sweep
    for benchmark in ("suite.py", "bench_recovery.py", "bench_dit.py"):
        text = (ROOT / "benchmarks" / benchmark).read_text()
        assert "from core.run import" in text and "finetune(" not in text, benchmark
