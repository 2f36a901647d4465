from datetime import datetime, timedelta, timezone

from billing.common.calendar import next_period_start, period_bounds, period_key, previous_period

UTC = timezone.utc


def test_a_period_is_the_utc_calendar_month_half_open() -> None:
    start, end = period_bounds(datetime(2026, 3, 31, 23, 59, 59, 999999, tzinfo=UTC))
    assert (start, end) == (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    assert period_bounds(end)[0] == end  # the end belongs to the next period


def test_december_rolls_over_to_january() -> None:
    assert period_bounds(datetime(2026, 12, 15, tzinfo=UTC)) == (datetime(2026, 12, 1, tzinfo=UTC),
                                                                  datetime(2027, 1, 1, tzinfo=UTC))
    assert previous_period(datetime(2027, 1, 1, tzinfo=UTC)) == (datetime(2026, 12, 1, tzinfo=UTC),
                                                                  datetime(2027, 1, 1, tzinfo=UTC))
    assert next_period_start(datetime(2026, 12, 15, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)


def test_a_moment_with_an_offset_falls_in_its_utc_month() -> None:
    # 00:30 on 1 May at UTC+2 is still 30 April in UTC
    moment = datetime(2026, 5, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    assert period_bounds(moment)[0] == datetime(2026, 4, 1, tzinfo=UTC)
    assert period_key(moment) == 202604
    assert period_key(datetime(2026, 11, 30, tzinfo=UTC)) == 202611
