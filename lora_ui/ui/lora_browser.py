"""The extra-networks pane under the prompt: a card grid of LoRAs, search/sort/folder filter, refresh,
and the details panel (file info, hashes, kohya metadata, training-tag chips, the `name.json` editor,
"use last image as preview").

The grid is a `gr.HTML` rendered on the server; a small delegated click listener sends
`{lora: name, action: "toggle" | "details"}` back through `trigger('click', ...)`, so a card click is
one ordinary gradio event whose handler (`on_card_click`) is a plain function.
"""
from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import gradio as gr

from lora_ui import prompt as prompt_tags
from lora_ui.ui import core_access as core
from lora_ui.ui import notify

SORT_OPTIONS = ("Name", "Date (newest first)", "Size (largest first)")
ALL_FOLDERS = "All folders"
ROOT_FOLDER = "(top folder)"
PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")

# A neutral placeholder (grey frame, a small "no preview" mark) so cards without an image keep their shape.
PLACEHOLDER_SVG = (
    "data:image/svg+xml;base64,"
    + base64.b64encode(
        b"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 100 100'><rect width='100' height='100' "
        b"fill='#8a8f98'/><rect x='30' y='34' width='40' height='30' rx='3' fill='none' stroke='#d7dae0' "
        b"stroke-width='3'/><circle cx='42' cy='44' r='4' fill='#d7dae0'/><path d='M33 61l12-11 8 7 6-5 9 9' "
        b"fill='none' stroke='#d7dae0' stroke-width='3'/></svg>"
    ).decode()
)

CARDS_CSS = """
.lora-cards { display: flex; flex-wrap: wrap; gap: 8px; }
.lora-card { position: relative; width: var(--card, 160px); height: calc(var(--card, 160px) * 1.3);
  border-radius: 8px; overflow: hidden; cursor: pointer; background: #555; border: 2px solid transparent; }
.lora-card.active { border-color: #f97316; }
.lora-card img { width: 100%; height: 100%; object-fit: cover; display: block; }
.lora-card .lora-card-name { position: absolute; bottom: 0; left: 0; right: 0; padding: 4px 6px;
  background: rgba(0,0,0,.6); color: #fff; font-size: 13px; word-break: break-word; }
.lora-card .lora-badges { position: absolute; top: 4px; left: 4px; display: flex; gap: 3px; flex-wrap: wrap; }
.lora-card .lora-badge { background: rgba(0,0,0,.7); color: #fff; font-size: 11px; padding: 1px 5px; border-radius: 4px; }
.lora-card .lora-badge.misfit { background: #b91c1c; }
.lora-card.misfit img { opacity: .55; }
.lora-card .lora-card-info { position: absolute; top: 4px; right: 4px; background: rgba(0,0,0,.7); color: #fff;
  border: none; border-radius: 4px; font-size: 12px; padding: 1px 6px; cursor: pointer; }
.lora-cards-empty { padding: 12px; opacity: .7; }
.lora-tag-chip { display: inline-block; margin: 2px; padding: 2px 8px; border-radius: 10px; background: #374151;
  color: #fff; font-size: 12px; cursor: pointer; }
"""

CARDS_JS = """
element.addEventListener('click', (event) => {
  const card = event.target.closest('.lora-card');
  if (!card) return;
  const action = event.target.closest('.lora-card-info') ? 'details' : 'toggle';
  trigger('click', {lora: card.dataset.lora, action: action});
});
"""

CHIPS_JS = """
element.addEventListener('click', (event) => {
  const chip = event.target.closest('.lora-tag-chip');
  if (chip) trigger('click', {tag: chip.dataset.tag});
});
"""


@dataclass(frozen=True)
class Card:
    """One LoRA as the grid shows it."""

    key: str          # resolves back to the entry (data-lora)
    name: str
    alias: str
    folder: str
    type_label: str
    arch_label: str
    fits: bool
    broken: str       # "" or why the file cannot be used
    active: bool
    mtime: float
    size: int
    search_text: str  # lower-case name, alias, folder, training tags, description, activation text
    preview: Any      # Path / bytes / PIL image / None


