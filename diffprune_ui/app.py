"""The Gradio interface. Builds components and wires events to ``core``; computes nothing itself."""
from __future__ import annotations

import gradio as gr

from core import load_pipeline, make_grid, sample_images

_PIPELINES: dict = {}


def cached_pipeline(source: str | None):
    """The dense pipeline for ``source``, loaded once per process (each run prunes a copy)."""
    key = source or ""
    if key not in _PIPELINES:
        _PIPELINES[key] = load_pipeline(source or None)
    return _PIPELINES[key]


def dense_samples(source: str | None, num_images: int = 16, steps: int = 25, seed: int = 0):
    try:
        pipeline = cached_pipeline(source)
        images = sample_images(pipeline, int(num_images), int(steps), int(seed))
    except ValueError as error:
        raise gr.Error(str(error)) from error
    return make_grid(images, scale=4)


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="DiffPrune Studio") as demo:
        gr.Markdown("# DiffPrune Studio\nPrune diffusion models and see what pruning does to them.")
        with gr.Row():
            source = gr.Textbox(label="Model source", placeholder="empty = embedded Fashion-MNIST DDPM; or a hub id / local path")
            seed = gr.Number(label="Seed", value=0, precision=0)
        button = gr.Button("Sample dense model")
        grid = gr.Image(label="Dense samples", type="pil")
        button.click(dense_samples, inputs=[source, gr.State(16), gr.State(25), seed], outputs=grid)
        demo.load(dense_samples, inputs=[source, gr.State(16), gr.State(25), seed], outputs=grid)
    return demo
