"""A1111 extra-network tags in prompts: `<lora:NAME:TE:UNET:DYN>`, named `te= unet= dyn= lbw= start=
stop=`, and `<lyco:...>` (same syntax). No torch, no gradio.

Parsing follows A1111's `extra_networks.parse_prompt`: a tag is `<type:args>`, args split at ':'; an arg
with '=' is named, others are positional (NAME, TE, UNET, DYN). Tags are removed from the text that goes
to the text encoder. Tags of other types (`<hypernet:...>`) are removed too, as A1111 does, with a
warning that they are not supported. A malformed tag is removed with a warning naming it; nothing here
ever raises on user text.

Rewriting helpers keep the rest of the prompt byte-for-byte: `set_lora_weight` (weight slider),
`add_lora` / `remove_lora` (clicking a LoRA card inserts or removes the tag plus its activation text).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = [
    "LoraTag",
    "PromptSyntaxError",
    "extract_lora_tags",
    "parse_lora_tag",
    "format_weight",
    "set_lora_weight",
    "add_lora",
    "remove_lora",
    "replace_tag_name",
]

LORA_KINDS = ("lora", "lyco")
NAMED_KEYS = ("te", "unet", "dyn", "lbw", "start", "stop")

# A1111: re.compile(r"<(\w+):([^>]+)>"). We also match an empty argument list so that `<lora:>` is
# reported instead of silently going to the text encoder, and stop at '<' so that an unclosed
# `<lora:x` does not swallow the next tag.
_TAG_RE = re.compile(r"<(\w+):([^<>]*)>")
# An opening `<lora:` left after all tags are removed never closes: reported, left in the text.
_UNCLOSED_RE = re.compile(r"<(?:lora|lyco):[^<>]{0,40}", re.IGNORECASE)


class PromptSyntaxError(ValueError):
    """A single `<lora:...>` tag is malformed; the message names the tag and the problem."""


@dataclass(frozen=True)
class LoraTag:
    """One `<lora:...>` / `<lyco:...>` tag as written in a prompt.

    `unet` None means "same as te"; `start`/`stop` are sampling step numbers; `span` is the tag's
    (start, end) character span in the original prompt; `text` is the tag exactly as written.
    """

    name: str
    te: float = 1.0
    unet: float | None = None
    dyn: int | None = None
    lbw: str | None = None
    start: int | None = None
    stop: int | None = None
    kind: str = "lora"
    span: tuple[int, int] = (0, 0)
    text: str = ""

    @property
    def unet_weight(self) -> float:
        """The UNet multiplier actually used (A1111: UNET defaults to TE)."""
        return self.te if self.unet is None else self.unet


def _parse_float(value: str, what: str, tag_text: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise PromptSyntaxError(f"{tag_text}: {what} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise PromptSyntaxError(f"{tag_text}: {what} {value!r} is not a finite number")
    return number


def _parse_int(value: str, what: str, tag_text: str, minimum: int) -> int:
    text = value.strip()
    try:
        number = int(text)
    except ValueError:
        # A1111 writes e.g. "dyn=8"; accept "8.0" but not "8.5".
        try:
            as_float = float(text)
        except ValueError:
            raise PromptSyntaxError(f"{tag_text}: {what} {value!r} is not a whole number") from None
        if not math.isfinite(as_float) or as_float != int(as_float):
            raise PromptSyntaxError(f"{tag_text}: {what} {value!r} is not a whole number") from None
        number = int(as_float)
    if number < minimum:
        raise PromptSyntaxError(f"{tag_text}: {what} must be at least {minimum}, got {number}")
    return number


def parse_lora_tag(kind: str, args: str, span: tuple[int, int] = (0, 0), text: str | None = None) -> LoraTag:
    """Parse the argument string of one tag (`args` = everything between `<lora:` and `>`).

    Raises PromptSyntaxError naming the tag for: empty name, non-numeric weights, non-integer or
    non-positive dyn, negative start/stop, stop not after start, unknown or repeated named keys,
    more than four positional values, empty lbw.
    """
    tag_text = text if text is not None else f"<{kind}:{args}>"
    items = args.split(":")
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in items:
        if "=" in item:
            key, _, value = item.partition("=")
            key = key.strip().lower()
            if key not in NAMED_KEYS:
                raise PromptSyntaxError(
                    f"{tag_text}: unknown option {key!r} (known: {', '.join(NAMED_KEYS)})")
            if key in named:
                raise PromptSyntaxError(f"{tag_text}: option {key!r} is given twice")
            named[key] = value
        else:
            if named and item.strip() == "":
                continue  # a trailing ':' after named options, e.g. "<lora:x:te=1:>"
            positional.append(item)
    if not positional or positional[0].strip() == "":
        raise PromptSyntaxError(f"{tag_text}: the LoRA name is missing")
    if len(positional) > 4:
        raise PromptSyntaxError(
            f"{tag_text}: too many values ({len(positional)}); expected NAME:TE:UNET:DYN at most")
    name = positional[0].strip()
    te = _parse_float(positional[1], "weight", tag_text) if len(positional) > 1 else 1.0
    if "te" in named:
        te = _parse_float(named["te"], "te weight", tag_text)
    unet = _parse_float(positional[2], "unet weight", tag_text) if len(positional) > 2 else None
    if "unet" in named:
        unet = _parse_float(named["unet"], "unet weight", tag_text)
    dyn = _parse_int(positional[3], "dyn", tag_text, 1) if len(positional) > 3 else None
    if "dyn" in named:
        dyn = _parse_int(named["dyn"], "dyn", tag_text, 1)
    lbw = None
    if "lbw" in named:
        lbw = named["lbw"].strip()
        if not lbw:
            raise PromptSyntaxError(f"{tag_text}: lbw is empty (give a preset name or comma-separated ratios)")
    start = _parse_int(named["start"], "start", tag_text, 0) if "start" in named else None
    stop = _parse_int(named["stop"], "stop", tag_text, 0) if "stop" in named else None
    if start is not None and stop is not None and stop <= start:
        raise PromptSyntaxError(f"{tag_text}: stop ({stop}) must be after start ({start})")
    return LoraTag(name=name, te=te, unet=unet, dyn=dyn, lbw=lbw, start=start, stop=stop,
                   kind=kind.lower(), span=span, text=tag_text)


def extract_lora_tags(prompt: str) -> tuple[str, list[LoraTag], list[str]]:
    """Split a prompt into (text without tags, LoRA tags in order, warnings). Never raises.

    Every `<word:...>` tag is removed from the text (as A1111 does). `<lora:>` and `<lyco:>` tags
    become LoraTag; malformed ones and other tag types are dropped with a warning naming the tag.
    A name given twice keeps its first tag (later ones are dropped with a warning).
    """
    if not isinstance(prompt, str):
        return "", [], [f"prompt is {type(prompt).__name__}, not text; ignored"]
    tags: list[LoraTag] = []
    warnings: list[str] = []
    seen: dict[str, LoraTag] = {}
    pieces: list[str] = []
    last = 0
    for match in _TAG_RE.finditer(prompt):
        pieces.append(prompt[last:match.start()])
        last = match.end()
        kind, args = match.group(1), match.group(2)
        tag_text = match.group(0)
        if kind.lower() not in LORA_KINDS:
            warnings.append(f"{tag_text}: '{kind}' extra networks are not supported; tag ignored")
            continue
        try:
            tag = parse_lora_tag(kind, args, span=(match.start(), match.end()), text=tag_text)
        except PromptSyntaxError as exc:
            warnings.append(f"{exc}; tag ignored")
            continue
        if tag.name in seen:
            warnings.append(f"{tag_text}: '{tag.name}' is already used by {seen[tag.name].text}; "
                            "this tag is ignored")
            continue
        seen[tag.name] = tag
        tags.append(tag)
    pieces.append(prompt[last:])
    text = "".join(pieces)
    for unclosed in _UNCLOSED_RE.finditer(text):
        warnings.append(f"{unclosed.group(0)!r}: the tag is not closed with '>'; left as text")
    return text, tags, warnings


def format_weight(weight: float) -> str:
    """A weight as A1111 users write it: 1 -> "1", 0.8 -> "0.8", 0.75 -> "0.75" (at most 4 decimals)."""
    text = f"{float(weight):.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _tags_named(prompt: str, name: str) -> list[LoraTag]:
    found: list[LoraTag] = []
    for match in _TAG_RE.finditer(prompt):
        if match.group(1).lower() not in LORA_KINDS:
            continue
        try:
            tag = parse_lora_tag(match.group(1), match.group(2), (match.start(), match.end()), match.group(0))
        except PromptSyntaxError:
            continue
        if tag.name == name:
            found.append(tag)
    return found


def set_lora_weight(prompt: str, name: str, weight: float) -> str:
    """Set the (TE) weight of the tag for `name`, or append `<lora:name:weight>` if there is none.

    Only the tag's weight field changes; its kind, UNET/DYN values, named options and the rest of the
    prompt are kept as written. An explicit `te=` option is rewritten in place.
    """
    if not math.isfinite(float(weight)):
        raise PromptSyntaxError(f"weight {weight!r} for '{name}' is not a finite number")
    found = _tags_named(prompt, name)
    if not found:
        return add_lora(prompt, name, weight)
    tag = found[0]
    kind_part, args = tag.text[1:-1].split(":", 1)
    items = args.split(":")
    new_weight = format_weight(weight)
    te_named = [i for i, item in enumerate(items) if item.partition("=")[0].strip().lower() == "te" and "=" in item]
    if te_named:
        items[te_named[0]] = "te=" + new_weight
    else:
        positional_idx = [i for i, item in enumerate(items) if "=" not in item]
        if len(positional_idx) >= 2:
            items[positional_idx[1]] = new_weight
        else:
            items.insert(positional_idx[0] + 1, new_weight)
    new_text = f"<{kind_part}:{':'.join(items)}>"
    start, end = tag.span
    return prompt[:start] + new_text + prompt[end:]


def add_lora(prompt: str, name: str, weight: float = 1.0, activation_text: str = "") -> str:
    """Append `<lora:name:weight>` (plus " activation text" if given), as clicking an A1111 card does.

    A separating space is added when the prompt does not already end in whitespace.
    """
    if not name or any(ch in name for ch in ":<>"):
        raise PromptSyntaxError(f"cannot write a tag for the name {name!r}: names may not contain ':', '<' or '>'")
    addition = f"<lora:{name}:{format_weight(weight)}>"
    if activation_text.strip():
        addition += " " + activation_text.strip()
    if prompt and not prompt[-1].isspace():
        return prompt + " " + addition
    return prompt + addition


def _remove_span(prompt: str, start: int, end: int) -> str:
    """Remove prompt[start:end] and the one space that joined it to the rest (what add_lora put there)."""
    before, after = prompt[:start], prompt[end:]
    if before.endswith(" ") and (after == "" or after[0].isspace() or after[0] == ","):
        before = before[:-1]
    elif before == "" and after.startswith(" "):
        after = after[1:]
    return before + after


def remove_lora(prompt: str, name: str, activation_text: str = "") -> str:
    """Remove every tag for `name` and (once) the activation text that `add_lora` inserted with it."""
    for tag in sorted(_tags_named(prompt, name), key=lambda t: t.span[0], reverse=True):
        prompt = _remove_span(prompt, *tag.span)
    activation = activation_text.strip()
    if activation:
        index = prompt.find(activation)
        if index >= 0:
            prompt = _remove_span(prompt, index, index + len(activation))
    return prompt


def replace_tag_name(prompt: str, tag: LoraTag, new_name: str) -> str:
    """Rewrite the NAME of one tag (located by its span), keeping everything else as written."""
    start, end = tag.span
    written = prompt[start:end]
    match = _TAG_RE.fullmatch(written)
    if match is None:
        return prompt
    items = match.group(2).split(":")
    for i, item in enumerate(items):
        if "=" not in item:
            leading = item[: len(item) - len(item.lstrip())]
            trailing = item[len(item.rstrip()):]
            items[i] = leading + new_name + trailing
            break
    return prompt[:start] + f"<{match.group(1)}:{':'.join(items)}>" + prompt[end:]
