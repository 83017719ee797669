"""Models, one file each, implementing the training core's Objective protocol."""
