"""Documents: render (Typst), sign (pyHanko), long-term validation and verification.

Importing the package loads nothing of pyHanko: the daemon process imports the document model and the
signing requests from here (`specs`) and must stay without the signing stack; the modules that read PDFs
with pyHanko install the faster hex-string reader (`hexstrings`) when they are imported.
"""
