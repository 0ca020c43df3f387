"""DiffPrune Studio: Gradio entry point (local `make app` and Hugging Face Spaces).

Environment: ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` (default 127.0.0.1:7860),
``DIFFPRUNE_THREADS`` (torch intra-op threads on CPU), ``DIFFPRUNE_RESULTS_DIR`` (results store).
"""
import os

import torch

from diffprune_ui.app import build_demo

if os.environ.get("DIFFPRUNE_THREADS"):
    torch.set_num_threads(int(os.environ["DIFFPRUNE_THREADS"]))

demo = build_demo()

if __name__ == "__main__":
    # One compute job at a time (a 2-core Space runs out of memory and time otherwise); 16 may wait.
    demo.queue(default_concurrency_limit=1, max_size=16).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )
