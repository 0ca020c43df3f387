"""Which learning rate the app's default recovery budget should use.

    python benchmarks/recovery_lr.py

Prunes the embedded default model with ``taylor`` to 44 % channel sparsity, recovers it for 200
steps at batch 8 with each learning rate (2e-4, 1e-3, 3e-3) on the shipped training images, and
prints the KID of 64 samples (DDIM 25 steps, seed 0, against the Fashion-MNIST test images) of the
one-shot model and of each recovered one, with the recovery wall time. One torch thread. The
choice of ``core.recovery.RECOVERY_DEFAULTS["lr"]`` rests on this measurement.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import load_pipeline  # noqa: E402
from core.engine import prune  # noqa: E402
from core.evaluate import evaluate  # noqa: E402
from core.finetune import finetune  # noqa: E402
from core.spec import PruneSpec  # noqa: E402

LEARNING_RATES = (2e-4, 1e-3, 3e-3)


def main() -> int:
    torch.set_num_threads(1)
    dense = load_pipeline()
    result = prune(dense, PruneSpec(criterion="taylor", granularity="channel", sparsity=0.44))
    evaluation = dict(num_samples=64, num_inference_steps=25, seed=0, metrics=("kid",), reference="fashion-mnist-test")
    print("one-shot KID", evaluate(result.pipeline, **evaluation)["kid"], flush=True)
    for lr in LEARNING_RATES:
        started = time.perf_counter()
        tuned = finetune(result, 200, lr=lr, batch_size=8)
        seconds = time.perf_counter() - started
        print(f"lr {lr:g}: recovery {seconds:.1f} s, KID {evaluate(tuned.pipeline, **evaluation)['kid']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
