"""Recovery fine-tuning as 2 data-parallel processes (torchrun, gloo on the CPU) equals 1 process.

``scripts/finetune_distributed.py`` (the package's ``finetune``) fine-tunes a 2:4-pruned tiny model
with a global batch of 8: once as 1 process x 8 images, once as 2 processes x 4 images, the latter
interrupted after 2 of 4 steps and resumed from its checkpoint. An audit hook (``sys.addaudithook``)
in each launched process records every file it opens for writing, directory it creates, renames or
removes under the output folder, so "only the main process writes" is observed, not assumed.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "finetune_distributed.py"
STEPS, BATCH, LR = 4, 8, 1e-3

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# Runs SCRIPT with an audit hook; at exit prints how many writes this process made under OUTPUT.
AUDITED = r'''
import atexit, os, runpy, sys
SCRIPT, OUTPUT = sys.argv[1], os.path.abspath(sys.argv[2])
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
writes = []

def audit(event, args):
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
    else:
        path, writing = args[0], event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree")
    if writing and isinstance(path, (str, bytes, os.PathLike)):
        if os.path.abspath(os.fsdecode(path)).startswith(OUTPUT):
            writes.append(os.fsdecode(path))

sys.addaudithook(audit)
atexit.register(lambda: print(f"audit rank {os.environ.get('RANK', '0')}: {len(writes)} writes", flush=True))
sys.argv = [SCRIPT, *sys.argv[3:]]
runpy.run_path(SCRIPT, run_name="__main__")
'''


@pytest.fixture(scope="module")
def pruned_and_images(tiny_model, tmp_path_factory):
    """The tiny attention DDPM pruned 2:4 by magnitude (saved), and 16 random 8x8 training images."""
    from PIL import Image

    from core import PruneSpec, load_pipeline, prune

    folder = tmp_path_factory.mktemp("distributed")
    result = prune(load_pipeline(tiny_model, device="cpu"), PruneSpec(criterion="magnitude", granularity="2:4",
                                                                         device="cpu"))
    result.save(folder / "pruned")
    generator = np.random.default_rng(0)
    (folder / "images").mkdir()
    for index in range(16):
        pixels = generator.integers(0, 256, (8, 8), dtype=np.uint8)
        Image.fromarray(pixels, "L").save(folder / "images" / f"{index}.png")
    return folder / "pruned", folder / "images"


def launch(processes: int, model: Path, images: Path, output: Path, steps: int, wrapper: Path) -> str:
    """The script under torchrun (``--standalone``: a free rendezvous port) or, for 1 process, plain Python."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), str(wrapper), str(SCRIPT), str(output),
               "--model", str(model), "--images", str(images), "--output", str(output), "--steps", str(steps),
               "--batch-size", str(BATCH), "--lr", str(LR), "--checkpoint-every", "2", "--device", "cpu",
               "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def audited_writes(stdout: str) -> dict:
    return {int(rank): int(count) for rank, count in re.findall(r"audit rank (\d+): (\d+) writes", stdout)}


def replicas(stdout: str) -> dict:
    """rank -> (weights digest, pruned weights not zero), one line per process."""
    found = re.findall(r"replica (\d+)/\d+: weights sha256 (\w+), pruned weights not zero (\d+)", stdout)
    return {int(rank): (digest, int(revived)) for rank, digest, revived in found}


def weights(output: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(output / "unet" / "diffusion_pytorch_model.safetensors"))


def test_two_processes_match_one_process(pruned_and_images, tmp_path):
    model, images = pruned_and_images
    wrapper = tmp_path / "audited.py"
    wrapper.write_text(AUDITED)
    one, two = tmp_path / "one", tmp_path / "two"

    single = launch(1, model, images, one, STEPS, wrapper)
    writes = audited_writes(single)
    assert list(writes) == [0] and writes[0] > 0, writes
    first_half = launch(2, model, images, two, STEPS // 2, wrapper)
    resumed = launch(2, model, images, two, STEPS, wrapper)  # continues from checkpoint-2 of the first half

    for stdout in (first_half, resumed):
        writes = audited_writes(stdout)
        assert set(writes) == {0, 1} and writes[0] > 0 and writes[1] == 0, writes  # one process writes
        assert stdout.count("fine-tuned ") == 1  # one process reports
        states = replicas(stdout)
        assert set(states) == {0, 1}
        assert states[0][0] == states[1][0]  # DDP keeps the replicas bitwise equal
        assert states[0][1] == states[1][1] == 0  # the pruned weights stay zero on every process
    assert "resumed from step 2" in resumed
    assert sorted(path.name for path in (two / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]

    # Loss curves: the logged loss is the global batch's (the processes' mean of means over equal
    # slices of the same (seed, step) batch), so it equals the 1-process loss up to float32 rounding
    # of sums taken in another order (observed ~1e-7 relative); rel 1e-5 is 100x that and far below
    # the change from one step to the next (~10%).
    curve_one = pd.read_csv(one / "finetune_losses.csv")
    curve_two = pd.read_csv(two / "finetune_losses.csv")
    assert curve_one.step.tolist() == curve_two.step.tolist() == list(range(1, STEPS + 1))
    np.testing.assert_allclose(curve_two.loss, curve_one.loss, rtol=1e-5)
    assert curve_one.loss.iloc[-1] < curve_one.loss.iloc[0]  # it trained

    # Final weights. Averaged gradients differ from the 1-process gradients by rounding only, and
    # so do the weights (observed <= 3e-7; atol 1e-5, while training moved them by ~4e-3). The
    # attention key biases are the exception: their gradient is zero in exact arithmetic (a key
    # bias adds the same q . b to every logit of a query, which the softmax ignores), so what they
    # get is rounding noise, which Adam normalises to steps of up to lr; they are held to the
    # bound 2 * lr * steps instead.
    tuned_one, tuned_two, start = weights(one), weights(two), weights(model)
    assert set(tuned_one) == set(tuned_two)
    moved = max(float((tuned_one[name] - start[name]).abs().max()) for name in start)
    assert moved > 1e-3
    for name in tuned_one:
        bound = 2 * LR * STEPS if name.endswith("to_k.bias") else 1e-5
        assert torch.allclose(tuned_two[name], tuned_one[name], rtol=0, atol=bound), name

    # Masks: the 2:4 zeros of the pruned model are exactly zero in the written result.
    pruned_layers = [name for name, value in start.items() if name.endswith("weight") and value.dim() > 1
                     and bool((value == 0).any())]
    assert pruned_layers
    for name in pruned_layers:
        zeros = start[name] == 0
        assert bool((tuned_two[name][zeros] == 0).all()) and bool((tuned_one[name][zeros] == 0).all()), name
