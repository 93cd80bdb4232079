"""The client-talk classifier on held-out AnnoMI recordings, and AnnoMI's human C:S per MI quality.

    .venv/bin/python benchmarks/client_talk.py [AnnoMI folder] [splits]

Trains on 75% of the recordings (split by video_url), tests on the rest, over several seeded splits
(default 5): per split Cohen's kappa with a 95% CI from 1,000 resamples of test recordings, accuracy
beside the majority class's, macro-F1; then kappa's mean and range over the splits, and the human
C:S per MI quality, pooled and per conversation.
"""

import sys
import time

from mi_llm.eval import client_talk


def main(path: str = "data/AnnoMI", splits: str = "5") -> None:
    data = client_talk.annomi_client(path)
    print(client_talk.reference(data).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    t0 = time.perf_counter()
    rows, s = client_talk.validate_splits(data, n_splits=int(splits), seed=42, bootstrap=1000)
    for _, v in rows.iterrows():
        print(
            f"split {v['split']}: {v['test_recordings']} test recordings ({v['n_test']} utterances)"
            f"  kappa {v['kappa']:.3f} [{v['kappa_ci_low']:.3f}, {v['kappa_ci_high']:.3f}]"
            f"  accuracy {v['accuracy']:.3f} (majority class {v['majority_accuracy']:.3f})"
            f"  macro-F1 {v['macro_f1']:.3f}  C:S human {v['c_s_human']:.2f}"
            f" predicted {v['c_s_predicted']:.2f}"
        )
    print(
        f"\nover {s['n_splits']} splits ({time.perf_counter() - t0:.0f} s): kappa mean "
        f"{s['kappa_mean']:.3f}, range {s['kappa_min']:.3f} to {s['kappa_max']:.3f} "
        f"({s['agreement']} agreement); accuracy {s['accuracy_mean']:.3f} against "
        f"{s['majority_accuracy_mean']:.3f} for the majority class"
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