def build_cards(entries: Sequence[Any], model_arch: str, active_keys: set[str]) -> list[Card]:
    """Library entries -> cards; `active_keys` are the card keys of the LoRAs whose tag is in the prompt."""
    cards = []
    for entry in entries:
        name = core.entry_name(entry)
        alias = str(getattr(entry, "alias", "") or "")
        folder = str(getattr(entry, "rel_folder", "") or "").replace("\\", "/").strip("/")
        tags = " ".join(tag for tag, _ in core.training_tags(entry))
        search = " ".join([name, alias, folder, tags, core.description(entry), core.activation_text(entry)]).lower()
        key = core.card_key(entry)
        cards.append(Card(
            key=key,
            name=name,
            alias=alias,
            folder=folder,
            type_label=core.network_type_label(getattr(entry, "network_type", None)),
            arch_label=core.arch_label(core.entry_arch(entry)),
            fits=core.fits_model(core.entry_arch(entry), model_arch),
            broken=core.entry_error(entry) if core.is_broken(entry) else "",
            active=key in active_keys,
            mtime=float(getattr(entry, "mtime", 0) or 0),
            size=int(getattr(entry, "size", 0) or 0),
            search_text=search,
            preview=getattr(entry, "preview", None),
        ))
    return cards


def folder_choices(entries: Sequence[Any]) -> list[str]:
    """'All folders', then every folder that holds a LoRA (the top folder as '(top folder)'), sorted."""
    folders = {str(getattr(e, "rel_folder", "") or "").replace("\\", "/").strip("/") for e in entries}
    return [ALL_FOLDERS] + sorted(ROOT_FOLDER if f == "" else f for f in folders)


def filter_and_sort(cards: Sequence[Card], query: str, sort: str, folder: str) -> list[Card]:
    """Search: every whitespace-separated word must occur in name/alias/folder/tags/description.
    Folder: that folder and its subfolders. Sort: name (case-insensitive), newest first, largest first."""
    words = (query or "").lower().split()
    wanted = [c for c in cards if all(w in c.search_text for w in words)]
    if folder and folder != ALL_FOLDERS:
        target = "" if folder == ROOT_FOLDER else folder.strip("/")
        wanted = [c for c in wanted if c.folder == target or (target and c.folder.startswith(target + "/"))]
    if sort == SORT_OPTIONS[1]:
        return sorted(wanted, key=lambda c: (-c.mtime, c.name.lower()))
    if sort == SORT_OPTIONS[2]:
        return sorted(wanted, key=lambda c: (-c.size, c.name.lower()))
    if sort not in (None, "", SORT_OPTIONS[0]):
        raise ValueError(f"unknown sort order {sort!r}; choose one of {', '.join(SORT_OPTIONS)}")
    return sorted(wanted, key=lambda c: (c.name.lower(), c.name))


