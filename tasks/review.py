"""The review gate: a person checks a selection rule in the Prefect UI before the run goes on.

With ``review.after: zero_shot`` (or ``label``) the flow pauses after that stage with
``prefect.flow_runs.pause_flow_run(wait_for_input=ReviewInput...)``. The flow run's page in
the Prefect UI then shows a form (:class:`ReviewInput`) under a description of the rule the
stage chose on the validation split (threshold, top-k or argmax with a confidence floor),
its validation scores and the precision to expect, a threshold sweep, the pool rows labelled
per label and the least sure of them. The reviewer accepts (leaves the values), changes the
threshold / top-k, lists rows to reject, or unticks ``accept`` to stop the run.

The answer becomes a :class:`ReviewDecision`, the config of the ``review`` stage, which
re-applies the rule to the stage's pool scores (rejected rows get no labels) and writes:

- after ``zero_shot``: ``unlabeled/`` (the zero-shot pool rows, same columns, ``labels``
  re-selected): the train stage's pseudo-label input;
- after ``label``: ``labelled/`` (the labelled pool, ``predicted_labels`` re-selected) and
  ``labelled.jsonl``; the suggest stage puts the rejected rows first;
- ``review.json`` (the decision, rows changed), ``summary.md``, ``sample.json``.

So the decision is in the review stage's manifest and, through its fingerprint, in the
fingerprints of every stage that follows; a different decision recomputes them. Without an
answer within ``review.timeout_s`` the run fails (``on_timeout: fail``) or continues with
the stage's automatic choice, recorded as ``decided_by: timeout``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from prefect.input import RunInput
from pydantic import BaseModel, ConfigDict, Field

from label_pipeline.artifacts import md_table
from label_pipeline.errors import LabelPipelineError
from label_pipeline.orchestration import write_summary
from label_pipeline.progress import stage_logger
from label_pipeline.store import BuildContext, StageRef, StageSpec, StageStore

SPEC = StageSpec("review", "1")
STAGE, VERSION = SPEC.name, SPEC.version
REVIEWABLE = ("zero_shot", "label")
SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class ReviewTimeoutError(LabelPipelineError):
    """Nobody answered the review form in time (``review.on_timeout: fail``)."""


class ReviewRejectedError(LabelPipelineError):
    """The reviewer stopped the run."""


class ReviewInputError(LabelPipelineError):
    """The reviewer's answer cannot be applied."""


class ReviewConfig(BaseModel):
    """The review gate.

    Attributes:
        after: ``none`` (never pause), ``zero_shot`` (review the pseudo-labels before
            training) or ``label`` (review the labelled pool before suggesting rows).
        timeout_s: seconds to wait for the reviewer.
        on_timeout: ``fail`` the run, or ``continue`` with the stage's automatic choice
            (recorded as ``decided_by: timeout`` and reported).
        poll_interval_s: how often the paused run asks the API whether it was resumed.
        show_rows: least sure labelled pool rows listed in the form's description.
    """

    model_config = ConfigDict(extra="forbid")

    after: Literal["none", "zero_shot", "label"] = "none"
    timeout_s: int = Field(3600, ge=1)
    on_timeout: Literal["fail", "continue"] = "fail"
    poll_interval_s: int = Field(10, ge=1)
    show_rows: int = Field(15, ge=0, le=100)


class ReviewInput(RunInput):
    """The review form in the Prefect UI (its description shows the rule and its scores)."""

    accept: bool = Field(
        True, description="Untick to stop the run here (it fails, naming the review)."
    )
    threshold: float | None = Field(
        None,
        description="Score a label needs (0-1); single-label: the lowest top score that "
        "gets a label. Empty: the stage's own rule.",
    )
    top_k: int | None = Field(
        None, description="Multi-label: at most this many labels per row. Empty: no limit."
    )
    reject_ids: list[str] = Field(
        default_factory=list, description="Row ids whose labels are wrong: they get none."
    )
    comment: str = Field("", description="Recorded with the decision.")


