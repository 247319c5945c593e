"""The conformance kit's parts; its public API is :mod:`autotl.testing`.

- :mod:`autotl.kit.subject`: the backbone under test, the inputs made for it, and failure messages;
- :mod:`autotl.kit.structure`: the ``build``, ``forward`` and ``layer_groups`` checks;
- :mod:`autotl.kit.adaptation`: the ``freeze``, ``lora`` and ``split`` checks;
- :mod:`autotl.kit.task`: the checks of a task plugin (:func:`autotl.testing.task_checks`).

The ``bundle`` check is in :mod:`autotl.testing` itself.
"""
