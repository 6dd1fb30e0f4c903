"""brims-rl: PPO on vectorized Atari with interchangeable recurrent cores (LSTM, GRU, RIMs, BRIMs)."""

__version__ = "0.1.0"
