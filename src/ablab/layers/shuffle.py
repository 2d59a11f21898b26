"""Channel shuffle (Zhang et al. 2018, "ShuffleNet: An Extremely Efficient Convolutional Neural
Network for Mobile Devices", §3.1), used by ShuffleNet v2 (Ma et al. 2018) after every unit.

With g groups of n = C/g channels, reshape (N, C, H, W) → (N, g, n, H, W), transpose the two
channel axes → (N, n, g, H, W) and flatten back: output channel j·g + i is input channel i·n + j,
so each group of the next grouped (or split) layer receives channels from every group of this one.
Shuffling with g and then with C/g gives back the input.

``torch.nn.ChannelShuffle`` computes exactly this, so it is used as is: it is a ``torch.nn`` leaf
for ``torch.fx`` (one ``call_module`` node, which ``ablab.complexity`` traces through as a
size-keeping layer), gives the same result in train and eval mode, has a gradient, and raises a
clear error when g does not divide C.
"""

from __future__ import annotations

from torch.nn import ChannelShuffle

__all__ = ["ChannelShuffle"]
