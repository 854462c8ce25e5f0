"""Trains the model the `quality-router` policy embeds.

    python3 -m pip install -r policies/quality-router/train/requirements.txt
    python3 policies/quality-router/train/train.py

Reads `data/routellm-mmlu.jsonl.gz`, writes `model/quality-router.bin` (the
weights the policy embeds at build time), `model/held-out-ids.txt` (the
questions the evaluation may use), `model/report.json` (how the model was
chosen and how it generalises) and `model/feature-check.json` (texts and
their scores, which the Rust tests compare with the compiled policy's).

The model: ridge regression (scikit-learn) of the benefit of the strong model
over the weak one on a question (strong correct minus weak correct: -1, 0 or
1), over hashed word unigrams and bigrams of the prompt. Same data, same
model, byte for byte: the split, the folds and the solver are deterministic.

Why scikit-learn: a maintained library whose sparse ridge regression is
exact and deterministic; the model it produces is a weight vector, which
the policy evaluates with a few lines of Rust.

The split: a question is held out when the first byte of SHA-256(id) is
below 52 (about 20 %). The regularisation strength is chosen by 5-fold
cross-validation on the training split (fold: the second byte of SHA-256(id)
mod 5), and the thresholds for each share of strong calls are quantiles of
the out-of-fold scores of the training split: held-out questions are never
seen before the evaluation (bench/quality.sh).
"""

import argparse
import gzip
import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import Ridge

HERE = Path(__file__).resolve().parent.parent
BITS = 17
BUCKETS = 1 << BITS
ALPHAS = [0.3, 1.0, 3.0, 10.0, 30.0]
MAGIC = b"SYQR"


def tokens(text):
    """Runs of ASCII letters and digits (lowercased) and non-ASCII bytes."""
    out, cur = [], bytearray()
    for c in text.encode("utf-8"):
        if 65 <= c <= 90:
            c += 32
        if 97 <= c <= 122 or 48 <= c <= 57 or c >= 128:
            cur.append(c)
        elif cur:
            out.append(bytes(cur))
            cur = bytearray()
    if cur:
        out.append(bytes(cur))
    return out


def fnv1a(data):
    h = 0x811C9DC5
    for c in data:
        h = ((h ^ c) * 0x01000193) & 0xFFFFFFFF
    return h


def features(text):
    """The distinct buckets of the text's unigrams and bigrams, sorted."""
    t = tokens(text)
    grams = t + [a + b" " + b for a, b in zip(t, t[1:])]
    return sorted({fnv1a(g) & (BUCKETS - 1) for g in grams})


def matrix(rows):
    indices, indptr, values = [], [0], []
    for r in rows:
        f = features(r["prompt"])
        indices += f
        values += [1.0 / math.sqrt(len(f))] * len(f)
        indptr.append(len(indices))
    return sp.csr_matrix((values, indices, indptr), shape=(len(rows), BUCKETS), dtype=np.float64)


def sha(text):
    return hashlib.sha256(text.encode()).digest()


def is_held_out(row):
    return sha(row["id"])[0] < 52


def benefit(rows):
    return np.array([int(r["strong_correct"]) - int(r["weak_correct"]) for r in rows], dtype=np.float64)


def curve(scores, rows):
    """Accuracy when the k highest-scoring questions go to the strong model, k = 0..n."""
    weak = np.array([r["weak_correct"] for r in rows], dtype=np.float64)
    strong = np.array([r["strong_correct"] for r in rows], dtype=np.float64)
    order = np.argsort(-np.asarray(scores), kind="stable")
    gains = np.concatenate([[0.0], np.cumsum((strong - weak)[order])])
    return (weak.sum() + gains) / len(rows), weak.mean(), strong.mean()


def cpt(scores, rows, x):
    """The share of strong calls that recovers x of the weak-to-strong gap."""
    acc, weak, strong = curve(scores, rows)
    target = weak + x * (strong - weak)
    return float(np.argmax(acc >= target - 1e-12)) / len(rows)


