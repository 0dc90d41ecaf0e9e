"""`webui.py --desktop` (issue 15): the browser lookup and command line, the single-instance file, and a
real start under Xvfb: a Chromium app window titled "LoRA UI", a second start that only opens another
window and exits 0, the PWA manifest, and closing the windows stopping the server (exit 0, no traceback,
no process left)."""
from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from lora_ui import desktop

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


# ---------------------------------------------------------------------------------------------- unit
def test_find_browser_per_platform_and_override():
    linux = desktop.find_browser("linux", {}, which=lambda n: "/opt/gc" if n == "google-chrome" else None,
                                 exists=lambda p: False)
    assert linux == "/opt/gc"
    mac_app = Path("/Applications/Microsoft Edge.app/Contents/MacOS/Microsoft Edge")
    assert desktop.find_browser("darwin", {}, which=lambda n: None, exists=lambda p: p == mac_app) == str(mac_app)
    edge = Path(r"C:\PF") / r"Microsoft\Edge\Application\msedge.exe"
    assert desktop.find_browser("win32", {"ProgramFiles": r"C:\PF"}, which=lambda n: None,
                                exists=lambda p: p == edge) == str(edge)
    assert desktop.find_browser("linux", {desktop.BROWSER_ENV: "mybrowser"},
                                which=lambda n: "/x/mybrowser" if n == "mybrowser" else None) == "/x/mybrowser"
    with pytest.raises(desktop.DesktopError, match="chromium"):
        desktop.find_browser("linux", {}, which=lambda n: None, exists=lambda p: False)
    with pytest.raises(desktop.DesktopError, match=desktop.BROWSER_ENV):
        desktop.find_browser("linux", {desktop.BROWSER_ENV: "nope"}, which=lambda n: None, exists=lambda p: False)


def test_browser_command_is_an_app_window_with_its_own_profile_and_extra_args(tmp_path):
    cmd = desktop.browser_command("/usr/bin/chromium", "http://127.0.0.1:7860/", tmp_path / "prof",
                                  {desktop.BROWSER_ARGS_ENV: "--headless=new --remote-debugging-port=9333"},
                                  as_root=False)
    assert cmd[0] == "/usr/bin/chromium"
    assert "--app=http://127.0.0.1:7860/" in cmd and f"--user-data-dir={tmp_path / 'prof'}" in cmd
    assert cmd[-2:] == ["--headless=new", "--remote-debugging-port=9333"]
    assert "--no-sandbox" not in cmd
    if sys.platform.startswith("linux"):
        assert "--no-sandbox" in desktop.browser_command("c", "u", tmp_path, {}, as_root=True)


class _Page(http.server.BaseHTTPRequestHandler):
    body = b"<html><head><title>LoRA UI</title></head></html>"

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_running_instance_needs_the_file_and_a_lora_ui_answering(tmp_path):
    assert desktop.running_instance(tmp_path) is None  # no file
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        desktop.write_instance(tmp_path, url, server.server_address[1])
        assert json.loads(desktop.instance_path(tmp_path).read_text())["pid"] == os.getpid()
        assert desktop.running_instance(tmp_path) == url
        _Page.body = b"<html><title>something else</title></html>"  # another app on that port
        assert desktop.running_instance(tmp_path) is None
    finally:
        _Page.body = b"<html><head><title>LoRA UI</title></head></html>"
        server.shutdown()
        server.server_close()
        thread.join()
    assert desktop.running_instance(tmp_path) is None  # stale file: nothing answers
    desktop.instance_path(tmp_path).write_text("{broken")
    assert desktop.running_instance(tmp_path) is None
    desktop.instance_path(tmp_path).write_text(json.dumps({"pid": -5, "url": "x"}))
    desktop.remove_instance(tmp_path)  # not ours: kept
    assert desktop.instance_path(tmp_path).exists()
    desktop.write_instance(tmp_path, "http://127.0.0.1:1/", 1)
    desktop.remove_instance(tmp_path)
    assert not desktop.instance_path(tmp_path).exists()


def test_free_port_keeps_a_free_preferred_port_and_moves_off_a_taken_one():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = desktop.free_port(port)
        assert other != port and other > 0
    assert desktop.free_port(port) == port


