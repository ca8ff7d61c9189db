"""Search analytics: every search by photo recorded (after its response), clicks on its
results, the hourly roll-up, the numbers of the admin dashboard and the staff API, and the
log's retention.

:mod:`.recording` writes, :mod:`.rollup` rolls closed hours up (beat), :mod:`.stats`
computes (one selector for every consumer), :mod:`.retention` prunes. A layer of its own
beside retrieval.evaluation (.importlinter): the web, API, admin and tasks call it; it reads
retrieval.models and the search's result type only.
"""

from retrieval.analytics.recording import (
    SearchRecord,
    enabled,
    parse_search_id,
    record_click,
    record_search,
    save_click,
    save_searches,
)
from retrieval.analytics.retention import prune_search_log
from retrieval.analytics.rollup import RollupDone, rollup_hours, rollup_searches
from retrieval.analytics.stats import SearchStats, period, search_stats, stats_csv

__all__ = [
    "RollupDone",
    "SearchRecord",
    "SearchStats",
    "enabled",
    "parse_search_id",
    "period",
    "prune_search_log",
    "record_click",
    "record_search",
    "rollup_hours",
    "rollup_searches",
    "save_click",
    "save_searches",
    "search_stats",
    "stats_csv",
]
