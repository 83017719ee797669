"""The shared GAN training core: objectives plug into one trainer, runtime and checkpoint format."""
