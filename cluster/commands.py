"""The `ftl` verbs for Ray clusters (cluster start/stop/status, submit, jobs, status, logs, stop, fetch and the
hidden job-entry), registered on the CLI's Typer app; each calls one function of cluster/ (imported when the
verb runs, so `ftl --help` stays fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ftl.cluster.entry import run_job
from ftl.cluster.jobs import list_jobs
from ftl.cluster.local import start
from ftl.cluster.submit import submit as submit_job
from ftl.launcher.cli_types import OverridesArg, RecipeArg
from ftl.launcher.errors import FtlError

AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="The cluster's dashboard, http://HEAD:8265 (default: $FTL_RAY_ADDRESS, else the local cluster).",
    ),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="File holding the cluster's Ray token (default: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, the local "
        "cluster's, ~/.ray/auth_token).",
    ),
]
JobArg = Annotated[
    str, typer.Argument(help="Job id (as printed by ftl submit; see ftl jobs).", show_default=False)
]


def register(app: typer.Typer) -> None:
    cluster_app = typer.Typer(
        help="A local Ray head for trying submission (templates for real clusters: cluster/templates/).",
        no_args_is_help=True,
    )
    app.add_typer(cluster_app, name="cluster")

    @cluster_app.command("start")
    def cluster_start(
        local: Annotated[
            bool, typer.Option("--local", help="A single-node head on 127.0.0.1, token auth on.")
        ] = False,
        port: Annotated[
            int | None, typer.Option("--port", help="Ray (GCS) port (default: a free one).")
        ] = None,
        dashboard_port: Annotated[
            int | None,
            typer.Option("--dashboard-port", help="Dashboard and job API port (default: a free one)."),
        ] = None,
        storage: Annotated[
            Path | None, typer.Option("--storage", help="Where jobs leave their run directories.")
        ] = None,
        num_cpus: Annotated[
            int | None, typer.Option("--num-cpus", min=1, help="CPUs each node offers (default: all).")
        ] = None,
        nodes: Annotated[
            int,
            typer.Option(
                "--nodes",
                min=1,
                help="Nodes in all: the head and N-1 more raylets, each with its own CPUs, object store and temp "
                "dir (multi-node runs on one machine).",
            ),
        ] = 1,
    ):
        """Start a local Ray head, and more nodes beside it (prints its dashboard URL)."""
        if not local:
            raise FtlError(
                "ftl cluster start: only --local is supported; start a real cluster with the templates in "
                "cluster/templates/ (ray up, KubeRay, SLURM), then ftl submit --address http://HEAD:8265"
            )
        start(port=port, dashboard_port=dashboard_port, storage=storage, num_cpus=num_cpus, nodes=nodes)

    @cluster_app.command("join")
    def cluster_join(
        address: Annotated[str, typer.Argument(help="The head's Ray address, HOST:PORT (its GCS port).")],
        token_file: Annotated[
            Path, typer.Option("--token-file", help="The head's token file (Ray token auth).")
        ],
        num_cpus: Annotated[
            int | None, typer.Option("--num-cpus", min=1, help="CPUs this node offers (default: all).")
        ] = None,
    ):
        """Start a Ray node on this machine that joins a head (ftl cluster stop ends it)."""
        from ftl.cluster.local import join

        join(address, token_file, cpus=num_cpus)

    @cluster_app.command("stop")
    def cluster_stop():
        """Stop the local cluster ftl started (only its own processes)."""
        from ftl.cluster.local import stop

        stop()

    @cluster_app.command("status")
    def cluster_status():
        """Whether the local cluster runs; its address, token file and storage."""
        from ftl.cluster.local import status

        status()

    @app.command()
    def submit(
        recipe: RecipeArg,
        overrides: OverridesArg = None,
        address: AddressOpt = None,
        tune: Annotated[
            bool, typer.Option("--tune", help="Run the recipe's search (ftl tune) as one job.")
        ] = False,
        samples: Annotated[
            int | None, typer.Option("--samples", "-n", min=1, help="Trials (with --tune).")
        ] = None,
        storage: Annotated[
            str | None,
            typer.Option(
                "--storage",
                help="Shared path or URI (s3://, gs://, file://) for the job's run directory (default: the local "
                "cluster's, else $FTL_STORAGE).",
            ),
        ] = None,
        insecure: Annotated[
            bool, typer.Option("--insecure", help="Allow a non-loopback cluster without token or TLS.")
        ] = False,
        token_file: TokenFileOpt = None,
        gpus: Annotated[
            float | None,
            typer.Option(
                "--gpus", min=0, help="GPUs for the job's driver (a single-process run trains there)."
            ),
        ] = None,
        follow: Annotated[
            bool,
            typer.Option("--follow/--no-wait", help="Follow the job's logs to its end, or return at once."),
        ] = False,
    ):
        """Submit a recipe (or with --tune its search) as a Ray Job; prints the job id."""
        if samples is not None and not tune:
            raise FtlError("--samples: applies to a search; add --tune")
        code = submit_job(
            recipe,
            overrides or [],
            address=address,
            tune=tune,
            samples=samples,
            storage=storage,
            insecure=insecure,
            token_file=token_file,
            gpus=gpus,
            follow=follow,
        )
        if code:
            raise typer.Exit(code)

    @app.command()
    def jobs(
        address: AddressOpt = None,
        token_file: TokenFileOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
    ):
        """List the cluster's jobs."""
        list_jobs(address, token_file=token_file, as_json=as_json)

    @app.command()
    def status(job: JobArg, address: AddressOpt = None, token_file: TokenFileOpt = None):
        """A job's status (stdout) and what it runs (stderr)."""
        from ftl.cluster.jobs import status as job_status

        job_status(job, address, token_file=token_file)

    @app.command()
    def logs(
        job: JobArg,
        address: AddressOpt = None,
        token_file: TokenFileOpt = None,
        follow: Annotated[
            bool,
            typer.Option(
                "--follow", "-f", help="Stream until the job ends; exit 0 succeeded, 1 failed, 3 stopped."
            ),
        ] = False,
    ):
        """A job's logs."""
        from ftl.cluster.jobs import logs as job_logs

        code = job_logs(job, address, follow=follow, token_file=token_file)
        if code:
            raise typer.Exit(code)

    @app.command()
    def stop(job: JobArg, address: AddressOpt = None, token_file: TokenFileOpt = None):
        """Stop a running job and wait until it has stopped."""
        from ftl.cluster.jobs import stop as stop_job

        stop_job(job, address, token_file=token_file)

    @app.command()
    def fetch(
        job: JobArg,
        output: Annotated[Path, typer.Option("--output", "-o", help="Folder to copy <job-id>/ into.")] = Path(
            "runs"
        ),
        address: AddressOpt = None,
        token_file: TokenFileOpt = None,
        storage: Annotated[
            str | None,
            typer.Option(
                "--storage", help="Where the job's run directory is (default: from the job's metadata)."
            ),
        ] = None,
    ):
        """Copy a job's run directory from its storage to <output>/<job-id> (prints that path)."""
        from ftl.cluster.jobs import fetch as fetch_job

        fetch_job(job, output, address, storage=storage, token_file=token_file)

    @app.command("job-entry", hidden=True)
    def job_entry(
        kind: Annotated[str, typer.Argument(help="run or tune")],
        job_id: Annotated[str, typer.Option("--job-id")],
        storage: Annotated[str, typer.Option("--storage")],
        samples: Annotated[int | None, typer.Option("--samples", min=1)] = None,
    ):
        """Inside a submitted job: run the staged recipe into <storage>/<job-id>."""
        run_job(kind, job_id, storage, samples=samples)
