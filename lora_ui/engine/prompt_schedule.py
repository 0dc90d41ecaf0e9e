"""A1111 prompt editing, alternation and composable AND (reference §6), pure Python (no torch).

Syntax (inside the prompt; everything else is plain text and is kept verbatim, emphasis included):
    [from:to:when]   `from` up to step `when`, then `to`
    [to:when]        nothing, then `to`
    [from::when]     `from`, then nothing
    [a|b|c]          alternation: a at step 1, b at step 2, c at step 3, a at step 4, ...
`when` is a number: with a "." it is a fraction of the steps (floor(when * steps)), else a step
number; it is clamped to `steps`. Constructs nest. At the top level, brackets/parentheses/colons
that do not form a construct are literal text; inside a construct they must balance. A "|" outside
any alternation, or a trailing lone backslash, makes the prompt unparsable: then the whole prompt is
used as is for all steps (A1111 does the same). `\\[` etc. stay literal (kept with their backslash
for the emphasis parser). Parsing never raises.

`get_schedule(prompt, steps)` -> [(end_step, text), ...]: end steps are `steps` plus every `when`
that is >= 1 (plus every step 1..steps if there is an alternation), sorted; text is the prompt as
seen at that step (a step s uses `from` while s <= when). `steps` is the number the prompt is
scheduled over: A1111 doubles it for second-order samplers; the caller passes it already scaled.

The denoiser's call c (0-based count of CFG UNet evaluations) uses the first entry with c <= end
(`index_at_call`); a call past the last end falls back to entry 0, as A1111's lookup does.
So with 20 steps, [b:c:10] gives b for calls 0..10 and c for 11..19, and [x|y] gives x, x, y, x, y...

`split_and(prompt)` -> [(text, weight), ...]: composable diffusion. The prompt is split on the word
AND; each part may end in ":weight" (default 1). Trailing whitespace is dropped, leading whitespace
is kept. Applied before scheduling, to the positive prompt only (the negative gets editing only).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"
_RE_WHEN = re.compile(rf"\s*({_NUMBER})\s*")
_RE_AND = re.compile(r"\bAND\b")
_RE_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.S)


@dataclass(frozen=True)
class _Sched:
    before: tuple
    after: tuple
    when: str           # the number as written


@dataclass(frozen=True)
class _Alt:
    options: tuple      # tuple of node tuples


class _Fail(Exception):
    """The text at this position does not form a construct."""


# ------------------------------------------------------------------------------------ parsing --

def _parse_seq(s: str, i: int, top: bool) -> tuple[list, int]:
    """A sequence of text and constructs from i; stops (nested only) at ] ) : | or the end."""
    nodes: list = []
    buf: list[str] = []

    def flush():
        if buf:
            nodes.append("".join(buf))
            buf.clear()

    while i < len(s):
        ch = s[i]
        if ch == "\\":
            if i + 1 >= len(s) or s[i + 1] == "\n":
                raise _Fail
            buf.append(s[i:i + 2])
            i += 2
        elif ch in "[(":
            try:
                construct, i = _parse_construct(s, i)
            except _Fail:
                if not top:
                    raise
                buf.append(ch)
                i += 1
            else:
                flush()
                nodes.extend(construct)
        elif ch in "]):" and top:
            buf.append(ch)
            i += 1
        elif ch in "]):|":
            if top:
                raise _Fail
            break
        else:
            buf.append(ch)
            i += 1
    flush()
    return nodes, i


def _parse_round(s: str, p1: list, j: int) -> tuple[list, int]:
    """After "(" p1, at s[j]: (x) or (x:y), kept as text for the emphasis parser."""
    if s[j] == ")":
        return ["(", *p1, ")"], j + 1
    if s[j] == ":":
        p2, k = _parse_seq(s, j + 1, top=False)
        if k < len(s) and s[k] == ")":
            return ["(", *p1, ":", *p2, ")"], k + 1
    raise _Fail


def _parse_square(s: str, p1: list, j: int) -> tuple[list, int]:
    """After "[" p1, at s[j]: [x] (emphasis text), [a|b...], [to:when] or [from:to:when]."""
    c = s[j]
    if c == "]":
        return ["[", *p1, "]"], j + 1
    if c == "|":
        options, k = [tuple(p1)], j
        while k < len(s) and s[k] == "|":
            p, k = _parse_seq(s, k + 1, top=False)
            options.append(tuple(p))
        if k < len(s) and s[k] == "]":
            return [_Alt(tuple(options))], k + 1
        raise _Fail
    if c == ":":
        m = _RE_WHEN.match(s, j + 1)
        if m and m.end() < len(s) and s[m.end()] == "]":
            return [_Sched((), tuple(p1), m.group(1))], m.end() + 1
        p2, k = _parse_seq(s, j + 1, top=False)
        if k < len(s) and s[k] == ":":
            m = _RE_WHEN.match(s, k + 1)
            if m and m.end() < len(s) and s[m.end()] == "]":
                return [_Sched(tuple(p1), tuple(p2), m.group(1))], m.end() + 1
    raise _Fail


def _parse_construct(s: str, i: int) -> tuple[list, int]:
    """A construct starting with "[" or "(" at i -> (nodes, end index); _Fail if it is not one."""
    p1, j = _parse_seq(s, i + 1, top=False)
    if j >= len(s):
        raise _Fail
    return (_parse_round if s[i] == "(" else _parse_square)(s, p1, j)


def parse(prompt: str) -> tuple | None:
    """Prompt -> node tuple (str | _Sched | _Alt), or None when A1111's grammar would reject it."""
    try:
        nodes, _ = _parse_seq(prompt, 0, top=True)
    except (_Fail, RecursionError):
        return None
    return tuple(nodes)


