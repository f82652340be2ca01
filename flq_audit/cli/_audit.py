"""``flq-audit SOURCE``: audit a checkpoint sequence into a store."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flq_audit import api
from flq_audit._format import human_size, one_line
from flq_audit._tags import tag_pairs
from flq_audit.audit.extensions.fl_inputs import fl_options
from flq_audit.cli import _output
from flq_audit.cli._errors import EXIT_STEPS_FAILED, mapped
from flq_audit.cli._options import (
    ActivationDtypeOpt,
    CacheOpt,
    FLLossOpt,
    GramDtypeOpt,
    GramsOpt,
    JsonOpt,
    PollOpt,
    PoolingOpt,
    ProbeKeysOpt,
    QuietOpt,
    ReplayDtypeOpt,
    StepsOpt,
    StorageOptionsOpt,
    TagOpt,
    TaskOpt,
    UntilOpt,
    WatchMetricsOpt,
    WatchOpt,
)
from flq_audit.errors import MovedRevisionWarning, OptionError, UnauditedFilesWarning
from flq_audit.options import (
    ActivationDtypeChoice,
    CacheChoice,
    CaptureOptions,
    GramDtypeChoice,
    GramsChoice,
    RunOptions,
    SourceOptions,
    TaskChoice,
    TextProbeOptions,
)

if TYPE_CHECKING:
    from flq_audit.audit.plan import AuditPlan
    from flq_audit.audit.step import AuditResult
    from flq_audit.audit.watch import WatchResult

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


def _layers(values: list[str] | None) -> list[str]:
    from flq_audit.capture.roles import split_layers  # the capture package imports torch

    return split_layers(values or [])


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
        "--layers", help="Glob pattern(s) over module and parameter names (W_in), or layer "
        "roles of language models (mlp.down, attn.out@0,8,15, unembed); repeat or "
        "comma-separate. Default: every Linear/Conv layer and parameter layer.")] = None,
    out: Annotated[str | None, typer.Option(
        help="Output Zarr store: a local path or an fsspec URL (s3://bucket/x.zarr). "
        "Default: ./<source name>.zarr, with the parent folders of a generic name "
        "(./RUN-checkpoints.zarr for RUN/checkpoints)")] = None,
    storage_options: StorageOptionsOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Probe samples per forward pass.")] = 512,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    workers: Annotated[str | None, typer.Option(
        metavar="N|auto", help="Audit the steps in N processes (N >= 2): this one and a local "
        "dask cluster of N-1 workers, cores shared out among them; auto: one per core when "
        "each gets 2 steps or more, else sequential (docs/cluster.md).")] = None,
    scheduler: Annotated[str | None, typer.Option(
        help="Audit the steps on the dask.distributed cluster at this address "
        "(tcp://HOST:8786).")] = None,
    threads: Annotated[int | None, typer.Option(
        min=1, help="torch intra-op threads (default: torch's own; 1 on a busy small machine).")
    ] = None,
    prefetch: Annotated[bool, typer.Option(
        "--prefetch/--no-prefetch",
        help="Fetch and load the next checkpoint while this one replays (at most two in memory).")
    ] = True,
    activation_dtype: ActivationDtypeOpt = ActivationDtypeChoice.float32,
    gram_dtype: GramDtypeOpt = GramDtypeChoice.float32,
    grams: GramsOpt = GramsChoice.compact,
    replay_dtype: ReplayDtypeOpt = None,
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
    fl_loss: FLLossOpt = None,
    fl_lr: Annotated[str | None, typer.Option(
        help="FL residual: the learning rate, a number or a JSON file {step: lr}.")] = None,
    fl_batches: Annotated[str | None, typer.Option(
        help="FL residual: 'full' or a JSON file of each step's batch: {step: [indices]} or "
        "{\"batches\": [[indices], ...]} in step order.")
    ] = None,
    fl_probe: Annotated[str | None, typer.Option(
        help="FL residual: the training set the batch indices point into (a probe file); "
        "default: --probe.")] = None,
    probe_keys: ProbeKeysOpt = None,
    task: TaskOpt = TaskChoice.sequence,
    pooling: PoolingOpt = None,
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
    name_pattern: Annotated[str | None, typer.Option(
        help="Local folder: a regex with a named group 'step', matched against whole file or "
        "folder names (the extension may be left out), e.g. 'run-(?P<step>\\d+)'.")] = None,
    step_from_key: Annotated[str | None, typer.Option(
        help="Local folder: read each checkpoint's step from this key inside it (epoch, step, "
        "global_step; a torch pickle's dict or safetensors metadata).")] = None,
    subfolders: Annotated[bool | None, typer.Option(
        "--subfolders/--no-subfolders",
        help="Hub: read checkpoint-N/ folders of one revision instead of branches.")] = None,
    template_steps: Annotated[str | None, typer.Option(
        help="Hub, one repo per step: SOURCE holds {step}; the steps as a comma list.")] = None,
    cache: CacheOpt = CacheChoice.keep,
    offline: Annotated[bool, typer.Option(
        "--offline", help="Hub: use the local HF cache only (no network).")] = False,
    hidden_states: Annotated[bool, typer.Option(
        "--hidden-states", help="transformers: also capture the residual stream "
        "(hidden_states.0 = embeddings ... hidden_states.L), pooled like the probe; no Gram.")
    ] = False,
    reaudit_moved: Annotated[bool, typer.Option(
        "--reaudit-moved", help="Hub: re-audit the done steps whose branch now points at "
        "another commit than the store pinned (same store; every other step is kept).")
    ] = False,
    extension: Annotated[list[str] | None, typer.Option(
        "--extension", metavar="NAME", help="Enable an installed per-step extension by name "
        "(repeatable): one a package declares in the entry-point group flq_audit.extensions.")
    ] = None,
    tag: TagOpt = None,
    weights_only: Annotated[bool, typer.Option(
        "--weights-only", "--no-probe",
        help="Grams of every weight matrix only: no model, no probe.")
    ] = False,
    quiet: QuietOpt = False,
    watch: WatchOpt = False,
    poll: PollOpt = 30.0,
    until: UntilOpt = None,
    metrics: WatchMetricsOpt = None,
) -> None:
    """Audit a checkpoint sequence: replay the probe, store activations and Grams."""
    _check_watch_options(watch, dry_run=dry_run, steps=steps, poll=poll, until=until,
                         metrics=metrics)
    fl = fl_options(None if fl_loss is None else fl_loss.value, fl_lr, fl_batches, fl_probe, probe_keys)
    tags = dict(tag_pairs(tag or ()))
    capture = CaptureOptions(
        layers=tuple(_layers(layers)), activation_dtype=activation_dtype.value,
        gram_dtype=gram_dtype.value, grams=grams.value,
        replay_dtype=None if replay_dtype is None else replay_dtype.value,
        max_samples=max_samples, hidden_states=hidden_states,
        extensions=tuple(extension or ()),
    )
    run = RunOptions(batch_size=batch_size, device=device, overwrite=overwrite,
                     trust_pickle=trust_pickle, trust_remote_code=trust_remote_code,
                     probe_keys=probe_keys, threads=threads, prefetch=prefetch,
                     reaudit_moved=reaudit_moved, workers=workers, scheduler=scheduler)
    hub = SourceOptions(revision_pattern=revision_pattern, subfolders=subfolders,
                        template_steps=tuple(_steps_list(template_steps) or ()),
                        cache=cache.value, offline=offline or None,
                        name_pattern=name_pattern, step_from_key=step_from_key)
    text = TextProbeOptions(task=task.value, pooling=None if pooling is None else pooling.value,
                            text_column=text_column, label_column=label_column,
                            max_length=max_length, top_k=top_k)
    if watch:
        _watch(source, poll=poll, until=until, metrics=metrics, as_json=as_json, quiet=quiet,
               run=run, hub=hub, model=model, probe=probe, weights_only=weights_only, out=out,
               storage_options=storage_options, capture=capture, text=text, fl=fl,
               tags=tags)
        return
    plan = api.plan_audit(source, steps=steps, model=model, probe=probe, weights_only=weights_only,
                          out=out, storage_options=storage_options,
                          capture=capture, hub=hub, text=text, fl=fl, run=run, tags=tags)
    if dry_run:
        _render_plan(plan, as_json)
        from flq_audit.audit.moved import moved_message

        moved = None if as_json or plan.reaudit_moved else moved_message(plan)
        if moved is not None:
            _output.warning(moved)
        if plan.store_refusal is not None:  # the real run would stop here, with this code
            _output.error(f"refused: {plan.store_refusal}")
            raise typer.Exit(plan.store_refusal.exit_code)
        return
    from flq_audit.audit.moved import moved_message
    from flq_audit.audit.plan import left_out_message

    left_out = left_out_message(plan)
    if left_out is not None:
        _output.warning(left_out)
    moved = moved_message(plan)
    if moved is not None and not run.reaudit_moved:
        _output.warning(moved)
    with _output.RichProgress(quiet=quiet or as_json) as progress:
        report_downloads = getattr(plan.source, "report_downloads", None)
        if report_downloads is not None:  # Hub sources: bytes inside the step bar
            report_downloads(progress.downloaded)
        with warnings.catch_warnings():  # said once above, in the CLI's own words
            warnings.simplefilter("ignore", UnauditedFilesWarning)
            warnings.simplefilter("ignore", MovedRevisionWarning)
            result = api.run_audit(plan, run, progress)
    _finish(result, as_json=as_json, quiet=quiet)
    if not (as_json or quiet):
        _output.worker_summary(getattr(result, "workers", None))
    _exit_if_failed(result)


audit_command.__doc__ = (audit_command.__doc__ or "") + AUDIT_EXAMPLES


class _WatchLines:
    """A watch's report: bars during each audit round, a status line on stderr when what it
    waits for changes."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self._last = ""

    @contextmanager
    def audit_round(self) -> Iterator[_output.RichProgress]:
        self._last = ""
        with _output.RichProgress(quiet=self.quiet) as progress:
            yield progress

    def waiting(self, message: str) -> None:
        if not self.quiet and message != self._last:
            _output.stderr.print(message, soft_wrap=True, highlight=False)
        self._last = message

    def round_done(self, result: AuditResult) -> None:
        if not self.quiet:
            _output.stderr.print(f"audited step(s) {result.written or '-'}, "
                                 f"{len(result.skipped)} already done, "
                                 f"{len(result.failed)} failed", highlight=False)


