"""Copy the EMA pipeline of a train-base run into assets/ and record how it was made.

Usage: .venv/bin/python scripts/ship_default_model.py [runs/train-base]
Writes assets/ddpm-fashion-mnist/ (diffusers format) and its TRAINING.json (steps, wall time
summed over resumed segments, hardware, command, date).
"""
import csv
import datetime
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from core.default_model import DEFAULT_MODEL_DIR  # noqa: E402


def wall_seconds(loss_csv: Path) -> float:
    """Sum of the per-segment maxima of the 'seconds' column (it restarts at each resume)."""
    total, segment_max, previous = 0.0, 0.0, -1.0
    with loss_csv.open() as handle:
        for row in csv.DictReader(handle):
            if row["step"] == "step":  # header repeated by a resumed run
                continue
            seconds = float(row["seconds"])
            if seconds < previous:
                total += segment_max
                segment_max = 0.0
            segment_max = max(segment_max, seconds)
            previous = seconds
    return total + segment_max


def main(run_dir: str = "runs/train-base") -> None:
    run = Path(run_dir)
    progress = json.loads((run / "progress.json").read_text())
    if DEFAULT_MODEL_DIR.exists():
        shutil.rmtree(DEFAULT_MODEL_DIR)
    shutil.copytree(run / "pipeline", DEFAULT_MODEL_DIR)
    config = progress["config"]
    info = {
        "steps": progress["step"],
        "target_steps": config["steps"],
        "batch_size": config["batch_size"],
        "learning_rate": config["learning_rate"],
        "ema_decay": config["ema_decay"],
        "seed": config["seed"],
        "wall_time_hours_at_last_log": round(wall_seconds(run / "loss.csv") / 3600, 2),
        "hardware": "2-core x86_64 CPU (no GPU), torch 2.13.0+cpu, 1-2 threads, other jobs sharing the CPU",
        "command": f".venv/bin/diffprune train-base --output-dir {run_dir} --steps {config['steps']} --threads 2 "
                   "(resumed several times, later segments with --threads 1)",
        "stopped_early": progress["step"] < config["steps"],
        "shipped_on": datetime.date.today().isoformat(),
    }
    (DEFAULT_MODEL_DIR / "TRAINING.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:])
