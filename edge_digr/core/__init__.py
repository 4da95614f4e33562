"""The torch-free core every other layer builds on: errors, file writing, the manifest, task and action specs
with their environment factories, the calibration-frame format, metric maths, the numpy perturbation saliency
and the CLI parameter types.

Layering (held by tests/test_layers.py): `core` imports nothing else from edge_digr; the training code
(`edge_digr`) and `edge_digr.export` build on it; `edge_digr.runtime` imports only the core;
`edge_digr.calibration` imports the core and the runtime.
"""
