"""Network building blocks shared by every model: generators, discriminators, losses, init."""

from imgtrans.nn.discriminators import PatchDiscriminator
from imgtrans.nn.generators import ResnetGenerator
from imgtrans.nn.init import init_weights
from imgtrans.nn.losses import GANLoss

__all__ = ["GANLoss", "PatchDiscriminator", "ResnetGenerator", "init_weights"]
