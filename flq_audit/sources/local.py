"""Checkpoints in a local folder: one file per step, or one sub-folder per step.

Recognised layouts::

    run/step_100.safetensors   run/epoch_3.pt   run/100.pth   run/model_1000.bin
    run/epoch_init.pt (step 0)   run/final.pth (after the last step)
    run/epoch=3-step=1200.ckpt (PyTorch Lightning: the step is its global_step)
    run/checkpoint-500/model.safetensors
    run/checkpoint-500/model-00001-of-00002.safetensors + model.safetensors.index.json
    run/checkpoint-500/pytorch_model.bin (or sharded .bin with pytorch_model.bin.index.json)

When one stem exists as safetensors and as a pickle, safetensors is used. Every other entry
is reported by :meth:`LocalFolderSource.left_out` with the reason it is not audited.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from flq_audit.constants import PICKLE_EXTENSIONS, WEIGHT_EXTENSIONS
from flq_audit.errors import CheckpointNotFoundError, StepSelectionError
from flq_audit.sources._base import CheckpointRef, CheckpointSource, LeftOut
from flq_audit.sources._folder_files import is_auxiliary, weight_files_in_folder
from flq_audit.sources._inner_steps import LIGHTNING_STEP_KEY, lightning_step, stored_steps
from flq_audit.sources.steps import compile_name_pattern, name_role, parse_step

#: Files beside the checkpoints that flq-audit reads, or that are not meant to be audited.
READ_ON_PURPOSE = frozenset({
    "model_spec.json", "probe.npz", "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "vocab.txt", "merges.txt", "tokenizer.model", "added_tokens.json",
})
_DOC_PREFIXES = ("readme", "license", "licence")
_NO_STEP_HINT = "--name-pattern REGEX or --step-from-key KEY"

# How a checkpoint's step was found (CheckpointRef.extra["step_from"]).
FROM_NAME = "name"
FROM_PATTERN = "--name-pattern"
FROM_INIT = "init name: step 0"
FROM_AFTER_LAST = "final name: after the last step"
#: Keys that may hold a final checkpoint's own step when the other checkpoints say nothing
#: about their units (names such as ``model_100.pth``), strongest first.
STEP_KEYS = ("global_step", "step", "iteration", "iter", "epoch")


@dataclass(frozen=True)
class _Candidate:
    """A weight file or folder whose step is still to be decided (a final checkpoint)."""

    entry: Path
    label: str
    files: tuple[Path, ...]
    fmt: str


class LocalFolderSource(CheckpointSource):
    """A folder of checkpoints on local disk.

    Parameters
    ----------
    root : path
        The folder.
    name_pattern : str, optional
        A regular expression with a named group ``step``, matched against whole entry
        names (or file names without their extension); it replaces the built-in name rules.
    step_from_key : str, optional
        Read each checkpoint's step from this key inside it (a torch pickle's top-level
        dict, or safetensors metadata), e.g. ``epoch``, ``step`` or ``global_step``.
    """

    name: ClassVar[str] = "local"

    def __init__(
        self, root: str | Path, *, name_pattern: str | None = None,
        step_from_key: str | None = None,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.exists():
            raise CheckpointNotFoundError(
                f"source {str(root)!r} does not exist", path=root,
                hint="Pass a folder of checkpoints (or, with the Hub extra, a repo id).",
            )
        if not self.root.is_dir():
            raise CheckpointNotFoundError(
                f"source {str(root)!r} is not a folder", path=root,
                hint="Pass the folder that holds the checkpoint files, not one file.",
            )
        self.pattern = None if name_pattern is None else compile_name_pattern(name_pattern)
        self.step_from_key = step_from_key
        self._left_out: list[LeftOut] = []

    @classmethod
    def guess_can_open(cls, spec: str) -> bool:
        return Path(spec).expanduser().exists()

    def describe(self) -> str:
        return str(self.root)

    def left_out(self) -> list[LeftOut]:
        """Entries the last :meth:`list_refs` did not take, each with its reason, by name."""
        return sorted(self._left_out, key=lambda e: e.name)

    def list_refs(self) -> list[CheckpointRef]:
        self._left_out = []
        candidates: dict[int, list[CheckpointRef]] = defaultdict(list)
        finals: list[_Candidate] = []
        for entry in sorted(self.root.iterdir()):
            placed = self._place(entry)
            if isinstance(placed, CheckpointRef):
                candidates[placed.step].append(placed)
            elif isinstance(placed, _Candidate):
                finals.append(placed)
            elif isinstance(placed, LeftOut):
                self._left_out.append(placed)
        refs = [self._one_per_step(step, candidates[step]) for step in sorted(candidates)]
        refs = self._with_finals(refs, finals)
        if not refs:
            seen = sorted(p.name for p in self.root.iterdir())[:20]
            raise CheckpointNotFoundError(
                f"no checkpoints found in {str(self.root)!r}; "
                f"looked for *{{{','.join(WEIGHT_EXTENSIONS)}}} files with a step in their name "
                f"and checkpoint-N/ folders; found: {seen or 'an empty folder'}",
                path=self.root,
                hint="Give --name-pattern REGEX (a named group 'step') or --step-from-key KEY "
                "when the step is written another way.",
            )
        return refs

    def fetch(self, ref: CheckpointRef) -> list[Path]:
        paths = [Path(f) for f in ref.files]
        for path in paths:
            if not path.is_file():
                raise CheckpointNotFoundError(
                    f"step {ref.step} ({ref.label}): file {str(path)!r} disappeared since the "
                    "folder was listed; finished steps are kept: restore it and rerun to resume",
                    path=path, step=ref.step,
                )
        return paths

    # ------------------------------------------------------------------ helpers
    def _place(self, entry: Path) -> CheckpointRef | _Candidate | LeftOut | None:
        """A checkpoint, a final checkpoint to place later, an entry left out, or nothing."""
        lowered = entry.name.lower()
        if entry.name.startswith(".") or lowered in READ_ON_PURPOSE \
                or lowered.startswith(_DOC_PREFIXES):
            return None
        if entry.is_file():
            suffix = entry.suffix.lower()
            if suffix not in WEIGHT_EXTENSIONS:
                return LeftOut(entry.name, f"not a checkpoint file ({suffix or 'no extension'})")
            if is_auxiliary(entry.stem):
                return LeftOut(entry.name, "training state (optimizer, scheduler, RNG ...), "
                               "not model weights")
            fmt = "pickle" if suffix in PICKLE_EXTENSIONS else "safetensors"
            return self._decide(entry, entry.stem, entry.name, (entry,), fmt)
        if entry.is_dir():
            if self._name_step(entry, entry.name) is None and not self.step_from_key \
                    and name_role(entry.name) is None:
                return LeftOut(entry.name + "/", "folder without a step in its name",
                               "--name-pattern REGEX")
            found = weight_files_in_folder(entry)
            if found is None:
                return LeftOut(entry.name + "/", "folder without weight files "
                               "(model.safetensors, pytorch_model.bin, a single *.safetensors)")
            files, fmt = found
            return self._decide(entry, entry.name, entry.name + "/", tuple(files), fmt)
        return None

    def _decide(
        self, entry: Path, stem: str, label: str, files: tuple[Path, ...], fmt: str
    ) -> CheckpointRef | _Candidate | LeftOut:
        """The step of one weight file or folder: stored inside, from its name, or its role."""
        role = name_role(stem)
        if role == "final":  # placed once every other step is known
            return _Candidate(entry, label, files, fmt)
        if self.step_from_key:
            value = stored_steps(files[0]).get(self.step_from_key)
            if value is not None:
                return self._ref(entry, label, files, fmt, value, "", key=self.step_from_key)
        elif files[0].suffix.lower() == ".ckpt":
            value = lightning_step(files[0])
            if value is not None:
                return self._ref(entry, label, files, fmt, value, "", key=LIGHTNING_STEP_KEY)
        step = self._name_step(entry, stem)
        if step is not None:
            source = FROM_NAME if self.pattern is None else FROM_PATTERN
            return self._ref(entry, label, files, fmt, step, source)
        if role == "init":
            return self._ref(entry, label, files, fmt, 0, FROM_INIT)
        if self.pattern is not None and any(c.isdigit() for c in stem):
            return LeftOut(label, f"does not match --name-pattern {self.pattern.pattern!r}",
                           "--name-pattern REGEX")
        why = "no step in its name" + (
            f" and no {self.step_from_key!r} inside" if self.step_from_key else "")
        return LeftOut(label, why, _NO_STEP_HINT)

    def _name_step(self, entry: Path, stem: str) -> int | None:
        """The step the name gives: by ``--name-pattern`` if set, else the built-in rules."""
        if self.pattern is None:
            return _checked(parse_step(stem), entry)
        match = self.pattern.fullmatch(entry.name) or self.pattern.fullmatch(stem)
        if match is None:
            return None
        try:
            return _checked(int(match.group("step")), entry)
        except (TypeError, ValueError):
            raise StepSelectionError(
                f"--name-pattern {self.pattern.pattern!r}: the 'step' group of {entry.name!r} "
                f"is {match.group('step')!r}, not an integer", path=entry,
                hint=r"Write the step group as (?P<step>\d+).",
            ) from None

    def _ref(
        self, entry: Path, label: str, files: tuple[Path, ...], fmt: str, step: int,
        step_from: str, key: str | None = None,
    ) -> CheckpointRef:
        checked = _checked(step, entry)
        assert checked is not None
        extra = {"step_from": step_from if key is None else f"{key!r} inside"}
        if key is not None:
            extra["step_key"] = key
        return CheckpointRef(
            step=checked, label=label, location=str(self.root),
            files=tuple(str(f) for f in files), fmt=fmt,
            size_bytes=sum(f.stat().st_size for f in files), extra=extra,
        )

    def _with_finals(
        self, refs: list[CheckpointRef], finals: list[_Candidate]
    ) -> list[CheckpointRef]:
        """Place final/last/latest checkpoints: at the step stored inside, else after the last."""
        like = _keys_like(refs)
        by_step = {ref.step: ref for ref in refs}
        by_file = {Path(ref.files[0]).resolve(): ref for ref in refs}
        placed: list[CheckpointRef] = []
        after_last: list[_Candidate] = []
        for final in self._one_per_stem(finals):
            same = by_file.get(final.files[0].resolve())
            if same is not None:
                self._left_out.append(LeftOut(final.label, f"the same file as {same.label}"))
                continue
            keys = _final_keys(final, like, self.step_from_key)
            inside = stored_steps(final.files[0])
            key = next((k for k in keys if k in inside), None)
            after = max(by_step, default=-1) + 1
            if key is None and not self.step_from_key:
                key, why_not = _own_step_key(inside, after)
            else:
                why_not = ""
            if key is not None and inside[key] in by_step:
                taken = by_step[inside[key]]
                self._left_out.append(LeftOut(
                    final.label, f"holds step {inside[key]} (its {key!r}), which {taken.label} "
                    "already gives: the same training state"))
                continue
            if key is not None:
                ref = self._ref(final.entry, final.label, final.files, final.fmt, inside[key],
                                "", key=key)
            elif after_last:
                raise StepSelectionError(
                    f"{after_last[0].label} and {final.label} both name the final checkpoint "
                    "and neither carries its step", path=final.entry,
                    hint="Move one of them out of the folder, or give --step-from-key KEY.")
            else:
                ref = self._ref(final.entry, final.label, final.files, final.fmt, after,
                                FROM_AFTER_LAST + why_not)
                after_last.append(final)
            if ref.step in by_step:
                raise StepSelectionError(
                    f"step {ref.step} is claimed by several checkpoints: "
                    f"{by_step[ref.step].label}, {ref.label}", step=ref.step,
                    hint="Keep one final checkpoint in the folder, or move the others away.")
            by_step[ref.step] = ref
            placed.append(ref)
        return sorted(refs + placed, key=lambda r: r.step)

    def _one_per_stem(self, finals: list[_Candidate]) -> list[_Candidate]:
        """Final checkpoints, one per stem: safetensors when a pickle has the same stem."""
        kept = []
        for final in finals:
            stem = Path(final.label.rstrip("/")).stem
            twins = [f for f in finals if Path(f.label.rstrip("/")).stem == stem]
            chosen = next((f for f in twins if f.fmt == "safetensors"), final)
            if final is chosen:
                kept.append(final)
            else:
                self._left_out.append(LeftOut(final.label, f"the same checkpoint as "
                                              f"{chosen.label} (safetensors is preferred)"))
        return kept

    def _one_per_step(self, step: int, refs: list[CheckpointRef]) -> CheckpointRef:
        if len(refs) == 1:
            return refs[0]
        by_stem = {Path(r.label.rstrip("/")).stem for r in refs}
        safetensors = [r for r in refs if r.fmt == "safetensors"]
        if len(by_stem) == 1 and len(safetensors) == 1:
            for other in refs:
                if other is not safetensors[0]:
                    self._left_out.append(LeftOut(
                        other.label, f"the same checkpoint as {safetensors[0].label} "
                        "(safetensors is preferred)"))
            return safetensors[0]
        labels = ", ".join(sorted(r.label for r in refs))
        init = [r.label for r in refs if r.extra.get("step_from") == FROM_INIT]
        if init:
            others = ", ".join(sorted(r.label for r in refs if r.label not in init))
            raise StepSelectionError(
                f"step 0 is ambiguous: {', '.join(init)} is named as the initial checkpoint "
                f"(step 0), and {others} also gives step 0", step=0,
                hint="Move one of them out of the folder, or give --name-pattern REGEX so "
                "that only one of them is taken.",
            )
        raise StepSelectionError(
            f"step {step} is claimed by several checkpoints: {labels}",
            step=step, hint="Keep one checkpoint per step in the folder, or move the others away.",
        )


def _final_keys(final: _Candidate, like: tuple[str, ...], step_from_key: str | None
                ) -> tuple[str, ...]:
    """The keys that may hold a final checkpoint's step, strongest first."""
    if step_from_key:
        return (step_from_key,)
    if final.files[0].suffix.lower() == ".ckpt":
        return (LIGHTNING_STEP_KEY, *like)
    return like