class ReviewDecision(BaseModel):
    """What the review decided; the ``review`` stage's config (so it enters fingerprints).

    Attributes:
        after: the reviewed stage.
        decided_by: ``reviewer`` (answered the form) or ``timeout`` (automatic choice kept).
        threshold: the reviewer's threshold; None = the stage's own rule.
        top_k: at most this many labels per row (multi-label); None = no limit.
        reject_ids: rows that get no labels (sorted).
        comment: the reviewer's note.
        automatic: the stage's own rule (for the record).
    """

    model_config = ConfigDict(extra="forbid")

    after: Literal["zero_shot", "label"]
    decided_by: Literal["reviewer", "timeout"]
    threshold: float | None = None
    top_k: int | None = None
    reject_ids: list[str] = Field(default_factory=list)
    comment: str = ""
    automatic: dict[str, Any] = Field(default_factory=dict)

    def describe(self) -> str:
        if self.threshold is None and self.top_k is None:
            rule = f"the automatic rule ({describe_rule(self.automatic)})"
        else:
            parts = []
            if self.threshold is not None:
                parts.append(f"threshold {self.threshold:g}")
            if self.top_k is not None:
                parts.append(f"top-{self.top_k}")
            rule = " and ".join(parts)
        rej = f", {len(self.reject_ids)} row(s) rejected" if self.reject_ids else ""
        return f"{rule}{rej} (decided by {self.decided_by})"


def describe_rule(rule: dict[str, Any]) -> str:
    kind = rule.get("rule")
    if kind == "threshold":
        if rule.get("per_label_thresholds"):
            return "per-label thresholds " + ", ".join(
                f"{k} {v:.2f}" for k, v in rule["per_label_thresholds"].items()
            )
        return f"threshold {float(rule['value']):.2f}"
    if kind == "global":
        return f"threshold {float(rule['thresholds'][0]):.2f}"
    if kind == "per_label":
        return "per-label thresholds " + ", ".join(f"{t:.2f}" for t in rule["thresholds"])
    if kind == "top_k":
        return f"top-{int(rule['value'])}"
    if kind == "argmax":
        floor = float(rule.get("value") or 0.0)
        return "argmax" + (f" with confidence floor {floor:.2f}" if floor else "")
    return str(kind)


# ---------------------------------------------------------------- what is reviewed


@dataclass
class Reviewed:
    """A stage's pool scores, its automatic rule and the validation scores that chose it."""

    after: str
    labels: list[str]
    multi_label: bool
    rule: dict[str, Any]
    pool_ids: list[str]
    pool_texts: list[str]
    pool_scores: np.ndarray
    pool_auto: np.ndarray
    valid_scores: np.ndarray | None
    valid_y: np.ndarray | None
    valid_auto: np.ndarray | None
    #: the stage's ``expected_precision.json`` overall entry (calibrated probabilities), if any
    expected: dict[str, Any] | None = None

    def initial(self) -> dict[str, Any]:
        """The form's starting values: the automatic rule where one number states it."""
        r = self.rule
        if r.get("rule") == "threshold" and not r.get("per_label_thresholds"):
            return {"threshold": round(float(r["value"]), 4)}
        if r.get("rule") == "global":
            return {"threshold": round(float(r["thresholds"][0]), 4)}
        if r.get("rule") == "top_k":
            return {"top_k": int(r["value"])}
        if r.get("rule") == "argmax":  # the confidence floor (0: every row gets its top label)
            return {"threshold": round(float(r.get("value") or 0.0), 4)}
        return {}


def _matrix(ds: Any, columns: list[str]) -> np.ndarray:
    if len(ds) == 0:
        return np.zeros((0, len(columns)))
    return np.stack([np.asarray(ds[c], dtype=np.float64) for c in columns], axis=1)


def load_reviewed(after: str, ref: StageRef) -> Reviewed:
    """Read what the review of ``after`` (its stage directory ``ref``) shows and changes."""
    from label_pipeline.data import read_label_info

    labels, multi_label = read_label_info(ref.dir)
    data = _load(after, ref, labels, multi_label)
    est = ref.dir / "expected_precision.json"
    if est.is_file():
        data.expected = (json.loads(est.read_text()) or {}).get("overall")
    return data


