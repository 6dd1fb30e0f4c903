"""The numbers behind compare's learning curves: trailing means, one point per update, the mean band over seeds."""

from __future__ import annotations

import numpy as np

from brims_rl.compare.plots import last_per_step, mean_band, smooth


def test_smooth_is_the_trailing_mean_over_at_most_window_values():
    values = np.array([1.0, 3.0, 5.0, 7.0])
    expected = [1.0, 2.0, (1 + 3 + 5) / 3, (3 + 5 + 7) / 3]
    np.testing.assert_allclose(smooth(values, 3), expected, rtol=1e-15)


def test_last_per_step_keeps_the_value_at_the_end_of_each_update():
    # an update logs all its episodes at one step: three at 100, one at 200, two at 300
    steps = np.array([100, 100, 100, 200, 300, 300])
    values = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    kept_steps, kept_values = last_per_step(steps, values)
    assert kept_steps.tolist() == [100, 200, 300]
    assert kept_values.tolist() == [0.3, 0.4, 0.6]


def test_last_per_step_of_distinct_steps_and_of_nothing():
    steps, values = np.array([1, 2, 3]), np.array([-1.0, 0.0, 1.0])
    kept = last_per_step(steps, values)
    assert kept[0].tolist() == [1, 2, 3] and kept[1].tolist() == [-1.0, 0.0, 1.0]
    empty = last_per_step(np.array([], dtype=np.int64), np.array([]))
    assert empty[0].size == 0 and empty[1].size == 0


def test_a_curve_of_updates_interpolates_between_update_ends():
    # two seeds, each with two updates of several episodes: the band runs between the updates' trailing means
    seed1 = last_per_step(np.array([10, 10, 20, 20]), smooth(np.array([0.0, 1.0, 2.0, 3.0]), 2))
    seed2 = last_per_step(np.array([10, 20, 20]), smooth(np.array([1.0, 1.0, 5.0]), 2))
    grid, mean, std = mean_band([seed1, seed2], points=3)
    assert grid.tolist() == [10.0, 15.0, 20.0]
    ends1, ends2 = np.array([0.5, 2.5]), np.array([1.0, 3.0])  # trailing means of 2 at each update's last episode
    np.testing.assert_allclose(seed1[1], ends1, rtol=1e-15)
    np.testing.assert_allclose(seed2[1], ends2, rtol=1e-15)
    at = np.array([ends1, ends2])
    at = np.stack([at[:, 0], at.mean(1), at[:, 1]], 1)  # linear between the two update ends
    np.testing.assert_allclose(mean, at.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, at.std(0, ddof=1), rtol=1e-12)
