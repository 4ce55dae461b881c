"""Real calls through the real topology: headless Chromium pages (Debian's `chromium`, fake
camera and microphone, driven by Playwright) load the demo page through nginx in front of
three node processes on a redis-server, and call each other.

One browser for the module, one context (a separate user) per page. A screenshot of the
two-page call is saved to test-artifacts/browser-call.png.
"""

from __future__ import annotations

import itertools
import json
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, WebSocketRoute, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.support.browser import CHROMIUM_FLAGS, chromium_binary
from tests.support.cluster import unique
from tests.support.nginx import NginxProcess
from tests.support.procs import ROOT, NodeProcess, RedisServer
from tests.support.tokens import SECRET, mint
from tests.support.wait import ready_status, wait_until

pytestmark = pytest.mark.integration

ARTIFACTS = ROOT / "test-artifacts"
WAIT_MS = 20_000

ALL_CONNECTED = """(n) => {
  const links = [...(window.demo?.mesh?.links.values() ?? [])];
  return links.length === n && links.every((l) => l.state === "connected");
}"""
# Video frames decoded from each peer (inbound-rtp stats of its link), polled in the page
# until every peer's count is above zero or `ms` have passed; the last counts are returned.
# (wait_for_function cannot take an async predicate: it would see a Promise, always truthy.)
FRAMES_DECODED = """async (ms) => {
  const deadline = Date.now() + ms;
  for (;;) {
    const out = {};
    for (const [peer, link] of demo.mesh.links) {
      const stats = await link.pc.getStats();
      out[peer] = 0;
      stats.forEach((r) => {
        if (r.type === "inbound-rtp" && r.kind === "video") out[peer] += r.framesDecoded ?? 0;
      });
    }
    const counts = Object.values(out);
    if ((counts.length && counts.every((n) => n > 0)) || Date.now() > deadline) return out;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}"""
CONSOLE: dict[Page, list[str]] = {}  # each page's console lines, for failure messages
LINK_SERIALS = "() => Object.fromEntries([...demo.mesh.links].map(([p, l]) => [p, l.serial]))"


@dataclass
class Site:
    nodes: list[NodeProcess]
    nginx: NginxProcess
    redis: RedisServer
    prefix: str

    @property
    def url(self) -> str:
        return self.nginx.url

    def node(self, node_id: str) -> NodeProcess:
        return next(n for n in self.nodes if n.env["NODE_ID"] == node_id)

    def rooms(self) -> list[str]:
        return self.redis.cli("KEYS", f"{self.prefix}room:*").split()


@pytest.fixture(scope="module")
def whole_site(redis_server: RedisServer) -> Iterator[Site]:
    """nginx (the repository's nginx.conf) in front of three nodes; the page's origin is
    nginx's, so that is the origin the nodes allow."""
    prefix = f"{unique('web')}:"
    nodes = [NodeProcess({"REDIS_URL": redis_server.url, "KEY_PREFIX": prefix,
                          "NODE_ID": f"web{i}"}) for i in range(3)]
    nginx = NginxProcess([n.port for n in nodes])
    try:
        for node in nodes:
            node.env["ALLOWED_ORIGINS"] = nginx.url
            node.start(wait_ready=False)
        for node in nodes:
            wait_until(node.is_ready, 15, f"node {node.url}")
        yield Site(nodes, nginx.start(), redis_server, prefix)
    finally:
        nginx.cleanup()
        for node in nodes:
            node.close()


@pytest.fixture
def site(whole_site: Site) -> Iterator[Site]:
    """The module's site, with any node a test stopped started again (same port) and a
    fresh nginx, which forgets the failed tries of a moment ago."""
    yield whole_site
    stopped = [n for n in whole_site.nodes if n.proc is None or n.proc.poll() is not None
               or ready_status(n.url) != 200]
    for node in stopped:
        node.stop()  # a draining node finishes first
        node.start()
    if stopped:
        whole_site.nginx.stop()
        whole_site.nginx.start()




@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_binary(), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def pages(browser: Browser, site: Site) -> Iterator[list[Page]]:
    """Pages opened by the test, each in its own context; closed afterwards, and gone
    from every room before the next test, so nginx's least_conn counts start from zero."""
    opened: list[Page] = []
    yield opened
    for page in opened:
        page.context.close()
    wait_until(lambda: not site.rooms(), 10, "the pages' peers to leave")


