"""Simulated labelling loop: how many labels each query strategy needs.

For each dataset: start with 8 labelled rows per label drawn from a pool whose labels are
hidden, then run ``--rounds`` rounds; each round fits the loop model, scores it on the
test rows, and lets a query strategy (``label_pipeline.active``) choose ``--n`` pool rows
whose true labels are then revealed. Three seeds (start set, random draws, k-means) per
strategy; ``random`` is the control.

The loop model is logistic regression on frozen all-MiniLM-L6-v2 embeddings (what the
``embed_lr`` method fits, C=10; one binary model per label for multi-label data), the
embeddings computed once per text, so a whole run is minutes on a CPU.

Datasets: ``emotion`` (``../shared/datasets/emotion``: a 4,000-row pool drawn from train,
scored on the 2,000 test rows; skipped when absent) and ``default`` (the embedded
GoEmotions sample's 600 labelled rows: 150 test rows, the rest the pool; multi-label).

The goal: the best strategy reaches the accuracy random selection has at the last round
with at most 60 % of the labels random used (labels needed read off the mean curve over
seeds, linearly interpolated between rounds).

Prints a table per dataset, writes ``bench/results/bench_loop<tag>.json`` and the figures
``bench/results/bench_loop_<dataset><tag>.png`` (accuracy and macro-F1 against labels used).

    .venv/bin/python bench/bench_loop.py                 # both datasets, 3 seeds
    .venv/bin/python bench/bench_loop.py default --seeds 0 --rounds 2   # a quick look
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import DATASETS, RESULTS, ROOT, write_results  # noqa: E402
from label_pipeline import active  # noqa: E402

CACHE = ROOT / ".cache" / "bench_loop"
EMOTION_NAMES = ["sadness", "joy", "love", "anger", "fear", "surprise"]
SINGLE = ["random", "least_confidence", "margin", "entropy", "diverse", "k_center", "margin+rare"]
MULTI = ["random", "label_uncertainty", "diverse", "k_center", "label_uncertainty+rare"]


def load_dataset(name: str) -> dict | None:
    import pandas as pd

    if name == "emotion":
        base = DATASETS / "emotion"
        if not (base / "train.csv").is_file():
            print(f"emotion: {base} not found, skipped")
            return None
        train = pd.read_csv(base / "train.csv", keep_default_na=False)
        test = pd.read_csv(base / "test.csv", keep_default_na=False)
        pool = train.sample(n=4000, random_state=0)
        to_y = lambda col: np.eye(6, dtype=np.int64)[col.astype(int).to_numpy()]  # noqa: E731
        return {
            "labels": EMOTION_NAMES,
            "multi_label": False,
            "pool_texts": pool["text"].astype(str).tolist(),
            "pool_y": to_y(pool["labels"]),
            "test_texts": test["text"].astype(str).tolist(),
            "test_y": to_y(test["labels"]),
            "n": 50,
        }
    frame = pd.read_csv(ROOT / "data" / "goemotions-ekman-sample.csv", keep_default_na=False)
    frame = frame[frame["labels"].str.strip() != ""].reset_index(drop=True)
    rows = [sorted(set(x.split(";"))) for x in frame["labels"]]
    labels = sorted({lab for r in rows for lab in r})
    y = np.array([[int(lab in r) for lab in labels] for r in rows], dtype=np.int64)
    order = np.random.default_rng(0).permutation(len(frame))
    test, pool = order[:150], order[150:]
    texts = frame["text"].astype(str).tolist()
    return {
        "labels": labels,
        "multi_label": True,
        "pool_texts": [texts[i] for i in pool],
        "pool_y": y[pool],
        "test_texts": [texts[i] for i in test],
        "test_y": y[test],
        "n": 25,
    }


def embed(texts: list[str]) -> np.ndarray:
    """MiniLM embeddings, cached on disk by the texts' hash."""
    from label_pipeline.embeddings import embed_texts
    from label_pipeline.models import DEFAULT_ENCODER, resolve_model

    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"{key}.npy"
    if path.is_file():
        return np.load(path)
    vecs = embed_texts(resolve_model(DEFAULT_ENCODER), texts)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return vecs


