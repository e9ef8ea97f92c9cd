"""Writes Tests/KaaEngineTests/Fixtures/pipeline/text-hash.json: scikit-learn's
HashingVectorizer outputs on a few texts, for the pipeline's `text_hash` step to match.

Run with the samples' virtual environment: .venv/bin/python tools/export-pipeline-fixtures.py
"""
import json
import os

from sklearn.feature_extraction.text import HashingVectorizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEXTS = [
    "The team won the match in the final minute",
    "A new PHONE, a faster chip -- and a better camera!",
    "slow-roasted tomatoes with garlic make a rich sauce; the sauce is rich",
    "Café crème brûlée à la carte, naïve façade",
    "x y z",
    "",
    "under_score snake_case 42 answers 3.14159",
]

CASES = [
    {"name": "defaults", "width": 64, "args": {}},
    {"name": "bigrams-unsigned", "width": 32, "args": {"ngram_range": (1, 2), "alternate_sign": False, "norm": None}},
    {"name": "binary-l1-cased", "width": 16, "args": {"binary": True, "norm": "l1", "lowercase": False, "alternate_sign": False}},
    {"name": "trigrams", "width": 1024, "args": {"ngram_range": (2, 3)}},
]


def main():
    out = {"texts": TEXTS, "cases": []}
    for case in CASES:
        v = HashingVectorizer(n_features=case["width"], **case["args"])
        x = v.transform(TEXTS).toarray()
        args = dict(case["args"])
        if "ngram_range" in args:
            args["ngram_range"] = list(args["ngram_range"])
        out["cases"].append({"name": case["name"], "width": case["width"], "args": args,
                             "rows": [[float(a) for a in row] for row in x]})
    path = os.path.join(ROOT, "Tests", "KaaEngineTests", "Fixtures", "pipeline", "text-hash.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"), ensure_ascii=False)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
