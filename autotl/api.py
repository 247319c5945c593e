"""The public Python API: run a search, open a run, load a bundle. The ``autotl`` command is a layer over it.

::

    import autotl

    result = autotl.search("data/flowers", task="image-classification", time_budget=600, out="runs/flowers")
    run = result.run                       # or later: autotl.open_run("runs/flowers")
    best = run.best_trial()
    print(best.value, run.test_score(best), run.config(best))
    model = run.network(best)              # the trained torch network
    # autotl export writes a bundle; autotl.load(BUNDLE).predict(inputs) predicts with it

``autotl.search`` runs in this process and returns once the search stops (trials, time budget, too many
failures or Ctrl-C); running it again with the same ``out`` resumes the study, as the command does.
"""

from __future__ import annotations

from .run import Run, open_run
from .search import SearchResult, default_out, run_search, search


def load(path, *, device="auto", engine="torch"):
    """Load a bundle written by ``autotl export``: ``autotl.load(BUNDLE).predict(inputs)``.

    See :func:`autotl.bundle.load`.
    """
    from .bundle import load as load_bundle

    return load_bundle(path, device=device, engine=engine)


__all__ = ["Run", "SearchResult", "default_out", "load", "open_run", "run_search", "search"]
