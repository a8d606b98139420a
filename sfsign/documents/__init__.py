"""Documents: render (Typst), sign (pyHanko), long-term validation and verification."""

from sfsign.documents import hexstrings

hexstrings.install()
