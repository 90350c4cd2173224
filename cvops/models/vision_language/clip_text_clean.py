"""The text clean-up in front of CLIP's tokenizer, without the ``ftfy`` dependency.

open_clip's default (``clean="lower"``) is: ``ftfy.fix_text``, ``html.unescape`` twice, strip,
collapse whitespace, lower-case. :func:`clean_text` does the same, with our own version of the
``ftfy.fix_text`` steps that are plain character rules (ftfy 6's defaults, applied until the
text stops changing):

* HTML entities ending in ``;`` are decoded, unless the line contains ``<`` (real HTML);
* C1 control characters (U+0080-U+009F) are read as Windows-1252 (U+0085 -> "...");
* Latin ligatures are split (``ﬁ`` -> ``fi``), full-width forms and the ideographic space
  get their standard width (``Ａ`` -> ``A``);
* curly quotes become straight quotes; surrogate pairs are joined, lone ones become U+FFFD;
* ANSI terminal escapes and invisible control characters are removed; NFC normalisation.

Not done: ftfy's mojibake repair (``fix_encoding``: re-decoding text that was decoded with the
wrong codec, e.g. ``"cafÃ©"`` -> ``"café"``), which needs ftfy's statistical tables, and its
all-caps HTML entities (``&EACUTE;``). Text without mojibake tokenizes as with open_clip.
Line-break normalisation is skipped because whitespace is collapsed afterwards anyway.
"""

import html
import html.entities
import re
import unicodedata

_ENTITY = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_ANSI_ESCAPE = re.compile("\033\\[((?:\\d|;)*)([a-zA-Z])")
_SINGLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]")
_DOUBLE_QUOTES = re.compile("[\u201c-\u201f]")
_C1_CONTROL = re.compile("[\x80-\x9f]")
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")

_LIGATURES = str.maketrans(
    {
        "Ĳ": "IJ",
        "ĳ": "ij",
        "ŉ": "ʼn",
        "Ǳ": "DZ",
        "ǲ": "Dz",
        "ǳ": "dz",
        "Ǆ": "DŽ",
        "ǅ": "Dž",
        "ǆ": "dž",
        "Ǉ": "LJ",
        "ǈ": "Lj",
        "ǉ": "lj",
        "Ǌ": "NJ",
        "ǋ": "Nj",
        "ǌ": "nj",
        "ﬀ": "ff",
        "ﬁ": "fi",
        "ﬂ": "fl",
        "ﬃ": "ffi",
        "ﬄ": "ffl",
        "ﬅ": "ſt",
        "ﬆ": "st",
    }
)


def _width_table():
    table = {0x3000: " "}  # the ideographic space is a full-width space
    for cp in range(0xFF01, 0xFFF0):  # the Halfwidth and Fullwidth Forms block
        standard = unicodedata.normalize("NFKC", chr(cp))
        if standard != chr(cp):
            table[cp] = standard
    return table


_WIDTH = str.maketrans(_width_table())
# invisible controls (the whitespace ones \t \n \f \r are kept)
_CONTROLS = dict.fromkeys(
    [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F]
    + [*range(0x206A, 0x2070), 0xFEFF, *range(0xFFF9, 0xFFFD)]
)


def _decode_entity(match: "re.Match") -> str:
    entity = match.group(0)
    if entity.startswith("&#"):
        decoded = html.unescape(entity)
        return decoded if ";" not in decoded else entity  # only whole references
    return html.entities.html5.get(entity[1:], entity)


def _c1_as_cp1252(match: "re.Match") -> str:
    try:
        return match.group(0).encode("latin-1").decode("cp1252")
    except UnicodeDecodeError:  # the 5 bytes cp1252 leaves undefined stay as they are
        return match.group(0)


def _join_surrogates(match: "re.Match") -> str:
    high, low = (ord(c) for c in match.group(0))
    return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))


def _fix_line(text: str) -> str:
    decode_html = "<" not in text
    while True:
        before = text
        if decode_html:
            text = _ENTITY.sub(_decode_entity, text)
        text = _C1_CONTROL.sub(_c1_as_cp1252, text)
        text = text.translate(_LIGATURES).translate(_WIDTH)
        text = _SINGLE_QUOTES.sub("'", _DOUBLE_QUOTES.sub('"', text))
        text = _SURROGATE.sub("\ufffd", _SURROGATE_PAIR.sub(_join_surrogates, text))
        text = _ANSI_ESCAPE.sub("", text).translate(_CONTROLS)
        text = unicodedata.normalize("NFC", text)
        if text == before:
            return text


def fix_text(text: str) -> str:
    """The character-level fixes of ``ftfy.fix_text`` listed in the module docstring (line by
    line, as ftfy does)."""
    return "\n".join(_fix_line(line) for line in text.split("\n"))


def clean_text(text: str) -> str:
    """What CLIP's tokenizer sees: fixed, HTML-unescaped, whitespace collapsed, lower-cased."""
    if not isinstance(text, str):
        raise TypeError("text must be a str, got %s" % type(text).__name__)
    text = html.unescape(html.unescape(fix_text(text))).strip()
    return " ".join(text.split()).lower()
