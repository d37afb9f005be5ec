"""Export to ONNX step graphs: `rnnserve export` for checkpoints of `rnnserve train`, and `export_module` for a
recurrent model written without rnnserve (`from rnnserve.export import export_module`)."""

__all__ = ["ContractError", "export_module"]


def __getattr__(name: str):
    """Loaded on first use: importing the package (the CLI reads its config) must not import torch."""
    if name == "export_module":
        from rnnserve.export.module import export_module

        return export_module
    if name == "ContractError":
        from rnnserve.contract import ContractError

        return ContractError
    raise AttributeError(f"module 'rnnserve.export' has no attribute {name!r}")