# --------------------------------------------------------------------------------- schedules --

def _when_step(when: str, steps: int, hires_base_steps: int | None, old_timelines: bool) -> int:
    """The step number of a `when`: fractions (with ".") scale by steps; clamped to steps."""
    v = float(when)
    if old_timelines:
        v = v * steps if v < 1 else v
    elif hires_base_steps is not None:
        v = (v - 1.0) * steps if "." in when else v - hires_base_steps
    elif "." in when:
        v = v * steps
    return int(max(-1.0, min(float(steps), v)))


def _walk(nodes: tuple):
    """Every _Sched / _Alt node, including those inside unused branches."""
    for node in nodes:
        if isinstance(node, _Sched):
            yield node
            yield from _walk(node.before)
            yield from _walk(node.after)
        elif isinstance(node, _Alt):
            yield node
            for option in node.options:
                yield from _walk(option)


def _render(nodes: tuple, step: int, whens: dict) -> str:
    """The prompt text at `step` (1-based)."""
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Sched):
            out.append(_render(node.before if step <= whens[node] else node.after, step, whens))
        else:
            out.append(_render(node.options[(step - 1) % len(node.options)], step, whens))
    return "".join(out)


def get_schedule(prompt: str, steps: int, *, hires_base_steps: int | None = None,
                 old_timelines: bool = False) -> list[tuple[int, str]]:
    """[(end_step, text), ...] for one prompt (see module docstring).

    hires_base_steps: for a hires pass scheduled over `steps` hires steps, integer `when`s count from
    the end of the first pass and fractions from 1.0 (A1111); old_timelines: A1111 < 1.6 rule
    (`when` < 1 is a fraction, else a step)."""
    tree = parse(prompt)
    if tree is None:
        return [(steps, prompt)]
    whens, ends = {}, {steps}
    for node in _walk(tree):
        if isinstance(node, _Alt):
            ends.update(range(1, steps + 1))
        else:
            whens[node] = _when_step(node.when, steps, hires_base_steps, old_timelines)
            if whens[node] >= 1:
                ends.add(whens[node])
    return [(end, _render(tree, end, whens)) for end in sorted(ends)]


def index_at_call(schedule: list[tuple[int, str]] | list[int], call: int) -> int:
    """Index of the entry the denoiser's 0-based call uses: the first with call <= end, else 0."""
    for index, entry in enumerate(schedule):
        end = entry[0] if isinstance(entry, tuple) else entry
        if call <= end:
            return index
    return 0


def text_at_call(schedule: list[tuple[int, str]], call: int) -> str:
    return schedule[index_at_call(schedule, call)][1]


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Composable AND: [(text, weight), ...] (see module docstring).

    >>> split_and("a cat AND a dog:0.5")
    [('a cat', 1.0), (' a dog', 0.5)]
    """
    parts = []
    for sub in _RE_AND.split(prompt):
        m = _RE_WEIGHT.match(sub)
        text, weight = (m.group(1), m.group(2)) if m else (sub, None)
        w = float(weight) if weight is not None else 1.0
        parts.append((text, w if math.isfinite(w) else 1.0))
    return parts
