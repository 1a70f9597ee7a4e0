"""Writes the data files that `blip3_eval::metrics::okvqa` embeds (run from anywhere).

    NLTK_DATA=/path/to/nltk_data python make_data.py

Needs nltk 3.8.1 and, under $NLTK_DATA, the NLTK 3.8.1 resources that OpenFlamingo's OK-VQA
stemmer loads: taggers/averaged_perceptron_tagger/averaged_perceptron_tagger.pickle,
tokenizers/punkt/english.pickle and corpora/wordnet/ (WordNet 3.0: index.verb, verb.exc).
Every file is gzip text (mtime 0, so the output is reproducible), one record per line, fields
separated by tabs:

* tagger.txt.gz: `classes<TAB>n` then n tags; `tagdict<TAB>n` then n `word<TAB>tag`;
  `weights<TAB>n` then n `feature<TAB>tag=milli,tag=milli,...` where milli is the weight times
  1000 (every weight of the model is a multiple of 0.001: it was saved with round(w, 3)),
  features and weights in the pickle's order.
* punkt_english.txt.gz: `abbrev<TAB>n`, `colloc<TAB>n` (`a<TAB>b`), `starter<TAB>n`,
  `ortho<TAB>n` (`type<TAB>flags`), each set sorted.
* wordnet_verbs.txt.gz: `exc<TAB>n` then verb.exc's lines as they are; `lemmas<TAB>n` then the
  lemmas of index.verb in file order.
* pyunicode.txt.gz: for each of Python's `str.isalnum() or '_'` (what `\\w` matches),
  `isdigit`, `isupper`, `islower`: `name<TAB>n` then n `first<TAB>last` code point ranges
  (hex), from the running Python's Unicode tables (`\\d` and `\\s` are in `metrics::mod`).
"""

import gzip
import os
import pickle
import sys

import nltk

OUT = os.path.dirname(os.path.abspath(__file__))


def write(name, lines):
    path = os.path.join(OUT, name)
    data = ("\n".join(lines) + "\n").encode("utf-8")
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
            f.write(data)
    print(f"{name}: {len(data)} bytes raw, {os.path.getsize(path)} gzipped")


def clean(s):
    assert "\t" not in s and "\n" not in s and "\r" not in s, repr(s)
    return s


def tagger():
    path = nltk.data.find("taggers/averaged_perceptron_tagger/averaged_perceptron_tagger.pickle")
    with open(path, "rb") as f:
        weights, tagdict, classes = pickle.load(f)
    lines = [f"classes\t{len(classes)}"] + sorted(clean(c) for c in classes)
    lines.append(f"tagdict\t{len(tagdict)}")
    lines += [f"{clean(w)}\t{clean(t)}" for w, t in tagdict.items()]
    lines.append(f"weights\t{len(weights)}")
    for feat, tags in weights.items():
        parts = []
        for tag, w in tags.items():
            milli = round(w * 1000)
            assert milli / 1000 == w, (feat, tag, w)
            assert tag in classes and "=" not in tag and "," not in tag
            parts.append(f"{tag}={milli}")
        lines.append(f"{clean(feat)}\t{','.join(parts)}")
    write("tagger.txt.gz", lines)


def punkt():
    tok = nltk.data.load("tokenizers/punkt/english.pickle")
    p = tok._params
    lines = [f"abbrev\t{len(p.abbrev_types)}"] + sorted(clean(a) for a in p.abbrev_types)
    lines.append(f"colloc\t{len(p.collocations)}")
    lines += sorted(f"{clean(a)}\t{clean(b)}" for a, b in p.collocations)
    lines.append(f"starter\t{len(p.sent_starters)}")
    lines += sorted(clean(s) for s in p.sent_starters)
    ortho = {k: v for k, v in p.ortho_context.items() if v}
    lines.append(f"ortho\t{len(ortho)}")
    lines += [f"{clean(k)}\t{v}" for k, v in sorted(ortho.items())]
    write("punkt_english.txt.gz", lines)


def wordnet():
    root = nltk.data.find("corpora/wordnet")
    with open(os.path.join(root, "verb.exc"), encoding="utf-8") as f:
        exc = [line.rstrip("\n") for line in f if line.split()]
    lemmas = []
    with open(os.path.join(root, "index.verb"), encoding="utf-8") as f:
        for line in f:
            if line.startswith(" "):
                continue
            fields = line.split()
            assert fields[1] == "v", line
            lemmas.append(clean(fields[0]))
    lines = [f"exc\t{len(exc)}"] + [clean(e) for e in exc]
    lines += [f"lemmas\t{len(lemmas)}"] + lemmas
    write("wordnet_verbs.txt.gz", lines)


def ranges(pred):
    out, start = [], None
    for cp in range(0x110000):
        ok = pred(chr(cp))
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            out.append((start, cp - 1))
            start = None
    if start is not None:
        out.append((start, 0x10FFFF))
    return out


def pyunicode():
    preds = [
        ("word", lambda c: c.isalnum() or c == "_"),
        ("digit", str.isdigit),
        ("upper", str.isupper),
        ("lower", str.islower),
    ]
    lines = []
    for name, pred in preds:
        rs = ranges(pred)
        lines.append(f"{name}\t{len(rs)}")
        lines += [f"{a:x}\t{b:x}" for a, b in rs]
    write("pyunicode.txt.gz", lines)


if __name__ == "__main__":
    print(f"nltk {nltk.__version__}, Python {sys.version.split()[0]}")
    tagger()
    punkt()
    wordnet()
    pyunicode()
