"""One export writer: the folders a finished run is delivered as, by the app (zipped) and by
``diffprune run --out`` (as they are), so both hold the same files with the same configs.

Layout of an export directory::

    pruned-model/           the model to use: the recovered one when the run recovered, else the one-shot one
        model_index.json, <component>/config.json, <component>/*.safetensors, scheduler/
        diffprune_checkpoint.json   spec, totals, structure and (recovered models) the recovery settings
        report/                     the pruning report, written once (core.checkpoint)
        recovery_losses.csv         recovered models: the loss of every recovery step
        USAGE.md                    how to load it
    one-shot-model/         on request, after a recovery: the model as it left the pruner (same layout)

A structured cut that no plain diffusers config expresses gets a config of its real shapes
(``core.export_config``), so a reader of the folder (or plain diffusers) is never told the dense
widths. No written JSON config holds an absolute local path: such a value (a calibration folder,
say) is recorded by its folder name, so an export tells nothing about the machine it came from.
"""
from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

MODEL_FOLDER = "pruned-model"
ONESHOT_FOLDER = "one-shot-model"
DEFAULT_DENSE_LABEL = "embedded default model"
# Weights are stored in a zip as they are (float weights hardly deflate; deflating them costs
# time in proportion to the model's size); configs and reports are deflated.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_DRIVE_PATH = re.compile(r"^[A-Za-z]:[\\/]")


@dataclass(frozen=True)
class ExportSettings:
    """Whether and where a run is exported.

    * ``out``: the directory to write (new or empty); None exports nothing.
    * ``include_oneshot``: after a recovery, also the one-shot model (``one-shot-model/``).
    * ``dense_label``: how USAGE.md names the dense model the export was cut from (a hub id or a
      model name; a local path is written as its folder name).
    """

    out: str | None = None
    include_oneshot: bool = False
    dense_label: str = DEFAULT_DENSE_LABEL

    def __post_init__(self):
        if self.out is not None:
            if not isinstance(self.out, (str, os.PathLike)) or not str(self.out).strip():
                raise ValueError(f"export out must be None (no export) or a directory path, got {self.out!r}")
            object.__setattr__(self, "out", os.fspath(self.out))
        if not isinstance(self.include_oneshot, bool):
            raise ValueError(f"export include_oneshot must be true or false, got {self.include_oneshot!r}")
        if not isinstance(self.dense_label, str) or not self.dense_label.strip() or "\n" in self.dense_label:
            raise ValueError(f"export dense_label must be one line of text naming the dense model, got {self.dense_label!r}")

    def check_target(self) -> None:
        """Refuse (ValueError naming the field) an ``out`` that is a file, a directory that already
        holds files, or a place that cannot be written: before any work starts."""
        if self.out is None:
            return
        target = Path(self.out).expanduser()
        if target.exists() and not target.is_dir():
            raise ValueError(f"export out {self.out!r} is an existing file; allowed: a new or empty directory")
        if target.is_dir() and any(target.iterdir()):
            raise ValueError(f"export out {self.out!r} already holds files; allowed: a new or empty directory")
        parent = target if target.is_dir() else next((p for p in target.parents if p.exists()), None)
        if parent is None or not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"export out {self.out!r} cannot be written; allowed: a new or empty directory "
                             "in a writable place")


def recovery_metadata(tuned, settings) -> dict:
    """What an exported recovered model records about its recovery (the marker's ``recovery``):
    the settings (``core.run.RecoverySettings``) and the outcome of ``core.finetune.finetune``."""
    losses = tuned.losses
    return dict(steps=settings.steps, lr=settings.lr, batch_size=settings.batch_size,
                distill_from_dense=settings.distill, data=getattr(tuned, "data_label", None) or settings.data,
                wall_time_s=round(tuned.wall_time_s, 2),
                final_loss=float(losses["loss"].tail(10).mean()) if len(losses) else None,
                masks_kept=sorted(tuned.masks), tool="core.finetune.finetune")


def write_export(pruned, settings: ExportSettings, recovered=None, recovery: dict | None = None) -> list[Path]:
    """Write the export of a run into ``settings.out``; returns the model folders written.

    ``pruned`` is the ``PruneResult``; ``recovered`` the ``FinetuneResult`` of its recovery (or
    None) and ``recovery`` its metadata (:func:`recovery_metadata`)."""
    if settings.out is None:
        return []
    settings.check_target()
    out = Path(settings.out).expanduser()
    if recovered is None:
        return [write_model(pruned, out / MODEL_FOLDER, settings.dense_label)]
    folders = [write_model(replace(pruned, pipeline=recovered.pipeline), out / MODEL_FOLDER, settings.dense_label,
                           recovery, recovered.losses)]
    if settings.include_oneshot:
        folders.append(write_model(pruned, out / ONESHOT_FOLDER, settings.dense_label))
    return folders


