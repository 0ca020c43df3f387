"""FID/KID of the embedded latent DiT (``assets/dit-fashion-mnist``) against the Fashion-MNIST test images.

    .venv/bin/python scripts/dit_model_quality.py [--per-class 100] [--steps 50] [--guidance 1.0 1.5 4.0]

- model: ``--per-class`` samples of each of the ten classes (class-balanced, as the test set is),
  DDIM ``--steps``, seeds fixed (one generator seeded 0 per guidance scale), drawn through the
  pipeline's own ``DiTPipeline.__call__``; the 32x32 outputs are cropped back to the 28x28
  geometry of the reference set (the training images were padded 28 -> 32 with background);
- VAE reconstruction: the 1,000 test images padded, encoded (posterior mean), decoded, cropped:
  the ceiling the autoencoder puts on any latent model;
- floor: 1,000 real training images vs the same 1,000 test images.
Target: model FID <= 3x the floor. Writes ``assets/dit_model_quality.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.data import CALIBRATION_IMAGES, REFERENCE_IMAGES, load_image_set  # noqa: E402
from core.metrics import fid_kid, inception_features, reference_features  # noqa: E402

MODEL_DIR = ROOT / "assets" / "dit-fashion-mnist"


def rounded(metrics: dict) -> dict:
    return dict(fid=round(metrics["fid"], 3), kid=round(metrics["kid"], 5), kid_std=round(metrics["kid_std"], 5))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5, 4.0])
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "assets" / "dit_model_quality.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import DiTPipeline

    log = (lambda message: print(message, flush=True))
    started = time.perf_counter()
    pipeline = DiTPipeline.from_pretrained(MODEL_DIR)
    pipeline.set_progress_bar_config(disable=True)
    reference = reference_features("fashion-mnist-test")
    log("floor: 1,000 training images")
    floor = fid_kid(reference, inception_features(load_image_set(CALIBRATION_IMAGES)))

    log("VAE reconstruction of the 1,000 test images")
    test = load_image_set(REFERENCE_IMAGES)
    with torch.no_grad():
        padded = F.pad(test, (2, 2, 2, 2), value=-1.0)
        recon = torch.cat([pipeline.vae.decode(pipeline.vae.encode(chunk).latent_dist.mean).sample
                           for chunk in padded.split(250)])
    recon = recon[..., 2:30, 2:30].clamp(-1, 1)
    vae_metrics = fid_kid(reference, inception_features(recon))
    vae_mse = float(F.mse_loss(recon, test))

    labels = [c for c in range(10) for _ in range(args.per_class)]
    rows = []
    for scale in args.guidance:
        log(f"sampling {len(labels)} images (DDIM {args.steps}, guidance {scale})")
        generator = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        chunks = []
        with torch.no_grad():
            for i in range(0, len(labels), args.batch_size):
                out = pipeline(class_labels=labels[i : i + args.batch_size], guidance_scale=scale,
                               num_inference_steps=args.steps, generator=generator, output_type="np").images
                chunks.append(torch.from_numpy(out).permute(0, 3, 1, 2) * 2 - 1)
        samples = torch.cat(chunks)[..., 2:30, 2:30]
        sampling_s = time.perf_counter() - t0
        metrics = fid_kid(reference, inception_features(samples))
        rows.append(dict(guidance_scale=scale, **rounded(metrics), fid_ratio_to_floor=round(metrics["fid"] / floor["fid"], 2),
                         sampling_s=round(sampling_s, 1)))
        log(json.dumps(rows[-1]))
    best = min(rows, key=lambda row: row["fid"])
    training = json.loads((MODEL_DIR / "TRAINING.json").read_text())
    result = dict(
        command="python scripts/dit_model_quality.py" + "".join(
            f" --{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k != "out" and v is not None),
        model="assets/dit-fashion-mnist", training_steps=dict(vae=training["vae"]["steps"], dit=training["dit"]["steps"]),
        num_samples=len(labels), sampler=f"DDIM {args.steps} steps, {args.per_class} per class, seed 0, cropped 32 -> 28",
        reference="1,000 Fashion-MNIST test images",
        model_rows=rows, best=best,
        vae_reconstruction=dict(**rounded(vae_metrics), mse=round(vae_mse, 5)),
        floor=dict(what="1,000 Fashion-MNIST training images vs the same test images", **rounded(floor)),
        target_ratio=3.0, meets_target=bool(best["fid"] <= 3.0 * floor["fid"]),
        total_s=round(time.perf_counter() - started, 1), threads=torch.get_num_threads(), date=time.strftime("%Y-%m-%d"),
    )
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
