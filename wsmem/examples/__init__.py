"""Worked examples of wsmem in real code.

- :mod:`wsmem.examples.mlp`: a multilayer perceptron trained with plain NumPy,
  once without workspaces and once with a :class:`wsmem.WorkspaceMgr` (DL4J's
  LayerWorkspaceMgr layout) and :func:`wsmem.prefetch`, giving the same loss
  curve to the last bit; in-place evaluation in an inference workspace; a
  data-parallel trainer with per-thread workspaces.  ``python -m
  wsmem.examples.mlp`` runs it; docs/example.md explains it.
"""
