"""imgtrans: unpaired image translation and eye opening for photo folders, on CPU or GPU."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from imgtrans.pipelines.translate import Translator


def load(name_or_path: str, direction: str | None = None, device: str = "auto", **config: Any) -> Translator:
    """A ready Translator for a model name or a weights path (see `imgtrans weights list`).

    `config` takes TranslateConfig fields (size, tile, batch_size, ...). Call the result on a
    PIL image, a uint8 array or a float tensor in [0, 1]; `.translate_folder(src, dst)` does folders.
    """
    from imgtrans.pipelines.translate import TranslateConfig, Translator
    from imgtrans.weights import load_generator

    loaded = load_generator(name_or_path, direction)
    return Translator(loaded.net, loaded.meta, device=device, config=TranslateConfig(**config))


__all__ = ["__version__", "load"]
