"""DiffPrune Studio: Gradio entry point (local `make app` and Hugging Face Spaces).

Environment: ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` (default 127.0.0.1:7860),
``DIFFPRUNE_THREADS`` (torch intra-op threads on CPU), ``DIFFPRUNE_RESULTS_DIR`` (results store),
``DIFFPRUNE_DTYPE`` (dtype models are loaded in: ``auto``, the checkpoint's own, by default),
``DIFFPRUNE_MAX_PARAMS`` and ``DIFFPRUNE_MAX_MEMORY_GB`` (the largest model this server loads and the
memory it plans with; ``core.fit``).

The page is served before torch and diffusers are imported (``core.catalog``); a
background thread then imports the engine and loads the default model, so the first screen's
samples are ready soon after the page and the first click does not pay for the imports.
"""
import os
import threading

from diffprune_ui.app import PAGE_CSS, build_demo

demo = build_demo()


def warm_up() -> None:
    """Import the engine (torch, diffusers) and load the embedded default model."""
    from diffprune_ui import handlers

    handlers.load_engine()
    handlers.cached_pipeline(None)


if __name__ == "__main__":
    # One compute job at a time (a 2-core Space runs out of memory and time otherwise); 16 may wait.
    demo.queue(default_concurrency_limit=1, max_size=16).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        prevent_thread_lock=True, css=PAGE_CSS,
    )
    threading.Thread(target=warm_up, name="diffprune-warm-up", daemon=True).start()
    demo.block_thread()
