"""What every benchmark script records about its run: the machine, the command, the date, a progress line."""

from __future__ import annotations

import datetime
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["RunInfo", "command", "machine", "provenance"]


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in load]}


def command() -> str:
    """The command line as typed from the repository root (the interpreter path made relative)."""
    exe = Path(sys.executable)
    try:
        exe = exe.relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.join([str(exe), *sys.argv])


class RunInfo:
    """Started when built: ``machine`` and ``date`` at the start, ``elapsed()``, and ``say`` for progress."""

    def __init__(self) -> None:
        self.machine = machine()
        self.command = command()
        self.started = time.perf_counter()
        self.date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def say(self, msg: str) -> None:
        print(f"[{self.elapsed():6.0f} s] {msg}", flush=True)


def provenance(report: Mapping[str, Any]) -> list[str]:
    """A result file's first lines: the command, the date and the machine (with its load, when recorded at the end
    too as ``load_average_at_end``)."""
    m = report["machine"]
    load = (f"load average at start {m['load_average_at_start']}, at the end {report['load_average_at_end']} "
            "(shared machine)" if "load_average_at_end" in report
            else f"load average at start {m['load_average_at_start']} (shared machine: other processes ran meanwhile)")
    return [f"- command: `{report['command']}`", f"- date: {report['date']}",
            f"- machine: {m['platform']}, {m['processor']}, {m['cpu_count']} CPUs, Python {m['python']}; {load}"]


LOSS_MEAN_HELP = ("how a LoRA step averages its loss (the LoRA evaluator's loss_mean option): every row's mean "
                  "weighs the same (row, the default) or every answer token does (token, as transformers' Trainer "
                  "does)")


def loss_mean_words(report: Mapping[str, Any]) -> str:
    """How the report's LoRAs averaged their training loss, for its settings line."""
    return ("answer token of a batch (`--loss-mean token`)" if report.get("loss_mean") == "token"
            else "row (each row's mean answer-token loss weighs the same)")