def _check_watch_options(watch: bool, *, dry_run: bool, steps: str, poll: float,
                         until: int | None, metrics: str | None) -> None:
    """--poll, --until and --metrics belong to --watch; a dry run and a step selection do
    not watch."""
    if watch and dry_run:
        raise OptionError("--watch and --dry-run: a dry run writes nothing, so it cannot watch",
                          hint="Run --dry-run alone to see the plan, then --watch.")
    if watch and steps.strip().lower() not in ("all", ""):
        raise OptionError(f"--steps {steps} with --watch: a watch audits every checkpoint",
                          hint="Audit the selection first (without --watch), then watch.")
    given = [name for name, value in (("--poll", poll != 30.0), ("--until", until is not None),
                                      ("--metrics", metrics is not None)) if value]
    if given and not watch:
        raise OptionError(f"{', '.join(given)} apply only with --watch",
                          hint="Add --watch, or run `flq-audit metrics STORE` after the audit.")


def _watch(source: str, *, poll: float, until: int | None, metrics: str | None,
           as_json: bool, quiet: bool, **plan: Any) -> None:
    """``--watch``: :func:`flq_audit.api.watch`, its waits as status lines on stderr."""
    from flq_audit.audit.watch import WatchOptions

    groups = tuple(m.strip() for m in (metrics or "").split(",") if m.strip())
    options = WatchOptions(poll=poll, until=until, metrics=groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnauditedFilesWarning)  # the watch lists every poll
        result = api.watch(source, options=options,
                           reporter=_WatchLines(quiet=quiet or as_json), **plan)
    _finish(result, as_json=as_json, quiet=quiet, note=f" (step {until} reached)")
    _exit_if_failed(result)