def fit_predict(
    x: np.ndarray, y: np.ndarray, x_eval: list[np.ndarray], multi_label: bool, seed: int
) -> list[np.ndarray]:
    """Logistic regression (C=10) on embeddings; probabilities for each of ``x_eval``."""
    from sklearn.linear_model import LogisticRegression

    def make() -> LogisticRegression:
        return LogisticRegression(C=10.0, max_iter=2000, random_state=seed)

    if not multi_label:
        clf = make().fit(x, y.argmax(axis=1))
        outs = []
        for xe in x_eval:
            p = np.zeros((len(xe), y.shape[1]))
            p[:, clf.classes_] = clf.predict_proba(xe)
            outs.append(p)
        return outs
    outs = [np.zeros((len(xe), y.shape[1])) for xe in x_eval]
    for j in range(y.shape[1]):
        col = y[:, j]
        if col.min() == col.max():  # one class only: its frequency
            for o in outs:
                o[:, j] = float(col[0])
            continue
        clf = make().fit(x, col)
        for o, xe in zip(outs, x_eval, strict=True):
            o[:, j] = clf.predict_proba(xe)[:, 1]
    return outs


def scores(y: np.ndarray, probs: np.ndarray, multi_label: bool) -> dict[str, float]:
    from sklearn.metrics import f1_score

    if multi_label:
        pred = (probs >= 0.5).astype(np.int64)
        none = pred.sum(axis=1) == 0  # every gold row has a label: top-1 when none passes
        pred[np.flatnonzero(none), probs[none].argmax(axis=1)] = 1
        acc = float((pred == y).all(axis=1).mean())
        macro = float(f1_score(y, pred, average="macro", zero_division=0))
    else:
        pred_c, gold_c = probs.argmax(axis=1), y.argmax(axis=1)
        acc = float((pred_c == gold_c).mean())
        macro = float(
            f1_score(gold_c, pred_c, average="macro", labels=range(y.shape[1]), zero_division=0)
        )
    return {"accuracy": acc, "macro_f1": macro}


def start_set(y: np.ndarray, per_label: int, rng: np.random.Generator) -> list[int]:
    chosen: list[int] = []
    for j in range(y.shape[1]):
        rows = [int(r) for r in rng.permutation(np.flatnonzero(y[:, j])) if int(r) not in chosen]
        have = sum(1 for r in chosen if y[r, j])
        chosen += rows[: max(0, per_label - have)]
    return chosen


def run_loop(data: dict, strategy: str, seed: int, rounds: int, emb: dict) -> list[dict]:
    rng = np.random.default_rng(seed)
    y_pool, multi = data["pool_y"], data["multi_label"]
    labelled = start_set(y_pool, 8, rng)
    base, rare = strategy.split("+")[0], strategy.endswith("+rare")
    curve = []
    for r in range(rounds + 1):
        x = emb["pool"][labelled]
        rest = np.setdiff1d(np.arange(len(y_pool)), labelled)
        p_test, p_pool = fit_predict(
            x, y_pool[labelled], [emb["test"], emb["pool"][rest]], multi, seed
        )
        curve.append({"round": r, "labels": len(labelled), **scores(data["test_y"], p_test, multi)})
        if r == rounds:
            break
        counts = dict(zip(data["labels"], y_pool[labelled].sum(axis=0).tolist(), strict=True))
        s = active.suggest(
            base,
            p_pool,
            data["labels"],
            multi,
            data["n"],
            embeddings=emb["pool"][rest],
            labelled_embeddings=x,
            labelled_counts=counts,
            cover_rare_labels=rare,
            seed=seed * 1000 + r,
        )
        labelled += [int(rest[i]) for i in s.positions]
    return curve


def labels_needed(
    curve_labels: list[int], curve_values: list[float], target: float
) -> float | None:
    """Labels at which the mean curve first reaches ``target`` (linear between rounds)."""
    for i, v in enumerate(curve_values):
        if v >= target - 1e-12:
            if i == 0:
                return float(curve_labels[0])
            x0, x1, v0 = curve_labels[i - 1], curve_labels[i], curve_values[i - 1]
            return float(x0 + (x1 - x0) * (target - v0) / (v - v0))
    return None