class ThumbnailCache:
    """Preview images as small inline data URIs, cached by (path, mtime, size). One per app."""

    def __init__(self, max_side: int = 256) -> None:
        self.max_side = max_side
        self._cache: dict[tuple, str] = {}

    def data_uri(self, preview: Any) -> str:
        """Path/str/bytes/PIL image -> 'data:image/jpeg;base64,...'; missing or unreadable -> placeholder."""
        if preview is None or preview == "":
            return PLACEHOLDER_SVG
        try:
            key = self._key(preview)
            if key is not None and key in self._cache:
                return self._cache[key]
            uri = self._encode(preview)
        except Exception:  # noqa: BLE001 - a broken, hostile or vanished preview costs only its own card
            return PLACEHOLDER_SVG
        if key is not None:
            self._cache[key] = uri
        return uri

    @staticmethod
    def _key(preview: Any) -> tuple | None:
        if isinstance(preview, (str, Path)):
            stat = Path(preview).stat()
            return (str(preview), stat.st_mtime_ns, stat.st_size)
        if isinstance(preview, bytes):
            return ("bytes", hash(preview))
        return None

    def _encode(self, preview: Any) -> str:
        from lora_ui.files import open_image
        from lora_ui.limits import MAX_PREVIEW_BYTES, MAX_PREVIEW_PIXELS

        if isinstance(preview, (str, Path, bytes)):  # regular file, size and pixel count checked first
            image = open_image(preview if isinstance(preview, bytes) else Path(preview),
                               max_bytes=MAX_PREVIEW_BYTES, max_pixels=MAX_PREVIEW_PIXELS)
        else:
            image = preview
        image = image.convert("RGB")
        image.thumbnail((self.max_side, self.max_side))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=85)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def render_cards_html(cards: Sequence[Card], card_size: int, thumbs: ThumbnailCache, model_arch: str) -> str:
    """The grid. Each card: preview (or placeholder), name, type and arch badges, a red mark when it
    does not fit the loaded model, an 'i' button for details; `data-lora` holds the name."""
    if not cards:
        return "<div class='lora-cards-empty'>No LoRAs match. Put files in models/Lora and press Refresh.</div>"
    model_label = core.arch_label(model_arch)
    parts = [f"<div class='lora-cards' style='--card: {int(card_size)}px'>"]
    for card in cards:
        classes = (["lora-card"] + (["active"] if card.active else []) + ([] if card.fits else ["misfit"])
                   + (["broken"] if card.broken else []))
        name = html.escape(card.name, quote=True)
        key = html.escape(card.key, quote=True)
        misfit = ("" if card.fits else
                  f"<span class='lora-badge misfit' title='made for {card.arch_label}, the loaded model is "
                  f"{model_label}'>not for {html.escape(model_label)}</span>")
        if card.broken:
            misfit += (f"<span class='lora-badge misfit' title='{html.escape(card.broken, quote=True)}'>"
                       "broken</span>")
        parts.append(
            f"<div class='{' '.join(classes)}' data-lora='{key}' title='{key}'>"
            f"<img src='{thumbs.data_uri(card.preview)}' alt='{name}'>"
            f"<div class='lora-badges'><span class='lora-badge type'>{html.escape(card.type_label)}</span>"
            f"<span class='lora-badge arch'>{html.escape(card.arch_label)}</span>{misfit}</div>"
            f"<button class='lora-card-info' title='details'>i</button>"
            f"<div class='lora-card-name'>{name}</div></div>"
        )
    parts.append("</div>")
    return "".join(parts)


def active_card_keys(prompt: str, resolve: Callable[[str], Any | None]) -> set[str]:
    """Card keys of the LoRAs whose tag (by stem, alias or relative path) is in the prompt."""
    _, tags, _ = prompt_tags.extract_lora_tags(prompt or "")
    keys = set()
    for tag in tags:
        entry = resolve(tag.name)
        if entry is not None:
            keys.add(core.card_key(entry))
    return keys


def toggle_lora(prompt: str, entry: Any, tag_name: str, default_weight: float,
                resolve: Callable[[str], Any | None]) -> str:
    """A card click: add `<lora:tag_name:preferred weight>` + activation text, or, when a tag for this
    LoRA (written by stem, alias or path) is already there, remove the tag and the activation text."""
    prompt = prompt or ""
    act = core.activation_text(entry)
    _, tags, _ = prompt_tags.extract_lora_tags(prompt)
    present = [t.name for t in tags if t.name == tag_name or core.same_entry(resolve(t.name), entry)]
    if present:
        for written in present:
            prompt = prompt_tags.remove_lora(prompt, written, act)
        return prompt
    return prompt_tags.add_lora(prompt, tag_name, core.preferred_weight(entry, default_weight), act)


# -- details panel ---------------------------------------------------------------------------------

