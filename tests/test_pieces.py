"""How the engine splits a long input: by rows when one step of all of them is over the budget, then by steps."""

from rnnserve.server.pieces import Pieces


def test_before_any_measurement_a_piece_is_the_first_row_steps():
    pieces = Pieces(budget_s=0.002, first_row_steps=64)
    assert pieces.plan(1, 8192, 0.0) == (1, 64)
    assert pieces.plan(4, 100, 0.0) == (4, 16)
    assert pieces.plan(128, 100, 0.0) == (128, 1)


def test_a_single_step_is_never_split():
    pieces = Pieces(budget_s=0.002)
    pieces.measured(64, 1, 0.050)  # 50 ms a step: far over the budget
    assert pieces.plan(64, 1, 0.0) == (64, 1)


def test_steps_fit_the_budget_at_the_measured_width():
    pieces = Pieces(budget_s=0.002, idle_budget_s=0.016, min_row_steps=8)
    pieces.measured(1, 100, 0.010)  # 0.1 ms a step
    assert pieces.plan(1, 8192, 0.0) == (1, 160)  # nobody else served: the idle budget
    pieces.others_served(0.0)
    assert pieces.plan(1, 8192, 0.5) == (1, 20)
    assert pieces.plan(1, 5, 0.5) == (1, 5)  # what fits runs whole


def test_while_others_are_served_a_wide_batch_is_split_by_rows_until_one_step_fits():
    pieces = Pieces(budget_s=0.002, idle_budget_s=0.016, min_row_steps=8, others_recent_s=1.0)
    pieces.measured(64, 1, 0.006)  # a step of 64 rows: 6 ms; 16 rows estimated at 1.5 ms
    assert pieces.plan(64, 128, 10.0) == (64, 2)  # nobody else yet: its full width, in the idle budget
    pieces.others_served(10.0)
    assert pieces.plan(64, 128, 10.5) == (16, 1)
    pieces.measured(16, 4, 0.004)  # measured at 16 rows: 1 ms a step
    assert pieces.plan(64, 128, 10.9) == (16, 2)
    assert pieces.plan(64, 128, 11.0) == (64, 2)  # a second without others: full width again


def test_calls_too_small_to_measure_are_not_counted():
    pieces = Pieces(min_row_steps=8)
    pieces.measured(1, 4, 1.0)
    assert pieces.step_seconds(1) is None
    pieces.measured(2, 4, 0.004)
    assert pieces.step_seconds(2) == 0.001


def test_the_measurement_is_a_moving_average_per_width():
    pieces = Pieces(min_row_steps=1)
    pieces.measured(3, 1, 0.010)  # 3 rows share the 4-row measurement
    pieces.measured(4, 1, 0.020)
    assert abs(pieces.step_seconds(4) - 0.012) < 1e-12
    assert abs(pieces.step_seconds(8) - 0.024) < 1e-12  # unmeasured: in proportion to rows
