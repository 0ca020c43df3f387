"""DiffPrune Studio engine. Never imports gradio; the UI, CLI, benchmarks and tests use this facade.

    from core import load_pipeline, PruneSpec, prune, evaluate
    dense = load_pipeline()                      # the embedded default model (or a path / hub id)
    result = prune(dense, PruneSpec(criterion="taylor", granularity="channel", sparsity=0.3))
    row = evaluate(result.pipeline, num_samples=256, num_inference_steps=25, dense_pipeline=dense)
    result.save("runs/taylor-30")
"""
from .cost import estimate_cost
from .criteria import CRITERIA
from .engine import PruneReport, PruneResult, prune
from .evaluate import evaluate
from .finetune import finetune
from .granularities import GRANULARITIES
from .metrics import compare_grid
from .pipeline import load_pipeline, make_grid, pick_device, sample_images, to_pil
from .recovery import RECOVERY_DEFAULTS, estimate_recovery, recovery_data, recovery_images
from .schedules import SCHEDULES
from .spec import PRESETS, PruneSpec
from .store import ResultStore
from .sweep import sweep

__all__ = [
    "load_pipeline", "sample_images", "make_grid", "to_pil", "pick_device",
    "PruneSpec", "PRESETS", "CRITERIA", "SCHEDULES", "GRANULARITIES",
    "prune", "PruneResult", "PruneReport", "evaluate", "compare_grid", "sweep", "ResultStore", "finetune",
    "estimate_cost", "RECOVERY_DEFAULTS", "recovery_images", "recovery_data", "estimate_recovery",
]
