"""The `ftl` command line: a thin Typer app; each verb calls one function of the packages."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ftl.launcher.bench.runner import run_bench
from ftl.launcher.check import check_recipe
from ftl.launcher.export import export_run
from ftl.launcher.locations import check_cache_environment
from ftl.launcher.plan import parse_memory
from ftl.launcher.plan_report import plan_recipe
from ftl.launcher.recipe import load_recipe
from ftl.launcher.recipe.schema import Recipe
from ftl.launcher.secrets import redact
from ftl.tune.cv import run_cv
from ftl.tune.search import run_search

try:  # recent typer vendors click; older typer uses click itself
    from typer._click import exceptions as cli_errors
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as cli_errors

from ftl.cluster.commands import register as register_cluster_commands
from ftl.launcher.cli_types import OverridesArg, RecipeArg
from ftl.launcher.console import quiet_library_notices
from ftl.launcher.errors import FtlError
from ftl.launcher.files import os_error_line
from ftl.launcher.use.commands import register as register_use_commands

app = typer.Typer(
    name="ftl",
    help="Fine-tuning launcher: validate a recipe, see what it costs, run it on one device or many.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.command()
def check(
    recipe: RecipeArg, overrides: OverridesArg = None, quiet: bool = typer.Option(False, "--quiet", "-q")
):
    """Validate a recipe, its data and model; print the resolved recipe and the freezing table."""
    loaded = load_recipe(recipe, overrides or [])
    check_recipe(loaded, print_recipe=not quiet)


@app.command()
def plan(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    gpu_mem: Annotated[
        str | None, typer.Option("--gpu-mem", help="Device memory per worker, e.g. 80GB.")
    ] = None,
    seq_len: Annotated[
        int | None, typer.Option("--seq-len", min=1, help="Tokens per example (default task.max_length).")
    ] = None,
):
    """Estimate parameters, per-worker memory and FLOPs per step (no weights are loaded)."""
    from ftl.launcher.recipe import load_recipe

    loaded = load_recipe(recipe, overrides or [])
    plan_recipe(loaded, gpu_mem=parse_memory(gpu_mem) if gpu_mem else None, seq_len=seq_len)


@app.command()
def run(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Run directory (default runs/<name>).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run directory's last checkpoint.")
    ] = False,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster to run on (same as distributed.address=...).")
    ] = None,
):
    """Fine-tune: train, evaluate and write the run directory."""
    from ftl.launcher.recipe import load_recipe
    from ftl.launcher.run import run_recipe

    extra = [f"distributed.address={address}"] if address else []
    loaded = load_recipe(recipe, [*(overrides or []), *extra])
    run_recipe(loaded, output or Path("runs") / loaded.recipe.name, resume=resume)


@app.command("tune")
def tune_command(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    samples: Annotated[
        int | None, typer.Option("--samples", "-n", min=1, help="Trials to run (default tune.samples).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Search directory (default runs/tune-<name>).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted search; finished trials are kept.")
    ] = False,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster to run the trials on.")
    ] = None,
):
    """Search the recipe's tune.space: Optuna samples, Ray Tune runs the trials in parallel."""
    from ftl.launcher.recipe import load_recipe

    loaded = load_recipe(recipe, overrides or [])
    run_search(
        loaded,
        output or Path("runs") / f"tune-{loaded.recipe.name}",
        resume=resume,
        samples=samples,
        address=address,
    )


@app.command("cv")
def cv_command(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    folds: Annotated[
        int | None, typer.Option("--folds", "-k", min=2, help="Number of folds (default tune.cv.folds or 5).")
    ] = None,
    group_by: Annotated[
        str | None, typer.Option("--group-by", help="Keep rows sharing this column's value in one fold.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output directory (default runs/cv-<name>).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue interrupted folds.")] = False,
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster to run the folds on.")] = None,
):
    """Cross-validate the recipe: k folds as parallel trials, per-fold metrics and mean ± std."""
    from ftl.launcher.recipe import load_recipe

    loaded = load_recipe(recipe, overrides or [])
    run_cv(
        loaded,
        output or Path("runs") / f"cv-{loaded.recipe.name}",
        folds=folds,
        group_by=group_by,
        resume=resume,
        address=address,
    )