def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def details_markdown(entry: Any, model_arch: str) -> str:
    """File info and hashes as a small markdown table."""
    import datetime as dt

    mtime = float(getattr(entry, "mtime", 0) or 0)
    rows = [
        ("Name", core.entry_name(entry)),
        ("Alias", getattr(entry, "alias", "") or ""),
        ("File", str(getattr(entry, "path", ""))),
        ("Folder", getattr(entry, "rel_folder", "") or "(top folder)"),
        ("Size", _human_size(int(getattr(entry, "size", 0) or 0))),
        ("Modified", dt.datetime.fromtimestamp(mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if mtime else ""),
        ("Type", core.network_type_label(getattr(entry, "network_type", None))),
        ("Rank", str(getattr(entry, "rank", "") or "")),
        ("Architecture", core.arch_label(core.entry_arch(entry))
         + ("" if core.fits_model(core.entry_arch(entry), model_arch)
            else f" — does not fit the loaded {core.arch_label(model_arch)} model")),
        ("Short hash (infotext)", core.entry_short_hash(entry)),
        ("SHA256", core.entry_sha256(entry)),
    ]
    if core.is_broken(entry):
        rows.append(("Problem", core.entry_error(entry)))
    for warning in list(getattr(entry, "warnings", None) or []):
        rows.append(("Warning", str(warning)))
    lines = ["| Field | Value |", "|---|---|"]
    for key, value in rows:
        text = str(value).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| **{key}** | `{text}` |" if key in ("File", "SHA256", "Short hash (infotext)") and text
                     else f"| **{key}** | {text} |")
    return "\n".join(lines)


def metadata_rows(entry: Any, max_len: int = 300) -> list[list[str]]:
    """Kohya metadata as [key, value] rows, sorted by key; huge values (tag frequencies, cover
    images) are cut to `max_len` characters with their full length noted."""
    rows = []
    for key, value in sorted(core.entry_metadata(entry).items()):
        text = str(value)
        if len(text) > max_len:
            text = text[:max_len] + f"… ({len(text)} chars)"
        rows.append([str(key), text])
    return rows


def tag_chips_html(entry: Any, limit: int = 60) -> str:
    tags = core.training_tags(entry)[:limit]
    if not tags:
        return "<div class='lora-tag-chips-empty'>No training tags in this file's metadata.</div>"
    chips = "".join(
        f"<span class='lora-tag-chip' data-tag='{html.escape(tag, quote=True)}'>{html.escape(tag)} "
        f"<small>{count}</small></span>" for tag, count in tags)
    return f"<div class='lora-tag-chips'>{chips}</div>"


def add_to_activation_text(activation: str, tag: str) -> str:
    """Clicking a training-tag chip appends it to the activation text (once), comma-separated."""
    tag = (tag or "").strip()
    current = [t.strip() for t in (activation or "").split(",") if t.strip()]
    if not tag or tag in current:
        return activation or ""
    return ", ".join(current + [tag])


def editor_values(entry: Any) -> tuple[str, str, float, str, str, str]:
    """(description, activation text, preferred weight, negative text, sd version, notes)."""
    meta = core.entry_user_meta(entry)
    try:
        weight = float(meta.get("preferred weight", 0) or 0)
    except (TypeError, ValueError):
        weight = 0.0
    version = str(meta.get("sd version", "") or "Unknown")
    return (str(meta.get("description", "") or ""), str(meta.get("activation text", "") or ""), weight,
            str(meta.get("negative text", "") or ""), version if version in core.SD_VERSIONS else "Unknown",
            str(meta.get("notes", "") or ""))


