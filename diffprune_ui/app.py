"""The Gradio interface: builds components and wires events to ``diffprune_ui.handlers``.

Choice lists come from the engine's registries (``CRITERIA``, ``SCHEDULES``, ``PRESETS``), so a
newly registered method appears here without UI changes.
"""
from __future__ import annotations

import gradio as gr

from core.criteria import CRITERIA
from core.schedules import SCHEDULES
from core.spec import PRESETS

from . import figures, handlers

PRESET_LABELS = {
    "diffpruning": "Diff-Pruning", "nici": "NiCI-Pruning", "tiny-l1": "Tiny-Diffusion L1",
    "obs-diff": "OBS-Diff", "gradflow": "Gradient flow",
}
SCHEDULE_PARAMETER_DEFAULTS = SCHEDULES["log-decrease"].defaults
INTRO = """# ✂️ DiffPrune Studio
Prune a diffusion model with any criterion, sparsity, granularity and timestep schedule, then see what
pruning did: importance heatmaps, timestep weights, dense vs pruned samples from the **same noise**, and
**measured** FID/KID and latency. Sparsity always means the fraction of prunable parameters removed."""


def _preset_buttons():
    """One button per paper preset the engine provides (the non-"-paper" variants: CPU-sized)."""
    buttons = {}
    for name, label in PRESET_LABELS.items():
        if name in PRESETS and label not in {b.value for b in buttons.values()}:
            buttons[name] = gr.Button(label, size="sm")
    return buttons


def preset_values(name: str):
    spec = PRESETS[name]
    criterion = CRITERIA[spec.criterion]
    choices = handlers.granularity_choices(criterion.granularities)
    params = dict(spec.schedule_params or {})
    schedule = spec.schedule or criterion.default_schedule or "uniform"
    return (
        gr.update(value=spec.criterion),
        gr.update(choices=choices, value=spec.granularity),
        gr.update(value=spec.sparsity if spec.sparsity is not None else 0.5),
        gr.update(value=schedule, interactive=criterion.needs_calibration),
        gr.update(value=params.get("threshold", SCHEDULES["threshold"].defaults["threshold"])),
        gr.update(value=spec.calibration_batch_size or criterion.default_calibration_batch_size or 16),
        gr.update(value=spec.calibration_batches or criterion.default_calibration_batches or 1),
    )