def write_model(result, folder, dense_label: str = DEFAULT_DENSE_LABEL, recovery: dict | None = None,
                losses=None) -> Path:
    """One exported model folder: the checkpoint with its report (``PruneResult.save``), the
    config of its real shapes, the recovery losses (recovered models) and a usage note."""
    from .export_config import write_shape_config

    checkpoint = Path(result.save(folder, recovery=recovery))
    write_shape_config(checkpoint)
    if losses is not None:
        losses.to_csv(checkpoint / "recovery_losses.csv", index=False)
    plain = bool(result.report.totals.get("plain_diffusers_loadable"))
    (checkpoint / "USAGE.md").write_text(usage_text(result.spec, checkpoint.name, _label(dense_label), recovery, plain))
    strip_local_paths(checkpoint)
    return checkpoint


def usage_text(spec, folder_name: str, dense_label: str, recovery: dict | None, plain: bool) -> str:
    """USAGE.md of an exported model: whether plain diffusers loads it (first, since a structured
    cut does not), how to install what loads it, and how to load and sample it."""
    import diffusers
    import torch

    stage = (f"Recovered: {recovery['steps']:,} fine-tuning steps after pruning (settings in "
             "`diffprune_checkpoint.json`, key `recovery`; loss per step in `recovery_losses.csv`).\n\n"
             if recovery else "One-shot: the pruned model as it left the pruner, no fine-tuning.\n\n")
    loader = ("**Loads with plain diffusers** and with DiffPrune Studio: its pruned weights fit the model's own "
              "diffusers config (pruned weights are zeros, or the cut widths are expressible)." if plain else
              "**Plain diffusers cannot load this folder**: its widths differ per layer, which no diffusers config "
              "expresses, so `DiffusionPipeline.from_pretrained` stops with a config or shape error (its warning "
              "starts with this folder's `README` note). Load it with DiffPrune Studio's `core.load_pipeline`.")
    plain_code = ("\nWith plain diffusers:\n\n```python\nfrom diffusers import DiffusionPipeline\n"
                  f"pipe = DiffusionPipeline.from_pretrained('{folder_name}')\n```\n" if plain else "")
    return ("# Pruned model exported by DiffPrune Studio\n\n" + loader + "\n\n"
            + "## Install what loads it\n\n"
            + "- DiffPrune Studio (`core.load_pipeline`, every export): from a checkout of DiffPrune Studio, "
              "`pip install .` (Python 3.10 or later; it installs torch, diffusers, safetensors and the rest).\n"
            + ("- Plain diffusers: `pip install diffusers torch safetensors` (and `transformers` for a "
               "text-to-image model).\n" if plain else "")
            + f"\nWritten with diffusers {diffusers.__version__} and torch {torch.__version__}.\n\n"
            + "## What it is\n\n"
            + f"Spec: `{spec.to_json()}`\nDense model: {dense_label}\n\n" + stage
            + "The pruning report (per-layer table, timestep weights and contributions, totals) is in `report/`.\n\n"
            + "## Load it\n\n"
            + f"```python\nfrom core import load_pipeline, sample_images\n"
            f"pipe = load_pipeline('{folder_name}')\nimages = sample_images(pipe, 16, num_inference_steps=25, seed=0)\n```\n"
            + plain_code)


def _is_local_path(value: str) -> bool:
    return (len(value) > 1 and "\n" not in value
            and (os.path.isabs(value) or value.startswith("~") or bool(_DRIVE_PATH.match(value))))


def _label(text: str) -> str:
    return Path(text).name or text if _is_local_path(text) else text


def _without_local_paths(value):
    if isinstance(value, str):
        return _label(value)
    if isinstance(value, list):
        return [_without_local_paths(item) for item in value]
    if isinstance(value, dict):
        return {key: _without_local_paths(item) for key, item in value.items()}
    return value


def strip_local_paths(folder) -> int:
    """Every JSON file under ``folder`` with each absolute local path value replaced by its last
    component; returns how many files were rewritten."""
    rewritten = 0
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        clean = _without_local_paths(data)
        if clean != data:
            path.write_text(json.dumps(clean, indent=2, sort_keys=True))
            rewritten += 1
    return rewritten


def archive_name(spec, totals: dict, recovery_steps: int = 0) -> str:
    """The zip's name: criterion, granularity, measured sparsity and recovery steps, e.g.
    ``pruned-taylor-channel-30pct-recovered200.zip``."""
    sparsity = round(100 * float(totals["sparsity"]))
    suffix = f"-recovered{recovery_steps}" if recovery_steps else ""
    return f"pruned-{spec.criterion}-{spec.granularity.replace(':', 'of')}-{sparsity}pct{suffix}.zip"


def zip_folders(folders, archive) -> Path:
    """Zip model folders (each under its own name) into ``archive``: weights stored, text deflated."""
    archive = Path(archive)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        for checkpoint in map(Path, folders):
            for file in sorted(checkpoint.rglob("*")):
                if file.is_file():
                    handle.write(file, Path(checkpoint.name) / file.relative_to(checkpoint),
                                 compress_type=zipfile.ZIP_STORED if file.suffix in WEIGHT_SUFFIXES else None)
    return archive