def validated_user_meta(entry: Any, description: str, activation: str, weight: Any, negative: str,
                        sd_version: str, notes: str) -> dict[str, Any]:
    """The new `name.json` content: the entry's current user metadata (unknown keys kept) updated with
    the editor's fields. Raises ValueError with a plain message for a bad weight or sd version."""
    try:
        weight_value = float(weight if weight not in (None, "") else 0)
    except (TypeError, ValueError):
        raise ValueError(f"preferred weight {weight!r} is not a number") from None
    if not math.isfinite(weight_value) or abs(weight_value) > 10:
        raise ValueError(f"preferred weight {weight_value} is out of range (-10 … 10; 0 = use the default)")
    if sd_version not in core.SD_VERSIONS:
        raise ValueError(f"sd version {sd_version!r} is not one of {', '.join(core.SD_VERSIONS)}")
    meta = core.entry_user_meta(entry)
    meta.update({
        "description": description or "",
        "activation text": activation or "",
        "preferred weight": weight_value,
        "negative text": negative or "",
        "sd version": sd_version,
        "notes": notes or "",
    })
    return meta


def preview_path_for(entry: Any) -> Path:
    """A1111 writes a replaced preview as `name.preview.png` next to the LoRA file."""
    path = Path(str(getattr(entry, "path")))
    return path.with_name(path.stem + ".preview.png")


