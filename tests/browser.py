"""Drive headless Chromium from tests: open a page offline, collect console errors and the DOM.

Used by the report tests and (later) the book test. It talks the Chrome DevTools Protocol over
``--remote-debugging-pipe`` (file descriptors 3 and 4, messages separated by NUL bytes), so it
needs no websocket library and opens no port.

The browser runs with host-name resolution switched off (``--host-resolver-rules``), so a page
that needs the internet (e.g. vega from a CDN) fails here exactly as it would offline; every
request that is not ``file:``/``data:``/``blob:`` is recorded in :attr:`PageResult.requests`.

Example
-------
>>> page = open_page("/tmp/out/report.html", wait_for="window.__done === true")  # doctest: +SKIP
>>> page.errors                                                                    # doctest: +SKIP
[]
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ConsoleMessage", "PageResult", "find_chromium", "open_page", "skip_reason"]

_CANDIDATES = (
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
    "chrome",
    "headless_shell",
)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable, or None.

    ``$RADIOLENS_CHROMIUM`` wins when set; then ``/usr/bin/chromium``; then the PATH.
    """
    env = os.environ.get("RADIOLENS_CHROMIUM")
    if env and Path(env).is_file():
        return env
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def skip_reason() -> str | None:
    """Why browser tests cannot run here (None when they can)."""
    if find_chromium() is None:
        return (
            "headless Chromium not found (install it, e.g. `apt-get install chromium`, "
            "or set RADIOLENS_CHROMIUM); .ci/run installs it"
        )
    return None


@dataclass
class ConsoleMessage:
    """One console message, uncaught exception or browser log entry."""

    level: str  # "error", "warning", "log", "info", "debug", "exception", ...
    text: str
    source: str = ""  # "console", "exception", "network", "javascript", ...
    url: str = ""


@dataclass
class PageResult:
    """What a page did while it was open."""

    url: str
    dom: str  # document.documentElement.outerHTML after waiting
    messages: list[ConsoleMessage] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # non-local request URLs
    failed: list[str] = field(default_factory=list)  # "url: reason" for failed loads
    values: dict[str, object] = field(default_factory=dict)  # results of `evaluate`
    waited: bool = True  # False when wait_for never became true before the timeout

    @property
    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads, as text."""
        out = [f"[{m.source}:{m.level}] {m.text}" for m in self.messages if m.level in ("error", "exception")]
        out += [f"[load failed] {f}" for f in self.failed]
        return out


class _Pipe:
    """CDP over the two pipes: write JSON + NUL to fd 3 of the child, read from its fd 4."""

    def __init__(self, write_fd: int, read_fd: int) -> None:
        self.write_fd = write_fd
        self.read_fd = read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []
        self.on_event = None  # called with every event as it arrives (e.g. to answer requests)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            written = os.write(self.write_fd, data)
            data = data[written:]
        return self.next_id

    def _read_messages(self, timeout: float) -> list[dict]:
        ready, _, _ = select.select([self.read_fd], [], [], max(timeout, 0))
        if not ready:
            return []
        chunk = os.read(self.read_fd, 1 << 20)
        if not chunk:
            raise RuntimeError("Chromium closed the DevTools pipe (did it crash?)")
        self.buffer += chunk
        *complete, self.buffer = self.buffer.split(b"\0")
        messages = [json.loads(part) for part in complete if part]
        if self.on_event is not None:
            for message in messages:
                if "method" in message:
                    self.on_event(message)
        return messages

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        """Send a command and wait for its answer; events that arrive meanwhile are kept."""
        wanted = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = None
            for message in self._read_messages(deadline - time.monotonic()):
                if message.get("id") == wanted:
                    answer = message
                elif "method" in message:
                    self.events.append(message)
            if answer is not None:
                if "error" in answer:
                    raise RuntimeError(f"DevTools {method} failed: {answer['error']}")
                return answer.get("result", {})
        raise TimeoutError(f"DevTools {method} got no answer within {timeout} s")

    def pump(self, seconds: float) -> None:
        """Collect events for a while."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for message in self._read_messages(deadline - time.monotonic()):
                if "method" in message:
                    self.events.append(message)


