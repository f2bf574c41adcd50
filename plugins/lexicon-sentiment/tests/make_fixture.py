"""Writes plugin-sdk/testdata/review-snippets.tsv: 303 real movie-review snippets with their
human rating and the compound score of the reference Python VADER (vaderSentiment 3.3.2), which
the SDK serves to every plugin's tests as `triad_plugin_sdk::testing::review_snippets()`; and
tests/rules.tsv (beside this script): the example sentences of vaderSentiment.py's own demo plus
short sentences written here to exercise each rule (negation, boosters, caps, "but", "least",
idioms, punctuation, emoji), with the same reference score. Run from plugins/lexicon-sentiment:

    python3 -m pip download --no-deps --no-binary :all: -d ~/.cache/triad/pip vadersentiment==3.3.2
    python3 -m venv ~/.cache/triad/venv
    ~/.cache/triad/venv/bin/pip install --no-deps ~/.cache/triad/pip/vaderSentiment-3.3.2.tar.gz
    ~/.cache/triad/venv/bin/python tests/make_fixture.py ~/.cache/triad/pip/vaderSentiment-3.3.2.tar.gz

The snippets are every 35th line (lines 1, 36, 71, ...) of
`hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt` (id TAB mean TAB text, mean = average of
about 20 human ratings on -4..+4), which sits in `additional_resources/hutto_ICWSM_2014.tar.gz`
inside the same source archive. The compound is written unrounded: `polarity_scores` rounds it to
4 decimals, so this script hides `round` from the module while it scores.
"""
import io
import os
import sys
import tarfile

import vaderSentiment.vaderSentiment as vs

STRIDE = 35
HERE = os.path.dirname(os.path.abspath(__file__))
SNIPPETS = os.path.join(HERE, "..", "..", "..", "plugin-sdk", "testdata", "review-snippets.tsv")


def snippets(archive):
    with tarfile.open(archive, "r:gz") as sdist:
        inner = sdist.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    with tarfile.open(fileobj=io.BytesIO(inner), mode="r:gz") as data:
        raw = data.extractfile("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt").read()
    for line in raw.decode("utf-8").split("\n"):
        line = line.rstrip("\r")
        if line:
            yield line.split("\t")


# The demo sentences of vaderSentiment.py (its __main__ block), then one or more per rule.
RULE_SENTENCES = [
    "VADER is smart, handsome, and funny.",
    "VADER is smart, handsome, and funny!",
    "VADER is very smart, handsome, and funny.",
    "VADER is VERY SMART, handsome, and FUNNY.",
    "VADER is VERY SMART, handsome, and FUNNY!!!",
    "VADER is VERY SMART, uber handsome, and FRIGGIN FUNNY!!!",
    "VADER is not smart, handsome, nor funny.",
    "The book was good.",
    "At least it isn't a horrible book.",
    "The book was only kind of good.",
    "The plot was good, but the characters are uncompelling and the dialog is not great.",
    "Today SUX!",
    "Today only kinda sux! But I'll get by, lol",
    "Make sure you :) or :D today!",
    "Catch utf-8 emoji such as \U0001F498 and \U0001F48B and \U0001F601",
    "Not bad at all",
    "Sentiment analysis has never been good.",
    "Sentiment analysis has never been this good!",
    "Most automated sentiment analysis tools are shit.",
    "With VADER, sentiment analysis is the shit!",
    "Other sentiment analysis tools can be quite bad.",
    "On the other hand, VADER is quite bad ass",
    "VADER is such a badass!",
    "Without a doubt, excellent idea.",
    "Roger Dodger is one of the most compelling variations on this theme.",
    "Roger Dodger is at least compelling as a variation on the theme.",
    "Roger Dodger is one of the least compelling variations on this theme.",
    "Not such a badass after all.",
    "Without a doubt, an excellent idea.",
    "It was one of the worst movies I've seen, despite good reviews.",
    "Unbelievably bad acting!!",
    "Poor direction.",
    "VERY poor production.",
    "The movie was bad.",
    "Very bad movie.",
    "VERY BAD movie!",
    # written here: one line per rule or quirk
    "",
    "   ",
    "the movie",
    "GOOD",
    "GREAT MOVIE, TRULY GOOD",
    "a GOOD movie but a BAD ending",
    "no good, no fun",
    "no no no",
    "there is no love or hope here",
    "neither good nor bad",
    "it wasn't good and it wasn't bad",
    "it was never so good",
    "it was never really this good",
    "I did not really think it was so bad",
    "I cannot say it is kind of great",
    "it is sort of fun and sort of dull",
    "just enough fun to be worth it",
    "least good film of the year",
    "the very least good film",
    "at least good",
    "what a kiss of death for the cast",
    "this soundtrack is to die for",
    "yeah right, great plot",
    "this movie is the bomb",
    "my beating heart loved it",
    "we waited at the bus stop happily",
    "good good good good but bad bad",
    "nice nice but nice",
    "bad but bad but bad",
    "Is it good??",
    "Is it good????",
    "Is it bad???",
    "good!!!!!!!",
    "bad!! ?? !!",
    "ok, fine",
    "OK!! fine...",
    "wow :) :( :-D <3",
    "''great'' (wonderful) \"awful\"",
    "good\U0001F600bad \U0001F622sad \U0001F44D",
    "\u00c9NORME SUCC\u00c8S, good film",
    "Stra\u00dfe GOOD \u01c5 nice",
    "tab\tseparated\u00a0good\u2003words\x1cfine",
    "HATE IT hate it Hate It",
    "I LOVE it, really LOVE it",
    "not NOT not good",
    "without doubt good",
    "without any doubt a good film",
    "the so good part",
    "hardly good, barely bad",
    "rarely funny, seldom boring, despite great actors",
    "it isnt good and it aint bad",
    "nope, not happy",
]


def main():
    assert vs.__file__ and open(vs.__file__, encoding="utf-8").read().count("def polarity_scores") == 1
    analyzer = vs.SentimentIntensityAnalyzer()
    vs.round = lambda x, ndigits=None: x  # module globals shadow the builtin
    rows = list(snippets(sys.argv[1]))[::STRIDE]
    with open(SNIPPETS, "w", encoding="utf-8", newline="\n") as out:
        out.write("# made by plugins/lexicon-sentiment/tests/make_fixture.py from vaderSentiment 3.3.2 (every 35th movie snippet)\n")
        out.write("# id\thuman_mean\tpython_vader_compound\ttext\n")
        for snippet_id, mean, text in rows:
            compound = analyzer.polarity_scores(text)["compound"]
            out.write(f"{snippet_id}\t{mean}\t{compound!r}\t{text}\n")
    print(f"wrote {len(rows)} snippets")
    with open(os.path.join(HERE, "rules.tsv"), "w", encoding="utf-8", newline="\n") as out:
        out.write("# made by tests/make_fixture.py from vaderSentiment 3.3.2 (rule examples)\n")
        out.write("# python_vader_compound\ttext (escaped: \\t \\n \\\\ for tab, newline, backslash)\n")
        for text in RULE_SENTENCES:
            compound = analyzer.polarity_scores(text)["compound"]
            escaped = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            out.write(f"{compound!r}\t{escaped}\n")
    print(f"wrote {len(RULE_SENTENCES)} rule sentences")


if __name__ == "__main__":
    main()