def join(browser: Browser, pages: list[Page], url: str,
         before: Callable[[Page], None] | None = None) -> Page:
    """Open the page and wait until it has joined (welcome received)."""
    page = browser.new_context(viewport={"width": 900, "height": 600}).new_page()
    if before is not None:
        before(page)
    page.on("console", lambda msg: CONSOLE.setdefault(page, []).append(msg.text))
    pages.append(page)
    page.goto(url)
    page.wait_for_function("() => window.demo?.status === 'open'", timeout=WAIT_MS)
    return page


def node_of(page: Page) -> str:
    return str(page.evaluate("demo.node"))


def peer_of(page: Page) -> str:
    return str(page.evaluate("demo.peer"))


def wait_connected(page: Page, links: int) -> None:
    try:
        page.wait_for_function(ALL_CONNECTED, arg=links, timeout=WAIT_MS)
    except PlaywrightTimeout:
        raise AssertionError(f"{peer_of(page)} on {node_of(page)}: links {states(page)}, "
                             f"console {CONSOLE.get(page)}") from None


def assert_video_decoded(page: Page, links: int) -> None:
    frames = page.evaluate(FRAMES_DECODED, WAIT_MS)
    assert len(frames) == links and all(n > 0 for n in frames.values()), frames


def states(page: Page) -> object:
    return page.evaluate("Object.fromEntries([...demo.mesh.links].map(([p, l]) => "
                         "[p, [l.state, l.pc.signalingState, l.pc.iceConnectionState]]))")


def test_two_pages_on_different_nodes_call_each_other_and_chat(
    site: Site, browser: Browser, pages: list[Page],
) -> None:
    room = unique("call")
    a = join(browser, pages, f"{site.url}/?room={room}")
    b = join(browser, pages, f"{site.url}/#{room}")
    # least_conn: a's WebSocket is open, so b's goes to another node.
    assert node_of(a) != node_of(b)
    assert page_node_is_shown(a)
    for page in (a, b):
        wait_connected(page, 1)
        assert_video_decoded(page, links=1)
    a.fill("#chat-input", "hello from a")
    a.click("#chat-form button")
    line = {"from": peer_of(a), "text": "hello from a"}
    for page in (a, b):
        page.wait_for_function("(l) => demo.chat.some((c) => c.from === l.from && "
                               "c.text === l.text)", arg=line, timeout=WAIT_MS)
    assert b.locator("#chat-log").inner_text().endswith("hello from a")
    assert b.locator(f'figure[data-peer="{peer_of(a)}"]').get_attribute("data-state") == \
        "connected"
    ARTIFACTS.mkdir(exist_ok=True)
    shot: Path = ARTIFACTS / "browser-call.png"
    b.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000


def hold_offers_until_own_offer(page: Page) -> None:
    """Route the page's WebSocket through Playwright and hold back offers addressed to it
    until it has sent its own: the two offers of a pair then cross for certain (glare)."""

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        held: list[str | bytes] = []
        sent_offer = False

        def to_server(message: str | bytes) -> None:
            nonlocal sent_offer
            server.send(message)
            if not sent_offer and json.loads(message).get("type") == "offer":
                sent_offer = True
                for frame in held:
                    ws.send(frame)

        def to_page(message: str | bytes) -> None:
            if not sent_offer and json.loads(message).get("type") == "offer":
                held.append(message)
            else:
                ws.send(message)

        ws.on_message(to_server)
        server.on_message(to_page)

    page.route_web_socket("**/ws/**", route)


def test_offers_that_cross_are_resolved_by_perfect_negotiation(
    site: Site, browser: Browser, pages: list[Page],
) -> None:
    room = unique("glare")
    a = join(browser, pages, f"{site.url}/?room={room}", before=hold_offers_until_own_offer)
    b = join(browser, pages, f"{site.url}/?room={room}", before=hold_offers_until_own_offer)
    for page in (a, b):
        wait_connected(page, 1)
    # Each side received the other's offer while its own was out: one collision each. The
    # polite side (smaller id) rolled its offer back, the other ignored the incoming one.
    collisions = [p.evaluate("[...demo.mesh.links.values()][0].collisions") for p in (a, b)]
    assert collisions == [1, 1]


def page_node_is_shown(page: Page) -> bool:
    """The page shows the node that served it (Server-Timing) and the one it talks to."""
    served = str(page.evaluate("demo.pageNode"))
    return served.startswith("web") and page.inner_text("#node") == node_of(page)


