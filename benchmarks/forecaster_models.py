"""Which forecaster? Grouped 5-fold CV on AnnoMI's training sessions (test sessions stay unseen).

Prints macro-F1 (mean and spread over folds) and fit time per candidate, against the majority-class
and previous-behaviour baselines.
Run: .venv/bin/python benchmarks/forecaster_models.py [AnnoMI folder]
"""

import sys
import time

import numpy as np
from sklearn.model_selection import GroupKFold

from mi_llm import params
from mi_llm.eval import forecast, forecast_eval

P = params.load("params/smoke.yaml")
FC = P.evaluation.forecaster
CANDIDATES = [
    ("universal", 0.1),
    ("universal", 0.3),
    ("boost", None),
    ("text", 0.1),
    ("text", 0.3),
    ("char", 0.3),
]


def main(path):
    dialogues = forecast.load_sessions(path, FC.mi_quality)
    train, _ = forecast.split_sessions(dialogues, FC.test_size, P.seed)
    for ct in (2, 4):
        X, y, g = forecast.examples(train, ct)
        scores = {}
        for fold, (tr, va) in enumerate(GroupKFold(n_splits=5).split(X, y, g)):
            maj = forecast.majority_baseline(y[tr])
            preds = {
                "majority": np.full(len(va), maj),
                "previous": forecast_eval.previous_baseline(X.iloc[va], maj),
            }
            for kind, C in CANDIDATES:
                t0 = time.perf_counter()
                m = forecast.build(kind, C or 1.0, P.seed).fit(X.iloc[tr], y[tr])
                preds[f"{kind} C={C}"] = m.predict(X.iloc[va])
                scores.setdefault(f"{kind} C={C} fit_s", []).append(time.perf_counter() - t0)
            for name, p in preds.items():
                s = forecast_eval.score(y[va], p, g[va], bootstrap=1)
                scores.setdefault(name, []).append(s["macro_f1"])
        print(f"\ncontext_turns={ct}: {len(train)} train sessions, {len(y)} counselor turns")
        base = max(np.mean(scores["majority"]), np.mean(scores["previous"]))
        for name, v in scores.items():
            if name.endswith("fit_s"):
                continue
            fit = scores.get(f"{name} fit_s")
            print(
                f"  {name:20s} macro-F1 {np.mean(v):.3f} +- {np.std(v):.3f}  "
                f"x{np.mean(v) / base:.2f} best baseline"
                + (f"  fit {np.mean(fit):.1f} s" if fit else ""),
                flush=True,
            )


if __name__ == "__main__":
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # as forecast.fit does
        main(sys.argv[1] if len(sys.argv) > 1 else FC.annomi_path)
