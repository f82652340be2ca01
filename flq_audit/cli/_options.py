"""Reusable option types: each option's value type, parser, help and completion, declared once.

A choice option takes the :class:`~flq_audit.options.Choice` enum of its options field, so
the command receives a member whose ``.value`` is the field's ``Literal``; options whose text
needs parsing (``--storage-options`` JSON, ``--probe-keys`` pairs) parse it here, and a bad
value is a usage error naming the option (exit 2) before the command runs.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from flq_audit.audit.extensions.fl_inputs import FLLossChoice
from flq_audit.cli._command import choices, complete_from, complete_metric_groups
from flq_audit.errors import OptionError
from flq_audit.options import (
    ActivationDtypeChoice,
    CacheChoice,
    Choice,
    GramDtypeChoice,
    GramsChoice,
    PoolingChoice,
    ReplayDtypeChoice,
    TaskChoice,
)
from flq_audit.probes import ProbeKeys, parse_probe_keys


class DenominatorChoice(Choice):
    """The TL denominators (:data:`flq_audit.metrics._options.DENOMINATORS`)."""

    column = "column"
    row = "row"


def storage_options_value(value: object) -> dict[str, Any]:
    """``--storage-options``: the JSON text as a dict (a usage error unless a JSON object)."""
    if isinstance(value, dict):
        return value
    from flq_audit.store._location import parse_storage_options

    return _parsed(parse_storage_options, str(value))


def probe_keys_value(value: object) -> ProbeKeys | None:
    """``--probe-keys INPUTS,TARGETS`` as a pair of array names (a usage error otherwise)."""
    return _parsed(parse_probe_keys, value if isinstance(value, tuple) else str(value))


def _parsed(parse: Any, value: object) -> Any:
    """``parse(value)``, its :class:`OptionError` as a usage error that names the option."""
    try:
        return parse(value)
    except OptionError as err:
        hint = f" ({err.hint})" if err.hint else ""
        raise typer.BadParameter(f"{err.message}{hint}") from None


StepsOpt = Annotated[str, typer.Option(
    help="all | first | last | 100,200 | start:stop[:stride] | log:N (keeps first and last).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries.")]
StoreArg = Annotated[str, typer.Argument(
    help="A store written by `flq-audit SOURCE`: a local path or an fsspec URL (s3://...).")]
StorageOptionsOpt = Annotated[dict[str, Any] | None, typer.Option(
    "--storage-options", metavar="JSON", parser=storage_options_value,
    help="fsspec storage options of a URL store, as JSON (credentials, "
    "client_kwargs.endpoint_url ...).")]
ProbeKeysOpt = Annotated[ProbeKeys | None, typer.Option(
    metavar="PROBE_KEYS", parser=probe_keys_value,
    help="Array names in the --probe file (and in --fl-probe when it holds them), "
    "INPUTS,TARGETS; otherwise the first pair a file holds of inputs,targets, x,y, X,y, "
    "X,Y and data,labels.")]

ActivationDtypeOpt = Annotated[ActivationDtypeChoice, typer.Option(
    help="float32, float16, or float64 (replays the probe in float64; Grams stored in "
         "float64 too).")]
GramDtypeOpt = Annotated[GramDtypeChoice, typer.Option(help="float32 or float64.")]
GramsOpt = Annotated[GramsChoice, typer.Option(
    "--grams", help="What is kept of each weight's Gram: compact (WᵀW, or W itself when it has "
    "fewer rows than columns: exact, never larger than the weight), full (always WᵀW), "
    "spectrum (its eigenvalues only) or none.")]
ReplayDtypeOpt = Annotated[ReplayDtypeChoice | None, typer.Option(
    "--dtype", metavar="|".join(choices(ReplayDtypeChoice)),
    autocompletion=complete_from(choices(ReplayDtypeChoice)),
    help="The dtype the probe replays in (default: the checkpoint's own for transformers "
    "models, float32 otherwise; float64 with --activation-dtype float64). Grams are always "
    "formed from the checkpoint's own tensors in float64.")]
TaskOpt = Annotated[TaskChoice, typer.Option(
    help="Text probes: sequence (one row per text), token (one per word) or next-token.")]
PoolingOpt = Annotated[PoolingChoice | None, typer.Option(
    metavar="|".join(choices(PoolingChoice)), autocompletion=complete_from(choices(PoolingChoice)),
    help="Text probes, sequence task: cls (first token), last (last real token) or mean "
    "over real tokens; default: last for a causal LM (from its config), cls otherwise.")]
CacheOpt = Annotated[CacheChoice, typer.Option(
    metavar="|".join(choices(CacheChoice)), autocompletion=complete_from(choices(CacheChoice)),
    help="Hub: keep the downloaded revisions in the HF cache, or drop each once written.")]


DenominatorOpt = Annotated[DenominatorChoice, typer.Option(
    help="TL denominator: column (the paper: ‖Y − Ȳ‖²) or row (the reference code's "
    "row-centred form, which its VAE figures use).")]
FLLossOpt = Annotated[FLLossChoice | None, typer.Option(
    help="FL residual: the training loss, ce or mse (mean reduction).")]

WatchOpt = Annotated[bool, typer.Option(
    "--watch", help="Follow a run in progress: audit what is there, then each new checkpoint as "
    "it is completely written (local folder) or appears (Hub branch or revision), into the same "
    "store; Ctrl-C or SIGTERM stops it, resumably.")]
PollOpt = Annotated[float, typer.Option(
    min=0.01, metavar="SECONDS", help="--watch: seconds between two looks at the source.")]
UntilOpt = Annotated[int | None, typer.Option(
    metavar="STEP", help="--watch: stop once this step (or a later one) is audited.")]
WatchMetricsOpt = Annotated[str | None, typer.Option(
    "--metrics", metavar="GROUPS", autocompletion=complete_metric_groups,
    help="--watch: recompute these metric groups (comma-separated) after each new step.")]
TagOpt = Annotated[list[str] | None, typer.Option(
    "--tag", metavar="KEY=VALUE", help="Label the store's run (repeatable), e.g. --tag "
    "weight_decay=0.5: a coordinate along run in flq-audit compare and open_runs.")]
