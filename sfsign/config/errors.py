"""The one error type of configuration, shared by the settings and the rules file.

The command line and the daemon catch it to print its words and exit, instead of a traceback: whatever
went wrong in `SFSIGN_*` or in the rules file, the message is for the person who has to fix it.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration mistake, phrased for the person who has to fix it."""
