"""DiffPrune Studio: Gradio entry point (local `make app` and Hugging Face Spaces)."""
import os

from diffprune_ui.app import build_demo

demo = build_demo()

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=1, max_size=16).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )
