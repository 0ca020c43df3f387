"""Peak memory of pruning the text-to-image / transformer families.

Two parts:

* ``measured``: for each tiny pipeline of ``tests/tiny_families.py`` and a few specs, a fresh
  subprocess builds the pipeline, records its resident set size (RSS), prunes through the facade
  and records the peak RSS (``ru_maxrss``); the difference is what pruning added.
* ``estimated``: parameter counts of SD 1.5 and SD3-medium, counted by building their published
  configs on the ``meta`` device (no weights, no download), and the bytes a run holds:
  the caller's pipeline in its dtype (fp16 here), the engine's one float32 working copy of the
  denoiser, one float32 score per prunable weight, and for gradient criteria one float32 gradient
  per parameter. Activations (calibration batch x resolution) come on top and are not estimated.

Usage::

    .venv/bin/python scripts/family_memory.py [measured] [estimated]   # default: both, a table each
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [  # (family, criterion, granularity, spec keywords)
    ("sd", "magnitude", "unstructured", {"sparsity": 0.5}),
    ("sd", "taylor", "channel", {"sparsity": None, "channel_ratio": 0.25}),
    ("dit", "taylor", "head", {"sparsity": None, "channel_ratio": 0.25}),
    ("pixart", "taylor", "unstructured", {"sparsity": 0.5}),
    ("sd3", "magnitude", "unstructured", {"sparsity": 0.5}),
    ("sd3", "taylor", "unstructured", {"sparsity": 0.5}),
    ("sd35", "magnitude", "2:4", {}),
]

CHILD = r"""
import json, resource, sys, torch
sys.path.insert(0, "tests"); sys.path.insert(0, ".")
torch.set_num_threads(1)
import tiny_families
from core.engine import prune
from core.spec import PruneSpec
family, criterion, granularity, extra = json.loads(sys.argv[1])
pipeline = tiny_families.build(family)
denoiser = getattr(pipeline, "unet", None) or pipeline.transformer
kwargs = dict(criterion=criterion, granularity=granularity, **extra)
if criterion == "taylor":
    kwargs.update(schedule="uniform", schedule_params={"num_timesteps": 2}, calibration_batches=1,
                  calibration_batch_size=2, calibration_data="generated")
def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
before = rss_mib()
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
prune(pipeline, PruneSpec(**kwargs))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(dict(rss_before_mib=before, peak_mib=peak, peak_before_mib=peak_before,
                      denoiser_params=sum(p.numel() for p in denoiser.parameters()))))
"""


def measured() -> list[dict]:
    rows = []
    for family, criterion, granularity, extra in CASES:
        output = subprocess.run([sys.executable, "-c", CHILD, json.dumps([family, criterion, granularity, extra])],
                                cwd=ROOT, capture_output=True, text=True, check=True).stdout
        row = json.loads(output.strip().splitlines()[-1])
        row.update(family=family, criterion=criterion, granularity=granularity,
                   added_mib=row["peak_mib"] - max(row["rss_before_mib"], 0))
        rows.append(row)
    return rows


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def real_sizes() -> dict:
    """Parameter counts of SD 1.5 and SD3-medium from their published configs, built on meta."""
    import torch
    from diffusers import AutoencoderKL, SD3Transformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    with torch.device("meta"):
        sd15_unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                         block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
        sd_vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        clip_l_config = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
        clip_l = CLIPTextModel(CLIPTextConfig(**clip_l_config))  # ViT-L/14's text tower
        sd3 = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                                    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                                    pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)
        sd3_vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=16, layers_per_block=2,
                                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        clip_l_proj = CLIPTextModelWithProjection(CLIPTextConfig(projection_dim=768, **clip_l_config))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                                            num_attention_heads=20, projection_dim=1280))
        t5_xxl = T5EncoderModel(T5Config(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
                                         vocab_size=32128, feed_forward_proj="gated-gelu"))
    return {
        "SD 1.5": dict(denoiser=_count(sd15_unet), others=_count(sd_vae) + _count(clip_l)),
        "SD3-medium": dict(denoiser=_count(sd3), others=_count(sd3_vae) + _count(clip_l_proj) + _count(clip_g) + _count(t5_xxl)),
    }


def estimated() -> list[dict]:
    rows = []
    gib = 1024 ** 3
    for model, counts in real_sizes().items():
        pipeline_fp16 = 2 * (counts["denoiser"] + counts["others"])
        working = 4 * counts["denoiser"]  # the one float32 working copy of the denoiser
        scores = 4 * counts["denoiser"]  # one float32 score per prunable weight (an upper bound)
        gradients = 4 * counts["denoiser"]
        rows.append(dict(model=model, denoiser_params=counts["denoiser"], other_params=counts["others"],
                         pipeline_fp16_gib=pipeline_fp16 / gib,
                         magnitude_gib=(pipeline_fp16 + working + scores) / gib,
                         gradient_criteria_gib=(pipeline_fp16 + working + scores + gradients) / gib))
    return rows


def main() -> None:
    parts = sys.argv[1:] or ["measured", "estimated"]
    if "measured" in parts:
        _print_measured()
    if "estimated" in parts:
        _print_estimated()


def _print_measured() -> None:
    print("| family | criterion | granularity | denoiser params | RSS before (MiB) | peak RSS (MiB) | added by pruning (MiB) |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for row in measured():
        print(f"| {row['family']} | {row['criterion']} | {row['granularity']} | {row['denoiser_params']:,} | "
              f"{row['rss_before_mib']:.0f} | {row['peak_mib']:.0f} | {row['added_mib']:.0f} |")
    print()


def _print_estimated() -> None:
    print("| model | denoiser params | text encoders + VAE params | pipeline fp16 (GiB) | + magnitude run (GiB) | + gradient criteria (GiB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in estimated():
        print(f"| {row['model']} | {row['denoiser_params'] / 1e6:,.0f} M | {row['other_params'] / 1e6:,.0f} M | "
              f"{row['pipeline_fp16_gib']:.1f} | {row['magnitude_gib']:.1f} | {row['gradient_criteria_gib']:.1f} |")


if __name__ == "__main__":
    main()
