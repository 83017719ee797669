"""imgtrans: unpaired image translation and eye opening for photo folders, on CPU or GPU."""

__version__ = "0.1.0"

__all__ = ["__version__"]
