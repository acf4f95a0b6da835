"""The one exception type for errors a user can fix, and one-line descriptions of I/O errors."""

from __future__ import annotations

import errno
import re

_ERRNO_REASONS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or directory",
    errno.EISDIR: "is a directory",
    errno.EROFS: "read-only file system",
    errno.EIO: "input/output error",
}


class UserError(Exception):
    """An error the user can fix (bad argument, missing or unreadable file, too little data).

    Its message is one line naming the file and the reason; the CLI prints it and exits 2.
    """


def describe(exc: BaseException) -> str:
    """One line saying why ``exc`` happened, for a message that already names the file: the
    errno reason for OS errors (disk full, permission denied...), also where HDF5 reports
    one inside its own message ("errno = 28"), else the first line of the exception's message
    (HDF5's "truncated file" and the like)."""
    if isinstance(exc, OSError) and exc.errno in _ERRNO_REASONS:
        return _ERRNO_REASONS[exc.errno]
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    found = re.search(r"errno = (\d+)", str(exc))
    if found and int(found.group(1)) in _ERRNO_REASONS:
        return _ERRNO_REASONS[int(found.group(1))]
    if "truncated file" in first:
        return f"truncated file ({first})"
    ours = type(exc).__module__.startswith("specbridge")
    return first if ours or isinstance(exc, OSError) else f"{type(exc).__name__}: {first}"


def quiet_cleanup_errors(hook_args) -> None:
    """``sys.unraisablehook`` for the CLI: errors raised while objects are freed (h5py's
    deallocation of a file whose write failed, after the failure has been reported) go to the
    debug log instead of printing a stack."""
    import logging

    logging.getLogger("specbridge").debug("ignored during cleanup: %s", hook_args.exc_value)
