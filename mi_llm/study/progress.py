"""The stage kernels of a run: quiet transport, progress on the command line, clean notebooks.

The runner starts each stage's kernel with kernel_options():
- the kernel talks to the runner over local IPC sockets in a private temporary folder, not over
  TCP on 127.0.0.1 (where ipykernel warns, rightly, that other users of the machine could read the
  unencrypted traffic);
- the kernel's first line (ipykernel's exec_lines) is in_kernel(): the progress bars of stage code
  (tqdm: LLM requests, generation batches, training steps) are drawn on the runner's terminal, not
  into the executed notebook, and Python warnings from libraries (deprecations and the like) go
  to the run's warnings log instead of red boxes in the notebook; the study's own warnings
  (raised in mi_llm) stay in the notebook, where the reader needs them.
A notebook run in JupyterLab never calls in_kernel() and keeps tqdm's and Python's own behaviour.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import warnings
from pathlib import Path

WARNINGS_LOG = "notebooks/warnings.log"  # in the run folder


def kernel_options(run_dir, progress: bool = True) -> dict:
    """Keyword arguments for papermill.execute_notebook: IPC transport and in_kernel() at start.
    Called once per run command: it starts the run's warnings log afresh."""
    import atexit
    import shutil

    from traitlets.config import Config

    sockets = tempfile.mkdtemp(prefix="mi-llm-kernel-")  # short: a socket path has ~100 chars
    atexit.register(shutil.rmtree, sockets, True)
    log = Path(run_dir) / WARNINGS_LOG
    log.unlink(missing_ok=True)
    line = f"from mi_llm.study import progress; progress.in_kernel({progress!r}, {str(log)!r})"
    return {
        "config": Config({"KernelManager": {"transport": "ipc", "ip": f"{sockets}/kernel"}}),
        "extra_arguments": [f"--IPKernelApp.exec_lines={[line]!r}"],
    }


def in_kernel(progress: bool, warnings_log: str) -> None:
    """Bars to the terminal the kernel was started from (or nowhere), warnings to `warnings_log`."""
    import tqdm.std

    # tqdm.auto warns once that ipywidgets is missing and draws its text bar, which is what we use
    warnings.filterwarnings("ignore", category=tqdm.std.TqdmWarning)
    # the kernel's own stderr: ipykernel's copy of it when it captures fd 2 into the notebook
    fd = getattr(sys.stderr, "_original_stdstream_copy", None)
    if fd is None and sys.__stderr__ is not None:
        fd = sys.__stderr__.fileno()  # not captured: it is the terminal's
    if progress and fd is not None:
        stream = os.fdopen(os.dup(fd), "w", buffering=1)
    else:
        stream = open(os.devnull, "w")  # noqa: SIM115 (open for the kernel's lifetime)
    init = tqdm.std.tqdm.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        if kwargs.get("file") is None and len(args) < 5:
            kwargs["file"] = stream
        init(self, *args, **kwargs)

    tqdm.std.tqdm.__init__ = __init__
    Path(warnings_log).parent.mkdir(parents=True, exist_ok=True)
    log = open(warnings_log, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    ours, shown = str(Path(__file__).resolve().parents[1]), warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if str(filename).startswith(ours):  # the study's own warnings stay in the notebook
            return shown(message, category, filename, lineno, file, line)
        log.write(warnings.formatwarning(message, category, filename, lineno, line))
        return None

    warnings.showwarning = show
    _quiet_shutdown()


class _ShutdownInterrupt:
    """jupyter_client interrupts every kernel it shuts down (SIGINT, then the shutdown request);
    a kernel still answering the runner's last message then logs "KeyboardInterrupt caught in
    kernel." on the terminal after its stage finished well. That record, and only it, is dropped."""

    @staticmethod
    def filter(record) -> bool:
        return "KeyboardInterrupt caught in kernel" not in record.getMessage()


def _quiet_shutdown() -> None:
    import logging

    try:
        from IPython import get_ipython

        loggers = {get_ipython().kernel.log, logging.getLogger("IPKernelApp")}
    except AttributeError:  # not in a kernel
        return
    for log in loggers:
        log.addFilter(_ShutdownInterrupt)
    import jieba  # it logs its dictionary loading at DEBUG on stderr: a box in stage 04's notebook

    jieba.setLogLevel(logging.WARNING)


def warnings_summary(run_dir) -> str | None:
    """ "N warnings -> runs/<name>/notebooks/warnings.log" when the stages logged any."""
    f = Path(run_dir) / WARNINGS_LOG
    if not f.exists() or not f.stat().st_size:
        return None
    n = sum(1 for line in f.read_text(encoding="utf-8").splitlines() if "Warning: " in line)
    return f"{n} library warning(s) logged, none shown in the notebooks -> {f}"