def save_image_as_preview(entry: Any, image_path: str | Path | None) -> Path:
    """Copy the last generated image (its infotext kept) to `name.preview.png`. Raises ValueError."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    if not image_path:
        raise ValueError("no image generated yet in this session: press Generate first")
    source = Path(str(image_path))
    if not source.is_file():
        raise ValueError(f"the last image {source} is gone")
    target = preview_path_for(entry)
    with Image.open(source) as image:
        info = PngInfo()
        text = image.info.get("parameters")
        if text:
            info.add_text("parameters", str(text))
        tmp = target.with_name(target.name + ".tmp")
        image.save(tmp, format="PNG", pnginfo=info)
    tmp.replace(target)  # atomic: a half-written preview never shows
    return target


# -- gradio wiring ---------------------------------------------------------------------------------

@dataclass
class LoraBrowser:
    search: gr.Textbox
    sort: gr.Dropdown
    folder: gr.Dropdown
    refresh: gr.Button
    cards: gr.HTML
    details: gr.Column
    selected: gr.State
    info: gr.Markdown
    metadata: gr.Dataframe
    chips: gr.HTML
    description: gr.Textbox
    activation: gr.Textbox
    weight: gr.Number
    negative: gr.Textbox
    sd_version: gr.Dropdown
    notes: gr.Textbox
    save: gr.Button
    use_preview: gr.Button
    close: gr.Button


class BrowserHandlers:
    """The pane's event handlers as plain methods over the AppContext (unit-tested without a browser)."""

    def __init__(self, ctx: Any, thumbs: ThumbnailCache | None = None) -> None:
        self.ctx = ctx
        self.thumbs = thumbs or ThumbnailCache()

    def resolve(self, name: str) -> Any | None:
        return core.find_entry(self.ctx, name)

    def grid(self, prompt: str, query: str, sort: str, folder: str) -> str:
        arch = core.current_arch(self.ctx)
        entries = core.library_entries(self.ctx)
        cards = build_cards(entries, arch, active_card_keys(prompt, self.resolve))
        return render_cards_html(filter_and_sort(cards, query, sort, folder),
                                 int(core.setting(self.ctx, "card_size")), self.thumbs, arch)

    def grid_on_prompt(self, prompt: str, query: str, sort: str, folder: str, shown_keys: list[str] | None):
        """While the prompt is typed, re-render the grid only when the set of active LoRAs changed.
        Returns (grid html or no-change update, active keys)."""
        keys = sorted(active_card_keys(prompt, self.resolve))
        if shown_keys is not None and keys == list(shown_keys):
            return gr.update(), keys
        return self.grid(prompt, query, sort, folder), keys

    def refresh(self, prompt: str, query: str, sort: str, folder: str):
        """Rescan the LoRA folders; returns (grid html, folder dropdown update)."""
        try:
            report = core.refresh_library(self.ctx)
        except Exception as exc:  # a broken file must not take the pane down
            notify.warn(f"Refreshing the LoRA library failed: {exc}")
            report = None
        for message in list(getattr(report, "warnings", None) or getattr(report, "errors", None) or []):
            notify.warn(str(message))
        choices = folder_choices(core.library_entries(self.ctx))
        folder = folder if folder in choices else ALL_FOLDERS
        return self.grid(prompt, query, sort, folder), gr.update(choices=choices, value=folder)

    def card_click(self, lora: str, action: str, prompt: str):
        """-> (prompt, selected name). 'toggle' adds/removes the tag; 'details' opens the panel."""
        entry = self.resolve(lora) if lora else None
        if entry is None:
            notify.warn(f"LoRA '{lora}' is no longer in the library; press Refresh.")
            return prompt, None
        if action == "details":
            return prompt, core.card_key(entry)
        if core.is_broken(entry):
            notify.warn(f"'{core.entry_name(entry)}' cannot be used: {core.entry_error(entry)}")
            return prompt, None
        if not core.fits_model(core.entry_arch(entry), core.current_arch(self.ctx)):
            notify.warn(f"'{core.entry_name(entry)}' is a {core.arch_label(core.entry_arch(entry))} LoRA; "
                        f"the loaded model is {core.arch_label(core.current_arch(self.ctx))}. "
                        "It will be skipped when generating.")
        default_weight = float(core.setting(self.ctx, "default_lora_weight"))
        try:
            return toggle_lora(prompt, entry, core.prompt_name(self.ctx, entry), default_weight, self.resolve), None
        except ValueError as exc:  # PromptSyntaxError: a name that cannot be written in a tag
            notify.warn(str(exc))
            return prompt, None

    def show_details(self, name: str | None):
        """-> (panel visibility, info md, metadata rows, chips html, 6 editor values)."""
        entry = self.resolve(name) if name else None
        if entry is None:
            return (gr.update(visible=False), "", [], "", "", "", 0.0, "", "Unknown", "")
        arch = core.current_arch(self.ctx)
        return (gr.update(visible=True), f"### {html.escape(core.entry_name(entry))}\n\n"
                + details_markdown(entry, arch), metadata_rows(entry), tag_chips_html(entry),
                *editor_values(entry))

    def save_meta(self, name: str | None, description: str, activation: str, weight: Any, negative: str,
                  sd_version: str, notes: str) -> None:
        entry = self.resolve(name) if name else None
        if entry is None:
            notify.warn("No LoRA selected: open one with its 'i' button first.")
            return
        try:
            meta = validated_user_meta(entry, description, activation, weight, negative, sd_version, notes)
            core.save_user_meta(self.ctx, entry, meta)
        except (ValueError, OSError, RuntimeError) as exc:
            notify.warn(f"Not saved: {exc}")
            return
        notify.info(f"Saved {core.entry_name(entry)}.json")

    def use_last_image(self, name: str | None, last_image: str | None) -> None:
        entry = self.resolve(name) if name else None
        if entry is None:
            notify.warn("No LoRA selected: open one with its 'i' button first.")
            return
        try:
            target = save_image_as_preview(entry, last_image)
        except (ValueError, OSError) as exc:
            notify.warn(f"Preview not changed: {exc}")
            return
        try:
            core.refresh_library(self.ctx)
        except Exception as exc:
            notify.warn(f"Preview saved, but refreshing the library failed: {exc}")
        notify.info(f"Preview saved to {target.name}")