def plot(name: str, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, ("accuracy", "macro_f1"), strict=True):
        for strategy, s in summary.items():
            mean, std = np.array(s[metric]["mean"]), np.array(s[metric]["std"])
            style = {"color": "black", "linewidth": 2.2} if strategy == "random" else {}
            ax.plot(s["labels"], mean, marker="o", markersize=3, label=strategy, **style)
            ax.fill_between(s["labels"], mean - std, mean + std, alpha=0.12, **style)
        ax.set_xlabel("labelled rows")
        ax.set_ylabel(metric.replace("_", "-"))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{name}: test score against labels used (mean ± sd over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="*", default=["emotion", "default"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=None, help="rows per round (default per dataset)")
    parser.add_argument("--strategies", nargs="+", default=None)
    parser.add_argument("--tag", default="", help="suffix of the results and figure files")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    # one BLAS thread: the fits are small, and several threads fight on a shared machine
    threadpool_limits(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out: dict = {"rounds": args.rounds, "seeds": args.seeds, "datasets": {}}
    for name in args.datasets:
        data = load_dataset(name)
        if data is None:
            continue
        if args.n:
            data["n"] = args.n
        t0 = time.time()
        emb = {"pool": embed(data["pool_texts"]), "test": embed(data["test_texts"])}
        embed_s = time.time() - t0
        strategies = args.strategies or (MULTI if data["multi_label"] else SINGLE)
        summary: dict = {}
        t0 = time.time()
        for strategy in strategies:
            curves = [run_loop(data, strategy, seed, args.rounds, emb) for seed in args.seeds]
            entry: dict = {"labels": [p["labels"] for p in curves[0]], "runs": curves}
            for metric in ("accuracy", "macro_f1"):
                vals = np.array([[p[metric] for p in c] for c in curves])
                entry[metric] = {"mean": vals.mean(0).tolist(), "std": vals.std(0).tolist()}
            entry["labels"] = np.mean([[p["labels"] for p in c] for c in curves], 0).tolist()
            summary[strategy] = entry
        loop_s = time.time() - t0
        rnd = summary["random"]
        target, used = rnd["accuracy"]["mean"][-1], rnd["labels"][-1]
        print(
            f"\n== {name}: pool {len(data['pool_texts'])}, test {len(data['test_texts'])}, "
            f"+{data['n']} rows x {args.rounds} rounds, seeds {args.seeds} "
            f"(embedding {embed_s:.0f}s, loops {loop_s:.0f}s)"
        )
        print(f"random at the last round: accuracy {target:.4f} with {used:.0f} labels")
        print(
            f"{'strategy':<24}{'acc last':>10}{'macroF1 last':>14}{'labels to random':>18}{'share':>8}"
        )
        for strategy, s in summary.items():
            need = labels_needed(s["labels"], s["accuracy"]["mean"], target)
            s["labels_to_reach_random_final"] = need
            s["share_of_random_labels"] = None if need is None else need / used
            share = "n/a" if need is None else f"{need / used:.0%}"
            print(
                f"{strategy:<24}{s['accuracy']['mean'][-1]:>10.4f}{s['macro_f1']['mean'][-1]:>14.4f}"
                f"{'not reached' if need is None else f'{need:.0f}':>18}{share:>8}"
            )
        reached = {k: v["share_of_random_labels"] for k, v in summary.items() if k != "random"}
        best = min((k for k, v in reached.items() if v is not None), key=reached.get, default=None)
        goal = best is not None and reached[best] <= 0.6
        print(
            f"best strategy: {best} ({'n/a' if best is None else f'{reached[best]:.0%}'} of the "
            f"labels random used); goal (<= 60%) {'met' if goal else 'NOT met'}"
        )
        fig = RESULTS / f"bench_loop_{name}{args.tag}.png"
        plot(name, summary, fig)
        print(f"figure: {fig}")
        out["datasets"][name] = {
            "n_per_round": data["n"],
            "pool_rows": len(data["pool_texts"]),
            "test_rows": len(data["test_texts"]),
            "multi_label": data["multi_label"],
            "random_final_accuracy": target,
            "random_final_labels": used,
            "best_strategy": best,
            "best_share": None if best is None else reached[best],
            "goal_met": goal,
            "embedding_seconds": round(embed_s, 1),
            "loop_seconds": round(loop_s, 1),
            "strategies": summary,
        }
    write_results("bench_loop", out, args.tag, indent=1)


if __name__ == "__main__":
    main()
