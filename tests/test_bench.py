"""`ftl bench`: matrix parsing and validation errors, the numbers of a cell, result files, and one 2x2 run."""

from __future__ import annotations

import csv
import json

import pytest

from ftl.launcher.bench.matrix import Cell, Dimension, expand, parse_dimensions, split_arguments, split_values
from ftl.launcher.bench.peak import Peak, cpu_probe
from ftl.launcher.bench.results import (
    CellResult,
    percentile,
    summarise,
    write_csv,
    write_json,
    write_markdown,
)
from ftl.launcher.cli import main
from ftl.launcher.errors import FtlError
from tests.conftest import edit_recipe, markdown_rows


# ---- the matrix --------------------------------------------------------------------------------------
def test_arguments_after_matrix_are_dimensions_and_values_split_outside_brackets():
    overrides, tokens = split_arguments(
        ["train.lr=3e-5", "--matrix", "distributed.zero_stage=0,2,3", "train.batch_size=16,32"]
    )
    assert overrides == ["train.lr=3e-5"]
    dimensions = parse_dimensions(tokens)
    assert dimensions == [
        Dimension("distributed.zero_stage", ("0", "2", "3")),
        Dimension("train.batch_size", ("16", "32")),
    ]
    cells = expand(dimensions)
    assert len(cells) == 6
    assert cells[0].overrides == ["distributed.zero_stage=0", "train.batch_size=16"]
    assert cells[1].overrides == ["distributed.zero_stage=0", "train.batch_size=32"]
    assert cells[-1].label() == "zero_stage=3 batch_size=32"
    assert split_values("[query,value],[query],{a: 1, b: 2},'x,y'") == [
        "[query,value]",
        "[query]",
        "{a: 1, b: 2}",
        "'x,y'",
    ]
    assert split_arguments(["--matrix=a.b=1,2", "--matrix", "c.d=3"]) == ([], ["a.b=1,2", "c.d=3"])
    assert expand([]) == [Cell(1, ())]  # no matrix: the recipe itself is the one cell


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["train.batch_size="], "--matrix train.batch_size: no values"),
        (["train.batch_size=16,,32"], "an empty value in the list"),
        (["train.batch_size=16,16"], "a value is listed twice"),
        (["train.batch_size"], "is not KEY=v1,v2"),
        (["train.batch_size=8", "train.batch_size=16"], "given twice"),
        (["train.max_steps=5,10"], "bench sets it"),
    ],
)
def test_bad_dimensions_are_one_line_errors(tokens, message):
    with pytest.raises(FtlError, match=message):
        parse_dimensions(tokens)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--matrix", "train.bach_size=16,32"],
            "--matrix train.bach_size: unknown key 'bach_size' in train (did you mean 'batch_size'?)",
        ),
        (["--matrix", "train.batch_size=16,many"], "--matrix cell-02 of 2 (train.batch_size=many): "),
        (["--matrix", "distributed.zero_stage=2,4"], "--matrix cell-02 of 2 (distributed.zero_stage=4): "),
        (["--matrix"], "--matrix: give at least one KEY=v1,v2"),
        (["--matrix", "train.batch_size="], "--matrix train.batch_size: no values"),
        (["train.batch_size=8", "--matrix", "train.batch_size=8,16"], "also given as an override"),
        (["--stpes", "3"], "--stpes: no such option of ftl bench (did you mean '--steps'?)"),
    ],
)
def test_bench_command_refuses_a_bad_matrix_before_running_anything(
    capsys, classification_recipe, tmp_path, arguments, message
):
    output = tmp_path / "bench-out"
    assert main(["bench", str(classification_recipe), *arguments, "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not output.exists()


def test_an_occupied_output_is_refused(capsys, classification_recipe, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "results.csv").write_text("x")
    assert main(["bench", str(classification_recipe), "--output", str(tmp_path / "busy")]) == 2
    assert "already holds files" in capsys.readouterr().err


# ---- the numbers of a cell ---------------------------------------------------------------------------
COUNTS = {"dense": 1000, "dense_trainable": 500, "dense_backward": 500, "layers": 2, "backward_layers": 1,
          "attention_width": 8}  # fmt: skip


def _timing(rank: int, host: str, seconds: list[float], tokens: int, device="cpu") -> dict:
    return {
        "rank": rank,
        "world_size": 2,
        "host": host,
        "device": device,
        "device_name": "NVIDIA A100-SXM4-80GB" if device == "cuda" else "test cpu",
        "gpus": 1 if device == "cuda" else 0,
        "precision": "bf16",
        "allow_tf32": False,
        "torch_threads": 1,
        "flop_counts": COUNTS,
        "warmup": 1,
        "steps": len(seconds) - 1,
        "memory_kind": "cuda max allocated" if device == "cuda" else "RSS of the process tree",
        "memory_peak_bytes": (100 + rank) * 1024**2,
        "records": [
            {
                "step": i + 1,
                "seconds": s,
                "rows": 4,
                "slots": 4 * 16,
                "tokens": tokens,
                "tokens_squared": 4 * (tokens // 4) ** 2,
            }
            for i, s in enumerate(seconds)
        ],
    }


def test_a_cell_counts_timed_steps_of_every_worker():
    cell = Cell(1, (("train.batch_size", "4"),))
    # warm-up step 1 (9 s) is left out; timed steps 1, 2, 3, 4 s on rank 0; 40 tokens per step per rank
    timings = [_timing(0, "a", [9.0, 1.0, 2.0, 3.0, 4.0], 40), _timing(1, "b", [9.0, 1.5, 2.5, 3.5, 4.5], 40)]
    peak = Peak(312e12, "bf16", "table")
    result = summarise(cell, timings, lambda device, name, dtype: peak)
    assert result.ok and result.timed_steps == 4 and result.seconds == 10.0
    assert result.tokens == 2 * 4 * 40 and result.rows == 2 * 4 * 4
    assert result.tokens_per_s == 32.0 and result.samples_per_s == 3.2
    assert result.devices == 2 and result.threads == 2  # CPU: one device per machine (hosts a and b)
    assert result.tokens_per_s_per_device == 16.0
    assert result.step_p50_s == 2.5 and result.step_p95_s == pytest.approx(3.85)
    assert result.peak_memory_mib == 101.0
    assert result.non_pad_fraction == 40 / 64  # 4 rows of 10 real tokens padded to 16
    # per step and rank: 40 tokens in 4 rows of 10, so Σℓ² = 400; FLOPs = 6N·tokens + 12·L·H·Q·Σℓ²
    flops = 8 * (6 * 1000 * 40 + 12 * 2 * 8 * 400)
    assert result.tflops_6n == pytest.approx(flops / 10 / 1e12)
    assert result.mfu_6n == pytest.approx(flops / 10 / (312e12 * 2))
    trainable = 8 * ((2 * 1000 + 2 * 500 + 2 * 500) * 40 + (4 * 2 + 8 * 1) * 8 * 400)
    assert result.mfu_trainable == pytest.approx(trainable / 10 / (312e12 * 2))


def test_gpu_devices_and_short_cells():
    cell = Cell(1, ())
    timings = [_timing(r, "a", [1.0, 1.0, 1.0], 8, device="cuda") for r in range(2)]
    result = summarise(cell, timings, lambda *a: Peak(None, "bf16", "unknown"))
    assert result.devices == 2 and result.mfu_6n is None
    short = summarise(cell, [_timing(0, "a", [1.0, 1.0], 8) | {"steps": 5}], lambda *a: None)
    assert short.status == "failed" and "trained 1 of 5 timed steps" in short.reason
    assert summarise(cell, [], lambda *a: None).status == "failed"
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0 and percentile([1.0], 95) == 1.0


def test_result_files_record_failed_cells(tmp_path):
    dimensions = [Dimension("train.batch_size", ("4", "8"))]
    ok = summarise(
        Cell(1, (("train.batch_size", "4"),)),
        [_timing(0, "a", [1.0, 1.0, 2.0], 40)],
        lambda *a: Peak(1e12, "bf16", "measured"),
    )
    failed = CellResult("cell-02", {"train.batch_size": "8"}, "failed", "out of memory: CUDA out of memory")
    context = {
        "recipe_name": "tiny",
        "command": "ftl bench tiny.yaml --matrix train.batch_size=4,8",
        "date": "today",
        "warmup": 1,
        "steps": 2,
        "machine": "test machine",
        "devices": "test cpu",
        "peaks": "1 TFLOPS (measured)",
        "versions": "torch x",
    }
    write_csv(tmp_path / "results.csv", [ok, failed], dimensions)
    write_markdown(tmp_path / "results.md", [ok, failed], dimensions, context)
    write_json(tmp_path / "results.json", [ok, failed], context)
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert rows[0]["train.batch_size"] == "4" and float(rows[0]["tokens_per_s"]) == pytest.approx(40 * 2 / 3)
    assert rows[1]["reason"] == "out of memory: CUDA out of memory" and rows[1]["tokens_per_s"] == ""
    markdown = (tmp_path / "results.md").read_text()
    assert "test machine" in markdown and "1 TFLOPS (measured)" in markdown and "torch x" in markdown
    assert "cell-02 (train.batch_size=8): failed: out of memory" in markdown
    assert "1 CPU (1 thread)" in [cell for row in markdown_rows(markdown) for cell in row]
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1  # header, separator and rows have the same columns
    assert json.loads((tmp_path / "results.json").read_text())["cells"][1]["status"] == "failed"


def test_a_cell_killed_or_out_of_memory_or_over_time_is_named_so(tmp_path):
    from ftl.launcher.bench.cell import _out_of_memory
    from ftl.launcher.bench.runner import _outcome

    (tmp_path / "cell.log").write_text("step 3/23  loss 0.69\n")
    killed = _outcome(tmp_path, -9, False, None)
    assert killed["status"] == "failed" and "killed by signal 9" in killed["reason"]
    assert "out-of-memory killer" in killed["reason"] and "step 3/23" in killed["reason"]
    assert _outcome(tmp_path, 3, False, None)["reason"].startswith("exited with code 3")
    assert _outcome(tmp_path, -9, True, 60.0) == {
        "status": "timeout",
        "reason": "killed after --cell-timeout 60s",
    }
    (tmp_path / "cell.json").write_text(json.dumps({"status": "failed", "reason": "boom"}))
    assert _outcome(tmp_path, 1, False, None) == {"status": "failed", "reason": "boom"}
    oom = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert _out_of_memory("distributed run failed: CUDA out of memory.", FtlError("x")).startswith(
        "out of memory: "
    )
    assert _out_of_memory("RuntimeError: CUDA out of memory.", oom).startswith("out of memory: RuntimeError")
    assert _out_of_memory("ValueError: bad", ValueError("bad")) == "ValueError: bad"


def test_cpu_probe_measures_a_positive_peak():
    peak = cpu_probe("fp32", seconds=0.2)
    assert peak.flops > 1e8 and "measured" in peak.source


# ---- end to end --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_by_two_matrix_with_a_failing_cell(capsys, classification_recipe, tmp_path):
    """hidden_size 30 with 4 heads validates (model.config is free-form) but cannot build: that cell fails at
    run time, is recorded, and the other three cells finish."""
    output = tmp_path / "bench"
    edit_recipe(classification_recipe, log={"trackers": ["mlflow"]})  # a parent run, a run per cell
    code = main(
        [
            "bench",
            str(classification_recipe),
            "--matrix",
            "model.config.hidden_size=32,30",
            "model.config.num_attention_heads=2,4",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--probe-seconds",
            "0.5",
            "--output",
            str(output),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip() == str(output / "results.csv")
    rows = list(csv.DictReader((output / "results.csv").open()))
    assert [(r["model.config.hidden_size"], r["model.config.num_attention_heads"]) for r in rows] == [
        ("32", "2"),
        ("32", "4"),
        ("30", "2"),
        ("30", "4"),
    ]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed"]
    assert "not a multiple of the number of attention heads" in rows[3]["reason"]
    for row in rows[:3]:
        assert int(row["timed_steps"]) == 3 and float(row["tokens_per_s"]) > 0
        assert 0 < float(row["mfu_6n"]) < 1 and float(row["peak_memory_mib"]) > 10
        assert int(row["tokens"]) == 3 * 16 * 8  # 3 steps x batch 16 x 8 real tokens (6 words + 2 special)
        assert float(row["non_pad_fraction"]) == 1.0  # every synthetic row has the same length
    markdown = (output / "results.md").read_text()
    assert "cell-04 (model.config.hidden_size=30, model.config.num_attention_heads=4): failed" in markdown
    assert "measured: best single-thread fp32" in markdown
    for chart in ("tokens_per_s.png", "mfu.png", "memory.png"):
        assert (output / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (output / "cells" / "cell-01" / "run").exists()  # the scratch run directory is removed

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{output.resolve() / 'mlflow.db'}")
    runs = {
        run.info.run_name: run for run in client.search_runs(client.search_experiments()[0].experiment_id)
    }
    parent = runs.pop("bench-tiny-cls")
    assert sorted(runs) == ["cell-01", "cell-02", "cell-03", "cell-04"]
    for name, row in zip(sorted(runs), rows, strict=True):
        run = runs[name]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["model.config.hidden_size"] == row["model.config.hidden_size"]
        assert run.info.status == ("FINISHED" if row["status"] == "ok" else "FAILED")
        if row["status"] == "ok":
            assert run.data.metrics["tokens_per_s"] == pytest.approx(float(row["tokens_per_s"]))
            assert run.data.metrics["mfu_6n"] == pytest.approx(float(row["mfu_6n"]))
    across = client.get_metric_history(parent.info.run_id, "tokens_per_s")  # step = the cell's number
    assert [m.step for m in across] == [1, 2, 3]


@pytest.mark.slow
def test_measured_flops_per_step_equal_the_plan_and_nothing_is_evaluated_or_saved(lm_recipe, tmp_path):
    """Packed blocks are all task.max_length long, so the FLOPs the timer measures per step must be exactly
    the plan's; evaluations and checkpoints the schedule asks for at every step are cancelled."""
    from ftl.launcher.bench.matrix import bench_overrides
    from ftl.launcher.bench.timer import StepTimer
    from ftl.launcher.flops import FlopCounts, flop_counts, model_flops, trainable_flops
    from ftl.launcher.model.load import ModelSpec, load_tokenizer
    from ftl.launcher.model.meta import meta_model
    from ftl.launcher.plan import plan_memory, shape_of
    from ftl.launcher.recipe import load_recipe
    from ftl.launcher.run import run_recipe
    from ftl.launcher.tasks.registry import task_for

    overrides = ["freeze.bottom_layers=1", "freeze.embeddings=true", "eval.every_steps=1"]
    loaded = load_recipe(lm_recipe, [*overrides, *bench_overrides(1, 2)])
    timer = StepTimer(tmp_path / "cell", warmup=1, steps=2)
    metrics = run_recipe(loaded, tmp_path / "run", train_only=True, callbacks=[timer])
    assert metrics["train_steps"] == 3 and not any(k.startswith("eval_") for k in metrics)
    assert not list((tmp_path / "run").rglob("checkpoint-*")) and not (tmp_path / "run" / "model").exists()

    timing = json.loads((tmp_path / "cell" / "timing-rank0.json").read_text())
    counts = FlopCounts(**timing["flop_counts"])
    model = meta_model(
        ModelSpec.of(loaded.recipe, loaded.search_dirs),
        loaded.recipe.freeze,
        task_for(loaded.recipe.task),
        load_tokenizer(loaded.recipe.model, loaded.search_dirs),
    ).model
    assert counts == flop_counts(model)  # the trained model counts as the plan's meta-device model
    plan = plan_memory(shape_of(model, loaded.recipe), loaded.recipe)
    assert [r["step"] for r in timing["records"]] == [1, 2, 3]
    for record in timing["records"]:
        assert (record["rows"], record["tokens"], record["tokens_squared"]) == (8, 8 * 32, 8 * 32 * 32)
        assert model_flops(counts, record["tokens"], record["tokens_squared"]) == plan.flops_per_step
        assert (
            trainable_flops(counts, record["tokens"], record["tokens_squared"])
            == plan.flops_per_step_trainable
        )
    assert plan.flops_per_step_trainable < plan.flops_per_step


def test_the_table_reports_cells_line_by_line_off_a_terminal(capsys):
    from ftl.launcher.bench.table import BenchTable

    results = [CellResult("cell-01", {"lora.target_modules": "[query]"}, "pending")]
    table = BenchTable(results, ["lora.target_modules"], title="t")
    table.update(0, CellResult("cell-01", {"lora.target_modules": "[query]"}, "running"))
    table.update(
        0, CellResult("cell-01", {"lora.target_modules": "[query]"}, "failed", "no [module] named x")
    )
    table.close()
    err = capsys.readouterr().err
    assert "cell-01 (lora.target_modules=[query]): running" in err
    assert "cell-01 (lora.target_modules=[query]): failed: no [module] named x" in err
    rendered = table._render()
    assert [c.header for c in rendered.columns][:4] == ["cell", "target_modules", "status", "step"]
