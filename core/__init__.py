"""DiffPrune Studio engine. Never imports gradio; the UI, CLI, benchmarks and tests use this facade."""
from .pipeline import load_pipeline, make_grid, pick_device, sample_images, to_pil

__all__ = ["load_pipeline", "sample_images", "make_grid", "to_pil", "pick_device"]