def _reviewed(
    after: str,
    labels: list[str],
    multi_label: bool,
    rule: dict[str, Any],
    pool: Any,
    scores: np.ndarray,
    vscores: np.ndarray | None,
    vy: np.ndarray | None,
    apply: Callable[[np.ndarray], np.ndarray],
) -> Reviewed:
    """The review of ``pool`` (its ``id`` and ``text`` columns, ``scores``) and of the
    validation rows (``vscores`` against ``vy``, if any), each labelled by the stage's
    automatic rule ``apply``."""
    return Reviewed(
        after,
        labels,
        multi_label,
        rule,
        [str(i) for i in pool["id"]],
        [str(t) for t in pool["text"]],
        scores,
        apply(scores),
        vscores,
        vy,
        None if vscores is None else apply(vscores),
    )


def _load(after: str, ref: StageRef, labels: list[str], multi_label: bool) -> Reviewed:
    import datasets

    from label_pipeline.data import label_matrix, load_splits

    if after == "zero_shot":
        from label_pipeline.zeroshot.selection import Selection, apply_selection

        sel_json = json.loads((ref.dir / "selection.json").read_text())
        sel = Selection(
            rule=sel_json["rule"],
            value=float(sel_json["value"]),
            metric=sel_json.get("metric", "micro_f1"),
            per_label_thresholds=sel_json.get("per_label_thresholds"),
        )
        cols = [f"score_{name}" for name in labels]
        pool = datasets.load_from_disk(str(ref.dir / "unlabeled"))
        valid = datasets.load_from_disk(str(ref.dir / "valid"))
        scores, vscores = _matrix(pool, cols), _matrix(valid, cols)
        vy = label_matrix([list(x) for x in valid["labels"]], labels)
        rule = {k: sel_json.get(k) for k in ("rule", "value", "metric", "per_label_thresholds")}
        rule["valid_metrics"] = sel_json.get("valid_metrics", {})
        return _reviewed(
            after,
            labels,
            multi_label,
            rule,
            pool,
            scores,
            vscores,
            vy,
            lambda s: apply_selection(sel, s, labels),
        )
    if after == "label":
        from label_pipeline.decision import Decision, apply_decision

        decision = Decision.from_json(json.loads((ref.dir / "model" / "decision.json").read_text()))
        pool = datasets.load_from_disk(str(ref.dir / "labelled"))
        scores = _matrix(pool, [f"prob_{name}" for name in labels])
        vscores = vy = None
        manifest = ref.manifest()
        trained = Path(manifest["inputs"]["trained"]["path"])
        splits = Path(manifest["inputs"]["splits"]["path"])
        runs = json.loads((trained / "runs.json").read_text()) if trained.is_dir() else []
        run = next(
            (
                r
                for r in runs
                if r["method"] == manifest.get("method")
                and str(r["slice"]) == str(manifest.get("slice"))
            ),
            None,
        )
        if run is not None and (trained / run["dir"] / "valid_probs.npy").is_file():
            vscores = np.load(trained / run["dir"] / "valid_probs.npy")
            valid = load_splits(splits)["valid"]
            vy = label_matrix([list(x) for x in valid["labels"]], labels)
        rule = {**decision.to_json(), "valid_metrics": {}}
        rule.pop("label_shift", None)
        return _reviewed(
            after,
            labels,
            multi_label,
            rule,
            pool,
            scores,
            vscores,
            vy,
            lambda s: apply_decision(s, decision),
        )
    raise ValueError(f"review.after={after!r}: use one of {', '.join(REVIEWABLE)}")


