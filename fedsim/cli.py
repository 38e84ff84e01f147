"""The command line: ``fedsim run | validate | schema | list | plot | data | sweep | collect``.

Exit status: 0 done; 2 bad scenario or usage (one line on stderr naming the key, the value and what is
allowed; no traceback); 1 a failure during the run, with a readable message.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from fedsim.errors import ScenarioError, SimulationError

ERROR_CONSOLE = Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(message: str, code: int) -> None:
    """Print ``message`` (each of its lines prefixed with ``error:``) and exit with ``code``."""
    sys.stderr.write("".join(f"error: {line}\n" for line in message.splitlines() or [""]))
    sys.stderr.flush()
    raise SystemExit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fedsim")
def cli() -> None:
    """fedsim: simulate asynchronous federated learning in simulated wall-clock time."""
    import matplotlib

    matplotlib.use("Agg")  # the CLI only ever writes files


_set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a scenario key (repeatable), e.g. --set clients.count=50.",
)


@cli.command()
@click.argument("scenario_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@_set_option
@click.option(
    "--out",
    type=str,
    callback=lambda _ctx, _param, value: _named_dir(value, "--out"),
    help="Run directory.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary table.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--no-plots", is_flag=True, help="Do not write the standard figures to RUN_DIR/plots."
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the run already in the run directory (after the new one is built and checked).",
)
@click.option(
    "--threads",
    type=int,
    default=None,
    help="Torch threads for the run [default: FEDSIM_THREADS, else chosen from the workload].",
)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run an interrupted run directory's own scenario to its end.",
)
def run(
    scenario_file: Path | None,
    overrides: tuple[str, ...],
    out: Path | None,
    quiet: bool,
    device: str,
    no_plots: bool,
    overwrite: bool,
    threads: int | None,
    resume_dir: Path | None,
) -> None:
    """Run SCENARIO_FILE and write its run directory (with plots/ unless --no-plots).

    A run directory that already holds a run is refused unless --overwrite; Ctrl-C or SIGTERM
    stops at the next event and keeps the trace so far (exit 130 / 143).
    """
    from fedsim.interrupts import EXIT_CODES
    from fedsim.progress import RichProgress
    from fedsim.scenario import load_scenario
    from fedsim.simulation import run as run_scenario

    if resume_dir is not None:
        if overrides or out is not None or overwrite:
            raise click.UsageError(
                "--resume takes the run directory alone (no --set, --out, --overwrite)"
            )
        scenario = load_scenario(scenario_file) if scenario_file is not None else None
        options = {"resume": resume_dir}
    elif scenario_file is None:
        raise click.UsageError("missing SCENARIO_FILE (or --resume RUN_DIR)")
    else:
        scenario = load_scenario(scenario_file, overrides)
        options = {"out": out, "overwrite": overwrite}
    options["threads"] = threads
    if quiet:
        result = run_scenario(scenario, device=device, **options)
    else:
        with RichProgress() as progress:
            result = run_scenario(scenario, device=device, progress=progress, **options)
    summary = result.summary
    interrupted = summary.get("stop_reason") == "interrupted"
    if not no_plots and not interrupted and result.run_dir is not None:
        from fedsim.plots import save_standard_figures

        save_standard_figures(result, result.run_dir / "plots")
    if not quiet:
        _print_summary(summary)
    if interrupted:
        signal_name = summary.get("interrupted_by", "SIGINT")
        where = result.run_dir
        resume = f"; `fedsim run --resume {where}` runs it to the end" if where else ""
        _fail(
            f"interrupted by {signal_name} at simulated time {summary['sim_time_s']:.1f} s: "
            f"the trace so far and summary.json are in {where}{resume}",
            EXIT_CODES.get(signal_name, 130),
        )


def _named_dir(value: str | None, flag: str) -> Path | None:
    """An empty directory argument would silently mean the current directory: refuse it."""
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter("an empty path; name the directory", param_hint=flag)
    return Path(value)


def _fmt(value: object, spec: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, spec)


def _threads(summary: dict) -> str:
    threads = summary.get("threads") or {}
    n = threads.get("n")
    return f", {n} torch thread{'s' if n != 1 else ''}" if n else ""


def _print_summary(summary: dict) -> None:
    table = Table(
        title=f"fedsim run: {summary['name']} ({summary['algorithm']})", show_header=False
    )
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    rows = [
        ("final accuracy", _fmt(summary["final_accuracy"], ".4f")),
        ("best accuracy", _fmt(summary.get("best_accuracy"), ".4f")),
        (
            "simulated time",
            f"{summary['sim_time_s']:,.1f} s  (stopped by {summary['stop_reason']})",
        ),
        ("updates applied", f"{summary['updates']:,}  (model versions {summary['versions']:,})"),
        ("mean staleness", _fmt(summary["mean_staleness"], ".2f")),
        ("job outcomes", ", ".join(f"{k} {v:,}" for k, v in summary["status_counts"].items())),
        ("wall time", f"{summary['wall_time_s']:.1f} s on {summary['device']}{_threads(summary)}"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console = Console()
    console.print(table)
    console.print(f"run directory: {summary['run_dir']}", soft_wrap=True, highlight=False)


@cli.command()
@click.argument("scenario_file", type=click.Path(dir_okay=False, path_type=Path))
@_set_option
def validate(scenario_file: Path, overrides: tuple[str, ...]) -> None:
    """Check SCENARIO_FILE without running it: everything a run checks before it trains."""
    from fedsim.checks import check_runnable, check_training_path
    from fedsim.scenario import load_scenario

    scenario = load_scenario(scenario_file, overrides)
    check_runnable(scenario)
    click.echo(f"ok: {scenario.name} ({scenario.algorithm.name}, hash {scenario.hash()})")
    path = check_training_path(scenario)
    if path is not None:
        click.echo(f"trainer: {path.backend}, {path.path} ({path.reason})")


PLOT_KINDS = (
    "accuracy",
    "loss",
    "staleness",
    "staleness_time",
    "timeline",
    "contribution",
    "online",
    "participation",
    "consensus",
    "bytes",
    "graph",
)


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(PLOT_KINDS), default="accuracy", show_default=True)
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), required=True)
def plot(run_dirs: tuple[Path, ...], kind: str, out_file: Path) -> None:
    """Plot one or more run directories (several runs overlay where the kind allows)."""
    from fedsim import plots
    from fedsim.result import Result

    results = [_load_run(Result, d) for d in run_dirs]
    single = {"staleness_time", "timeline", "contribution", "online", "participation", "graph"}
    if kind in single and len(results) > 1:
        raise click.UsageError(f"--kind {kind} takes one run directory, got {len(results)}")
    if kind in ("accuracy", "loss"):
        if not any(plots.has_metric(r, kind) for r in results):
            raise ScenarioError(
                f"no {kind} recorded in {', '.join(map(str, run_dirs))} (timing-only run?)"
            )
        figure = plots.accuracy_vs_time(results, metric=kind)
    elif kind in ("staleness", "staleness_time"):
        try:
            figure = (
                plots.staleness(results)
                if kind == "staleness"
                else plots.staleness_over_time(results[0])
            )
        except ValueError as exc:  # e.g. a run with no accepted update
            raise ScenarioError(
                f"{', '.join(map(str, run_dirs))}: cannot plot {kind}: {exc}"
            ) from None
    elif kind == "timeline":
        figure = plots.client_timeline(results[0])
    elif kind == "contribution":
        figure = plots.client_contribution(results[0], speeds=plots.client_speeds(results[0]))
    elif kind in ("online", "participation"):
        figure = (plots.online_clients if kind == "online" else plots.participation)(results[0])
    else:
        figure = _network_plot(kind, results, run_dirs)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_file, dpi=120)
    click.echo(f"wrote {out_file}")


def _load_run(result_class: type, run_dir: Path):
    """A run directory's Result, or one line naming the file that cannot be read."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_bytes())
        except (OSError, ValueError) as exc:
            problem = " ".join(str(exc).split())
            raise ScenarioError(f"{summary}: not a readable summary ({problem})") from None
        if not isinstance(data, dict):
            raise ScenarioError(f"{summary}: not a readable summary (not a JSON object)")
    return result_class.load(run_dir)


