"""imgtrans: unpaired image translation and eye opening for photo folders, on CPU or GPU."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from imgtrans.pipelines.translate import Translator


def load(name_or_path: str, direction: str | None = None, device: str = "auto", **config: Any) -> Translator:
    """A ready Translator for a model name or a weights path (see `imgtrans weights list`).

    `config` takes TranslateConfig fields (size, tile, batch_size, ...); `size` may also be
    "train". A shipped model's recorded size and keep_detail apply unless given, as in the CLI.
    Call the result on a PIL image, a uint8 array or a float tensor in [0, 1];
    `.translate_folder(src, dst)` does folders.
    """
    from imgtrans.pipelines.translate import TranslateConfig, Translator
    from imgtrans.weights import load_generator, recorded_settings, run_size

    loaded = load_generator(name_or_path, direction)
    size, keep_detail, _ = recorded_settings(loaded.meta, config.pop("size", None), config.pop("keep_detail", None))
    settings = TranslateConfig(size=run_size(size, loaded.meta), keep_detail=keep_detail, **config)
    return Translator(loaded.net, loaded.meta, device=device, config=settings)


__all__ = ["__version__", "load"]