def apply_review(
    scores: np.ndarray,
    auto: np.ndarray,
    multi_label: bool,
    threshold: float | None,
    top_k: int | None,
    reject: np.ndarray | None = None,
) -> np.ndarray:
    """0/1 labels after the review: the automatic ``auto`` when neither ``threshold`` nor
    ``top_k`` is set; else labels scoring at least ``threshold`` (single-label: the top
    label when its score reaches it) among each row's ``top_k`` best; ``reject`` rows none."""
    scores = np.asarray(scores, dtype=np.float64)
    if threshold is None and top_k is None:
        out = np.asarray(auto, dtype=np.int64).copy()
    elif not multi_label:
        out = np.zeros(scores.shape, dtype=np.int64)
        if len(scores):
            top = scores.argmax(axis=1)
            ok = scores[np.arange(len(scores)), top] >= (threshold or 0.0) - 1e-9
            out[np.flatnonzero(ok), top[ok]] = 1
    else:
        out = np.ones(scores.shape, dtype=np.int64)
        if threshold is not None:
            out &= (scores >= threshold - 1e-9).astype(np.int64)
        if top_k is not None and len(scores):
            order = np.argsort(-scores, axis=1, kind="stable")
            keep = np.zeros(scores.shape, dtype=np.int64)
            np.put_along_axis(keep, order[:, :top_k], 1, axis=1)
            out &= keep
    if reject is not None and len(out):
        out[np.asarray(reject, dtype=bool)] = 0
    return out