def _network_plot(kind: str, results: list, run_dirs: tuple[Path, ...]):
    """consensus / bytes / graph: figures of multi-server runs (fedsim.plots_network)."""
    from fedsim import plots_network

    if kind in ("consensus", "graph"):
        flat = [r for r in results if r.scenario.topology is None]
        if flat:
            raise ScenarioError(
                f"--kind {kind} needs a multi-server run (a topology: section); "
                f"{flat[0].run_dir} has one server"
            )
    if kind == "consensus":
        return plots_network.consensus_error_vs_time(results)
    if kind == "graph":
        return plots_network.server_graph(results[0])
    return plots_network.bytes_vs_accuracy(results)


@cli.group()
def data() -> None:
    """Inspect a scenario's dataset and partition."""


@data.command()
@click.argument("scenario_file", type=click.Path(dir_okay=False, path_type=Path))
@_set_option
@click.option(
    "--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path), help="Also save."
)
def describe(scenario_file: Path, overrides: tuple[str, ...], csv_file: Path | None) -> None:
    """Per-client sample counts and label histogram of SCENARIO_FILE's partition."""
    import pandas as pd
    import torch

    from fedsim.learning.data import describe_partition, load_federated
    from fedsim.rng import SeedStreams
    from fedsim.scenario import load_scenario

    scenario = load_scenario(scenario_file, overrides)
    try:
        federated = load_federated(
            scenario.data,
            scenario.clients.count,
            SeedStreams(scenario.seed or 0),
            torch.device("cpu"),
        )
    except ScenarioError as exc:  # FILE:LINE: of the key, as validate and run say it
        raise scenario.locate_error(exc) from None
    table = describe_partition(federated)
    if csv_file is not None:
        table.to_csv(csv_file)
    sizes = table["samples"]
    with pd.option_context("display.max_rows", 40, "display.width", 160):
        click.echo(table)
    click.echo(
        f"{len(table)} clients, {int(sizes.sum())} training samples; per client "
        f"min {sizes.min()}, median {sizes.median():g}, max {sizes.max()}"
    )


