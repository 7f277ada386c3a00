"""The dashboard in a real browser: headless Chromium draws the pages of a busy LocalCluster.

A scheduler and two worker processes (one thread each) run a stream of small
pure-Python tasks, and a few that raise, in a background thread while
Chromium loads each page.  ``chromium --dump-dom`` prints the DOM once the
page's scripts have run for a few seconds of virtual time (which stops while a
fetch is pending, so the polls really reach the scheduler); the DOM is parsed
and checked for what the page must draw.  A page that is not drawn yet is
loaded again, until ``PAGE_TIMEOUT``: a loaded machine is slow, not broken.

Without Chromium (``chromium``, ``chromium-browser`` or ``google-chrome`` on
PATH) the tests are skipped, or fail when ``DSCHED_REQUIRE_BROWSER=1`` (CI sets
it where it installed the browser).  With ``DSCHED_SCREENSHOTS=DIR`` each test
also saves a screenshot of its page in DIR (``nox -s screenshots`` refreshes
docs/images that way).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from dsched import Client, Future, LocalCluster, wait

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1400, 900)
PAGE_TIMEOUT = 30.0  # seconds to wait for a page to be drawn, loads included
VIRTUAL_TIME_MS = 4000  # of page life per load: about four polls of the API
WORKLOAD_LIMIT = 120.0  # the workload stops by itself after this, should the tests hang
TASK_SECONDS = 0.03


# --- the workload ---------------------------------------------------------------------


def busy(i: int) -> int:
    """Pure Python for TASK_SECONDS: the frame the worker profile must show."""
    deadline = time.perf_counter() + TASK_SECONDS
    spins = 0
    while time.perf_counter() < deadline:
        spins += 1
    return i


def fails(i: int) -> int:
    raise ValueError(f"task {i} fails on purpose")


def run_workload(client: Client, stop: threading.Event) -> None:
    """Batches of ``busy`` (two in flight, so the workers never idle), one ``fails`` every few batches.

    Every argument is new: keys are derived from the arguments, so repeated ones
    would be one task.  The latest erred futures are kept, so that the
    scheduler keeps their tasks as erred.
    """
    in_flight: deque[list[Future]] = deque()
    erred: deque[Future] = deque(maxlen=20)
    n = 0
    deadline = time.monotonic() + WORKLOAD_LIMIT
    while not stop.is_set() and time.monotonic() < deadline:
        batch = client.map(busy, range(n, n + 8))
        if n % 64 == 0:
            erred.append(client.submit(fails, n))
        n += 8
        in_flight.append(batch)
        if len(in_flight) > 2:
            wait(in_flight.popleft(), timeout=60)


@dataclass
class Running:
    url: str  # the dashboard, without the page: http://127.0.0.1:PORT
    workers: set[str]
    errors: list[BaseException] = field(default_factory=list)


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path is not None:
            return path
    reason = f"no headless Chromium on PATH (looked for {', '.join(BROWSERS)}; Debian: apt-get install chromium)"
    if os.environ.get("DSCHED_REQUIRE_BROWSER") == "1":
        pytest.fail(reason + ", and DSCHED_REQUIRE_BROWSER=1")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def running(chromium: str) -> Iterator[Running]:
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0") as cluster:
        with Client(cluster) as client:
            assert cluster.dashboard_link is not None and cluster.dashboard_link == client.dashboard_link
            state = Running(cluster.dashboard_link.removesuffix("/status"), set(cluster.workers))
            assert len(state.workers) == 2
            stop = threading.Event()

            def work() -> None:
                try:
                    run_workload(client, stop)
                except BaseException as exc:  # reported by every test, and at teardown
                    state.errors.append(exc)

            thread = threading.Thread(target=work, name="workload", daemon=True)
            thread.start()
            try:
                yield state
            finally:
                stop.set()
                thread.join(timeout=60)
    assert not state.errors, state.errors


# --- the browser ----------------------------------------------------------------------


def browser_command(chromium: str, profile_dir: Path) -> list[str]:
    return [
        chromium, "--headless=new", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
        f"--user-data-dir={profile_dir}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--virtual-time-budget={VIRTUAL_TIME_MS}",
    ]


def dump_dom(chromium: str, profile_dir: Path, url: str) -> str:
    done = subprocess.run(
        [*browser_command(chromium, profile_dir), "--dump-dom", url],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if done.returncode != 0 or "<html" not in done.stdout:
        raise AssertionError(f"chromium --dump-dom {url} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def screenshot(chromium: str, profile_dir: Path, url: str, page: str) -> None:
    """With DSCHED_SCREENSHOTS=DIR: DIR/dashboard-PAGE.png, the window as drawn after a few polls."""
    directory = os.environ.get("DSCHED_SCREENSHOTS")
    if not directory:
        return
    target = Path(directory).resolve() / f"dashboard-{page}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    done = subprocess.run(
        [*browser_command(chromium, profile_dir), f"--screenshot={target}", url],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{target} is not a PNG"


# --- a minimal DOM of the dumped HTML -------------------------------------------------


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        return "".join([*self.text_parts, *(child.text() for child in self.children)])

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()

    def all(self, tag: str = "*", *classes: str, **attrs: str) -> list[Node]:
        """Descendants (and self) with this tag, all these classes and attribute values ("*": any)."""
        return [
            node for node in self.walk()
            if (tag == "*" or node.tag == tag)
            and set(classes) <= node.classes
            and all(node.attrs.get(k.replace("_", "-")) == v or (v == "*" and k.replace("_", "-") in node.attrs)
                    for k, v in attrs.items())
        ]

    def by_id(self, ident: str) -> Node:
        found = self.all(id=ident)
        assert len(found) == 1, f"{len(found)} elements with id {ident!r}"
        return found[0]


_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"})


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {name: value or "" for name, value in attrs})
        self.stack[-1].children.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].text_parts.append(data)


def parse(html: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def drawn(chromium: str, profile_dir: Path, url: str, check: Callable[[Node], None]) -> Node:
    """The DOM of ``url`` once ``check`` passes on it (loading the page again until then)."""
    deadline = time.monotonic() + PAGE_TIMEOUT
    while True:
        dom = parse(dump_dom(chromium, profile_dir, url))
        try:
            check(dom)
            return dom
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def number(text: str) -> float:
    """The first number in ``text`` ("1,234.5 /s" -> 1234.5)."""
    found = re.search(r"-?\d[\d,]*(?:\.\d+)?", text)
    assert found is not None, f"no number in {text!r}"
    return float(found.group().replace(",", ""))


def connected(dom: Node) -> None:
    badge = dom.by_id("connection")
    assert "ok" in badge.classes and badge.text() == "live", f"connection badge: {badge.text()!r}"


def frame_labels(dom: Node) -> list[str]:
    return [text.text() for frame in dom.by_id("flamegraph").all("g", "frame") for text in frame.all("text")]


def folded_bars(dom: Node) -> list[Node]:
    """Bars standing for a chain of frames that each have one callee (flamegraph.js: foldableChain)."""
    bars = dom.by_id("flamegraph").all("g", "frame", "folded")
    assert bars, f"no folded bar among {frame_labels(dom)}"
    return bars


def trunk_names(bar: Node) -> list[str]:
    """The functions a folded bar stands for, from its title ("N frames: a › b › ...")."""
    count, _, names = bar.all("title")[0].text().partition(" frames: ")
    functions = names.split(" › ")
    assert int(count) == len(functions), bar.all("title")[0].text()
    return functions


def worker_rows(dom: Node) -> dict[str, Node]:
    return {row.attrs["data-address"]: row for row in dom.by_id("workers-table").all("tr", data_address="*")}


# --- the pages ------------------------------------------------------------------------


def test_status_page_draws_groups_stream_workers_and_summary(
    chromium: str, running: Running, tmp_path: Path
) -> None:
    def check(dom: Node) -> None:
        connected(dom)
        cards = {card.attrs["id"]: card for card in dom.by_id("summary").all("div", "card")}
        assert set(cards) == {"card-tasks", "card-throughput", "card-workers", "card-memory", "card-scheduler"}
        throughput = cards["card-throughput"].all("div", "value")[0].text()
        assert number(throughput) > 0, f"throughput card: {throughput!r}"
        assert cards["card-workers"].all("div", "value")[0].text() == "2"

        bars = {bar.attrs["data-group"]: bar for bar in dom.by_id("task-groups").all("div", "group-bar")}
        assert "busy" in bars and "fails" in bars, f"task groups drawn: {sorted(bars)}"
        assert bars["busy"].all("div", "seg"), "the busy group's bar has no segment"
        assert bars["fails"].all("div", "seg", "erred"), "the fails group's bar has no erred segment"
        for row in dom.by_id("task-groups").all("div", "group-row"):
            done, total = (number(part) for part in row.all("div", "group-count")[0].text().split("/"))
            assert 0 <= done <= total and total > 0

        stream = dom.by_id("task-stream")
        tasks = stream.all("rect", "task")
        assert len(tasks) >= 10, f"{len(tasks)} tasks in the stream"
        assert stream.all("rect", "task", "erred"), "no erred task in the stream"
        assert len(stream.all("text", "row-label")) == 2  # one row per worker
        assert set(worker_rows(dom)) == running.workers

    drawn(chromium, tmp_path, running.url + "/status", check)
    screenshot(chromium, tmp_path, running.url + "/status", "status")
    assert not running.errors, running.errors


def test_workers_page_lists_both_workers(chromium: str, running: Running, tmp_path: Path) -> None:
    def check(dom: Node) -> None:
        connected(dom)
        rows = worker_rows(dom)
        assert set(rows) == running.workers
        headings = [th.text() for th in dom.by_id("workers-table").all("th")]
        finished = headings.index("Finished")
        for row in rows.values():
            cells = row.all("td")
            assert cells[headings.index("Threads")].text() == "1"
            assert number(cells[finished].text()) > 0, f"{row.attrs['data-address']} finished no task"
        assert dom.by_id("workers-note").text() == "2 workers"

    drawn(chromium, tmp_path, running.url + "/workers", check)
    screenshot(chromium, tmp_path, running.url + "/workers", "workers")
    assert not running.errors, running.errors


def test_profile_page_shows_the_task_function(chromium: str, running: Running, tmp_path: Path) -> None:
    def check(dom: Node) -> None:
        connected(dom)
        roots = dom.by_id("flamegraph").all("g", "frame", "root")
        assert len(roots) == 1 and number(roots[0].text()) > 0, "no root frame with samples"
        assert len(dom.by_id("flamegraph").all("rect", "frame")) >= 10
        labels = frame_labels(dom)
        assert "busy" in labels, f"no frame named busy among {labels}"
        # The workers' event loops, under the worker command: a chain of single callees, folded.
        assert any("worker" in trunk_names(bar) for bar in folded_bars(dom)), labels
        options = {option.attrs.get("value") for option in dom.by_id("worker").all("option")}
        assert options == {"", *running.workers}, options
        prefixes = {option.attrs.get("value") for option in dom.by_id("prefixes").all("option")}
        assert "busy" in prefixes
        for fmt in ("speedscope", "collapsed"):
            href = dom.by_id(f"download-{fmt}").attrs.get("href", "")
            assert href.startswith("api/profile?") and f"format={fmt}" in href, href

    drawn(chromium, tmp_path, running.url + "/profile", check)
    screenshot(chromium, tmp_path, running.url + "/profile", "profile")
    assert not running.errors, running.errors


def test_profile_server_page_shows_the_scheduler_loop(chromium: str, running: Running, tmp_path: Path) -> None:
    def check(dom: Node) -> None:
        connected(dom)
        roots = dom.by_id("flamegraph").all("g", "frame", "root")
        assert len(roots) == 1 and number(roots[0].text()) > 0, "no root frame with samples"
        labels = frame_labels(dom)
        # asyncio's loop: every sample passes through it ...
        for name in ("run_forever", "_run_once"):
            assert name in labels, f"no frame named {name} among {labels}"
        # ... and through the interpreter's and the scheduler command's frames above it, folded into one bar.
        trunk = folded_bars(dom)[0]
        assert trunk.attrs["data-depth"] == "1", f"the first folded bar is not under the root: {labels}"
        assert "scheduler" in trunk_names(trunk), trunk_names(trunk)
        assert "busy" not in labels  # the scheduler never runs tasks
        for fmt in ("speedscope", "collapsed"):
            href = dom.by_id(f"download-{fmt}").attrs.get("href", "")
            assert href.startswith("api/profile-server?") and f"format={fmt}" in href, href

    drawn(chromium, tmp_path, running.url + "/profile-server", check)
    screenshot(chromium, tmp_path, running.url + "/profile-server", "profile-server")
    assert not running.errors, running.errors
