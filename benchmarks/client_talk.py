"""The client-talk classifier on held-out AnnoMI recordings, and AnnoMI's human C:S per MI quality.

    .venv/bin/python benchmarks/client_talk.py [AnnoMI folder]

Trains on 75% of the recordings (split by video_url), tests on the rest: Cohen's kappa with a 95% CI
from 1,000 resamples of test recordings, accuracy, macro-F1, per-label recall, the majority-class
accuracy, and C:S predicted vs human on the test recordings.
"""

import sys
import time

from mi_llm.eval import client_talk


def main(path: str = "data/AnnoMI") -> None:
    data = client_talk.annomi_client(path)
    print(client_talk.reference(data).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    t0 = time.perf_counter()
    v = client_talk.validate(data, seed=42, bootstrap=1000)
    print(
        f"\nclassifier on {v['test_recordings']} held-out recordings ({v['n_test']} client utterances; "
        f"trained on {v['train_recordings']} recordings, {v['n_train']} utterances) in "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print(
        f"kappa {v['kappa']:.3f} [{v['kappa_ci_low']:.3f}, {v['kappa_ci_high']:.3f}]  accuracy {v['accuracy']:.3f}"
        f" (majority class {v['majority_accuracy']:.3f})  macro-F1 {v['macro_f1']:.3f}"
    )
    print("recall " + "  ".join(f"{lab} {v['recall_' + lab]:.3f}" for lab in client_talk.LABELS))
    print(
        f"C:S on the test recordings: human {v['c_s_human']:.2f}, predicted {v['c_s_predicted']:.2f}"
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
