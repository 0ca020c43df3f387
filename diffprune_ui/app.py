"""The Gradio interface: builds components and wires events to ``diffprune_ui.handlers``.

Choice lists come from the engine's registries (``CRITERIA``, ``SCHEDULES``, ``PRESETS``), so a
newly registered method appears here without UI changes.

Every user action is one named API endpoint (``run_prune``, ``run_compare``, ``dense_preview``,
``cancel_run``, ``calibration_estimate``, ``preview_schedule``, ``first_screen``); the events that
only keep the page consistent (visibility, presets filling controls, validation steps) are hidden
from the API. A run is three steps: validation (no outputs: an error changes nothing on screen),
a sentence with the queue position, then the compute.

The Prune tab leads with the demo path (model, presets, method, run button; advanced settings in
closed accordions) and, beside it, the results led by the verdict card (``verdict``). The first
screen is drawn from shipped files the moment the page loads (``first_screen``, no torch), then
completed by the engine's ``first_screen`` endpoint.
"""
from __future__ import annotations

import gradio as gr

from . import first_screen, handlers, quality_answer, run_notes

PRESET_LABELS = {
    "quick-demo": "Quick demo", "diffpruning": "Diff-Pruning", "nici": "NiCI-Pruning", "tiny-l1": "Tiny-Diffusion L1",
    "obs-diff": "OBS-Diff", "gradflow": "Gradient flow", "few-step-win": "Beats fewer steps",
}
INTRO = """# ✂️ DiffPrune Studio
Prune a diffusion model, then see what it cost: dense vs pruned samples from the **same noise**, **measured**
quality and latency, and whether pruning beats simply sampling with fewer steps. Start with **Quick demo**."""
# What each preset sets besides its spec: the recovery budget and the evaluation. The quick demo is
# cheap by design (a one-shot criterion, 20 recovery steps, 16 samples); the papers' recipes get the
# default recovery budget, except the methods their papers run one-shot.
QUICK_EVALUATION = dict(num_samples=16, steps=25, quality="KID", sampler="ddim")
PRESET_RUN_SETTINGS = {
    "quick-demo": dict(recovery_steps=20, **QUICK_EVALUATION),
    "diffpruning": dict(recovery_steps=None, **QUICK_EVALUATION),
    "nici": dict(recovery_steps=None, **QUICK_EVALUATION),
    "tiny-l1": dict(recovery_steps=None, **QUICK_EVALUATION),
    "obs-diff": dict(recovery_steps=0, **QUICK_EVALUATION),
    "gradflow": dict(recovery_steps=0, **QUICK_EVALUATION),
    # The configuration that beat the dense model at fewer steps (the shipped frontier benchmark):
    # its recovery budget, and its sampler at its step count (its measured numbers: preset_note).
    "few-step-win": dict(recovery_steps=3000, num_samples=16, steps=4, quality="KID", sampler="dpm-solver++"),
}
RUN_PRESET_FIELDS = ("recovery_steps", "recovery_lr", "recovery_batch", "num_samples", "steps", "quality", "sampler")
DEFAULT_PRESET = "quick-demo"  # the page opens with its values
# ``core.spec.PRESETS["quick-demo"]``, readable without the engine (a test checks they agree).
QUICK_DEMO = dict(criterion="magnitude", granularity="channel", sparsity=0.3)
VERDICT_PLACEHOLDER = ("### Verdict\nAfter a run: quality against the dense model (with its noise at this sample count), "
                       "size, and measured speed.")
# The run button's row stays on one line; the summary table's cells wrap instead of widening the page.
PAGE_CSS = """
#summary-table table { table-layout: fixed; width: 100%; }
#summary-table td, #summary-table th { white-space: normal !important; overflow-wrap: anywhere; }
#verdict { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 4px 12px; }
"""
SWEEP_COLUMNS = ["criterion", "granularity", "sparsity", "recovery", "FID", "KID", "speed-up", "parameters", "MACs",
                 "non-zero weights", "stored"]


