"""Progress on stderr: the demo's training, dask's bar for ``metrics`` in a terminal (and
nothing when piped), no huggingface_hub bars during a Hub audit, and shell completion."""

from __future__ import annotations

import os
import pty
import re
import shlex
import subprocess

import pytest

from flq_audit import api
from tests._helpers.cli import cli_command, cli_env, describe, run_cli
from tests._helpers.hub import olah_hub, safetensors_bytes, tiny_state
from tests._helpers.runs import make_run

TRAINING_LINE = re.compile(r"^training\s+step (\d+)/(\d+)\s+loss (\d+\.\d+)$")


@pytest.mark.slow
def test_demo_prints_training_steps_and_loss_on_stderr(tmp_path):
    proc = run_cli("demo", "--workdir", tmp_path / "demo", "--train-steps", "20")
    assert proc.returncode == 0, describe(proc)
    lines = [m for line in proc.stderr.splitlines() if (m := TRAINING_LINE.match(line))]
    assert [int(m[1]) for m in lines] == list(range(2, 21, 2))
    assert {int(m[2]) for m in lines} == {20}
    assert all(0.0 < float(m[3]) < 10.0 for m in lines)
    assert not any(TRAINING_LINE.match(line) for line in proc.stdout.splitlines())
    assert sorted(p.name for p in (tmp_path / "demo" / "checkpoints").glob("step_*")) == sorted(
        f"step_{s}.safetensors" for s in (0, 1, 2, 5, 10, 20))
    report = tmp_path / "demo" / "report"  # written by api.report, as `flq-audit report` does
    assert {"index.html", "metrics.nc", "target_linearity.png"} <= {p.name for p in report.iterdir()}
    assert f"page    {report / 'index.html'}" in proc.stdout


def test_digits_recipe_reports_every_optimizer_step(tmp_path):
    from flq_audit.recipes import digits_mlp

    seen: list[tuple[int, int, float]] = []
    digits_mlp.train(tmp_path / "run", total_steps=5, progress=lambda *a: seen.append(a))
    assert [(s, t) for s, t, _ in seen] == [(s, 5) for s in range(1, 6)]
    assert all(loss > 0 for *_, loss in seen)


def test_help_lists_shell_completion_and_it_completes_commands():
    helped = run_cli("--help")
    assert helped.returncode == 0, describe(helped)
    assert "--install-completion" in helped.stdout and "--show-completion" in helped.stdout
    # typer detects the shell from the process's ancestors (shellingham): ask from a bash, as a
    # user would, so the answer does not depend on what started the test run
    script = subprocess.run(["bash", "-c", f"{shlex.join(cli_command('--show-completion'))}; exit $?"],
                            env=cli_env(), capture_output=True, text=True, timeout=120, check=False)
    assert script.returncode == 0, describe(script)
    assert "complete -o default -F _flq_audit_completion flq-audit" in script.stdout
    asked = run_cli(env=cli_env(_FLQ_AUDIT_COMPLETE="complete_bash",
                                COMP_WORDS="flq-audit me", COMP_CWORD="1"))
    assert asked.stdout.split() == ["metrics"], describe(asked)


def _stderr_on_a_terminal(*args) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal and stdout on a pipe."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(cli_command(*args), stdout=subprocess.PIPE, stderr=slave,
                            env=cli_env(), text=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the other end closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out = proc.stdout.read()
    return proc.wait(timeout=60), out, b"".join(chunks).decode(errors="replace")


def _final_screen(raw: str, columns: int = 240, lines: int = 400) -> list[str]:
    """What a terminal shows once ``raw`` (with its cursor moves and erases) is drawn."""
    import pyte

    screen = pyte.Screen(columns, lines)
    pyte.Stream(screen).feed(raw.replace("\n", "\r\n"))
    return [line.rstrip() for line in screen.display if line.strip()]


def test_metrics_draws_one_live_bar_in_a_terminal_cleared_at_the_end_and_none_in_a_pipe(tmp_path):
    run = make_run(tmp_path / "run")
    store = tmp_path / "S.zarr"
    api.audit(str(run), out=store)
    code, out, err = _stderr_on_a_terminal(
        "metrics", store, "--metric", "tl,surrogate,gram,dynamics,nc")
    assert code == 0, err
    assert "computing metrics" in err and "target_linearity" in out  # drawn while it ran
    assert _final_screen(err) == [], err  # and nothing of it left on the screen
    assert "Completed" not in err + out
    piped = run_cli("metrics", store, "--recompute")
    assert piped.returncode == 0, describe(piped)
    assert "computing metrics" not in piped.stderr + piped.stdout


@pytest.mark.hub
@pytest.mark.slow
def test_hub_audit_draws_no_huggingface_hub_bars(tmp_path):
    branches = {name: {"model.safetensors": safetensors_bytes(tiny_state(seed, width=64))}
                for seed, name in enumerate(("main", "step0", "step10"))}
    with olah_hub(tmp_path / "olah", {"org/tiny": branches}) as (endpoint, _, _):
        home = tmp_path / "home"
        env = cli_env(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"),
                      HF_HUB_OFFLINE="0", TQDM_POSITION="-1")  # bars forced on, even in a pipe
        env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        proc = subprocess.run(cli_command("org/tiny", "--no-probe", "--out", tmp_path / "S.zarr"),
                              env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, describe(proc)
    assert "2 step(s) written" in proc.stdout
    assert "model.safetensors" not in proc.stderr and "it/s]" not in proc.stderr, proc.stderr
    assert not re.search(r"\d+(\.\d+)?[kMG]?B?/s", proc.stderr), proc.stderr


def test_a_hub_download_reports_its_bytes_to_the_listener(tmp_path):
    from flq_audit.sources._hub_progress import StepDownloads, byte_counter

    seen: list[tuple[int, int, int]] = []
    downloads = StepDownloads(listener=lambda *a: seen.append(a))
    counter = byte_counter(downloads.add)
    downloads.begin(7, 300)
    with counter(total=200, initial=50, desc="model.safetensors", unit="B") as bar:
        bar.update(100)
        bar.update(50)
    assert seen == [(7, 0, 300), (7, 50, 300), (7, 150, 300), (7, 200, 300)]


def _completions(words: str) -> list[str]:
    parts = words.split(" ")
    asked = run_cli(env=cli_env(_FLQ_AUDIT_COMPLETE="complete_bash", COMP_WORDS=words,
                                COMP_CWORD=str(len(parts) - 1)))
    assert asked.returncode == 0, describe(asked)
    return asked.stdout.split()


@pytest.mark.parametrize(("words", "offered"), [
    ("flq-audit audit run --pooling ", ["cls", "last", "mean"]),
    ("flq-audit audit run --cache d", ["drop"]),
    ("flq-audit metrics s.zarr --metric su", ["surrogate"]),
    ("flq-audit metrics s.zarr --metric tl,g", ["tl,gram"]),
])
def test_completion_offers_the_values_an_option_takes(words, offered):
    assert _completions(words) == offered


def test_help_names_values_in_capitals_not_by_python_type():
    for command in ("audit", "metrics", "show", "export", "report"):
        helped = run_cli(command, "--help", env=cli_env(COLUMNS="200"))
        assert helped.returncode == 0, describe(helped)
        assert "<str>" not in helped.stdout and "{" not in helped.stdout.splitlines()[0], (
            command, helped.stdout)
    audit = run_cli("audit", "--help", env=cli_env(COLUMNS="200")).stdout
    assert audit.splitlines()[0] == "Usage: flq-audit audit [OPTIONS] SOURCE"
    assert "--pooling cls|last|mean" in audit and "--cache keep|drop" in audit