def _is_local(url: str) -> bool:
    return url.startswith(("file:", "data:", "blob:", "about:", "chrome:", "devtools:"))


def _remote_text(remote: dict) -> str:
    if "value" in remote:
        return str(remote["value"])
    return str(remote.get("description", remote.get("type", "")))


def _route_body(content: str | bytes | os.PathLike) -> tuple[bytes, str]:
    if isinstance(content, bytes):
        return content, "application/javascript"
    if isinstance(content, os.PathLike):
        path = Path(content)
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return path.read_bytes(), kind
    return content.encode("utf-8"), "application/javascript; charset=utf-8"


def _collect(events: list[dict], result: PageResult, routed: tuple[str, ...] = ()) -> None:
    urls: dict[str, str] = {}
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(_remote_text(arg) for arg in params.get("args", []))
            level = {"warning": "warning", "error": "error", "assert": "error"}.get(params.get("type"), params.get("type", "log"))
            result.messages.append(ConsoleMessage(level, text, "console"))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = _remote_text(details.get("exception", {})) if details.get("exception") else details.get("text", "")
            result.messages.append(ConsoleMessage("exception", text, "exception", details.get("url", "")))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            result.messages.append(
                ConsoleMessage(entry.get("level", "info"), entry.get("text", ""), entry.get("source", "log"), entry.get("url", ""))
            )
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            urls[params.get("requestId", "")] = url
            if not _is_local(url) and not url.startswith(routed or ("\0",)):
                result.requests.append(url)
        elif method == "Network.loadingFailed":
            request = params.get("requestId", "")
            result.failed.append(f"{urls.get(request, request)}: {params.get('errorText', '')}")