def out_of_fold(rows, x, alpha):
    folds = np.array([sha(r["id"])[1] % 5 for r in rows])
    y = benefit(rows)
    scores = np.zeros(len(rows))
    for k in range(5):
        model = Ridge(alpha=alpha).fit(x[folds != k], y[folds != k])
        scores[folds == k] = model.predict(x[folds == k])
    return scores


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=HERE / "data" / "routellm-mmlu.jsonl.gz")
    parser.add_argument("--out", type=Path, default=HERE / "model")
    args = parser.parse_args()

    with gzip.open(args.data, "rt") as f:
        rows = [json.loads(line) for line in f]
    train = [r for r in rows if not is_held_out(r)]
    x = matrix(train)
    y = benefit(train)

    # Model selection on the training split only.
    chosen, best, tried = None, None, {}
    for alpha in ALPHAS:
        scores = out_of_fold(train, x, alpha)
        c50, c80 = cpt(scores, train, 0.5), cpt(scores, train, 0.8)
        tried[str(alpha)] = {"cpt50": round(c50, 4), "cpt80": round(c80, 4)}
        if best is None or c50 + c80 < best[0]:
            best, chosen = (c50 + c80, scores), alpha
    oof = best[1]
    model = Ridge(alpha=chosen).fit(x, y)

    # Thresholds for 0..100 % strong calls, from scores the model did not fit.
    ranked = np.sort(oof)[::-1]
    thresholds = [math.inf]
    for k in range(1, 100):
        i = int(round(k / 100 * len(ranked)))
        thresholds.append(float(ranked[i - 1]))
    thresholds.append(-math.inf)

    weights = model.coef_.astype("<f4")
    payload = struct.pack("<I", BITS) + struct.pack("<f", float(model.intercept_))
    payload += struct.pack("<101f", *thresholds) + weights.tobytes()
    version = hashlib.sha256(payload).hexdigest()[:12]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality-router.bin").write_bytes(MAGIC + version.encode() + payload)
    held_out = [r["id"] for r in rows if is_held_out(r)]
    (args.out / "held-out-ids.txt").write_text("".join(f"{i}\n" for i in held_out))

    # Generalisation to unlike prompts: subjects never seen in training.
    unseen = sorted({r["subject"] for r in rows if sha(r["subject"])[0] < 48})
    seen_rows = [r for r in train if r["subject"] not in unseen]
    group_model = Ridge(alpha=chosen).fit(matrix(seen_rows), benefit(seen_rows))
    unseen_rows = [r for r in rows if r["subject"] in unseen]
    unseen_scores = group_model.predict(matrix(unseen_rows))
    acc, weak, strong = curve(unseen_scores, unseen_rows)
    random_acc = weak + (strong - weak) * np.arange(len(unseen_rows) + 1) / len(unseen_rows)
    # Random routing's accuracy has a spread: one standard deviation of the
    # sum of k draws without replacement, as the noise the curve may dip by.
    n = len(unseen_rows)
    d = benefit(unseen_rows)
    k = np.arange(n + 1)
    noise = np.sqrt(k * (n - k) / max(n - 1, 1) * d.var()) / n

    # Texts and scores the compiled policy must reproduce.
    checks = []
    for r in [train[0], train[1], train[500], rows[-1]] + [{"prompt": t} for t in ["", "Hello, World! Ünïcode 123", "a b a b"]]:
        f = features(r["prompt"])
        score = float(model.intercept_) + sum(float(weights[i]) for i in f) / (math.sqrt(len(f)) if f else 1.0)
        checks.append({"text": r["prompt"], "score": score})
    (args.out / "feature-check.json").write_text(json.dumps({"version": version, "checks": checks}, indent=1) + "\n")

    report = {
        "version": version,
        "model": "ridge regression of strong_correct - weak_correct over hashed word unigrams and bigrams",
        "buckets": BUCKETS,
        "split": "held out: SHA-256(id)[0] < 52; folds: SHA-256(id)[1] mod 5",
        "train_questions": len(train),
        "held_out_questions": len(rows) - len(train),
        "alpha_cross_validated": tried,
        "alpha": chosen,
        "unseen_subjects": {
            "subjects": unseen,
            "questions": n,
            "cpt50": round(cpt(unseen_scores, unseen_rows, 0.5), 4),
            "cpt80": round(cpt(unseen_scores, unseen_rows, 0.8), 4),
            "largest_dip_below_random": round(float(np.max(random_acc - acc)), 4),
            "random_noise_at_that_share": round(float(noise[int(np.argmax(random_acc - acc))]), 4),
        },
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