@cli.command(name="sweep")
@click.argument("sweep_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Sweep directory [default: runs/sweeps/NAME].",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def sweep_command(
    sweep_file: Path, jobs: int, backend: str, out: Path | None, device: str, quiet: bool
) -> None:
    """Run every unfinished cell of SWEEP_FILE, JOBS at a time, then write results.parquet."""
    from fedsim.sweep import load_sweep, run_sweep

    outcome = run_sweep(
        load_sweep(sweep_file), out, jobs=jobs, backend=backend, device=device, progress=not quiet
    )
    cells = outcome.ran + outcome.skipped
    click.echo(
        f"{cells} cells ({outcome.ran} run, {outcome.skipped} already finished): "
        f"{outcome.results_path} ({len(outcome.table):,} rows)"
    )


@cli.command()
@click.argument("sweep_dir", type=click.Path(file_okay=False, path_type=Path))
def collect(sweep_dir: Path) -> None:
    """Rebuild SWEEP_DIR/results.parquet from its finished cells."""
    from fedsim.sweep import MANIFEST, RESULTS, collect_cells

    _check_manifest(sweep_dir / MANIFEST)
    table, finished, total = collect_cells(sweep_dir)
    click.echo(f"{finished} of {total} cells finished: {sweep_dir / RESULTS} ({len(table):,} rows)")


def _check_manifest(path: Path) -> None:
    """A sweep.json that parses must hold ``cells``: a list of ``{dir, hash}`` entries."""
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return  # collect_cells says the directory is not a sweep directory
    cells = manifest.get("cells") if isinstance(manifest, dict) else None
    if not isinstance(cells, list) or not all(
        isinstance(c, dict) and isinstance(c.get("dir"), str) and isinstance(c.get("hash"), str)
        for c in cells
    ):
        raise ScenarioError(
            f"{path}: malformed sweep manifest (expected cells: a list of {{dir, hash}} entries)"
        )


@cli.command()
def schema() -> None:
    """Print the JSON Schema of scenario files (installed plugins' algorithms included)."""
    from fedsim.plugins import load_entry_points
    from fedsim.scenario import Scenario

    load_entry_points()
    click.echo(json.dumps(Scenario.model_json_schema(by_alias=True), indent=2))


@cli.command(name="list")
def list_plugins() -> None:
    """List every name a scenario may use: algorithms, datasets, models, partitions, delay laws,
    aggregators and pre-aggregators, attacks, server optimizers, ..."""
    from fedsim.registry import catalogue

    for kind, names in catalogue().items():
        click.echo(f"{kind}: {', '.join(names)}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: turn every expected error into one line and an exit status."""
    try:
        cli.main(args=argv, prog_name="fedsim", standalone_mode=False)
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.UsageError as exc:
        _fail(exc.format_message().replace("\n", " "), 2)
    except click.ClickException as exc:
        _fail(exc.format_message().replace("\n", " "), exc.exit_code)
    except ScenarioError as exc:  # one line per problem, each naming FILE:LINE where known
        _fail("\n".join(exc.lines), 2)
    except SimulationError as exc:
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        _fail("interrupted; the run directory holds what was recorded so far", 130)
    except Exception as exc:  # an unexpected failure: readable, status 1
        _fail(f"run failed: {type(exc).__name__}: {exc}", 1)


if __name__ == "__main__":
    main()
