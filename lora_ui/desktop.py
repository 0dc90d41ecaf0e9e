"""`webui.py --desktop`: the app in its own window, one server per data dir.

The window is an installed Chromium-family browser (Chrome, Chromium, Edge, Brave) in `--app=URL` mode
with a dedicated profile (`--user-data-dir=<data-dir>/cache/desktop-profile`): a window without tabs or
address bar, titled with the page's `<title>` (the app's name), on Linux, macOS and Windows with nothing
extra to install (Edge ships with Windows). Not pywebview: its Linux backends need GTK/WebKit or Qt system
packages (and PyGObject/Qt bindings built against them) that pip cannot install.

Single instance: the running server writes `<data-dir>/cache/desktop-instance.json` with its pid and URL; a
second `--desktop` start that finds that file *and* a server answering at the URL only opens another
window (the browser hands it to the running profile) and exits 0. The first start watches the browser
process: when it exits (the last window closed), the server shuts down as on Ctrl+C.

`LORA_UI_DESKTOP_BROWSER` names the browser executable; `LORA_UI_DESKTOP_BROWSER_ARGS` adds flags
(shell syntax), e.g. `--headless=new --remote-debugging-port=9222` in tests.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Callable

log = logging.getLogger("lora_ui.desktop")

APP_NAME = "LoRA UI"
INSTANCE_FILE = "desktop-instance.json"
BROWSER_ENV = "LORA_UI_DESKTOP_BROWSER"
BROWSER_ARGS_ENV = "LORA_UI_DESKTOP_BROWSER_ARGS"

_LINUX_NAMES = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "microsoft-edge",
                "microsoft-edge-stable", "brave-browser"]
_MAC_APPS = ["Google Chrome", "Chromium", "Microsoft Edge", "Brave Browser"]
_WINDOWS_PATHS = [r"Microsoft\Edge\Application\msedge.exe", r"Google\Chrome\Application\chrome.exe",
                  r"Chromium\Application\chrome.exe", r"BraveSoftware\Brave-Browser\Application\brave.exe"]


class DesktopError(RuntimeError):
    """No usable browser for the desktop window."""


def find_browser(platform: str | None = None, environ: dict | None = None,
                 which: Callable[[str], str | None] = shutil.which,
                 exists: Callable[[Path], bool] = Path.is_file) -> str:
    """The Chromium-family browser to open the window with: $LORA_UI_DESKTOP_BROWSER, else the first one
    found in the platform's usual places. Raises DesktopError naming what was looked for."""
    platform = platform or sys.platform
    environ = os.environ if environ is None else environ
    chosen = environ.get(BROWSER_ENV)
    if chosen:
        found = which(chosen) or (chosen if exists(Path(chosen)) else None)
        if not found:
            raise DesktopError(f"{BROWSER_ENV}={chosen} is not an executable")
        return found
    candidates: list[str] = []
    if platform == "darwin":
        for app in _MAC_APPS:
            for base in (Path("/Applications"), Path.home() / "Applications"):
                path = base / f"{app}.app" / "Contents" / "MacOS" / app
                candidates.append(str(path))
                if exists(path):
                    return str(path)
    elif platform.startswith("win"):
        for var in ("ProgramFiles", "ProgramFiles(x86)", "LOCALAPPDATA"):
            base = environ.get(var)
            for rel in _WINDOWS_PATHS if base else []:
                path = Path(base) / rel
                candidates.append(str(path))
                if exists(path):
                    return str(path)
        for name in ("msedge", "chrome"):
            if which(name):
                return which(name)
    else:
        for name in _LINUX_NAMES:
            candidates.append(name)
            found = which(name)
            if found:
                return found
    raise DesktopError("--desktop needs Chrome, Chromium, Edge or Brave; none was found (looked for "
                       + ", ".join(candidates) + f"). Install one, or set {BROWSER_ENV} to its executable.")


def browser_command(browser: str, url: str, profile_dir: Path, environ: dict | None = None,
                    as_root: bool | None = None) -> list[str]:
    """The command line of one app window on `url` with the dedicated profile."""
    environ = os.environ if environ is None else environ
    if as_root is None:
        as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    cmd = [browser, f"--app={url}", f"--user-data-dir={profile_dir}", "--no-first-run",
           "--no-default-browser-check", "--disable-background-mode", "--window-size=1400,900"]
    if as_root and sys.platform.startswith("linux"):
        cmd.append("--no-sandbox")  # Chromium refuses to start as root with its sandbox
    cmd += shlex.split(environ.get(BROWSER_ARGS_ENV, ""))
    return cmd


def profile_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "cache" / "desktop-profile"


def instance_path(data_dir: Path) -> Path:
    return Path(data_dir) / "cache" / INSTANCE_FILE


def answers(url: str, timeout: float = 3.0) -> bool:
    """True when a LoRA UI page answers at `url` (not just any server on that port)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own localhost URL
            return response.status == 200 and APP_NAME.encode() in response.read(200_000)
    except (OSError, ValueError):
        return False


def running_instance(data_dir: Path) -> str | None:
    """The URL of the desktop server already running for this data dir, or None (no file, a broken file,
    or nothing answering there: a stale file from a crash)."""
    try:
        data = json.loads(instance_path(data_dir).read_text(encoding="utf-8"))
        url = str(data["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if answers(url) else None


def write_instance(data_dir: Path, url: str, port: int) -> Path:
    path = instance_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "port": port, "url": url}), encoding="utf-8")
    os.replace(tmp, path)
    return path


def remove_instance(data_dir: Path) -> None:
    """Remove the instance file if it is ours (a second server may have replaced it)."""
    path = instance_path(data_dir)
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def free_port(preferred: int, host: str = "127.0.0.1") -> int:
    """`preferred` when nothing listens there, else a free port the system picks."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port")


def open_window(url: str, data_dir: Path) -> subprocess.Popen:
    """Start the browser with one app window on `url`."""
    cmd = browser_command(find_browser(), url, profile_dir(data_dir))
    profile_dir(data_dir).mkdir(parents=True, exist_ok=True)
    log.info("Opening the desktop window: %s", " ".join(shlex.quote(c) for c in cmd))
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class WindowWatcher:
    """Calls `on_closed` once when the browser process exits (the last window was closed); `close()`
    ends the browser when the server stops first and joins the thread."""

    def __init__(self, process: subprocess.Popen, on_closed: Callable[[], None]) -> None:
        self.process = process
        self._on_closed = on_closed
        self._stopping = False
        self._thread = threading.Thread(target=self._watch, name="desktop-window", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        self.process.wait()
        if not self._stopping:
            log.info("The desktop window was closed: stopping the server")
            self._on_closed()

    def close(self, timeout: float = 10.0) -> None:
        self._stopping = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self._thread.join(timeout)


def open_another_window(url: str, data_dir: Path, timeout: float = 30.0) -> int:
    """A second `--desktop` start: one more window on the running server. The browser hands the window to
    the profile's running browser and exits; it is waited for, so nothing is left behind. 0 on success."""
    try:
        process = open_window(url, data_dir)
    except (DesktopError, OSError) as e:
        log.error("%s", e)
        return 1
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        pass  # no running browser took it: this one is the window now, and it stays open
    return 0