@app.command(context_settings={"ignore_unknown_options": True})
def bench(
    recipe: RecipeArg,
    arguments: Annotated[
        list[str] | None,
        typer.Argument(
            help="KEY=VALUE overrides for every cell, then --matrix KEY=v1,v2 [KEY=v1,v2 ...]: the cells are the "
            "cartesian product, e.g. --matrix distributed.zero_stage=0,2,3 train.batch_size=16,32.",
            show_default=False,
        ),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Timed optimizer steps per cell.")] = 20,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed optimizer steps before them.")] = 3,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Results directory (default bench/<name>).")
    ] = None,
    peak_tflops: Annotated[
        float | None,
        typer.Option(
            "--peak-tflops",
            min=0.0,
            help="Peak TFLOPS per device for MFU (default: GPU table, CPU probe).",
        ),
    ] = None,
    probe_seconds: Annotated[
        float, typer.Option("--probe-seconds", min=0.1, help="Length of the CPU matmul peak probe.")
    ] = 3.0,
    cell_timeout: Annotated[
        float | None, typer.Option("--cell-timeout", min=1.0, help="Seconds after which a cell is killed.")
    ] = None,
):
    """Throughput of a recipe over a matrix of settings: tokens/s, step times, memory, MFU; CSV, Markdown, PNG."""
    if peak_tflops == 0:
        raise FtlError(
            "--peak-tflops: 0 gives no MFU; give the device's peak (e.g. 312 for an A100 in bf16), or leave it out"
        )
    run_bench(
        recipe,
        arguments or [],
        steps=steps,
        warmup=warmup,
        output=output,
        peak_tflops=peak_tflops,
        probe_seconds=probe_seconds,
        cell_timeout=cell_timeout,
    )


@app.command("eval")
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.", show_default=False)],
    data: Annotated[
        Path, typer.Option("--data", "-d", help="Labelled file to evaluate on.", show_default=False)
    ],
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    task: Annotated[
        str | None, typer.Option("--task", help="Multitask runs: the task whose head and metrics to use.")
    ] = None,
):
    """Evaluate a finished run on another file; prints JSON metrics."""
    from ftl.launcher.use.evaluate import evaluate_run

    metrics = evaluate_run(run_dir, data, batch_size=batch_size, task_name=task)
    sys.stdout.write(json.dumps(metrics, indent=2) + "\n")


# ftl predict, generate, runs, compare: the verbs that use finished runs (launcher/use/commands.py)
register_use_commands(app)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.", show_default=False)],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="New directory for the model.", show_default=False)
    ],
    merge_lora: Annotated[
        bool, typer.Option("--merge-lora", help="Merge LoRA adapters into the base.")
    ] = False,
    dtype: Annotated[str, typer.Option("--dtype", help="fp32 or bf16 weights.")] = "fp32",
):
    """Write a run's model as a standalone Hugging Face model (from_pretrained loads it)."""
    from ftl.launcher.errors import FtlError

    if dtype not in ("fp32", "bf16"):
        raise FtlError(f"--dtype: '{dtype}' is not supported; use fp32 or bf16")
    written = export_run(run_dir, output, merge_lora=merge_lora, dtype=dtype)
    sys.stdout.write(f"{written}\n")


@app.command()
def schema():
    """Print the recipe JSON Schema (for editor completion and validation)."""
    document = Recipe.model_json_schema()
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "ftl recipe"
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


register_cluster_commands(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors are one line on stderr and exit code 2; bugs keep their traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault(
        "TQDM_DISABLE", "1"
    )  # library progress bars (e.g. GGUF de-quantization); ftl shows its own
    quiet_library_notices()
    try:
        check_cache_environment()
        code = app(args=argv, prog_name="ftl", standalone_mode=False)  # typer.Exit(n) comes back as n
    except FtlError as exc:
        _fail(str(exc))
        return exc.exit_code
    except cli_errors.NoArgsIsHelpError:
        return 0
    except cli_errors.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "ftl"
        _fail(f"{exc.format_message()} (see '{command} --help')")
        return 2
    except typer.Abort:
        _fail("aborted")
        return 130
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except BrokenPipeError:  # stdout closed early (ftl schema | head): nothing left to say to it
        _quiet_stdout()
        return 0
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            _fail(
                f"no space left on the device writing {exc.filename or 'a file'} ({exc.strerror}); free some "
                "space, then run the same command again (with --resume for a run that has checkpoints)"
            )
            return 2
        if exc.filename is None:
            raise
        # a path ftl was given or derived from one (a folder it could not make, a file it could not read): the
        # last resort for OS errors no verb turned into its own line
        _fail(os_error_line(exc))
        return 2
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def _quiet_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _fail(message: str) -> None:
    from rich.markup import escape

    from ftl.launcher.console import console

    console.print(f"[bold red]error:[/] {escape(redact(message))}", soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