def preset_values(name: str) -> dict:
    """The control values that make ``spec_from_controls`` return exactly ``PRESETS[name]``."""
    handlers.load_engine()
    from core.criteria import CRITERIA
    from core.schedules import SCHEDULES
    from core.spec import PRESETS

    spec = PRESETS[name]
    criterion = CRITERIA[spec.criterion]
    schedule = spec.schedule or criterion.default_schedule or "uniform"
    params = {**SCHEDULES[schedule].defaults, **dict(spec.schedule_params or {})}
    ramp = SCHEDULES["log-decrease"].defaults
    custom = params.get("timesteps") or ()
    return dict(
        criterion=spec.criterion,
        granularity=spec.granularity,
        sparsity=spec.sparsity if spec.sparsity is not None else 0.5,
        schedule=schedule,
        threshold=params.get("threshold", SCHEDULES["threshold"].defaults["threshold"]),
        interval_weights=",".join(f"{w:g}" for w in params.get("interval_weights", SCHEDULES["interval"].defaults["interval_weights"])),
        num_steps=params.get("num_steps", ramp["num_steps"]),
        w_min=params.get("w_min", ramp["w_min"]),
        w_max=params.get("w_max", ramp["w_max"]),
        num_timesteps=params.get("num_timesteps", SCHEDULES["uniform"].defaults["num_timesteps"]),
        custom_text=", ".join(f"{t}:{w:g}" for t, w in custom) if custom else "0:1, 100:0.8, 300:0.5, 700:0.2",
        calibration_batch_size=spec.calibration_batch_size or criterion.default_calibration_batch_size or 4,
        calibration_batches=spec.calibration_batches or criterion.default_calibration_batches or 1,
        distill=handlers.distill_default(spec.criterion),
        **run_settings(name),
    )


def run_settings(name: str) -> dict:
    """The recovery and evaluation values a preset sets (``PRESET_RUN_SETTINGS``; the recovery
    defaults, ``core.recovery.RECOVERY_DEFAULTS``, where it names none)."""
    from core.catalog import catalog

    recovery = catalog()["recovery_defaults"]
    settings = dict(PRESET_RUN_SETTINGS.get(name) or dict(recovery_steps=None, **QUICK_EVALUATION))
    steps = settings.pop("recovery_steps")
    return dict(recovery_steps=recovery["steps"] if steps is None else steps, recovery_lr=recovery["lr"],
                recovery_batch=recovery["batch_size"], **settings)


PRESET_FIELDS = ("criterion", "granularity", "sparsity", "schedule", "threshold", "interval_weights", "num_steps",
                 "w_min", "w_max", "num_timesteps", "custom_text", "calibration_batch_size", "calibration_batches", "distill")


def preset_updates(name: str):
    """``preset_values`` as component updates (granularity with its criterion's choices), plus the
    calibration group's visibility and the criterion's note."""
    from core.criteria import CRITERIA

    values = preset_values(name)
    criterion = CRITERIA[values["criterion"]]
    updates = []
    for field in PRESET_FIELDS + RUN_PRESET_FIELDS:
        if field == "granularity":
            updates.append(gr.update(choices=handlers.granularity_choices(criterion.granularities), value=values[field]))
        else:
            updates.append(gr.update(value=values[field]))
    return (*updates, gr.update(visible=criterion.needs_calibration),
            f"*{criterion.description}*" + (f"\n\n{note}" if (note := preset_note(name)) else ""))


def preset_note(name: str) -> str:
    """What the shipped frontier benchmark measured for a preset that beat sampling with fewer steps
    (``quality_answer.measured_win``); empty for the other presets."""
    from core.spec import PRESETS

    from . import quality_answer

    if name != "few-step-win":
        return ""
    settings = PRESET_RUN_SETTINGS[name]
    return quality_answer.measured_win(PRESETS[name], settings["recovery_steps"], settings["steps"], settings["sampler"])


