"""A terminal progress bar for training (epoch, losses, elapsed), silent when not on a terminal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from detector.training import EpochReport, ProgressCallback


@contextmanager
def training_progress(max_steps: int, console: Console | None = None) -> Iterator[ProgressCallback]:
    """Yield a callback for :func:`detector.training.train_vae` that draws a bar on stderr."""
    console = console or Console(stderr=True)
    progress = Progress(
        TextColumn("training VAE"),
        BarColumn(),
        TextColumn(
            "epoch {task.fields[epoch]:>4}  loss {task.fields[loss]:.3f}  "
            "validation {task.fields[validation]:.3f}"
        ),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    )
    task = progress.add_task(
        "train", total=max_steps, epoch=0, loss=float("nan"), validation=float("nan")
    )

    def report(epoch: EpochReport) -> None:
        progress.update(
            task,
            completed=epoch.steps,
            epoch=epoch.epoch,
            loss=epoch.train_loss,
            validation=epoch.validation_loss,
        )

    with progress:
        yield report
