"""FID/KID of the shipped default model against the Fashion-MNIST test images, beside the floor.

    .venv/bin/python scripts/default_model_quality.py [--num-samples 1000] [--steps 50] [--threads 2]

- model: N samples of ``assets/ddpm-fashion-mnist`` (DDIM, ``--steps``, seed 0) vs the 1,000 test
  images (shipped Inception features);
- floor: 1,000 real training images vs the same 1,000 test images (what a perfect model of the
  data distribution would score at this sample count: FID is biased at n = 1,000).
Target: model FID <= 3x the floor. Writes ``assets/default_model_quality.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import load_pipeline, sample_images  # noqa: E402
from core.data import CALIBRATION_IMAGES, load_image_set  # noqa: E402
from core.metrics import fid_kid, inception_features, reference_features  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "assets" / "default_model_quality.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda message: print(message, flush=True))
    started = time.perf_counter()
    reference = reference_features("fashion-mnist-test")
    train = load_image_set(CALIBRATION_IMAGES)
    log("features of the 1,000 training images (floor)")
    floor = fid_kid(reference, inception_features(train))
    pipeline = load_pipeline(None, device="cpu")
    log(f"sampling {args.num_samples} images, DDIM {args.steps} steps")
    t0 = time.perf_counter()
    samples = sample_images(pipeline, args.num_samples, args.steps, seed=0)
    sampling_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    features = inception_features(samples)
    features_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = fid_kid(reference, features)
    metrics_s = time.perf_counter() - t0
    training = json.loads((ROOT / "assets" / "ddpm-fashion-mnist" / "TRAINING.json").read_text())
    result = dict(
        command="python scripts/default_model_quality.py" + "".join(
            f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out" and v is not None),
        training_steps=training.get("steps"), num_samples=args.num_samples, sampler=f"DDIM {args.steps} steps, seed 0",
        reference="1,000 Fashion-MNIST test images",
        model=dict(fid=round(model["fid"], 3), kid=round(model["kid"], 5), kid_std=round(model["kid_std"], 5)),
        floor=dict(what="1,000 Fashion-MNIST training images vs the same test images", fid=round(floor["fid"], 3),
                   kid=round(floor["kid"], 5), kid_std=round(floor["kid_std"], 5)),
        fid_ratio_to_floor=round(model["fid"] / floor["fid"], 2), target_ratio=3.0,
        meets_target=bool(model["fid"] <= 3.0 * floor["fid"]),
        sampling_s=round(sampling_s, 1), inception_features_s=round(features_s, 1),
        fid_kid_computation_s=round(metrics_s, 1), fid_kid_of_samples_s=round(sampling_s + features_s + metrics_s, 1),
        total_s=round(time.perf_counter() - started, 1),
        threads=torch.get_num_threads(), date=time.strftime("%Y-%m-%d"),
    )
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
