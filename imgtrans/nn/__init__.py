"""Network building blocks shared by every model: generators, discriminators, losses, init."""

from imgtrans.nn.discriminators import PatchDiscriminator
from imgtrans.nn.generators import ResnetGenerator
from imgtrans.nn.init import init_weights
from imgtrans.nn.losses import GANLoss
from imgtrans.nn.patchnce import PatchHead, patch_nce

__all__ = ["GANLoss", "PatchDiscriminator", "PatchHead", "ResnetGenerator", "init_weights", "patch_nce"]