# ------------------------------------------------------------------------------------- Xvfb + Chromium
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _json(url: str, timeout: float = 5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _poll(what: str, fn, seconds: float, proc=None, log_path=None):
    """fn() until it returns something truthy; fails after `seconds` or when `proc` has ended."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            value = fn()
        except OSError:
            value = None
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server ended ({proc.returncode}) waiting for {what}:\n"
                                 + (log_path.read_text()[-3000:] if log_path else ""))
        assert time.monotonic() < deadline, f"no {what} within {seconds} s\n" + (
            log_path.read_text()[-3000:] if log_path else "")
        time.sleep(0.2)


@pytest.fixture
def xvfb_display(tmp_path):
    """A private Xvfb server; its display number comes back through -displayfd."""
    xvfb = shutil.which("Xvfb")
    assert xvfb, "Xvfb is missing: apt-get install xvfb (run_tests.sh installs it); the desktop test needs it"
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([xvfb, "-displayfd", str(write_fd), "-screen", "0", "1400x900x24", "-nolisten", "tcp"],
                            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as pipe:
            number = pipe.readline().strip()
        assert number.isdigit(), "Xvfb did not report a display"
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_desktop_opens_a_titled_window_reuses_the_server_and_closing_it_stops_the_server(tmp_path, xvfb_display):
    import psutil

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install Debian's chromium"
    port, devtools = _free_port(), _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), DISPLAY=xvfb_display, GRADIO_TEMP_DIR=str(tmp_path / "gradio-tmp"),
               PYTHONFAULTHANDLER="1", NO_PROXY="127.0.0.1,localhost",
               **{desktop.BROWSER_ENV: CHROMIUM,
                  desktop.BROWSER_ARGS_ENV: f"--remote-debugging-port={devtools} --disable-gpu "
                                            "--disable-dev-shm-usage --disable-background-networking "
                                            "--disable-component-update --disable-sync"})
    env.pop("WAYLAND_DISPLAY", None)
    cmd = [sys.executable, str(ROOT / "webui.py"), "--desktop", "--data-dir", str(tmp_path), "--port", str(port)]
    log_path = tmp_path / "webui.log"
    log = open(log_path, "w")
    # SIGINT ignored, as for any process started in the background (CI, nohup, `&` in a script): closing
    # the window must stop the server all the same
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    base = f"http://127.0.0.1:{port}/"
    try:
        _poll("server", lambda: desktop.answers(base), 300, proc, log_path)

        def app_windows():
            return [t for t in _json(f"http://127.0.0.1:{devtools}/json")
                    if t.get("type") == "page" and t.get("title") == desktop.APP_NAME
                    and t.get("url", "").startswith(base)]

        first = _poll("window titled LoRA UI", app_windows, 60, proc, log_path)
        assert len(first) == 1
        assert "HeadlessChrome" not in _json(f"http://127.0.0.1:{devtools}/json/version")["Browser"]  # a real window

        instance = json.loads((tmp_path / "cache" / desktop.INSTANCE_FILE).read_text())
        assert instance == {"pid": proc.pid, "port": port, "url": base}

        manifest = _json(base + "manifest.json")  # PWA: installable from any browser
        assert manifest["name"] == desktop.APP_NAME and manifest["display"] == "standalone"
        icon_src = manifest["icons"][0]["src"].lstrip("/")
        with urllib.request.urlopen(base + icon_src, timeout=10) as r:
            assert r.read(8) == b"\x89PNG\r\n\x1a\n"
        with urllib.request.urlopen(base, timeout=10) as r:
            assert b'rel="manifest"' in r.read()

        second = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "already running" in second.stdout + second.stderr
        assert "Model ready" not in second.stdout + second.stderr  # no second server, no model load
        _poll("second window", lambda: len(app_windows()) == 2, 60, proc, log_path)

        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("chrom" in c.name() for c in children), children
        for target in app_windows():  # the user closes both windows
            urllib.request.urlopen(f"http://127.0.0.1:{devtools}/json/close/{target['id']}", timeout=10).close()
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # Chromium may outlive its last window (a loaded machine, background work): the user then quits
            # the browser. What is under test is the same either way: the browser process ending stops the
            # server cleanly.
            browsers = [c for c in psutil.Process(proc.pid).children() if "chrom" in c.name()]
            assert browsers, "the server neither stopped nor has a browser running:\n" + log_path.read_text()[-3000:]
            for browser in browsers:
                browser.terminate()
            try:
                code = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                raise AssertionError("the browser ended but the server did not stop:\n"
                                     + log_path.read_text()[-3000:]) from None
        output = log_path.read_text()
        assert code == 0, output[-3000:]
        assert "Traceback" not in output and "terminate called" not in output, output[-3000:]
        assert "desktop window was closed" in output and "LoRA UI stopped" in output, output[-3000:]
        _poll("browser processes to end", lambda: not [c for c in children if c.is_running()
                                                         and c.status() != psutil.STATUS_ZOMBIE], 30)
        assert not (tmp_path / "cache" / desktop.INSTANCE_FILE).exists()
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
