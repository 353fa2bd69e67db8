"""The exporter: a trained checkpoint -> verified encoder/decoder ONNX graphs + manifest.json.

`exporter.export.export_model` and `exporter.validate.verify_model_dir` are the API (docs/CONTRACTS.md);
modules are imported on use so that `import exporter` stays cheap.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
