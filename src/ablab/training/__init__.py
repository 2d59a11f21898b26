"""Assembling a run from the composed config, callbacks, and the train/test sequence."""
