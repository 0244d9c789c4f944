"""`ftl predict` / `ftl generate --output`: never the file or the run the command reads, and a link, a named
pipe or a device is written, not replaced."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from ftl.launcher.errors import FtlError
from ftl.launcher.use.output import check_output, write_text


@pytest.fixture
def run(tmp_path) -> Path:
    """A run directory (as far as --output cares) made from tmp_path/recipe.yaml and tmp_path/train.tsv."""
    folder = tmp_path / "run"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text("{}")
    (folder / "recipe.resolved.yaml").write_text("name: x\n")
    (tmp_path / "recipe.yaml").write_text("name: x\n")
    (tmp_path / "train.tsv").write_text("sentence\tlabel\na\t1\n")
    (folder / "manifest.json").write_text(
        json.dumps(
            {
                "command": ["ftl", "run", "recipe.yaml", "-o", str(folder)],
                "cwd": str(tmp_path),
                "data_sources": {
                    "train": str(tmp_path / "train.tsv"),
                    "validation": "stratified split of train",
                },
            }
        )
    )
    return folder


def _refused(output: Path, inputs, run: Path) -> str:
    with pytest.raises(FtlError) as caught:
        check_output(output, inputs, run)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("--output: ")
    return message


def test_output_onto_an_input_file_is_refused(tmp_path, run, monkeypatch):
    data = tmp_path / "data.tsv"
    data.write_text("sentence\nfine\n")
    monkeypatch.chdir(tmp_path)
    assert "is the --data file" in _refused(Path("data.tsv"), [("--data", data)], run)
    assert "is the --data file" in _refused(tmp_path / "." / "data.tsv", [("--data", Path("data.tsv"))], run)
    os.link(data, tmp_path / "hard.tsv")
    assert "is the --data file" in _refused(tmp_path / "hard.tsv", [("--data", data)], run)
    (tmp_path / "soft.jsonl").symlink_to(data)
    assert "is the --data file" in _refused(tmp_path / "soft.jsonl", [("--data", data)], run)
    prompts = tmp_path / "p.txt"
    prompts.write_text("hi\n")
    assert "is the --prompts file" in _refused(prompts, [("--prompts", prompts)], run)


def test_output_inside_the_run_or_onto_what_made_it_is_refused(tmp_path, run):
    (run / "metrics.json").write_text("{}")
    for inside in (run / "model" / "config.json", run / "metrics.json", run / "model" / "new.jsonl"):
        assert "is part of the run" in _refused(inside, [], run)
    check_output(run / "predictions-test.jsonl", [], run)  # a new file beside the run's own is the user's
    for folder in (run, run / "model"):
        assert "is a directory; give a file name" in _refused(folder, [], run)
    assert "the recipe run" in _refused(tmp_path / "recipe.yaml", [], run)
    assert "the train data run" in _refused(tmp_path / "train.tsv", [], run)
    (tmp_path / "to-run").symlink_to(run)
    assert "is part of the run" in _refused(tmp_path / "to-run" / "model" / "x.jsonl", [], run)


def test_an_ordinary_output_file_may_be_replaced(tmp_path, run, capsys):
    data = tmp_path / "data.tsv"
    data.write_text("sentence\nfine\n")
    output = tmp_path / "predictions.jsonl"
    check_output(output, [("--data", data)], run)  # new
    write_text("one\n", output)
    check_output(output, [("--data", data)], run)  # an earlier output
    write_text("two\n", output)
    assert output.read_text() == "two\n"
    assert "replacing" in capsys.readouterr().err
    check_output(None, [("--data", data)], run)
    check_output(tmp_path / "p.jsonl", [("--prompts", None)], tmp_path / "not-a-run")


def test_a_symbolic_link_writes_its_target_and_stays_a_link(tmp_path):
    real = tmp_path / "real.jsonl"
    real.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    write_text("new\n", link)
    assert link.is_symlink() and real.read_text() == "new\n"
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "created.jsonl")
    write_text("made\n", dangling)
    assert dangling.is_symlink() and (tmp_path / "created.jsonl").read_text() == "made\n"


def test_a_link_loop_is_one_line(tmp_path):
    loop = tmp_path / "lp"
    loop.symlink_to(loop)
    with pytest.raises(FtlError, match="loop of symbolic links"):
        write_text("x\n", loop)
    assert loop.is_symlink()


def test_a_named_pipe_is_written_not_replaced(tmp_path):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_text()), daemon=True)
    reader.start()
    write_text("through the pipe\n", pipe)
    reader.join(timeout=10)
    assert received == ["through the pipe\n"]
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_device_is_written_in_place_and_its_errors_are_one_line():
    before = os.lstat("/dev/full")
    with pytest.raises(FtlError, match="/dev/full"):
        write_text("x\n", Path("/dev/full"))  # no space left: written to, not replaced
    after = os.lstat("/dev/full")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    write_text("", Path("/dev/null"))
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_dev_stdout_writes_the_stream(tmp_path, capfd):
    write_text("to stdout\n", Path("/dev/stdout"))
    assert "to stdout" in capfd.readouterr().out
    assert Path("/dev/stdout").is_symlink() or Path("/dev/stdout").exists()


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(FtlError, match="is a directory"):
        write_text("x\n", tmp_path)


def test_a_folder_that_is_not_a_run_is_left_to_the_run_check(tmp_path):
    check_output(tmp_path / "out.jsonl", [], tmp_path)  # ftl predict then says it is not a run directory


def test_generation_past_the_models_positions_is_one_line():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from ftl.launcher.tasks.generation import check_generation_room

    tiny = {"vocab_size": 64, "num_hidden_layers": 1}
    gpt2 = GPT2LMHeadModel(GPT2Config(n_positions=32, n_embd=16, n_head=2, n_layer=1, vocab_size=64))
    llama = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=16, intermediate_size=32, num_attention_heads=2, max_position_embeddings=48, **tiny
        )
    )
    for model, limit in ((gpt2, 32), (llama, 48)):
        check_generation_room(model, limit - 1)
        with pytest.raises(
            FtlError, match=f"--max-new-tokens {limit}: the model takes {limit} positions in all"
        ):
            check_generation_room(model, limit)
