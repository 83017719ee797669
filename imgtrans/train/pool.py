"""Image pool (history buffer) of past generated images for discriminator updates."""

from __future__ import annotations

import torch


class ImagePool:
    """Returns a mix of the newest fakes and older ones (Shrivastava et al.), per image.

    Until the pool is full every image is stored and returned as is. Afterwards each image is,
    with probability 1/2, swapped for a random stored one (which it replaces). The pool draws
    from its own generator so its state can be saved and restored for exact resume.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self.gen = torch.Generator().manual_seed(seed)

    def query(self, batch: torch.Tensor) -> torch.Tensor:
        if self.size <= 0:
            return batch
        out = []
        for img in batch.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif torch.rand((), generator=self.gen).item() > 0.5:
                i = int(torch.randint(len(self.images), (), generator=self.gen))
                out.append(self.images[i].clone())
                self.images[i] = img.clone()
            else:
                out.append(img)
        return torch.cat(out, 0)

    def state_dict(self) -> dict:
        images = torch.cat(self.images, 0).cpu() if self.images else torch.empty(0)
        return {"images": images, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        images = state["images"]
        self.images = [img.unsqueeze(0).to(device) for img in images] if images.numel() else []
        self.gen.set_state(state["gen"])