def open_page(
    path_or_url: str | os.PathLike,
    wait_for: str | None = None,
    evaluate: dict[str, str] | None = None,
    timeout: float = 60,
    settle: float = 0.5,
    chromium: str | None = None,
    screenshot: str | os.PathLike | None = None,
    routes: Mapping[str, str | bytes | os.PathLike] | None = None,
) -> PageResult:
    """Open a page in headless Chromium, offline, and report what happened.

    Parameters
    ----------
    path_or_url
        A local file path (opened as ``file://``) or a URL (``http://127.0.0.1:...`` for a
        locally served page).
    wait_for
        JavaScript expression polled until it is truthy (e.g. "all charts drawn"); without
        it the page is read once its load event fired.
    evaluate
        Named JavaScript expressions evaluated in order after waiting (a Promise is awaited);
        their JSON-able values land in :attr:`PageResult.values`. An expression that throws
        raises RuntimeError.
    timeout
        Seconds for the whole visit (start, load, waiting).
    settle
        Seconds to keep collecting console messages after waiting.
    chromium
        Browser executable; default :func:`find_chromium`.
    screenshot
        Save a full-page PNG here (to look at a page while developing).
    routes
        ``{URL prefix: content}`` answered by the test instead of the network (content: text,
        bytes or a file path), e.g. to serve a page's CDN scripts from local copies::

            bundle = vl_convert.javascript_bundle()
            routes = {"https://cdn.jsdelivr.net/npm/vega@": bundle,
                      "https://cdn.jsdelivr.net/npm/vega-lite@": "",
                      "https://cdn.jsdelivr.net/npm/vega-embed@": ""}

        Routed requests are not listed in :attr:`PageResult.requests`; any other non-local
        request still fails (offline) and is listed.

    Returns
    -------
    PageResult

    Raises
    ------
    FileNotFoundError
        When no browser or no such file is found.
    """
    browser = chromium or find_chromium()
    if browser is None:
        raise FileNotFoundError(skip_reason())
    target = str(path_or_url)
    if "://" not in target:
        path = Path(target).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"page {path} does not exist")
        target = path.as_uri()

    profile = tempfile.mkdtemp(prefix="radiolens-chromium-")
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()

    def _child_fds() -> None:
        # The DevTools pipe must be fds 3 (commands in) and 4 (answers out) in the child. Copy
        # first so that dup2 cannot overwrite one end with the other; dup2 leaves 3 and 4
        # inheritable while every other Python fd is close-on-exec.
        commands, answers = os.dup(to_child_r), os.dup(from_child_w)
        os.dup2(commands, 3)
        os.dup2(answers, 4)

    args = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        "--mute-audio",
        "--allow-file-access-from-files",
        # offline: no host name resolves except the loopback interface
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}",
        "--remote-debugging-pipe",
        "--window-size=1400,1000",
        "about:blank",
    ]
    process = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_child_fds,
        close_fds=False,
    )
    os.close(to_child_r)
    os.close(from_child_w)
    pipe = _Pipe(to_child_w, from_child_r)
    result = PageResult(url=target, dom="")
    deadline = time.monotonic() + timeout
    try:
        created = pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)
        session = pipe.call("Target.attachToTarget", {"targetId": created["targetId"], "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            pipe.call(f"{domain}.enable", session=session)
        if routes:
            bodies = {prefix: _route_body(content) for prefix, content in routes.items()}

            def answer(event: dict) -> None:
                if event["method"] != "Fetch.requestPaused":
                    return
                params = event["params"]
                url = params["request"]["url"]
                prefix = next((p for p in bodies if url.startswith(p)), None)
                if prefix is None:  # not ours after all: let it go (and fail offline)
                    pipe.send("Fetch.continueRequest", {"requestId": params["requestId"]}, session)
                    return
                body, kind = bodies[prefix]
                headers = [{"name": "Content-Type", "value": kind}, {"name": "Access-Control-Allow-Origin", "value": "*"}]
                pipe.send(
                    "Fetch.fulfillRequest",
                    {"requestId": params["requestId"], "responseCode": 200, "responseHeaders": headers,
                     "body": base64.b64encode(body).decode()},
                    session,
                )

            pipe.on_event = answer
            patterns = [{"urlPattern": prefix + "*", "requestStage": "Request"} for prefix in bodies]
            pipe.call("Fetch.enable", {"patterns": patterns}, session=session)
        pipe.call("Page.navigate", {"url": target}, session=session)

        condition = wait_for or "document.readyState === 'complete'"
        result.waited = False
        while time.monotonic() < deadline:
            answer = pipe.call(
                "Runtime.evaluate",
                {"expression": f"Boolean({condition})", "returnByValue": True},
                session=session,
                timeout=max(deadline - time.monotonic(), 1),
            )
            if answer.get("result", {}).get("value") is True:
                result.waited = True
                break
            pipe.pump(0.2)
        pipe.pump(settle)

        for name, expression in (evaluate or {}).items():
            answer = pipe.call(
                "Runtime.evaluate",
                {"expression": expression, "returnByValue": True, "awaitPromise": True},
                session=session,
                timeout=max(deadline - time.monotonic(), 5),
            )
            if "exceptionDetails" in answer:
                details = answer["exceptionDetails"]
                raise RuntimeError(f"evaluate {name!r} threw: {_remote_text(details.get('exception', {})) or details.get('text')}")
            result.values[name] = answer.get("result", {}).get("value")
        answer = pipe.call(
            "Runtime.evaluate", {"expression": "document.documentElement.outerHTML", "returnByValue": True}, session=session
        )
        result.dom = answer.get("result", {}).get("value", "")
        if screenshot is not None:
            shot = pipe.call(
                "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session
            )
            Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
        _collect(pipe.events, result, tuple(routes or ()))
        try:
            pipe.send("Browser.close")
            process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for fd in (to_child_w, from_child_r):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(profile, ignore_errors=True)
    return result
