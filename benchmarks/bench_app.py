"""App responsiveness, measured against the real launched app (``python app.py``).

    python benchmarks/bench_app.py [--threads 2] [--runs 1]

- page ready: seconds from starting ``python app.py`` until ``GET /`` answers 200, and until the
  first screen's data (the dense samples, the schedule curve, the charts) has been computed;
- import floor: seconds for ``python -c "import gradio"`` and ``"import torch, diffusers"`` alone;
- quick run: the issue's quick run on the default model (taylor, channel 30 %, default
  calibration, 16 samples, 25 steps, KID) through ``gradio_client``, wall time per run. A second
  run with another sparsity shows the calibration reuse.

Writes ``benchmarks/results/app.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICK_RUN = dict(source="", criterion="taylor", granularity="channel", sparsity=0.3, schedule="threshold",
                 threshold=0.05, interval_weights="1,1,1,1", num_steps=25, w_min=0.8, w_max=1.2, num_timesteps=10,
                 custom_text="0:1", calibration_batch_size=4, calibration_batches=1, num_samples=16, steps=25, seed=0,
                 quality="KID")


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="DIFFPRUNE_THREADS for the app (default: torch's)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "app.json"))
    args = parser.parse_args(argv)
    from gradio_client import Client

    imports = {}
    for label, statement in (("gradio", "import gradio"), ("torch_diffusers", "import torch, diffusers")):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True)
        imports[label] = round(time.perf_counter() - t0, 2)
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
               DIFFPRUNE_RESULTS_DIR=str(ROOT / "benchmarks" / "results" / "app-store"))
    if args.threads:
        env["DIFFPRUNE_THREADS"] = str(args.threads)
    url = f"http://127.0.0.1:{port}/"
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
            if process.poll() is not None:
                raise SystemExit("app.py exited before serving")
        page_ready = time.perf_counter() - started
        client = Client(url, verbose=False)
        t0 = time.perf_counter()
        client.predict("", 0, 25, "threshold", 0.05, "1,1,1,1", 25, 0.8, 1.2, 10, "0:1", api_name="/first_screen")
        first_screen = time.perf_counter() - t0
        runs = []
        for sparsity in (0.3, 0.5):
            t0 = time.perf_counter()
            outputs = client.predict(*dict(QUICK_RUN, sparsity=sparsity).values(), api_name="/run_prune")
            runs.append(dict(sparsity=sparsity, wall_s=round(time.perf_counter() - t0, 2), status=outputs[0]))
    finally:
        process.terminate()
        process.wait(timeout=30)
    result = dict(
        command="python benchmarks/bench_app.py" + (f" --threads {args.threads}" if args.threads else ""),
        date=time.strftime("%Y-%m-%d %H:%M"), cpu_count=os.cpu_count(), python=platform.python_version(),
        load_average_1_min=os.getloadavg()[0], import_s=imports, page_ready_s=round(page_ready, 2),
        first_screen_s=round(first_screen, 2), page_ready_target_s=3.0, quick_run_target_s=60.0,
        quick_run=QUICK_RUN, runs=runs,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
