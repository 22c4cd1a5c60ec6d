"""Process helpers for training jobs: is a process alive (and the same one), signal its process
group, read the end of its log. Linux /proc first, signal 0 where there is no procfs."""

import os
from pathlib import Path


def process_start(pid):
    """(state, start time in clock ticks) of a process from /proc, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0], fields[19]


def process_alive(pid, start=None) -> bool:
    """True when `pid` runs (not a zombie) and, when given, started at `start` (no pid reuse)."""
    if not pid:
        return False
    if not Path("/proc/self/stat").exists():  # no procfs: signal 0 is the best we have
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    info = process_start(pid)
    return info is not None and info[0] not in ("Z", "X") and (start is None or info[1] == start)


def signal_group(pid, sig):
    """Send `sig` to the process group led by `pid` (the trainer and, under torchrun, its workers)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def log_file_tail(job_dir, lines: int) -> list:
    """The last `lines` lines of the job's train.log (read from its last 16 KB)."""
    try:
        with open(Path(job_dir) / "train.log", "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    return text.splitlines()[-lines:]
