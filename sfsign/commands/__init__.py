"""The command-line commands that are not the daemon: `demo`, `status`/`jobs`, `render` (preview) and
`reconcile`'s progress line.

They sit above the daemon and use it (the demo runs it, the preview uses its fetch and mapping code,
reconcile runs its reconciliation); nothing below them imports them. Each module is imported only by
the command that needs it (see `sfsign.cli`), so this package imports nothing itself.
"""