def _finish(result: AuditResult | WatchResult, *, as_json: bool, quiet: bool, note: str = "") -> None:
    """The audit's last line (or its JSON): steps written, already done, failed."""
    if as_json:
        _output.print_json(result.to_dict())
    elif not quiet:
        _output.stdout.print(
            f"store {result.store}: {len(result.written)} step(s) written, "
            f"{len(result.skipped)} already done, {len(result.failed)} failed{note}")


def _exit_if_failed(result: AuditResult | WatchResult) -> None:
    """Each failed step's message, then exit code 5."""
    if result.failed:
        for message in result.failed.values():
            _output.error(message)
        raise typer.Exit(EXIT_STEPS_FAILED)


def _step_status(step: int, summary: dict) -> str:
    """``done`` (already in the store), ``new: appended`` (the store's step axis grows to
    take it) or ``new`` (laid out in the store, not audited yet)."""
    if step in summary["already_done"]:
        return "done"
    return "new: appended" if step in summary["appended"] else "new"


def _render_plan(plan: AuditPlan, as_json: bool) -> None:
    summary = plan.summary()
    if as_json:
        _output.print_json(summary)
        return
    from rich.table import Table

    out = _output.stdout
    out.print(f"source  {summary['source']}")
    refusal = summary["store_refusal"]
    estimate = f"~{human_size(summary['store_bytes_estimate'])} uncompressed"
    if refusal is not None:
        out.print(f"store   {summary['store']} ({estimate}): refused: {one_line(refusal['message'])}")
    else:
        out.print(f"store   {summary['store']} ({summary['store_status']}; {estimate})")
    per_step, n_written = summary["store_bytes_per_step"], len(plan.layout.written)
    out.print(f"        per step: activations {human_size(per_step['activations'])}, Grams "
              f"{human_size(per_step['grams'])} (--grams {plan.capture.grams}); "
              f"{n_written} step(s) to write: activations "
              f"{human_size(n_written * per_step['activations'])}, Grams "
              f"{human_size(n_written * per_step['grams'])}")
    probe = summary["probe"]
    out.print("probe   none (weights only)" if probe is None else
              f"probe   {probe['name']}: {probe['n_samples']} samples, {probe['kind']}")
    if probe is not None and probe.get("pooling_from"):
        out.print(f"pooling {probe['pooling']} ({probe['pooling_from']})")
    table = Table(title="checkpoints")
    step_from = any(ckpt["step_from"] != "name" for ckpt in summary["checkpoints"])
    for column in ("step", "label", "step from", "format", "size", "status"):
        if column != "step from" or step_from:
            table.add_column(column)
    moved = {m["step"] for m in summary["moved"]}
    for ckpt in summary["checkpoints"]:
        status = _step_status(ckpt["step"], summary)
        if ckpt["step"] in moved:
            status = "moved: re-audit" if plan.reaudit_moved else "done; branch moved"
        cells = [str(ckpt["step"]), ckpt["label"], ckpt["step_from"], ckpt["format"],
                 human_size(ckpt["bytes"]), status]
        table.add_row(*(cells if step_from else cells[:2] + cells[3:]))
    out.print(table)
    if summary["not_audited"]:
        left = Table(title="not audited")
        for column in ("file", "reason", "to include it"):
            left.add_column(column)
        for entry in summary["not_audited"]:
            left.add_row(entry["name"], entry["reason"], entry["include"] or "-")
        out.print(left)
    out.print(_output.layers_table([(la["name"], la["kind"], la["width"], la["gram_width"],
                                     la["gram_form"]) for la in summary["layers"]],
                                   roles=[la["role"] for la in summary["layers"]]))
