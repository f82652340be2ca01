"""``flq-audit SOURCE``: audit a checkpoint sequence into a store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flq_audit import api
from flq_audit.cli import _output
from flq_audit.cli._errors import EXIT_STEPS_FAILED, mapped
from flq_audit.cli._options import JsonOpt, QuietOpt, StepsOpt
from flq_audit.errors import OptionError
from flq_audit.options import CaptureOptions, FLOptions, HubOptions, RunOptions, TextProbeOptions

if TYPE_CHECKING:
    from flq_audit.audit.plan import AuditPlan

AUDIT_EXAMPLES = """
Examples:

  flq-audit runs/mlp --steps all

  flq-audit runs/mlp --steps log:8 --model runs/mlp/model_spec.json --probe digits

  flq-audit EleutherAI/pythia-70m --steps log:8 --probe sst2.jsonl --pooling last --cache drop

  flq-audit runs/cnn --model nets.py:make_cnn --layers 'features.*' --out cnn.zarr --dry-run
"""


def _steps_list(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise OptionError(
            f"--template-steps {text!r}: expected comma-separated integers, e.g. 0,20,40"
        ) from None


def _fl_options(loss: str | None, lr: str | None, batches: str | None) -> FLOptions | None:
    """All three FL flags or none: the residual needs the whole training provenance."""
    given = [loss, lr, batches]
    if all(value is None for value in given):
        return None
    if any(value is None for value in given):
        raise OptionError("the FL residual needs all of --fl-loss, --fl-lr and --fl-batches "
                          "(the training provenance)")
    return FLOptions.from_files(loss, lr, batches)  # type: ignore[arg-type]


def _layers(values: list[str] | None) -> list[str]:
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


@mapped
def audit_command(
    source: Annotated[str, typer.Argument(
        help="A folder of checkpoints, or a Hub repo id (ORG/NAME or hf://ORG/NAME).")],
    steps: StepsOpt = "all",
    model: Annotated[str | None, typer.Option(
        help="JSON spec file, 'file.py:function', 'package.module:function', or 'hf' "
        "(transformers, from each checkpoint's config.json). Default: SOURCE/model_spec.json, "
        "else 'hf' when checkpoints carry a config.json.")] = None,
    probe: Annotated[str | None, typer.Option(
        help="Builtin probe (digits, swissroll), a .npz/.safetensors/.pt file, or a text "
        "probe (.jsonl/.csv) for transformers models. Default: SOURCE/probe.npz.")] = None,
    layers: Annotated[list[str] | None, typer.Option(
        "--layers", help="Glob pattern(s) over module names; repeat or comma-separate. "
        "Default: every Linear/Conv layer.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Output Zarr store. Default: ./<source name>.zarr")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Probe samples per forward pass.")] = 512,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    workers: Annotated[int | None, typer.Option(
        help="Audit the steps on a local dask cluster of N single-threaded worker processes "
        "(N >= 2).")] = None,
    scheduler: Annotated[str | None, typer.Option(
        help="Audit the steps on the dask.distributed cluster at this address "
        "(tcp://HOST:8786).")] = None,
    activation_dtype: Annotated[str, typer.Option(help="float32 or float16.")] = "float32",
    gram_dtype: Annotated[str, typer.Option(help="float32 or float64.")] = "float32",
    max_samples: Annotated[int | None, typer.Option(
        min=1, help="Use only the first N probe samples.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the resolved plan and write nothing.")] = False,
    as_json: JsonOpt = False,
    trust_pickle: Annotated[bool, typer.Option(
        "--trust-pickle", help="Allow full unpickling of checkpoints that need it "
        "(runs code from the file: only for files you trust).")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing store instead of resuming it.")] = False,
    fl_loss: Annotated[str | None, typer.Option(
        help="FL residual: the training loss, ce or mse (mean reduction).")] = None,
    fl_lr: Annotated[str | None, typer.Option(
        help="FL residual: the learning rate, a number or a JSON file {step: lr}.")] = None,
    fl_batches: Annotated[str | None, typer.Option(
        help="FL residual: 'full' or a JSON file {step: [probe indices]} of each step's batch.")
    ] = None,
    task: Annotated[str, typer.Option(
        help="Text probes: sequence (one row per text), token (one per word) or next-token.")
    ] = "sequence",
    pooling: Annotated[str, typer.Option(
        help="Text probes, sequence task: cls, last or mean over real tokens.")] = "cls",
    text_column: Annotated[str, typer.Option(help="Text probes: the text column.")] = "text",
    label_column: Annotated[str, typer.Option(help="Text probes: the label column.")] = "label",
    max_length: Annotated[int, typer.Option(min=1, help="Text probes: tokens per text.")] = 128,
    top_k: Annotated[int, typer.Option(
        min=1, help="next-token task: keep the K most frequent next tokens (+ other).")] = 50,
    trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="Allow transformers to run code from the checkpoint repo.")
    ] = False,
    revision_pattern: Annotated[str | None, typer.Option(
        help="Hub: a regex with a named group 'step' that selects and parses branch names.")
    ] = None,
    subfolders: Annotated[bool | None, typer.Option(
        "--subfolders/--no-subfolders",
        help="Hub: read checkpoint-N/ folders of one revision instead of branches.")] = None,
    template_steps: Annotated[str | None, typer.Option(
        help="Hub, one repo per step: SOURCE holds {step}; the steps as a comma list.")] = None,
    cache: Annotated[str, typer.Option(
        help="Hub: keep the downloaded revisions in the HF cache, or drop each once written.")
    ] = "keep",
    offline: Annotated[bool, typer.Option(
        "--offline", help="Hub: use the local HF cache only (no network).")] = False,
    hidden_states: Annotated[bool, typer.Option(
        "--hidden-states", help="transformers: also capture the residual stream "
        "(hidden_states.0 = embeddings ... hidden_states.L), pooled like the probe; no Gram.")
    ] = False,
    weights_only: Annotated[bool, typer.Option(
        "--weights-only", "--no-probe",
        help="Grams of every weight matrix only: no model, no probe.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Audit a checkpoint sequence: replay the probe, store activations and Grams."""
    fl = _fl_options(fl_loss, fl_lr, fl_batches)
    capture = CaptureOptions(
        layers=tuple(_layers(layers)), activation_dtype=activation_dtype,  # type: ignore[arg-type]
        gram_dtype=gram_dtype, max_samples=max_samples,  # type: ignore[arg-type]
        hidden_states=hidden_states,
    )
    run = RunOptions(batch_size=batch_size, device=device, overwrite=overwrite,
                     trust_pickle=trust_pickle, trust_remote_code=trust_remote_code,
                     workers=workers, scheduler=scheduler)
    hub = HubOptions(revision_pattern=revision_pattern, subfolders=subfolders,
                     template_steps=tuple(_steps_list(template_steps) or ()),
                     cache=cache, offline=offline or None)  # type: ignore[arg-type]
    text = TextProbeOptions(task=task, pooling=pooling, text_column=text_column,  # type: ignore[arg-type]
                            label_column=label_column, max_length=max_length, top_k=top_k)
    plan = api.plan_audit(source, steps=steps, model=model, probe=probe, weights_only=weights_only,
                          out=out, capture=capture, hub=hub, text=text, fl=fl, run=run)
    if dry_run:
        _render_plan(plan, as_json)
        if plan.store_refusal is not None:  # the real run would stop here, with this code
            _output.error(f"refused: {plan.store_refusal}")
            raise typer.Exit(plan.store_refusal.exit_code)
        return
    with _output.RichProgress(quiet=quiet or as_json) as progress:
        report_downloads = getattr(plan.source, "report_downloads", None)
        if report_downloads is not None:  # Hub sources: bytes inside the step bar
            report_downloads(progress.downloaded)
        result = api.run_audit(plan, run, progress)
    if as_json:
        _output.print_json(result.to_dict())
    elif not quiet:
        _output.stdout.print(
            f"store {result.store}: {len(result.written)} step(s) written, "
            f"{len(result.skipped)} already done, {len(result.failed)} failed"
        )
        _output.worker_summary(getattr(result, "workers", None))
    if result.failed:
        for message in result.failed.values():
            _output.error(message)
        raise typer.Exit(EXIT_STEPS_FAILED)