def precision_recall(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    tp = float((pred * y).sum())
    fp = float((pred * (1 - y)).sum())
    fn = float(((1 - pred) * y).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "micro_f1": 2 * p * r / (p + r) if p + r else 0.0}


def describe_for_review(data: Reviewed, cfg: ReviewConfig) -> str:
    """The markdown shown above the review form."""
    what = "zero-shot pseudo-labels" if data.after == "zero_shot" else "labels of the pool"
    n = len(data.pool_ids)
    lines = [
        f"## Review the {what}",
        "",
        f"**Rule chosen on the validation split:** {describe_rule(data.rule)}.",
    ]
    if data.valid_y is not None and data.valid_auto is not None and len(data.valid_y):
        m = precision_recall(data.valid_y, data.valid_auto)
        lines.append(
            f"**Validation ({len(data.valid_y)} rows):** micro-F1 {m['micro_f1']:.3f}, "
            f"recall {m['recall']:.3f}, precision **{m['precision']:.3f}** — the share of "
            "the pool's labels to expect right with this rule."
        )
        extra = {
            k: v for k, v in (data.rule.get("valid_metrics") or {}).items() if isinstance(v, float)
        }
        if extra:
            lines.append(
                "Stage's validation metrics: " + ", ".join(f"{k} {v:.3f}" for k, v in extra.items())
            )
        sweep = []
        for t in SWEEP:
            vp = apply_review(data.valid_scores, data.valid_auto, data.multi_label, t, None)
            pp = apply_review(data.pool_scores, data.pool_auto, data.multi_label, t, None)
            mm = precision_recall(data.valid_y, vp)
            sweep.append(
                {
                    "threshold": t,
                    "valid precision": round(mm["precision"], 3),
                    "valid recall": round(mm["recall"], 3),
                    "pool rows labelled": int((pp.sum(axis=1) > 0).sum()),
                }
            )
        lines += ["", "### If you set a threshold", "", md_table(sweep)]
    else:
        lines.append("_No validation scores: the rule's validation precision is not measured._")
    e = data.expected or {}
    if e.get("expected_precision") is not None and e.get("interval"):
        lines.append(
            f"\n**Expected precision from the calibrated probabilities:** "
            f"{100 * e['expected_precision']:.1f} % (95 % interval {100 * e['interval'][0]:.1f}"
            f"–{100 * e['interval'][1]:.1f} %), about {e.get('expected_wrong', 0):.0f} of "
            f"{e.get('assigned', 0)} labels wrong."
        )
    counts = data.pool_auto.sum(axis=0) if len(data.pool_auto) else np.zeros(len(data.labels))
    labelled = int((data.pool_auto.sum(axis=1) > 0).sum()) if len(data.pool_auto) else 0
    lines += [
        "",
        f"### Pool: {labelled} of {n} rows get labels with this rule",
        "",
        md_table([{"label": k, "rows": int(c)} for k, c in zip(data.labels, counts, strict=True)]),
    ]
    if cfg.show_rows and labelled:
        top = np.where(data.pool_auto > 0, data.pool_scores, np.inf).min(axis=1)
        order = [int(i) for i in np.argsort(top, kind="stable") if np.isfinite(top[i])]
        rows = [
            {
                "id": data.pool_ids[i],
                "labels": ", ".join(data.labels[j] for j in np.flatnonzero(data.pool_auto[i])),
                "lowest label score": round(float(top[i]), 3),
                "text": data.pool_texts[i][:140],
            }
            for i in order[: cfg.show_rows]
        ]
        lines += [
            "",
            "### Least sure labelled rows (candidates for `reject_ids`)",
            "",
            md_table(rows),
        ]
    lines += [
        "",
        "**Answer:** leave the values to accept the rule; change `threshold` / `top_k`; list "
        "row ids in `reject_ids` to drop their labels; untick `accept` to stop the run.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- the gate (in a flow)


def decision_from_input(
    answer: ReviewInput | dict[str, Any], data: Reviewed, decided_by: str = "reviewer"
) -> ReviewDecision:
    """Check the reviewer's answer and turn it into a decision (fails naming the field)."""
    a = answer if isinstance(answer, dict) else answer.model_dump()
    threshold, top_k = a.get("threshold"), a.get("top_k")
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise ReviewInputError(f"review form: threshold={threshold} is outside 0-1")
    if top_k is not None:
        if not data.multi_label and int(top_k) != 1:
            raise ReviewInputError(
                f"review form: top_k={top_k} on single-label data (one label per row); "
                "leave top_k empty"
            )
        if not 1 <= int(top_k) <= len(data.labels):
            raise ReviewInputError(
                f"review form: top_k={top_k} must be between 1 and {len(data.labels)} labels"
            )
    known = set(data.pool_ids)
    rejected = sorted({str(i).strip() for i in a.get("reject_ids") or [] if str(i).strip()})
    unknown = [i for i in rejected if i not in known]
    if unknown:
        raise ReviewInputError(
            f"review form: reject_ids {unknown[:10]} are not pool rows of the {data.after} "
            "stage; copy the ids from its table"
        )
    initial = data.initial()
    # values left at the form's starting point mean the automatic rule
    if (
        threshold is not None
        and initial.get("threshold") == threshold
        and top_k
        in (
            None,
            initial.get("top_k"),
        )
    ):
        threshold, top_k = None, None
    if top_k is not None and initial.get("top_k") == top_k and threshold is None:
        top_k = None
    return ReviewDecision(
        after=data.after,  # type: ignore[arg-type]
        decided_by=decided_by,  # type: ignore[arg-type]
        threshold=None if threshold is None else float(threshold),
        top_k=None if top_k is None else int(top_k),
        reject_ids=rejected,
        comment=str(a.get("comment") or ""),
        automatic={k: v for k, v in data.rule.items() if k != "valid_metrics"},
    )


def _resume_after_timeout() -> None:
    """Put this flow run back into Running after its pause timed out (on_timeout: continue)."""
    from prefect import get_client
    from prefect.context import FlowRunContext
    from prefect.states import Running

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(ctx.flow_run.id, Running(), force=True)


def gate(cfg: ReviewConfig, ref: StageRef) -> ReviewDecision:
    """Pause the flow run for the reviewer (call inside a flow) and return the decision."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    log = stage_logger()
    data = load_reviewed(cfg.after, ref)
    form = ReviewInput.with_initial_data(
        description=describe_for_review(data, cfg), **data.initial()
    )
    log.info(
        "review: waiting up to %ss for the reviewer (the flow run's page in the Prefect UI)",
        cfg.timeout_s,
    )
    try:
        answer = pause_flow_run(
            wait_for_input=form,
            timeout=cfg.timeout_s,
            poll_interval=cfg.poll_interval_s,
            key=f"review-{cfg.after.replace('_', '-')}",
        )
    except FlowPauseTimeout:
        if cfg.on_timeout == "fail":
            raise ReviewTimeoutError(
                f"review of the {cfg.after} stage: no answer within review.timeout_s="
                f"{cfg.timeout_s}s; answer the form sooner, raise review.timeout_s, or set "
                "review.on_timeout: continue to go on with the automatic choice"
            ) from None
        _resume_after_timeout()
        log.warning(
            "review: no answer within %ss; continuing with the automatic choice (%s)",
            cfg.timeout_s,
            describe_rule(data.rule),
        )
        return decision_from_input({}, data, decided_by="timeout")
    decision = decision_from_input(answer, data)
    if not answer.accept:
        raise ReviewRejectedError(
            f"review of the {cfg.after} stage: the reviewer stopped the run"
            + (f" ({decision.comment})" if decision.comment else "")
        )
    log.info("review: %s", decision.describe())
    return decision


# ---------------------------------------------------------------- the review stage


def _builder(decision: ReviewDecision, source: StageRef):
    def build(ctx: BuildContext) -> dict[str, Any]:
        import datasets

        from label_pipeline.data import write_label_info

        data = load_reviewed(decision.after, source)
        reject = np.isin(np.array(data.pool_ids, dtype=object), decision.reject_ids)
        pred = apply_review(
            data.pool_scores,
            data.pool_auto,
            data.multi_label,
            decision.threshold,
            decision.top_k,
            reject,
        )
        names = [[data.labels[j] for j in np.flatnonzero(row)] for row in pred]
        column = "labels" if decision.after == "zero_shot" else "predicted_labels"
        folder = "unlabeled" if decision.after == "zero_shot" else "labelled"
        ds = datasets.load_from_disk(str(source.dir / folder))
        ds = ds.remove_columns(column).add_column(
            column, names, feature=datasets.Sequence(datasets.Value("string"))
        )
        ds.save_to_disk(str(ctx.dir / folder))
        if decision.after == "label":
            ds.to_json(str(ctx.dir / "labelled.jsonl"), lines=True, force_ascii=False)
        write_label_info(ctx.dir, data.labels, data.multi_label)
        changed = int((pred != data.pool_auto).any(axis=1).sum()) if len(pred) else 0
        facts: dict[str, Any] = {
            "decision": decision.model_dump(),
            "described": decision.describe(),
            "pool_rows": len(data.pool_ids),
            "rows_labelled_automatic": int((data.pool_auto.sum(axis=1) > 0).sum()),
            "rows_labelled_reviewed": int((pred.sum(axis=1) > 0).sum()),
            "rows_changed": changed,
        }
        if data.valid_y is not None and len(data.valid_y):
            vpred = apply_review(
                data.valid_scores,
                data.valid_auto,
                data.multi_label,
                decision.threshold,
                decision.top_k,
            )
            facts["valid_automatic"] = precision_recall(data.valid_y, data.valid_auto)
            facts["valid_reviewed"] = precision_recall(data.valid_y, vpred)
        (ctx.dir / "review.json").write_text(json.dumps(facts | decision.model_dump(), indent=1))
        lines = [
            f"# review of {decision.after}\n",
            f"- decision: **{decision.describe()}**",
            f"- automatic rule: {describe_rule(decision.automatic)}",
            f"- pool rows with labels: {facts['rows_labelled_automatic']} automatic → "
            f"{facts['rows_labelled_reviewed']} reviewed ({changed} rows changed)",
        ]
        if decision.decided_by == "timeout":
            lines.append("- **no answer in time: the automatic choice was kept**")
        if decision.comment:
            lines.append(f"- comment: {decision.comment}")
        if "valid_reviewed" in facts:
            lines.append(
                "\n"
                + md_table(
                    [
                        {"rule": "automatic", **facts["valid_automatic"]},
                        {"rule": "reviewed", **facts["valid_reviewed"]},
                    ]
                )
            )
        sample = [
            {"id": data.pool_ids[i], "text": data.pool_texts[i], "labels": names[i]}
            for i in range(min(20, len(names)))
        ]
        write_summary(ctx.dir, "\n".join(lines) + "\n", sample)
        return facts

    return build


def run_review(
    store: StageStore, cfg: ReviewDecision, source: StageRef, refresh: bool = False
) -> StageRef:
    """Apply the review decision ``cfg`` to the reviewed stage's output ``source``."""
    source = store.localize(source)
    return store.build_stage(SPEC, cfg, {"source": source}, _builder(cfg, source), refresh)
