"""Recovery fine-tuning of a pruned checkpoint on one or many processes (``core.finetune``, DDP).

Launched by ``accelerate launch`` or ``torchrun``, every process runs this script: each trains on
its slice of the global batch (``--batch-size``), the gradients are averaged across processes, and
only the main process writes ``--output`` (the fine-tuned pipeline, ``finetune_losses.csv``) and
``--output/checkpoints`` (resumed automatically). Every process prints one ``replica`` line: its
final weights' digest (equal on every process) and how many pruned weights are not zero (0).

Usage::

    accelerate launch --num_processes 4 scripts/finetune_distributed.py \\
        --model runs/magnitude-50 --output runs/magnitude-50-tuned --steps 1000 --batch-size 64
    torchrun --nproc_per_node 2 scripts/finetune_distributed.py --device cpu \\
        --model runs/magnitude-50 --output runs/magnitude-50-tuned --steps 100 --batch-size 16
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a pruned checkpoint (PruneResult.save) or a diffusers pipeline")
    parser.add_argument("--output", required=True, help="directory for the fine-tuned pipeline")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    parser.add_argument("--batch-size", type=int, default=16, help="the global batch, split across the processes")
    parser.add_argument("--lr", type=float, default=2e-4, help="learning rate (default 2e-4, Diff-Pruning's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", default=None, help="training image folder (default: the shipped Fashion-MNIST set)")
    parser.add_argument("--ema", type=float, default=None, help="EMA decay in (0, 1); default no EMA")
    parser.add_argument("--l1-penalty", type=float, default=0.0)
    parser.add_argument("--regrowth", type=float, default=0.0)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping; 0 turns it off")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (0: at the end)")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto",
                        help="cpu: train on CPUs (gloo) even where GPUs exist; auto: accelerate's choice")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # read by accelerate when finetune creates its Accelerator
    import pandas as pd
    import torch

    from core import PruneReport, PruneResult, PruneSpec, finetune, load_pipeline
    from core.checkpoint import read_marker, save_pruned_pipeline
    from core.data import load_image_folder
    from core.pipeline import PRUNED_MARKER, adapter_of

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # on the CPU: finetune copies the denoiser to this process's device (cuda:<local rank> under a launcher)
    pipeline = load_pipeline(args.model, device="cpu")
    model = Path(args.model)
    spec_fields = read_marker(model).get("spec") if (model / PRUNED_MARKER).is_file() else None
    spec = PruneSpec.from_dict(spec_fields) if spec_fields else None
    # a PruneResult carries the spec: unstructured / N:M zeros stay zero, structural results get no masks
    source = PruneResult(pipeline=pipeline, report=PruneReport(layers=pd.DataFrame()), spec=spec) if spec else pipeline
    adapter = adapter_of(pipeline)
    channels, size, _ = adapter.image_shape(pipeline)
    images = load_image_folder(args.images, size, channels) if args.images is not None else None
    output = Path(args.output)
    result = finetune(
        source, args.steps, args.lr, args.batch_size, ema=args.ema, images=images, l1_penalty=args.l1_penalty,
        regrowth=args.regrowth, warmup_steps=args.warmup_steps, max_grad_norm=args.max_grad_norm or None,
        seed=args.seed, output_dir=output / "checkpoints", checkpoint_every=args.checkpoint_every,
        mixed_precision=args.mixed_precision,
    )
    denoiser = adapter.denoiser(result.pipeline)
    modules = dict(denoiser.named_modules())
    revived = sum(int((modules[name].weight[~mask.to(modules[name].weight.device)] != 0).sum())
                  for name, mask in result.masks.items())
    digest = hashlib.sha256()
    for name, value in sorted(denoiser.state_dict().items()):
        digest.update(name.encode() + value.detach().cpu().contiguous().numpy().tobytes())
    rank = int(os.environ.get("RANK", "0"))
    print(f"replica {rank}/{result.num_processes}: weights sha256 {digest.hexdigest()[:16]}, "
          f"pruned weights not zero {revived}", flush=True)
    if not result.is_main_process:
        return 0
    save_pruned_pipeline(result.pipeline, output, spec=spec)
    result.losses.to_csv(output / "finetune_losses.csv", index=False)
    resumed = f", resumed from step {result.resumed_from}" if result.resumed_from else ""
    last = f", final loss {result.losses.loss.iloc[-1]:.4f}" if len(result.losses) else ""
    local_batch = args.batch_size // result.num_processes
    print(f"fine-tuned {result.steps} steps on {result.num_processes} process(es) x {local_batch} images "
          f"in {result.wall_time_s:.1f} s{resumed}{last}")
    print(f"saved to {output} (checkpoints in {output / 'checkpoints'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