audit_command.__doc__ = (audit_command.__doc__ or "") + AUDIT_EXAMPLES


def _render_plan(plan: AuditPlan, as_json: bool) -> None:
    summary = plan.summary()
    if as_json:
        _output.print_json(summary)
        return
    from rich.table import Table

    out = _output.stdout
    out.print(f"source  {summary['source']}")
    refusal = summary["store_refusal"]
    action = (f"refused: {refusal['message'].splitlines()[0]}" if refusal is not None
              else summary["store_status"])
    out.print(f"store   {summary['store']} ({action}; "
              f"~{summary['store_bytes_estimate'] / 2**20:.1f} MiB uncompressed)")
    probe = summary["probe"]
    out.print("probe   none (weights only)" if probe is None else
              f"probe   {probe['name']}: {probe['n_samples']} samples, {probe['kind']}")
    table = Table(title="checkpoints")
    for column in ("step", "label", "format", "MiB", "status"):
        table.add_column(column)
    for ckpt in summary["checkpoints"]:
        status = "done" if ckpt["step"] in summary["already_done"] else "to do"
        table.add_row(str(ckpt["step"]), ckpt["label"], ckpt["format"],
                      f"{ckpt['bytes'] / 2**20:.2f}", status)
    out.print(table)
    layers = Table(title="layers")
    for column in ("layer", "kind", "width", "gram width"):
        layers.add_column(column)
    for layer in summary["layers"]:
        layers.add_row(layer["name"], layer["kind"], str(layer["width"]), str(layer["gram_width"]))
    out.print(layers)
