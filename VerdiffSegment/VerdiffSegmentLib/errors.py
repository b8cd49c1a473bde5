"""The one exception type the core raises for anything the user can fix.

The command line prints its message as a single line and exits non-zero; the Slicer
module shows it with ``slicer.util.errorDisplay``. Everything else is a bug.
"""


class VerdiffError(Exception):
    """A clear, user-facing error: bad input, bad weights, unknown model, bad option."""


class Cancelled(Exception):
    """The caller asked to stop: ``pipeline.segment``'s ``cancel()`` returned True, or the
    Slicer logic's cancel stopped the ``verdiff segment`` process. Nothing was changed."""
