"""Prompt styles: A1111's `styles.csv` (columns name, prompt, negative_prompt) in the data dir.

Applying a style (A1111 modules/styles.py): when the style's text holds `{prompt}`, the prompt replaces
it; otherwise the style is appended after ", " (an empty side is left out). Several styles apply in
order, each to the result of the one before. The negative prompt works the same way. The expanded
prompt is what gets rendered and written in the infotext. No gradio, no torch.
"""
from __future__ import annotations

import csv
import io
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

FIELDS = ("name", "prompt", "negative_prompt")


class StyleError(ValueError):
    """A style is unknown or cannot be saved; the message says what to do."""


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """A1111's merge_prompts."""
    if "{prompt}" in style_prompt:
        return style_prompt.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles_to_prompt(prompt: str, style_prompts: Sequence[str]) -> str:
    for style_prompt in style_prompts:
        prompt = merge_prompts(style_prompt, prompt)
    return prompt


class StyleDatabase:
    """styles.csv, re-read when the file changed on disk; `save_style` writes it atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._styles: dict[str, PromptStyle] = {}
        self._stamp: tuple | None = None

    def _reload_if_changed(self) -> None:
        try:
            stat = self.path.stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return
        styles: dict[str, PromptStyle] = {}
        if stamp is not None:
            with open(self.path, encoding="utf-8-sig", newline="") as fh:
                for row in csv.DictReader(fh, skipinitialspace=True):
                    name = (row.get("name") or "").strip()
                    if not name:
                        continue
                    prompt = row.get("prompt") if "prompt" in row else row.get("text", "")
                    styles[name] = PromptStyle(name, prompt or "", row.get("negative_prompt") or "")
        self._styles, self._stamp = styles, stamp

    def styles(self) -> list[PromptStyle]:
        with self._lock:
            self._reload_if_changed()
            return list(self._styles.values())

    def names(self) -> list[str]:
        return [s.name for s in self.styles()]

    def get(self, name: str) -> PromptStyle:
        with self._lock:
            self._reload_if_changed()
            style = self._styles.get(name)
        if style is None:
            known = ", ".join(self._styles) or "none"
            raise StyleError(f"unknown style {name!r}; styles in {self.path.name}: {known}")
        return style

    def apply(self, prompt: str, negative_prompt: str, names: Sequence[str]) -> tuple[str, str]:
        """(prompt, negative) with the styles applied in order. Raises StyleError for an unknown name."""
        styles = [self.get(n) for n in names]
        return (apply_styles_to_prompt(prompt, [s.prompt for s in styles]),
                apply_styles_to_prompt(negative_prompt, [s.negative_prompt for s in styles]))

    def save_style(self, style: PromptStyle) -> None:
        """Add or replace a style and write styles.csv (A1111's columns; other rows kept in order)."""
        name = style.name.strip()
        if not name:
            raise StyleError("a style needs a name")
        with self._lock:
            self._reload_if_changed()
            styles = dict(self._styles)
            styles[name] = PromptStyle(name, style.prompt, style.negative_prompt)
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(FIELDS), lineterminator="\n")
            writer.writeheader()
            for s in styles.values():
                writer.writerow({"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt})
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".styles-", suffix=".csv", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8-sig", newline="") as fh:
                    fh.write(buf.getvalue())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self._stamp = None


def for_context(ctx) -> StyleDatabase:
    """The app's style database: `ctx.styles` when the AppContext has one, else `<data-dir>/styles.csv`
    (kept on the context so every caller shares it)."""
    db = getattr(ctx, "styles", None)
    if isinstance(db, StyleDatabase):
        return db
    settings = getattr(ctx, "settings", None)
    path = getattr(settings, "styles_path", None)
    if path is None:
        path = Path(getattr(settings, "data_dir", None) or ".") / "styles.csv"
    db = StyleDatabase(path)
    try:
        ctx.styles = db
    except AttributeError:  # a context that takes no new attributes: a fresh database each time
        pass
    return db