def test_four_pages_form_a_full_mesh_that_recovers_when_one_reloads(
    site: Site, browser: Browser, pages: list[Page],
) -> None:
    room = unique("mesh")
    mesh = [join(browser, pages, f"{site.url}/?room={room}") for _ in range(4)]
    assert {node_of(p) for p in mesh} == {"web0", "web1", "web2"}
    for page in mesh:
        wait_connected(page, 3)
    peers = [peer_of(p) for p in mesh]
    pairs = {frozenset((peer_of(p), peer)) for p in mesh
             for peer in p.evaluate("[...demo.mesh.links.keys()]")}
    assert pairs == {frozenset(pair) for pair in itertools.combinations(peers, 2)}

    before = [p.evaluate(LINK_SERIALS) for p in mesh]
    reloaded = mesh[1]
    reloaded.reload()
    reloaded.wait_for_function("() => window.demo?.status === 'open'", timeout=WAIT_MS)
    assert peer_of(reloaded) == peers[1]  # the same peer came back (sessionStorage)
    for page, old in zip(mesh, before, strict=True):
        if page is not reloaded:
            # The link to the reloaded page is a new connection; the others are untouched.
            page.wait_for_function(f"() => ({LINK_SERIALS})()[{peers[1]!r}] > {old[peers[1]]}",
                                   timeout=WAIT_MS)
        wait_connected(page, 3)
        now = page.evaluate(LINK_SERIALS)
        if page is not reloaded:
            assert {p: s for p, s in now.items() if p != peers[1]} == \
                {p: s for p, s in old.items() if p != peers[1]}
    assert_video_decoded(reloaded, links=3)


def wait_rejoined(page: Page, welcomes: int) -> None:
    page.wait_for_function("(n) => demo.welcomes === n && demo.status === 'open'",
                           arg=welcomes, timeout=WAIT_MS)


def test_a_page_whose_node_drains_or_dies_resumes_elsewhere_and_the_call_goes_on(
    site: Site, browser: Browser, pages: list[Page],
) -> None:
    """Contract §6: the page resumes its session on another node; nobody is told, so
    neither page touches its RTCPeerConnection and the call never stops."""
    room = unique("move")
    a = join(browser, pages, f"{site.url}/?room={room}")
    b = join(browser, pages, f"{site.url}/?room={room}")
    for page in (a, b):
        wait_connected(page, 1)
    links = {page: page.evaluate(LINK_SERIALS) for page in (a, b)}
    for welcomes, how in ((2, signal.SIGTERM), (3, signal.SIGKILL)):
        first = node_of(a)
        assert first != node_of(b)  # b's node stays up
        site.node(first).signal(how)
        wait_rejoined(a, welcomes)
        assert node_of(a) != first
        assert a.evaluate("demo.resumes") == welcomes - 1
        for page in (a, b):  # the same connections, still up, still decoding video
            assert page.evaluate(LINK_SERIALS) == links[page]
            wait_connected(page, 1)
            assert_video_decoded(page, 1)
    # 1001: the node drained; 1006: no close frame, the node was gone
    assert a.evaluate("demo.closes") == [1001, 1006]


def test_a_page_whose_peer_id_opens_in_another_tab_steps_aside(
    site: Site, browser: Browser, pages: list[Page],
) -> None:
    room = unique("twice")
    a = join(browser, pages, f"{site.url}/?room={room}")
    b = join(browser, pages, f"{site.url}/?room={room}")
    wait_connected(b, 1)
    newer = join(browser, pages, f"{site.url}/?room={room}&peer={peer_of(a)}")
    a.wait_for_function("() => demo.status === 'stopped'", timeout=WAIT_MS)
    # a does not fight back: no socket, no reconnect scheduled, and it says why
    assert a.evaluate("[demo.closes, demo.signaling.ws, demo.signaling.timers.size]") == \
        [[4001], None, 0]
    assert "another tab" in a.inner_text("#status")
    for page in (newer, b):
        wait_connected(page, 1)
    assert b.evaluate("[...demo.mesh.links.keys()]") == [peer_of(a)]


@pytest.fixture
def token_node() -> Iterator[NodeProcess]:
    """One node (embedded backend) with token auth on, serving the page itself."""
    node = NodeProcess({"NODE_ID": "tok", "REDIS_URL": "", "AUTH_SECRET": SECRET})
    node.env["ALLOWED_ORIGINS"] = node.url
    try:
        yield node.start()
    finally:
        node.close()


def test_with_token_auth_the_page_joins_as_its_tokens_subject(
    token_node: NodeProcess, browser: Browser, pages: list[Page],
) -> None:
    room = unique("tok")
    a, b = (join(browser, pages, f"{token_node.url}/?room={room}&token={mint(room, peer)}")
            for peer in ("alice", "bob"))
    assert (peer_of(a), peer_of(b)) == ("alice", "bob")
    for page in (a, b):
        wait_connected(page, 1)