def _own_step_key(inside: dict[str, int], after: int) -> tuple[str | None, str]:
    """The key of a final checkpoint's own step (``STEP_KEYS``) when it comes after every
    other step, else ``None`` and why a stored value was not taken (``""``: none stored).

    A value at or below the last step is in other units (an epoch count beside step-named
    files) or an older state: the final checkpoint then goes after the last step.
    """
    for key in STEP_KEYS:
        if key in inside and inside[key] >= after:
            return key, ""
    stored = [f"{k!r} inside is {inside[k]}" for k in STEP_KEYS if k in inside]
    if not stored:
        return None, ""
    return None, f" ({', '.join(stored)}: not after step {after - 1}, so not its step)"


def _keys_like(refs: list[CheckpointRef]) -> tuple[str, ...]:
    """Keys inside a final checkpoint that count like the other checkpoints' steps."""
    inside = {r.extra["step_key"] for r in refs if "step_key" in r.extra}
    if inside:
        return tuple(sorted(inside))
    named = [r.label.lower() for r in refs if r.extra.get("step_from") == FROM_NAME]
    if named and all("epoch" in name for name in named):
        return ("epoch",)
    if named and all("step" in name or "iter" in name for name in named):
        return ("global_step", "step")
    return ()


#: Steps are stored as 64-bit integers.
MAX_STEP = 2**63 - 1


def _checked(step: int | None, entry: Path) -> int | None:
    """``step``, refused with a clear error when a 64-bit store cannot hold it."""
    if step is not None and not 0 <= step <= MAX_STEP:
        raise StepSelectionError(
            f"checkpoint {entry.name!r}: step {step} is outside 0 ... {MAX_STEP} "
            "(steps are stored as 64-bit integers)", path=entry,
            hint="Rename the file so that its step number fits, or move it out of the folder.",
        )
    return step
