"""Gymnasium environments. Importing this module registers ``autoprune/ChannelPruning-v0``."""

import gymnasium

ENV_ID = "autoprune/ChannelPruning-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="autoprune.envs.channel_pruning:ChannelPruningEnv")


def __getattr__(name: str):  # lazy, so that registering does not import torch
    if name == "ChannelPruningEnv":
        from autoprune.envs import channel_pruning

        return getattr(channel_pruning, name)
    raise AttributeError(name)


__all__ = ["ENV_ID", "ChannelPruningEnv"]
