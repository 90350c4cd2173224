"""cvops' CLIP tokenizer against open_clip's (the reference, which uses ftfy and the regex
module): the same ids on unicode, punctuation, HTML entities, odd whitespace, control
characters and long (truncated) text; the vocabulary layout; decode; bad input."""

import pytest
import torch

from cvops.models.vision_language import CLIPTokenizer, clean_text, get_tokenizer

open_clip = pytest.importorskip("open_clip")

STRINGS = [
    "a photo of a cat",
    "Hello, World!!! It's   John's dog; they're here.",
    "don't WON'T y'all'd I'M we've you'll",
    "Café naïve résumé — “quoted” ‘single’ «guillemets»",
    "日本語のテキスト 中文 한국어 Ελληνικά Русский العربية עברית हिन्दी",
    "emoji 🐱🐶👍🏽 and a family 👨‍👩‍👧",
    "ﬁnancial ﬂow Ĳssel ŉ",
    "ＦＵＬＬ　ｗｉｄｔｈ １２３ ｶﾀｶﾅ",
    "&amp; &lt;b&gt; &amp;amp; &quot;x&quot; &ldquo;hi&rdquo; &#8220;n&#8221; &notit;",
    "<p>keeps &amp; when html</p>",
    "tabs\tand\nnew\r\nlines x\u2028y\x85z",
    "numbers 1234567 3.14 1e-5 ½ ² Ⅻ",
    "C1 \x93quoted\x94 \x80 euro",
    "ansi \033[31mred\033[0m ctrl\x07\x01 bom\ufeff",
    "e\u0301 combining accents (NFC)",
    "<start_of_text> x <END_OF_TEXT>",
    "mixed-CASE_snake_case camelCase http://x.com/a?b=1&c=2 #tag @user",
    "",
    "   ",
    " ".join("word%d" % i for i in range(100)),  # truncated: 77 tokens, EOT last
    "a" * 300,
]


@pytest.fixture(scope="module")
def ours():
    return get_tokenizer()


def test_same_ids_as_open_clip(ours):
    ref = open_clip.get_tokenizer("ViT-B-32")
    expected = ref(STRINGS)
    actual = ours(STRINGS)
    assert actual.dtype == torch.long and actual.shape == (len(STRINGS), 77)
    for text, a, e in zip(STRINGS, actual, expected):
        assert a.tolist() == e.tolist(), repr(text)


def test_truncation_keeps_the_end_token(ours):
    long = ours(" ".join("word%d" % i for i in range(100)))[0]
    assert long[0] == ours.sot_token_id == 49406
    assert long[-1] == ours.eot_token_id == 49407
    assert (long != 0).all()
    short = ours("a cat", context_length=5)
    assert short.tolist() == [[49406, 320, 2368, 49407, 0]]
    assert ours(["x " * 10], context_length=4)[0, -1] == 49407


def test_vocabulary_and_decode(ours):
    assert ours.vocab_size == 49408
    assert ours.encoder["a</w>"] == 320 and ours.encoder["!"] == 0
    tokens = ours(["Hello, World! It's a café."])[0]
    assert ours.decode(tokens) == "hello , world ! it 's a café ."


def test_clean_text():
    assert clean_text("  A&amp;B\n\t“Hi”  ﬁ ") == 'a&b "hi" fi'
    with pytest.raises(TypeError, match="text must be a str"):
        clean_text(3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="context_length"):
        CLIPTokenizer(context_length=1)
    with pytest.raises(FileNotFoundError):
        CLIPTokenizer(bpe_path="/nonexistent/bpe.txt.gz")
