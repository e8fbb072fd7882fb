"""Convert SemEval-2014 Task 4 (aspect term polarity) XML to the JSON lines that `dataset=absa_jsonl` reads.

An example of bringing another aspect-sentiment corpus to the aspect_sentiment task without touching its Python:
SemEval-2014's restaurant and laptop files (Pontiki et al., 2014; e.g. Restaurants_Train_v2.xml and
Restaurants_Test_Gold.xml) hold

    <sentence id="3121">
      <text>But the staff was so horrible to us.</text>
      <aspectTerms><aspectTerm term="staff" polarity="negative" from="8" to="13"/></aspectTerms>
    </sentence>

and become, one sentence a line,

    {"id": "3121", "text": "But the staff was so horrible to us.",
     "aspects": [{"term": "staff", "start": 8, "end": 13, "polarity": "negative"}]}

The task has three polarities; SemEval's fourth, "conflict", is dropped (`--conflict drop`, counted on stderr) or
mapped to neutral (`--conflict neutral`). Then, for example:

    python docs/absa_semeval2014_to_jsonl.py Restaurants_Train_v2.xml > rest_train.jsonl
    python docs/absa_semeval2014_to_jsonl.py Restaurants_Test_Gold.xml > rest_test.jsonl
    python -m trainer task=aspect_sentiment dataset=absa_jsonl dataset.train=rest_train.jsonl \
        dataset.test=rest_test.jsonl dataset.min_count=2

(English text is tagged character by character like Chinese: the tagger needs no word segmentation.)
"""
from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET


def convert(path: str, conflict: str = "drop") -> tuple[list[dict], int]:
    """The sentences of a SemEval-2014 Task 4 XML file as JSON-lines records, and how many aspects were dropped."""
    dropped, out = 0, []
    for sentence in ET.parse(path).getroot().iter("sentence"):
        text = sentence.findtext("text") or ""
        aspects = []
        for term in sentence.iter("aspectTerm"):
            polarity = term.get("polarity")
            if polarity == "conflict":
                if conflict == "drop":
                    dropped += 1
                    continue
                polarity = "neutral"
            start, end = int(term.get("from")), int(term.get("to"))
            if text[start:end] != term.get("term"):  # a few files have offsets off by some characters: find it
                found = text.find(term.get("term"))
                if found < 0:
                    dropped += 1
                    continue
                start, end = found, found + len(term.get("term"))
            aspects.append({"term": term.get("term"), "start": start, "end": end, "polarity": polarity})
        out.append({"id": sentence.get("id"), "text": text, "aspects": aspects})
    return out, dropped


def main() -> None:
    ap = argparse.ArgumentParser(description="SemEval-2014 Task 4 XML -> aspect_sentiment JSON lines (stdout)")
    ap.add_argument("xml")
    ap.add_argument("--conflict", choices=["drop", "neutral"], default="drop")
    args = ap.parse_args()
    records, dropped = convert(args.xml, args.conflict)
    for r in records:
        sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(records)} sentences, {sum(len(r['aspects']) for r in records)} aspects, {dropped} dropped "
          f"(conflict, or a term not in its text)", file=sys.stderr)


if __name__ == "__main__":
    main()
