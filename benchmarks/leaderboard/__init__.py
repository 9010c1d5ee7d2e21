"""The leaderboard (DESIGN §7, PROTOCOL.md §5): records of submitted models, validated by
schema, re-evaluated by the harness and admitted by rule. See docs/leaderboard.md."""

from benchmarks.leaderboard.records import (
    DEFAULT_MAX_WEIGHTS_BYTES,
    Record,
    RecordError,
    make_record,
    validate_leaderboard,
    validate_record,
)

__all__ = ["DEFAULT_MAX_WEIGHTS_BYTES", "Record", "RecordError", "make_record", "validate_leaderboard", "validate_record"]
