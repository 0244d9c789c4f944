"""The `ftl` verbs that use finished runs (predict, generate, runs, compare), registered on the CLI's Typer app;
each calls one function of launcher/use (imported when the verb runs, so `ftl --help` stays fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ftl.launcher.use.compare import compare_runs
from ftl.launcher.use.generate import Decoding, generate_from_run
from ftl.launcher.use.predict import predict_run
from ftl.launcher.use.runs import list_runs


def register(app: typer.Typer) -> None:
    @app.command()
    def predict(
        run_dir: Annotated[Path, typer.Argument(help="A finished run directory.", show_default=False)],
        data: Annotated[
            Path,
            typer.Option(
                "--data",
                "-d",
                help="Rows to predict (csv, tsv, json, jsonl, parquet, txt, conll).",
                show_default=False,
            ),
        ],
        output: Annotated[
            Path | None, typer.Option("--output", "-o", help="JSONL file to write (default: stdout).")
        ] = None,
        batch_size: Annotated[
            int | None, typer.Option("--batch-size", min=1, help="Rows per batch (default eval.batch_size).")
        ] = None,
        task: Annotated[
            str | None, typer.Option("--task", help="Multitask runs: the task to predict.")
        ] = None,
    ):
        """Predict a file's rows with a finished run (labels not needed): JSONL of each row plus its prediction."""
        predict_run(run_dir, data, output=output, batch_size=batch_size, task_name=task)

    @app.command()
    def generate(
        run_dir: Annotated[
            Path, typer.Argument(help="A finished causal-LM or seq2seq run.", show_default=False)
        ],
        prompt: Annotated[
            list[str] | None,
            typer.Option(
                "--prompt",
                "-p",
                help="A prompt (repeatable); a JSON object fills the run's prompt template fields.",
            ),
        ] = None,
        prompts: Annotated[
            Path | None,
            typer.Option(
                "--prompts", help="File of prompts: a line each (.txt), JSON per line (.jsonl), csv/tsv."
            ),
        ] = None,
        max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", min=1)] = None,
        temperature: Annotated[
            float | None,
            typer.Option("--temperature", min=0.0, help="Sample at this temperature (0: greedy)."),
        ] = None,
        top_p: Annotated[
            float | None, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling.")
        ] = None,
        top_k: Annotated[
            int | None, typer.Option("--top-k", min=0, help="Sample among the k likeliest.")
        ] = None,
        num_beams: Annotated[
            int | None, typer.Option("--num-beams", min=1, help="Beam search width.")
        ] = None,
        repetition_penalty: Annotated[float | None, typer.Option("--repetition-penalty", min=0.0)] = None,
        seed: Annotated[
            int | None, typer.Option("--seed", help="Seed for sampling (default: drawn and printed).")
        ] = None,
        batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
        raw: Annotated[
            bool, typer.Option("--raw", help="Prompts as they are: no prompt template, no source prefix.")
        ] = False,
        output: Annotated[Path | None, typer.Option("--output", "-o", help="JSONL file to write.")] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="JSONL on stdout even for a single prompt.")
        ] = False,
    ):
        """Generate text with a causal-LM or seq2seq run (a single prompt: the text on stdout; else JSONL)."""
        generate_from_run(
            run_dir,
            prompt or [],
            prompts,
            decoding=Decoding(max_new_tokens, temperature, top_p, top_k, num_beams, repetition_penalty),
            seed=seed,
            batch_size=batch_size,
            raw=raw,
            output=output,
            as_json=as_json,
        )

    @app.command("runs")
    def runs_command(
        folder: Annotated[Path, typer.Argument(help="Folder holding run directories.")] = Path("runs"),
        sort: Annotated[
            str | None,
            typer.Option(
                "--sort", help="A metric (best first) or a column: name, task, steps, time, started."
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
    ):
        """A table of the runs below a folder (search trials and stages included): task, model, status, metrics."""
        list_runs(folder, sort=sort, as_json=as_json)

    @app.command()
    def compare(
        run_dirs: Annotated[
            list[Path], typer.Argument(help="Two or more run directories.", show_default=False)
        ],
        output: Annotated[
            Path, typer.Option("--output", "-o", help="Folder for compare.png, compare.md and compare.json.")
        ] = Path("."),
        metric: Annotated[
            list[str] | None, typer.Option("--metric", "-m", help="Also plot this eval metric (repeatable).")
        ] = None,
    ):
        """Compare runs: recipe differences, a metric table, and training/eval curves (compare.png)."""
        compare_runs(run_dirs, output, extra_metrics=metric or [])
