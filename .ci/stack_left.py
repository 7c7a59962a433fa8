"""Fail when a process of the stack is still running: one whose command line names the folder, or whose working
folder is inside it, other than this process and its ancestors (the CI script itself runs there)."""

from __future__ import annotations

import sys
from pathlib import Path

import psutil


def stack_processes(folder: Path) -> list[str]:
    mine = {psutil.Process().pid, *(parent.pid for parent in psutil.Process().parents())}
    left = []
    for process in psutil.process_iter(["pid", "cmdline", "cwd"]):
        if process.info["pid"] in mine:
            continue
        cmdline = " ".join(process.info["cmdline"] or [])
        cwd = process.info["cwd"] or ""
        if str(folder) in cmdline or Path(cwd).is_relative_to(folder):
            left.append(f"{process.info['pid']} (cwd {cwd}): {cmdline}")
    return left


if __name__ == "__main__":
    left = stack_processes(Path(sys.argv[1]).resolve())
    if left:
        sys.exit("processes of the stack left after `churn down`:\n" + "\n".join(left))
    print("no process of the stack is left")