def build_lora_browser(ctx: Any, prompt: gr.Textbox, last_image: gr.State,
                       handlers: BrowserHandlers | None = None) -> LoraBrowser:
    """The pane (call inside a Blocks context, under the prompt). Wires card clicks to `prompt`."""
    h = handlers or BrowserHandlers(ctx)
    entries = core.library_entries(ctx)
    with gr.Row(elem_id="lora_browser_toolbar"):
        search = gr.Textbox(label="Search LoRAs", placeholder="name, folder, tag, description…",
                            elem_id="lora_search", scale=4)
        sort = gr.Dropdown(list(SORT_OPTIONS), value=SORT_OPTIONS[0], label="Sort", elem_id="lora_sort", scale=1)
        folder = gr.Dropdown(folder_choices(entries), value=ALL_FOLDERS, label="Folder", elem_id="lora_folder",
                             scale=1)
        refresh = gr.Button("Refresh", elem_id="lora_refresh", scale=0, min_width=90, size="sm")
    cards = gr.HTML(h.grid("", "", SORT_OPTIONS[0], ALL_FOLDERS), css_template=CARDS_CSS, js_on_load=CARDS_JS,
                    elem_id="lora_cards", max_height=520)
    selected = gr.State(None)
    with gr.Column(visible=False, elem_id="lora_details") as details:
        with gr.Row():
            gr.Markdown("#### LoRA details")
            close = gr.Button("Close", size="sm", scale=0, elem_id="lora_details_close")
        with gr.Row():
            with gr.Column(scale=1):
                info = gr.Markdown(elem_id="lora_details_info")
                chips = gr.HTML(css_template=CARDS_CSS, js_on_load=CHIPS_JS, elem_id="lora_tag_chips")
            with gr.Column(scale=1):
                description = gr.Textbox(label="Description", lines=2, elem_id="lora_meta_description")
                activation = gr.Textbox(label="Activation text", elem_id="lora_meta_activation")
                weight = gr.Number(label="Preferred weight (0 = default)", value=0.0, step=0.05,
                                   elem_id="lora_meta_weight")
                negative = gr.Textbox(label="Negative text", elem_id="lora_meta_negative")
                sd_version = gr.Dropdown(list(core.SD_VERSIONS), value="Unknown", label="SD version",
                                         elem_id="lora_meta_sd_version")
                notes = gr.Textbox(label="Notes", lines=3, elem_id="lora_meta_notes")
                with gr.Row():
                    save = gr.Button("Save", variant="primary", elem_id="lora_meta_save")
                    use_preview = gr.Button("Use last image as preview", elem_id="lora_use_preview")
        metadata = gr.Dataframe(headers=["key", "value"], label="Metadata", interactive=False, wrap=True,
                                elem_id="lora_metadata")

    browser = LoraBrowser(search, sort, folder, refresh, cards, details, selected, info, metadata, chips,
                          description, activation, weight, negative, sd_version, notes, save, use_preview, close)
    filters = [prompt, search, sort, folder]
    detail_outputs = [details, info, metadata, chips, description, activation, weight, negative, sd_version, notes]

    def on_card(prompt_text: str, evt: gr.EventData):
        data = getattr(evt, "_data", None) or {}
        return h.card_click(str(data.get("lora", "")), str(data.get("action", "toggle")), prompt_text)

    cards.click(on_card, inputs=[prompt], outputs=[prompt, selected]).then(
        lambda name: h.show_details(name) if name else tuple(gr.update() for _ in detail_outputs),
        inputs=[selected], outputs=detail_outputs)
    # The grid follows the prompt (active marks, re-rendered only when they change) and the filters.
    shown_keys = gr.State(None)
    prompt.change(h.grid_on_prompt, inputs=filters + [shown_keys], outputs=[cards, shown_keys], show_progress="hidden")
    for trigger in (search.change, sort.change, folder.change):
        trigger(h.grid, inputs=filters, outputs=[cards], show_progress="hidden")
    refresh.click(h.refresh, inputs=filters, outputs=[cards, folder])

    def on_chip(activation_text: str, evt: gr.EventData):
        data = getattr(evt, "_data", None) or {}
        return add_to_activation_text(activation_text, str(data.get("tag", "")))

    chips.click(on_chip, inputs=[activation], outputs=[activation])
    save.click(h.save_meta, inputs=[selected, description, activation, weight, negative, sd_version, notes]).then(
        h.grid, inputs=filters, outputs=[cards])
    use_preview.click(h.use_last_image, inputs=[selected, last_image]).then(h.grid, inputs=filters, outputs=[cards])
    close.click(lambda: (None, gr.update(visible=False)), outputs=[selected, details])
    return browser
