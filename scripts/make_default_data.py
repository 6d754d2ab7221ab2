"""Rebuild the embedded default sample in data/ from GoEmotions (Ekman labels).

Usage: python scripts/make_default_data.py ../shared/datasets/goemotions/ekman

Draws, with seed 13, from the GoEmotions *train* split: 600 labelled rows with at
least 30 rows per label (rare labels topped up first, the rest drawn at random),
then 5,000 further rows whose labels are hidden (the unlabeled pool). Labels are
the Ekman names, joined with ';'. Rows whose text is shorter than 3 characters are
skipped.
"""

import csv
import random
import sys
from pathlib import Path

N_LABELLED, N_UNLABELED, MIN_PER_LABEL, SEED = 600, 5000, 30, 13


def main(src: str, out: str = "data/goemotions-ekman-sample.csv") -> None:
    src_dir = Path(src)
    names = (src_dir / "labels.txt").read_text().split()
    rows = []
    with open(src_dir / "train.tsv", encoding="utf-8") as fh:
        for line in fh:
            text, ids, _cid = line.rstrip("\n").split("\t")
            if len(text.strip()) >= 3:
                rows.append((text, [names[int(i)] for i in ids.split(",")]))
    rng = random.Random(SEED)
    order = list(range(len(rows)))
    rng.shuffle(order)
    chosen: list[int] = []
    taken = set()
    counts = dict.fromkeys(names, 0)
    # top up the rarest labels first
    for name in sorted(names, key=lambda n: sum(n in r[1] for r in rows)):
        for i in order:
            if counts[name] >= MIN_PER_LABEL:
                break
            if i not in taken and name in rows[i][1]:
                taken.add(i)
                chosen.append(i)
                for lab in rows[i][1]:
                    counts[lab] += 1
    for i in order:
        if len(chosen) >= N_LABELLED:
            break
        if i not in taken:
            taken.add(i)
            chosen.append(i)
    pool = [i for i in order if i not in taken][:N_UNLABELED]
    out_rows = [(rows[i][0], ";".join(rows[i][1])) for i in chosen] + [
        (rows[i][0], "") for i in pool
    ]
    rng.shuffle(out_rows)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "labels"])
        w.writerows(out_rows)
    print(f"wrote {len(out_rows)} rows ({len(chosen)} labelled, {len(pool)} unlabeled) to {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
