"""Tables printed by `ftl check` and `ftl run`."""

from __future__ import annotations

from rich.table import Table

from ftl.launcher.model.freeze import BlockCount
from ftl.launcher.train.layer_schedule import describe


def human(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


def freeze_table(blocks: list[BlockCount], title: str = "parameters") -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("block")
    table.add_column("params", justify="right")
    table.add_column("trainable", justify="right")
    table.add_column("frozen", justify="right")
    table.add_column("")
    for block in _collapse(blocks):
        state = "train" if block.frozen == 0 else ("frozen" if block.trainable == 0 else "partly")
        style = {"train": "green", "frozen": "dim", "partly": "yellow"}[state]
        table.add_row(
            block.block,
            human(block.total),
            human(block.trainable),
            human(block.frozen),
            f"[{style}]{state}[/]",
        )
    total = sum(b.total for b in blocks)
    trainable = sum(b.trainable for b in blocks)
    table.add_section()
    share = f"{100 * trainable / total:.1f}% trainable" if total else ""
    table.add_row("total", human(total), human(trainable), human(total - trainable), share)
    return table


def _collapse(blocks: list[BlockCount]) -> list[BlockCount]:
    """Merge runs of consecutive layers in the same state ('layer 0-23') so deep models stay readable."""
    merged: list[BlockCount] = []
    for block in blocks:
        previous = merged[-1] if merged else None
        if (
            previous is not None
            and block.block.startswith("layer ")
            and previous.block.startswith("layer ")
            and (previous.trainable == 0) == (block.trainable == 0)
            and (previous.frozen == 0) == (block.frozen == 0)
        ):
            first = previous.block.removeprefix("layer ").split("-")[0]
            last = block.block.removeprefix("layer ")
            merged[-1] = BlockCount(
                f"layer {first}-{last}", previous.total + block.total, previous.trainable + block.trainable
            )
        else:
            merged.append(block)
    return merged


def schedule_table(schedule, used_depths: set[int] | None = None) -> Table:
    """Discriminative learning rates and gradual unfreezing: each layer group's lr factor and first step."""
    table = Table(title="layer schedule", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("group")
    table.add_column("lr x", justify="right")
    table.add_column("trains from")  # "the start", "after 3 steps", "after 2 epochs"
    for row in describe(schedule, used_depths):
        table.add_row(*row)
    return table