def build_demo() -> gr.Blocks:
    criteria = list(CRITERIA)
    first = CRITERIA["taylor"] if "taylor" in CRITERIA else CRITERIA[criteria[0]]
    with gr.Blocks(title="DiffPrune Studio") as demo:
        gr.Markdown(INTRO)
        pairs_state = gr.State([])
        with gr.Tab("Prune"):
            with gr.Row():
                with gr.Column(scale=1, min_width=320):
                    source = gr.Textbox(label="Model source", value="",
                                        placeholder="empty = embedded DDPM (Fashion-MNIST); or a hub id / local path")
                    model_info = gr.Markdown()
                    load_button = gr.Button("Load model & show dense samples", size="sm")
                    gr.Markdown("**Paper presets** (one click)")
                    with gr.Row():
                        preset_buttons = _preset_buttons()
                    criterion = gr.Dropdown(criteria, value=first.name, label="Criterion")
                    criterion_note = gr.Markdown(f"*{first.description}*")
                    granularity = gr.Dropdown(handlers.granularity_choices(first.granularities), value="channel",
                                              label="Granularity")
                    sparsity = gr.Slider(0.0, 0.95, value=0.3, step=0.01, label="Sparsity (fraction of prunable parameters removed)")
                    with gr.Group(visible=first.needs_calibration) as calibration_group:
                        schedule = gr.Dropdown(list(SCHEDULES), value=first.default_schedule, label="Timestep schedule")
                        threshold = gr.Number(value=SCHEDULES["threshold"].defaults["threshold"], label="threshold (stop when L_t < thr * L_max)",
                                              visible=first.default_schedule == "threshold")
                        interval_weights = gr.Textbox(value="1,1,1,1", label="interval weights per quarter of T", visible=False)
                        with gr.Row(visible=False) as ramp_row:
                            num_steps = gr.Number(value=SCHEDULE_PARAMETER_DEFAULTS["num_steps"], precision=0, label="K steps")
                            w_min = gr.Number(value=SCHEDULE_PARAMETER_DEFAULTS["w_min"], label="w_min")
                            w_max = gr.Number(value=SCHEDULE_PARAMETER_DEFAULTS["w_max"], label="w_max")
                        num_timesteps = gr.Number(value=SCHEDULES["uniform"].defaults["num_timesteps"], precision=0,
                                                  label="number of timesteps", visible=False)
                        custom_text = gr.Textbox(value="0:1, 100:0.8, 300:0.5, 700:0.2", label="custom (t:weight, ...)",
                                                 visible=False)
                        with gr.Row():
                            calibration_batch_size = gr.Number(value=first.default_calibration_batch_size, precision=0,
                                                               label="calibration batch size")
                            calibration_batches = gr.Number(value=first.default_calibration_batches, precision=0,
                                                            label="calibration batches")
                        cost_note = gr.Markdown(elem_id="cost-note")
                    with gr.Row():
                        num_samples = gr.Number(value=16, precision=0, label=f"eval samples (2-{handlers.MAX_SAMPLES})")
                        steps = gr.Number(value=25, precision=0, label="sampling steps")
                        seed = gr.Number(value=0, precision=0, label="seed")
                    quality = gr.Radio(list(handlers.QUALITY_METRICS), value="KID", label="Quality metric")
                    with gr.Row():
                        run_button = gr.Button("Prune & evaluate", variant="primary")
                        cancel_button = gr.Button("Cancel", variant="stop")
                with gr.Column(scale=2):
                    schedule_plot = gr.Plot(label="Timestep weight curve (live preview)", elem_id="schedule-plot")
                    status = gr.Markdown("Choose a method and press **Prune & evaluate**.")
                    with gr.Tabs():
                        with gr.Tab("Samples"):
                            with gr.Row():
                                dense_grid = gr.Image(label="Dense", type="pil", elem_id="dense-grid")
                                pruned_grid = gr.Image(label="Pruned (same noise)", type="pil", elem_id="pruned-grid")
                            pair_index = gr.Slider(0, handlers.GRID_IMAGES - 1, value=0, step=1, label="pair to compare")
                            slider = gr.ImageSlider(label="Dense | pruned", type="pil", height=360)
                        with gr.Tab("Summary"):
                            summary = gr.Dataframe(label="Summary", elem_id="summary-table", wrap=True)
                            export_file = gr.File(label="Export: pruned checkpoint (zip)")
                        with gr.Tab("Importance"):
                            importance_plot = gr.Plot(label="Per-layer importance", elem_id="importance-plot")
                            timestep_heatmap = gr.Plot(label="Layer x timestep contribution")
                        with gr.Tab("Layers"):
                            layers_plot = gr.Plot(label="Parameters kept per layer")
                        with gr.Tab("Timesteps"):
                            used_plot = gr.Plot(label="Timesteps used and calibration loss")
                        with gr.Tab("Quality vs speed"):
                            pareto_plot = gr.Plot(label="Quality vs measured latency")
                            sparsity_plot = gr.Plot(label="Quality vs sparsity")

        with gr.Tab("Compare"):
            gr.Markdown("Run several criteria and sparsities as one sweep. Stored results return instantly.")
            with gr.Row():
                compare_criteria = gr.CheckboxGroup(criteria, value=[c for c in ("random", "magnitude", "taylor") if c in CRITERIA],
                                                    label="Criteria")
                compare_granularity = gr.Dropdown(["unstructured", "channel", "2:4"], value="unstructured", label="Granularity")
                compare_sparsities = gr.CheckboxGroup(["0.3", "0.5", "0.7"], value=["0.3", "0.5"], label="Sparsities")
            with gr.Row():
                compare_samples = gr.Number(value=16, precision=0, label="eval samples")
                compare_steps = gr.Number(value=25, precision=0, label="sampling steps")
                compare_button = gr.Button("Run sweep", variant="primary")
            compare_table = gr.Dataframe(label="Sweep results", elem_id="compare-table")
            with gr.Row():
                compare_pareto = gr.Plot(label="Quality vs latency")
                compare_sparsity = gr.Plot(label="Quality vs sparsity")

        # ------------------------------------------------------------------ events
        schedule_inputs = [schedule, threshold, interval_weights, num_steps, w_min, w_max, num_timesteps, custom_text]
        for control in schedule_inputs:
            control.change(handlers.preview_schedule, schedule_inputs, schedule_plot, show_progress="hidden")
        schedule.change(handlers.schedule_visibility, schedule, [threshold, interval_weights, ramp_row, num_timesteps, custom_text])
        criterion.change(handlers.criterion_changed, criterion, [granularity, schedule, calibration_group, criterion_note])
        preset_outputs = [criterion, granularity, sparsity, schedule, threshold, calibration_batch_size, calibration_batches]
        for name, button in preset_buttons.items():
            button.click(lambda n=name: preset_values(n), None, preset_outputs)
        load_button.click(handlers.dense_preview, [source, seed, steps], [dense_grid, model_info])
        estimate_inputs = [source, criterion, granularity, sparsity, *schedule_inputs, calibration_batch_size,
                           calibration_batches, seed]
        for control in (criterion, granularity, schedule, threshold, interval_weights, num_timesteps, custom_text,
                        calibration_batch_size, calibration_batches):
            control.change(handlers.calibration_estimate, estimate_inputs, cost_note, show_progress="hidden")
        run_inputs = [source, criterion, granularity, sparsity, *schedule_inputs, calibration_batch_size,
                      calibration_batches, num_samples, steps, seed, quality]
        run_outputs = [status, summary, dense_grid, pruned_grid, slider, pair_index, pairs_state, importance_plot,
                       timestep_heatmap, layers_plot, used_plot, pareto_plot, sparsity_plot, export_file]
        run_event = run_button.click(handlers.run_prune, run_inputs, run_outputs, concurrency_limit=1,
                                     concurrency_id="compute")
        cancel_button.click(handlers.cancel_run, None, status, cancels=[run_event])
        pair_index.change(handlers.select_pair, [pair_index, pairs_state], slider, show_progress="hidden")
        compare_button.click(handlers.run_compare, [source, compare_criteria, compare_granularity, compare_sparsities,
                                                    compare_samples, compare_steps, seed],
                             [compare_table, compare_pareto, compare_sparsity], concurrency_limit=1,
                             concurrency_id="compute")
        # First screen: the default model's dense samples, the schedule curve and the stored/shipped charts.
        demo.load(handlers.first_screen, [source, seed, steps, *schedule_inputs],
                  [dense_grid, model_info, schedule_plot, pareto_plot, sparsity_plot])
    return demo
