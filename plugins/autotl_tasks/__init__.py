"""autotl's built-in task types beyond single-label classification, and the targets every built-in task uses.

:mod:`autotl_tasks.targets` holds the targets (loss, metrics, decoding); the task modules register
regression, multi-label and token classification through the same entry point a third party uses.
"""

from __future__ import annotations

from autotl import hookimpl


@hookimpl
def register_tasks(register):
    # each task module is imported here, not above: autotl_image and autotl_text import autotl_tasks.targets
    from .image_tasks import ImageMultilabel, ImageRegression
    from .text_tasks import TextMultilabel, TextRegression
    from .tokens import TokenClassification

    register(ImageRegression())
    register(ImageMultilabel())
    register(TextRegression())
    register(TextMultilabel())
    register(TokenClassification())


__all__ = ["register_tasks"]