class Page(gr.Blocks):
    """``gr.Blocks`` whose API answers a refused file path with a field error: gradio refuses a
    path that was not uploaded (``InvalidPathError``) while preparing the inputs, before any
    handler, and would answer ``{"error": null}``."""

    async def preprocess_data(self, block_fn, inputs, *args, **kwargs):
        from gradio.exceptions import InvalidPathError

        try:
            return await super().preprocess_data(block_fn, inputs, *args, **kwargs)
        except InvalidPathError:
            fields = [block.label or "file" for block in block_fn.inputs if isinstance(block, gr.File)]
            raise gr.Error(f"{' / '.join(fields) or 'file input'}: only files uploaded to this app are accepted "
                           "(upload them; from Python, gradio_client.handle_file), not a path on the server",
                           print_exception=False) from None


def build_demo() -> gr.Blocks:
    """The page. Whole-number fields use ``precision=None`` so that the handlers see what was sent
    and refuse ``1.5`` instead of gradio rounding it. Built from the registries' catalog (``core.catalog``) so that serving it
    does not wait for torch and diffusers; the handlers import the engine when first called."""
    from types import SimpleNamespace

    from core.catalog import catalog

    registry = catalog()
    CRITERIA = {name: SimpleNamespace(name=name, **entry) for name, entry in registry["criteria"].items()}
    SCHEDULES = {name: SimpleNamespace(**entry) for name, entry in registry["schedules"].items()}
    PRESETS = set(registry["presets"])
    criteria = list(CRITERIA)
    first = CRITERIA[QUICK_DEMO["criterion"]]  # the page opens with the quick demo's values
    quick = run_settings(DEFAULT_PRESET)
    ramp_defaults = SCHEDULES["log-decrease"].defaults
    # Exported files served by gradio are copied to its cache: drop those older than an hour, hourly.
    with Page(title="DiffPrune Studio", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO, elem_id="intro")
        pairs_state = gr.State([])
        with gr.Tab("Prune"):
            with gr.Row():
                # Left: the demo path (model, presets, method, run) first; advanced settings in closed accordions.
                with gr.Column(scale=1, min_width=320):
                    embedded = registry["embedded_models"]
                    model_picker = gr.Dropdown([(f"{name}: {text}", name) for name, text in embedded.items()],
                                               value=next(iter(embedded)), label="Model", elem_id="model-picker")
                    grid_class = gr.Dropdown([handlers.ALL_CLASSES], value=handlers.ALL_CLASSES, visible=False,
                                             label="class shown in the sample grids (evaluation: all classes)",
                                             elem_id="grid-class")
                    grid_prompt = gr.Textbox(label="prompt for the sample grids (empty: the shipped captions; "
                                                   "evaluation: the shipped captions)", value="", max_lines=1,
                                             visible=False, elem_id="grid-prompt")
                    with gr.Row(elem_id="presets"):
                        preset_buttons = {name: gr.Button(label, size="sm", elem_id=f"preset-{name}",
                                                          variant="primary" if name == DEFAULT_PRESET else "secondary")
                                          for name, label in PRESET_LABELS.items() if name in PRESETS}
                    criterion = gr.Dropdown(criteria, value=first.name, label="Criterion")
                    criterion_note = gr.Markdown(f"*{first.description}*", elem_id="criterion-note")
                    with gr.Row():
                        granularity = gr.Dropdown(handlers.granularity_choices(first.granularities),
                                                  value=QUICK_DEMO["granularity"], label="Granularity", min_width=120)
                        # A number box without bounds: every typed value reaches the handlers' check,
                        # which names the field and the allowed range (a slider would clamp it silently).
                        sparsity = gr.Number(value=QUICK_DEMO["sparsity"], precision=None, step=0.05, min_width=180,
                                             label="Sparsity (0 to 0.95)", info=run_notes.SPARSITY_INFO,
                                             elem_id="sparsity")
                    with gr.Row():
                        run_button = gr.Button("Prune & evaluate", variant="primary", elem_id="run-button")
                        cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel-button")
                    cost_note = gr.Markdown("*estimating the calibration time...*", elem_id="cost-note")
                    recovery_cost = gr.Markdown("*estimating the recovery time...*", elem_id="recovery-cost")
                    with gr.Accordion("Schedule & calibration", open=False, visible=first.needs_calibration,
                                      elem_id="calibration-settings") as calibration_group:
                        schedule = gr.Dropdown(list(SCHEDULES), value=first.default_schedule or "uniform",
                                               label="Timestep schedule")
                        threshold = gr.Number(value=SCHEDULES["threshold"].defaults["threshold"],
                                              label="threshold (stop when L_t < thr * L_max)",
                                              visible=first.default_schedule == "threshold")
                        interval_weights = gr.Textbox(value="1,1,1,1", label="interval weights per quarter of T",
                                                      visible=False)
                        with gr.Row(visible=False) as ramp_row:
                            num_steps = gr.Number(value=ramp_defaults["num_steps"], precision=None, step=1, label="K steps")
                            w_min = gr.Number(value=ramp_defaults["w_min"], label="w_min")
                            w_max = gr.Number(value=ramp_defaults["w_max"], label="w_max")
                        num_timesteps = gr.Number(value=SCHEDULES["uniform"].defaults["num_timesteps"], precision=None, step=1,
                                                  label="number of timesteps",
                                                  visible=(first.default_schedule or "uniform") == "uniform")
                        custom_text = gr.Textbox(value="0:1, 100:0.8, 300:0.5, 700:0.2", label="custom (t:weight, ...)",
                                                 visible=False)
                        with gr.Row():
                            calibration_batch_size = gr.Number(value=first.default_calibration_batch_size or 4,
                                                               precision=None, step=1, label="calibration batch size")
                            calibration_batches = gr.Number(value=first.default_calibration_batches or 1, precision=None,
                                                            step=1, label="calibration batches")
                        # Text-to-image models only: shown by the model's first screen, as the grids' prompt box.
                        calibration_prompts = gr.Textbox(
                            label=f"Calibration prompts (one per line; empty = the {handlers.shipped_caption_count()} "
                                  "shipped captions)", value="", lines=3, max_lines=12, visible=False,
                            elem_id="calibration-prompts")
                    with gr.Accordion("Recovery: fine-tune after pruning", open=False, elem_id="recovery-settings"):
                        with gr.Row():
                            recovery_steps = gr.Number(value=quick["recovery_steps"], precision=None, step=1,
                                                       label="recovery steps (0 = off)", elem_id="recovery-steps")
                            recovery_lr = gr.Number(value=quick["recovery_lr"], label="learning rate")
                            recovery_batch = gr.Number(value=quick["recovery_batch"], precision=None, step=1,
                                                       label="batch size")
                        distill = gr.Checkbox(value=handlers.distill_default(first.name),
                                              label="distill from the dense model (NiCI-Pruning's recovery)")
                        recovery_data = gr.Radio(list(handlers.RECOVERY_DATA), value="shipped training images",
                                                 label="recovery data")
                        recovery_files = gr.File(file_count="multiple", file_types=["image"], label="your recovery images",
                                                 visible=False)
                        export_oneshot = gr.Checkbox(value=False, label="export the one-shot model too")
                    with gr.Accordion("Evaluation", open=False, elem_id="evaluation-settings"):
                        with gr.Row():
                            num_samples = gr.Number(value=quick["num_samples"], precision=None, step=1,
                                                    label=f"eval samples (2-{handlers.MAX_SAMPLES})")
                            steps = gr.Number(value=quick["steps"], precision=None, step=1, label="sampling steps")
                            seed = gr.Number(value=0, precision=None, step=1, label="seed")
                        quality = gr.Radio(list(handlers.QUALITY_METRICS), value=quick["quality"], label="Quality metric")
                        sampler = gr.Dropdown(list(handlers.SAMPLERS.items()), value="ddim", label="Sampler",
                                              info="evaluation, sample grids and the dense model at fewer steps",
                                              elem_id="sampler")
                    with gr.Accordion("Another model: hub id or local folder", open=False, elem_id="model-source"):
                        source = gr.Textbox(label="Model source", value="", max_lines=1,
                                            placeholder="empty = embedded DDPM (Fashion-MNIST); or a hub id / local path")
                        load_button = gr.Button("Load model & show dense samples", size="sm")
                # Right: the results, led by the verdict card.
                with gr.Column(scale=2):
                    verdict_box = gr.Markdown(VERDICT_PLACEHOLDER, elem_id="verdict")
                    queue_note = gr.Markdown(elem_id="queue-note")
                    status = gr.Markdown("Press **Prune & evaluate** (the Quick demo's settings are set).",
                                         elem_id="status")
                    with gr.Tabs():
                        with gr.Tab("Samples"):
                            # The default model's shipped grid and card are part of the page itself, so
                            # they show with it; the load events below replace them for other settings.
                            model_info = gr.Markdown(first_screen.shipped_card("") or "", elem_id="model-info")
                            recovery = gr.Markdown(elem_id="recovery-note")
                            with gr.Row():
                                dense_grid = gr.Image(first_screen.shipped_grid("", 0, quick["steps"]), label="Dense",
                                                      type="pil", elem_id="dense-grid", format="png")
                                pruned_grid = gr.Image(label="One-shot pruned (same noise)", type="pil",
                                                       elem_id="pruned-grid")
                                recovered_grid = gr.Image(label="Recovered (same noise)", type="pil",
                                                          elem_id="recovered-grid")
                            with gr.Row():
                                pair_kind = gr.Radio(list(handlers.PAIR_KINDS[:1]), value=handlers.PAIR_KINDS[0],
                                                     label="compare", elem_id="pair-kind")
                                pair_index = gr.Slider(0, handlers.GRID_IMAGES - 1, value=0, step=1,
                                                       label="image to compare")
                            slider = gr.ImageSlider(label="left | right of the chosen pair", type="pil", height=360)
                        with gr.Tab("Quality"):
                            worth_note = gr.Markdown(elem_id="worth-it")
                            pareto_plot = gr.Plot(label="Quality vs latency, with the dense model at fewer steps",
                                                  elem_id="pareto-plot")
                            sparsity_plot = gr.Plot(label="Quality vs sparsity", elem_id="sparsity-plot")
                            frontier_sampler = gr.Radio(list(handlers.SAMPLERS.items()), value="ddim",
                                                        label="Sampler of the shipped results (the model on screen)",
                                                        elem_id="frontier-sampler")
                            frontier_note = gr.Markdown(elem_id="frontier-answer")
                            frontier_plot = gr.Plot(label="Is pruning worth it? Pruned + recovered vs the dense "
                                                          "model at fewer steps (shipped benchmark)",
                                                    elem_id="frontier-plot")
                        with gr.Tab("Summary"):
                            summary = gr.Dataframe(label="Summary: one column per stage", elem_id="summary-table",
                                                   wrap=True, max_height=700)
                            export_file = gr.File(label="Export: pruned (recovered, when recovery ran) checkpoint (zip)",
                                                  elem_id="export-file")
                        with gr.Tab("Recovery"):
                            loss_plot = gr.Plot(label="Recovery loss", elem_id="recovery-loss")
                            recovery_chart = gr.Plot(label="One-shot vs recovered", elem_id="recovery-chart")
                        with gr.Tab("Importance"):
                            importance_plot = gr.Plot(label="Per-layer importance", elem_id="importance-plot")
                            timestep_heatmap = gr.Plot(label="Layer x timestep contribution")
                        with gr.Tab("Layers"):
                            layers_plot = gr.Plot(label="Parameters kept per layer")
                        with gr.Tab("Timesteps"):
                            schedule_plot = gr.Plot(label="Timestep weight curve", elem_id="schedule-plot")
                            used_plot = gr.Plot(label="Timesteps used and calibration loss")

        with gr.Tab("Compare"):
            gr.Markdown("Run several criteria and sparsities as one sweep. Stored results return instantly.")
            with gr.Row():
                compare_criteria = gr.CheckboxGroup(criteria, value=[c for c in ("random", "magnitude", "taylor") if c in CRITERIA],
                                                    label="Criteria")
                compare_granularity = gr.Dropdown(["unstructured", "channel", "2:4", "4:8", "head"], value="unstructured",
                                                  label="Granularity")
                compare_sparsities = gr.Textbox(value="0.3, 0.5", label="Sparsities (comma-separated, 0-0.95; N:M ignores them)")
            with gr.Row():
                compare_samples = gr.Number(value=16, precision=None, step=1, label="eval samples")
                compare_steps = gr.Number(value=25, precision=None, step=1, label="sampling steps")
                compare_quality = gr.Radio(list(handlers.QUALITY_METRICS), value="KID", label="Quality metric")
                compare_latency = gr.Checkbox(value=False, label="time latency (slower: each model timed vs dense)")
                compare_recovery = gr.Number(value=0, precision=None, step=1, elem_id="compare-recovery",
                                             label="recovery steps for every row (0 = one-shot; the recovery settings "
                                                   "of the Prune tab)")
                compare_button = gr.Button("Run sweep", variant="primary")
            compare_queue_note = gr.Markdown()
            compare_table = gr.Dataframe(value=None, headers=SWEEP_COLUMNS, label="Sweep results", elem_id="compare-table")
            with gr.Row():
                compare_pareto = gr.Plot(label="Quality vs latency")
                compare_sparsity = gr.Plot(label="Quality vs sparsity")

        # ------------------------------------------------------------------ events
        schedule_inputs = [schedule, threshold, interval_weights, num_steps, w_min, w_max, num_timesteps, custom_text]
        gr.on([c.change for c in schedule_inputs], handlers.preview_schedule, schedule_inputs, schedule_plot,
              show_progress="hidden", api_name="preview_schedule", queue=False, trigger_mode="always_last")
        schedule.change(handlers.schedule_visibility, schedule, [threshold, interval_weights, ramp_row, num_timesteps,
                                                                  custom_text], api_visibility="private", queue=False)
        # .input: only the user's own choice; a preset's programmatic change must not reset its granularity.
        criterion.input(handlers.criterion_changed, [criterion, granularity, source],
                        [granularity, schedule, calibration_group, criterion_note, distill], api_visibility="private",
                        queue=False)
        recovery_data.change(lambda choice: gr.update(visible=handlers.RECOVERY_DATA.get(choice, "") is None),
                             recovery_data, recovery_files, api_visibility="private", queue=False)
        preset_outputs = [criterion, granularity, sparsity, schedule, threshold, interval_weights, num_steps, w_min,
                          w_max, num_timesteps, custom_text, calibration_batch_size, calibration_batches, distill,
                          recovery_steps, recovery_lr, recovery_batch, num_samples, steps, quality, sampler,
                          calibration_group, criterion_note]
        for name, button in preset_buttons.items():
            button.click(lambda n=name: preset_updates(n), None, preset_outputs, api_visibility="private", queue=False)

        estimate_inputs = [source, criterion, granularity, sparsity, *schedule_inputs, calibration_batch_size,
                           calibration_batches, seed]
        estimate_triggers = [c.change for c in (criterion, granularity, schedule, threshold, interval_weights, num_steps,
                                                num_timesteps, custom_text, calibration_batch_size, calibration_batches)]
        # Its own queue: an estimate never waits behind a prune (the per-pass rate is cached).
        # Many controls: passed by name (inputs_kwargs), collected into one namespace by the handler.
        # First the note says it is estimating (a preset or a new model may take seconds to measure),
        # then the estimate; a newly shown model (its card changes) is estimated again.
        gr.on([demo.load, model_info.change, *estimate_triggers], run_notes.calibration_pending, None, cost_note,
              api_visibility="private", queue=False, show_progress="hidden", trigger_mode="always_last").then(
            handlers.calibration_estimate, None, cost_note,
            inputs_kwargs=dict(zip(handlers.ESTIMATE_CONTROLS, estimate_inputs)), show_progress="hidden",
            api_name="calibration_estimate", concurrency_id="estimate", concurrency_limit=1,
            trigger_mode="always_last")
        recovery_inputs = [source, recovery_steps, recovery_batch, distill]
        gr.on([demo.load, model_info.change, *(c.change for c in recovery_inputs[1:])], run_notes.recovery_pending,
              None, recovery_cost, api_visibility="private", queue=False, show_progress="hidden",
              trigger_mode="always_last").then(
            handlers.recovery_estimate, recovery_inputs, recovery_cost, show_progress="hidden",
            api_name="recovery_estimate", concurrency_id="estimate", concurrency_limit=1, trigger_mode="always_last")
        # N:M fixes the sparsity at 1 - N/M: the slider shows it and says why.
        granularity.change(run_notes.sparsity_slider, granularity, sparsity, api_visibility="private", queue=False,
                           show_progress="hidden")
        # A closed or reloaded tab cancels its waiting or running job (the compute slot is freed).
        demo.unload(run_notes.cancel_closed_session)

        # The model's first screen: its dense samples (of the chosen class / prompt), card, class picker, prompt box.
        preview_io = ([source, seed, steps, grid_class, grid_prompt], [dense_grid, model_info, grid_class, grid_prompt])
        load_check = load_button.click(handlers.check_source, [source, seed, steps], None, api_visibility="private",
                                       concurrency_id="check", concurrency_limit=4)
        calibration_prompts_io = ([source, calibration_prompts], calibration_prompts)
        load_check.success(handlers.dense_preview, *preview_io,
                           api_name="dense_preview", concurrency_id="compute", concurrency_limit=1).then(
            handlers.granularities_for_model, [source, criterion, granularity], granularity, api_visibility="private",
            queue=False).then(handlers.calibration_prompts_update, *calibration_prompts_io, api_visibility="private",
                              queue=False)
        # Picking an embedded model fills the source box and loads it (its first screen: samples, card, classes).
        model_picker.input(handlers.pick_embedded, model_picker, source, api_visibility="private", queue=False).then(
            handlers.dense_preview, *preview_io,
            api_visibility="private", concurrency_id="compute", concurrency_limit=1).then(
            handlers.granularities_for_model, [source, criterion, granularity], granularity, api_visibility="private",
            queue=False).then(handlers.calibration_prompts_update, *calibration_prompts_io, api_visibility="private",
                              queue=False)
        grid_prompt.submit(handlers.dense_preview, *preview_io, api_visibility="private",
                           concurrency_id="compute", concurrency_limit=1)
        grid_class.input(handlers.dense_preview, *preview_io,
                         api_visibility="private", concurrency_id="compute", concurrency_limit=1)

        recovery_controls = [recovery_steps, recovery_lr, recovery_batch, distill, recovery_data, recovery_files]
        run_inputs = [source, criterion, granularity, sparsity, *schedule_inputs, calibration_batch_size,
                      calibration_batches, num_samples, steps, seed, quality, *recovery_controls, export_oneshot,
                      grid_class, grid_prompt, calibration_prompts, sampler]
        run_outputs = [status, summary, dense_grid, pruned_grid, slider, pair_index, pairs_state, importance_plot,
                       timestep_heatmap, layers_plot, used_plot, pareto_plot, sparsity_plot, export_file, recovery,
                       schedule_plot, recovered_grid, loss_plot, pair_kind, recovery_chart, verdict_box]
        run_controls = dict(zip(handlers.RUN_CONTROLS, run_inputs))
        run_check = run_button.click(handlers.check_run, None, None, inputs_kwargs=run_controls, api_visibility="private",
                                     concurrency_id="check", concurrency_limit=4)
        announced = run_check.success(handlers.announce_run, None, queue_note, api_visibility="private", queue=False)
        run_event = announced.then(handlers.run_prune_event, None, run_outputs, inputs_kwargs=run_controls,
                                   api_name="run_prune", concurrency_limit=1, concurrency_id="compute",
                                   show_progress_on=[status])
        run_event.then(lambda: "", None, queue_note, api_visibility="private", queue=False).then(
            handlers.dense_frontier, [source, num_samples, steps, seed, quality, sampler], pareto_plot,
            api_visibility="private", concurrency_limit=1, concurrency_id="compute", show_progress="minimal").then(
            quality_answer.after_run, [source, num_samples, steps, quality, sampler], worth_note,
            api_visibility="private", queue=False)
        cancel_button.click(handlers.cancel_run, None, queue_note, api_name="cancel_run", queue=False)
        gr.on([pair_index.change, pair_kind.change], handlers.select_pair, [pair_index, pair_kind, pairs_state], slider,
              show_progress="hidden", api_visibility="private", queue=False)

        compare_inputs = [source, compare_criteria, compare_granularity, compare_sparsities, compare_samples,
                          compare_steps, seed, compare_quality, compare_latency, compare_recovery, *recovery_controls[1:]]
        compare_controls = dict(zip(handlers.COMPARE_CONTROLS, compare_inputs))
        compare_check = compare_button.click(handlers.check_compare, None, None, inputs_kwargs=compare_controls,
                                             api_visibility="private", concurrency_id="check", concurrency_limit=4)
        compare_event = compare_check.success(handlers.announce_run, None, compare_queue_note, api_visibility="private",
                                              queue=False).then(
            handlers.run_compare_event, None, [compare_table, compare_pareto, compare_sparsity],
            inputs_kwargs=compare_controls, api_name="run_compare", concurrency_limit=1, concurrency_id="compute", show_progress_on=[compare_table])
        compare_event.then(lambda: "", None, compare_queue_note, api_visibility="private", queue=False)
        # The shipped "Is pruning worth it?" chart and sentence: the model on screen, the chosen sampler.
        gr.on([frontier_sampler.change, model_info.change], quality_answer.shipped_frontier, [source, frontier_sampler],
              [frontier_plot, frontier_note], api_visibility="private", queue=False, show_progress="hidden")
        # First screen: at once, the shipped grid, card and charts (no torch: ``first_screen``); then,
        # with the engine, the schedule curve, the stored results and the model's class picker.
        demo.load(first_screen.shipped_first_screen, [source, seed, steps],
                  [dense_grid, model_info, pareto_plot, sparsity_plot, recovery_chart, frontier_plot, worth_note,
                   compare_pareto, compare_sparsity, frontier_note], api_visibility="private", queue=False,
                  show_progress="hidden")
        demo.load(handlers.first_screen, [source, seed, steps, *schedule_inputs],
                  [dense_grid, model_info, schedule_plot, pareto_plot, sparsity_plot, recovery_chart, grid_class,
                   grid_prompt, frontier_plot],
                  api_name="first_screen", show_progress="hidden").then(
            handlers.calibration_prompts_update, *calibration_prompts_io, api_visibility="private", queue=False)
    return demo
