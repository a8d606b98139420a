"""The envelope's document as the signing page shows it: the PDF in the data directory, its pages as PNG
images rendered by poppler (`pdftocairo`, of poppler-utils like `pdftoppm`, but it writes a PNG to stdout: no
page image of a customer's contract ever touches the disk), and who sends it.

Where the document is: the job's files (`sfsign.artifacts`, named by transaction id) — the newest version
the worker wrote: `ltv.pdf` (completed, long-term), `signed.pdf` (sealed, or signed by an earlier signer),
else `rendered.pdf`. The worker keeps them while the envelope is live. Who sends what (sender, title, the
rep) is `about.json` beside them, written by the worker when it makes the envelope (`write_about`): the
listener never asks Salesforce.

Rendering runs in a subprocess (the loop never waits on it) and each page is cached by file identity
(path, size, modification time), so a page is rendered once per version of the document, however many
times it is viewed; the cache is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

from sfsign.private_files import write_private

log = structlog.get_logger("sfsign.signing.listener")

SHOWN_KINDS = ("signed.pdf", "rendered.pdf")  # live: the newest version a signer signs
FINAL_KINDS = ("ltv.pdf", "signed.pdf")  # completed: what the download link gives
ABOUT = "about.json"
DPI = 110  # an A4 page ≈ 910 x 1290 px: readable on a laptop, zoomable on a phone
CACHE_PAGES = 256
RENDERS_AT_ONCE = 2  # pdftocairo processes at once: the daemon's cores are shared with signing
RENDER_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class About:
    """Who sends what, as the signing page introduces the document."""

    sender: str = ""
    title: str = ""
    rep_name: str = ""
    rep_email: str = ""


def write_about(artifacts_dir: Path, transaction_id: str, about: About) -> None:
    """For the worker, when it makes the envelope (owner-only, removed with the job's other files)."""
    write_private(artifacts_dir / f"{transaction_id}.{ABOUT}", json.dumps(asdict(about)).encode())


def read_about(artifacts_dir: Path, transaction_id: str) -> About:
    """The job's about.json (blocking); an empty `About` when it is missing or unreadable, so a page or a
    mail still goes out, only less specific."""
    try:
        data = json.loads((artifacts_dir / f"{transaction_id}.{ABOUT}").read_bytes())
    except (OSError, ValueError):
        return About()
    if not isinstance(data, dict):
        return About()
    return About(**{k: str(v) for k, v in data.items() if k in About.__dataclass_fields__})


class RenderError(RuntimeError):
    """pdftocairo or pdfinfo failed on the document (the message names the tool, never the file's content)."""


class Documents:
    """Finds an envelope's PDF and renders its pages."""

    def __init__(self, artifacts_dir: Path) -> None:
        self.directory = artifacts_dir
        self._pages: OrderedDict[tuple[str, int, int, int], bytes] = OrderedDict()
        self._counts: dict[tuple[str, int, int], int] = {}
        self._inflight: dict[tuple[str, int, int, int], asyncio.Task[bytes]] = {}
        self._renders = asyncio.Semaphore(RENDERS_AT_ONCE)
        self._warming: set[asyncio.Task[None]] = set()

    def pdf(self, transaction_id: str, *, final: bool = False) -> Path | None:
        for kind in FINAL_KINDS if final else SHOWN_KINDS:
            path = self.directory / f"{transaction_id}.{kind}"
            if path.is_file():
                return path
        return None

    async def about(self, transaction_id: str) -> About:
        return await asyncio.get_running_loop().run_in_executor(None, read_about, self.directory, transaction_id)

    async def page_count(self, path: Path) -> int:
        key = _identity(path)
        if key not in self._counts:
            out = await _run("pdfinfo", str(path))
            pages = [line.split(":", 1)[1] for line in out.decode("latin-1").splitlines() if line.startswith("Pages:")]
            if not pages:
                raise RenderError("pdfinfo reported no page count")
            self._counts[key] = int(pages[0])
        return self._counts[key]

    async def page_png(self, path: Path, page: int) -> bytes:
        """Page `page` (1-based) as PNG; the caller checked it is within `page_count`. Requests for a page being
        rendered wait for that rendering instead of starting another."""
        key = (*_identity(path), page)
        cached = self._pages.get(key)
        if cached is not None:
            self._pages.move_to_end(key)
            return cached
        task = self._inflight.get(key)
        if task is None:
            task = self._inflight[key] = asyncio.create_task(self._render(path, page))
            task.add_done_callback(lambda t: self._rendered(key, t))
        png = await asyncio.shield(task)
        self._pages[key] = png
        while len(self._pages) > CACHE_PAGES:
            self._pages.popitem(last=False)
        return png

    def _rendered(self, key: tuple[str, int, int, int], task: asyncio.Task[bytes]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: a failure reaches the requests waiting on it, never the loop's log

    async def _render(self, path: Path, page: int) -> bytes:
        async with self._renders:  # a burst of signers never runs more renderers than this at once
            return await _run("pdftocairo", "-png", "-r", str(DPI), "-f", str(page), "-l", str(page),
                              "-singlefile", str(path), "-")

    def warm(self, path: Path) -> None:
        """Render the document's pages in the background while the signer waits for their code, so the pages
        appear at once after it (a failure here is only logged: the page request will try again)."""
        task = asyncio.create_task(self._warm(path))
        self._warming.add(task)
        task.add_done_callback(self._warmed)

    async def _warm(self, path: Path) -> None:
        for page in range(1, await self.page_count(path) + 1):
            await self.page_png(path, page)

    def _warmed(self, task: asyncio.Task[None]) -> None:
        self._warming.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("signing.pages_not_prerendered", error=type(task.exception()).__name__)

    async def close(self) -> None:
        """Stop background rendering (the listener is stopping)."""
        tasks = [*self._warming, *self._inflight.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def read(self, path: Path) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(None, path.read_bytes)


def _identity(path: Path) -> tuple[str, int, int]:
    st = os.stat(path)
    return (str(path), st.st_size, st.st_mtime_ns)


async def _run(tool: str, *args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(tool, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RENDER_TIMEOUT_S)
    except BaseException as exc:  # a timeout, or the listener stopping: the process goes too
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if isinstance(exc, TimeoutError):
            raise RenderError(f"{tool} took longer than {RENDER_TIMEOUT_S:.0f} s") from None
        raise
    if proc.returncode != 0 or not out:
        raise RenderError(f"{tool} failed (exit {proc.returncode})")
    return out
